"""Jumbo UDP ping-pong latency in one run (issue 17): `kbypass pingpong --size` of 9,000 and 60,000 bytes at
the testbed's largest MTU (65,535, multi-buffer AF_XDP, 4 KiB frames), the C message lane (chains gathered
by kb_lane_rx_copy, sent by kb_lane_send) against the pure-Python lane (the path these sizes took before the
C lane took chains) and sockperf kernel to kernel, the anchor. The rows are kbypass.bench.latency's own
contenders (same CPUs, servers, warm-up and percentiles as `kbypass bench latency`), taking turns per run.
Prints medians and ratios to the anchor, writes bench/results/jumbo_lane_latency.json.

    KBYPASS_TESTBED=kbj python bench/jumbo_lane_latency.py --runs 3 --duration 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from kbypass.bench import latency as latbench
from kbypass.host import napi, testbed

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = (latbench.ANCHOR, "kbypass afxdp busy", "afxdp busy, Python lane", "kbypass afxdp wakeup")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--sizes", default="9000,60000", help="sockperf message sizes (UDP payload bytes)")
    p.add_argument("--prefix", default=os.environ.get("KBYPASS_TESTBED", "kbj"))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    napi.require_cpus({latbench.CLIENT_CPU, latbench.SERVER_CPU}, "bench/jumbo_lane_latency.py")
    contenders = dict(latbench.CONTENDERS)
    a, b = testbed.up(testbed.TestbedConfig(prefix=args.prefix, mtu=testbed.FRAGS_MAX_MTU))
    os.environ["KBYPASS_TESTBED"] = args.prefix  # the pingpong tools find the hosts through it
    results: dict[int, dict[str, list[dict]]] = {s: {name: [] for name in ROWS} for s in sizes}
    try:
        for r in range(args.runs):
            for size in sizes:
                for name in ROWS:
                    res = latbench.check_row(name, contenders[name](a, b, args.duration, size))
                    results[size][name].append(res)
                    print(f"run {r + 1}/{args.runs} size {size:>5} {name:<26} p50 {res['p50_us']:8.2f} us"
                          f"  p99 {res['p99_us']:8.2f} us{'  (' + res['flag'] + ')' if res.get('flag') else ''}",
                          flush=True)
    finally:
        testbed.down(args.prefix)
    medians = {s: {name: {k: statistics.median(x[k] for x in rs) for k in latbench.KEYS}
                   for name, rs in per.items()} for s, per in results.items()}
    print(f"\nmedians of {args.runs} runs, MTU {testbed.FRAGS_MAX_MTU}; ratio: p50 over sockperf's (busy machine)")
    for s, per in medians.items():
        anchor = per[latbench.ANCHOR]["p50_us"]
        for name, m in per.items():
            print(f"  {s:>5} B  {name:<26} p50 {m['p50_us']:8.2f} us  p99 {m['p99_us']:8.2f} us  "
                  f"{m['p50_us'] / anchor:5.2f}x")
    out = Path(args.out) / "jumbo_lane_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"mtu": testbed.FRAGS_MAX_MTU, "runs": args.runs, "duration": args.duration,
                               "medians": medians, "all": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
