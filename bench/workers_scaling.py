#!/usr/bin/env python3
"""Packets per second with 1 and 2 sink workers (`kbypass sink --workers`), from the same generator.

The generator is kbypass's live-frames sender (`kbypass gen --backend live`) in host a. On a veth a live
frame lands on the peer's receive queue of the CPU that sent it (veth's XDP transmit picks the queue by
the sending CPU), so a generator process pinned to CPU q fills queue q: one process for one queue, two
(one per CPU, half the frames each, started together) to spread the same burst over two queues.

    1 worker, own core      worker on CPU 1 (queue 0); generator on CPU 0
    1 worker, shared core   worker on CPU 0 (queue 0); generator on CPU 0: one core's share of the
                            two-worker case
    2 workers               worker q on CPU q (queue q); a generator on each CPU

What the 2-core machine bounds: there is no spare core. veth's receive work (the steering program, the
copy into the AF_XDP ring) runs in the sending CPU's softirq, so with two workers each core runs a
generator, its queue's receive work and a worker; with one worker on its own core the generator's core
does the receive work. The score is what the workers received per second of the burst (from the first
generator's start to the last one's end); `delivered` is the share of the sent frames the workers counted.
Any line beyond two cores is a MODEL (printed as such), never a measurement: per-core rate of the
shared-core row times the cores, times the efficiency the two-worker row shows.

    .venv/bin/python bench/workers_scaling.py [--runs 3] [--packets 2000000] [--prefix P] [--json]

Brings its own testbed up (2 queues) and down; writes bench/results/workers_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kbypass.host import testbed

ROOT = Path(__file__).resolve().parent.parent
KB = [sys.executable, "-m", "kbypass"]
CASES = {
    "1 worker, own core": {"sink": ["--worker-queues", "0", "--cpus", "1"], "gens": [0]},
    "1 worker, shared core": {"sink": ["--worker-queues", "0", "--cpus", "0"], "gens": [0]},
    "2 workers": {"sink": ["--workers", "2"], "gens": [0, 1]},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def one(case: dict, packets: int, dst: str) -> dict:
    """One burst: start the workers, wait until they receive, send, stop them, read their summary."""
    sink = subprocess.Popen([*KB, "sink", "--host", "b", "--json", "--frames", "16384", "--ring-size", "8192",
                             "--rule", "udp dport 4321", *case["sink"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        err = ""
        deadline = time.monotonic() + 60
        while "workers receiving on" not in err:
            line = sink.stderr.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not start: {err}{sink.stderr.read() if not line else ''}")
            err += line
        time.sleep(0.3)
        share = packets // len(case["gens"])
        t0 = time.monotonic()
        gens = [subprocess.Popen([*KB, "gen", "--host", "a", "--cpu", str(c), "-c", str(share), "--json",
                                  "--dst", f"{dst}:4321"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for c in case["gens"]]
        sent_by = [json.loads(g.communicate(timeout=120)[0]) for g in gens]
        burst = max(s["seconds"] for s in sent_by)  # the generators' own clocks, start-up excluded
        wall = time.monotonic() - t0
        time.sleep(0.5)  # let the workers drain their rings
        sink.send_signal(signal.SIGINT)
        out, _ = sink.communicate(timeout=60)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    summary = json.loads(out)
    sent = sum(s["packets"] for s in sent_by)
    return {"sent": sent, "received": summary["packets"], "delivered": summary["packets"] / sent,
            "burst_seconds": burst, "wall_seconds": wall, "pps": summary["packets"] / burst,
            "gen_pps": sent / burst,
            "per_worker": [(w["queue"], w["cpu"], w.get("packets")) for w in summary["workers"]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--packets", type=int, default=2_000_000, help="frames per burst, split over the generators")
    ap.add_argument("--prefix", default=os.environ.get("KBYPASS_TESTBED", "kbw"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ["KBYPASS_TESTBED"] = args.prefix
    if (os.cpu_count() or 1) < 2:
        log("needs two CPUs")
        return 2
    _, b = testbed.up(testbed.TestbedConfig(prefix=args.prefix, queues=2))
    results: dict[str, list[dict]] = {name: [] for name in CASES}
    try:
        for r in range(args.runs):  # the cases take turns in every run: the machine's drift hits all alike
            for name, case in CASES.items():
                res = one(case, args.packets, b.ipv4)
                results[name].append(res)
                log(f"run {r + 1}: {name}: {res['pps'] / 1e6:.2f} Mpps received ({res['delivered']:.0%} of "
                    f"{res['gen_pps'] / 1e6:.2f} Mpps sent), per worker {res['per_worker']}")
    finally:
        testbed.down(args.prefix)
    med = {name: statistics.median(x["pps"] for x in runs) for name, runs in results.items()}
    delivered = {name: statistics.median(x["delivered"] for x in runs) for name, runs in results.items()}
    offered = {name: statistics.median(x["gen_pps"] for x in runs) for name, runs in results.items()}
    per_core = med["1 worker, shared core"]
    efficiency = med["2 workers"] / (2 * per_core) if per_core else 0.0
    model = {f"{n} cores": round(n * per_core * efficiency) for n in (4, 8)}
    out = {"runs": args.runs, "packets": args.packets, "cpus": os.cpu_count(), "median_pps": med,
           "median_delivered": delivered, "median_offered_pps": offered,
           "scaling_2_over_1_own_core": med["2 workers"] / med["1 worker, own core"],
           "scaling_2_over_1_shared_core": med["2 workers"] / per_core,
           "MODEL_not_measured": {"formula": "cores x (1 worker, shared core) x efficiency(2 workers)",
                                  "efficiency": round(efficiency, 3), "pps": model},
           "per_run": results}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "workers_scaling.json").write_text(json.dumps(out, indent=2) + "\n")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"| sink workers, {args.runs} runs of {args.packets} frames, medians | Mpps received | delivered "
          "| Mpps offered |")
    print("|---|---|---|---|")
    for name in CASES:
        print(f"| {name} | {med[name] / 1e6:.2f} | {delivered[name]:.0%} | {offered[name] / 1e6:.2f} |")
    print(f"\n2 workers / 1 worker on its own core: {out['scaling_2_over_1_own_core']:.2f}x; "
          f"/ 1 worker sharing the generator's core: {out['scaling_2_over_1_shared_core']:.2f}x")
    print(f"MODEL, not a measurement: {out['MODEL_not_measured']['formula']} = "
          + ", ".join(f"{k}: {v / 1e6:.2f} Mpps" for k, v in model.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
