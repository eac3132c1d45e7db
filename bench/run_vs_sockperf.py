"""Unmodified sockperf under `kbypass run` against kernel sockperf and the native API, in one run.

Latency (UDP ping-pong, half the round trip as sockperf reports it; server in host b on CPU 1, client in
host a on CPU 0), the contenders taking turns within each run, medians over the runs:

    sockperf (kernel, C)          the anchor: both ends on kernel sockets, sleeping in recvfrom
    sockperf under kbypass run    the same binaries, both ends preloaded, blocking calls spinning (--spin)
    kbypass pingpong afxdp busy   the native API (kbypass.bench.latency's row), busy polling, C lane

The shim's sends within a burst leave their kick (the syscall in which copy mode transmits) to a batch; the
"kick/send" rows are the same shim with KBYPASS_TX_BURST_US=0, every send kicking (as before batching).

Message rate: `sockperf throughput` (client in a, server in b) on the kernel and under `kbypass run` on both
ends: sockperf's own send rate, and what the server's socket took in (the shim's counter under kbypass run,
the namespace's UDP InDatagrams on the kernel).

    python bench/run_vs_sockperf.py --prefix kbr --runs 3 --duration 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kbypass.bench import latency as latbench
from kbypass.cp import paths
from kbypass.cp.lock import terminate
from kbypass.host import testbed

HERE = os.path.dirname(os.path.abspath(__file__))
KB = os.path.join(os.path.dirname(sys.executable), "kbypass")
PORT = 11411
CLIENT_CPU, SERVER_CPU = latbench.CLIENT_CPU, latbench.SERVER_CPU
SPIN_US = 10_000_000  # a blocking call never sleeps within a ping-pong: busy spinning, as Onload's EF_POLL_USEC


def in_ns(host, cpu: int, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", host.netns, "taskset", "-c", str(cpu), *argv]


def under_run(*argv: str) -> list[str]:
    return [KB, "run", "--spin", str(SPIN_US), "--", *argv]


percentiles = latbench.sockperf_percentiles


def sockperf_pair(a, b, mode: str, duration: float, size: int, accelerated: bool,
                  kick_per_send: bool = False) -> tuple[str, int]:
    """kick_per_send: the shim kicks the kernel at every send (KBYPASS_TX_BURST_US=0, as before batching)."""
    wrap = under_run if accelerated else (lambda *argv: list(argv))
    env = {**os.environ, "KBYPASS_TX_BURST_US": "0"} if kick_per_send else None
    server = subprocess.Popen(in_ns(b, SERVER_CPU, *wrap("sockperf", "server", "-i", b.ipv4, "-p", str(PORT))),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        time.sleep(1.5)
        out = subprocess.run(in_ns(a, CLIENT_CPU, *wrap("sockperf", mode, "-i", b.ipv4, "-p", str(PORT), "-t",
                                                        str(int(max(1, duration))), "-m", str(size))),
                             capture_output=True, text=True, timeout=duration + 60, env=env)
        received = server_received(b, accelerated)
    finally:
        server.terminate()
        server.wait()
    return out.stdout + out.stderr, received


def server_received(b, accelerated: bool) -> int:
    if accelerated:
        st = subprocess.run(["ip", "netns", "exec", b.netns, KB, "run", "--status", "--json"], capture_output=True,
                            text=True)
        return sum(s["rx"] for app in json.loads(st.stdout)["apps"] for s in app["sockets"])
    snmp = subprocess.run(["ip", "netns", "exec", b.netns, "cat", "/proc/net/snmp"], capture_output=True,
                          text=True).stdout
    head, vals = [ln.split() for ln in snmp.splitlines() if ln.startswith("Udp:")][:2]
    return int(vals[head.index("InDatagrams")])


def message_rate(out: str) -> float:
    m = re.search(r"Message Rate is ([\d.]+) \[msg/sec\]", out)
    if m is None:
        raise RuntimeError(f"sockperf printed no message rate:\n{out[-2000:]}")
    return float(m.group(1))


ROWS = {
    "sockperf (kernel, C)": lambda a, b, d, s: percentiles(sockperf_pair(a, b, "ping-pong", d, s, False)[0]),
    "sockperf under kbypass run": lambda a, b, d, s: percentiles(sockperf_pair(a, b, "ping-pong", d, s, True)[0]),
    "sockperf under run, kick/send": lambda a, b, d, s: percentiles(sockperf_pair(a, b, "ping-pong", d, s, True,
                                                                                   True)[0]),
    "kbypass pingpong afxdp busy": lambda a, b, d, s: latbench._kbypass("afxdp", "busy", d, s, b, "c"),
}


def throughput(a, b, duration: float, size: int, accelerated: bool, kick_per_send: bool = False) -> dict:
    before = 0 if accelerated else server_received(b, False)
    out, received = sockperf_pair(a, b, "throughput", duration, size, accelerated, kick_per_send)
    return {"sent_per_s": message_rate(out), "received_per_s": (received - before) / max(1, int(duration))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", default="kbr", help="the testbed to bring up (and down) for the run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    a, b = testbed.up(testbed.TestbedConfig(prefix=args.prefix))
    os.environ["KBYPASS_TESTBED"] = args.prefix
    lat = {name: [] for name in ROWS}
    tput = {"kernel": [], "kbypass run": [], "run kick/send": []}
    try:
        for r in range(args.runs):
            for name, fn in ROWS.items():
                res = fn(a, b, args.duration, args.size)
                lat[name].append(res)
                print(f"run {r + 1}/{args.runs} {name:<30} p50 {res['p50_us']:8.2f} us  p99 {res['p99_us']:8.2f} us",
                      flush=True)
            for name, acc, per_send in (("kernel", False, False), ("kbypass run", True, False),
                                        ("run kick/send", True, True)):
                res = throughput(a, b, args.duration, args.size, acc, per_send)
                tput[name].append(res)
                print(f"run {r + 1}/{args.runs} throughput {name:<14} sent {res['sent_per_s']:12.0f} msg/s  "
                      f"received {res['received_per_s']:12.0f} msg/s", flush=True)
    finally:
        for h in (a, b):
            terminate(paths.namespace_name(h.netns))
        testbed.down(args.prefix)
    med = {name: {k: statistics.median(x[k] for x in rs) for k in latbench.KEYS} for name, rs in lat.items()}
    tmed = {name: {k: statistics.median(x[k] for x in rs) for k in ("sent_per_s", "received_per_s")}
            for name, rs in tput.items()}
    anchor, run_row, native = (med["sockperf (kernel, C)"], med["sockperf under kbypass run"],
                               med["kbypass pingpong afxdp busy"])
    ratios = {"run/kernel p50": run_row["p50_us"] / anchor["p50_us"],
              "run/kernel p99": run_row["p99_us"] / anchor["p99_us"],
              "run/native p50": run_row["p50_us"] / native["p50_us"],
              "run/native p99": run_row["p99_us"] / native["p99_us"],
              "rate run/kernel (received)": tmed["kbypass run"]["received_per_s"] / tmed["kernel"]["received_per_s"],
              "rate run/kernel (sent)": tmed["kbypass run"]["sent_per_s"] / tmed["kernel"]["sent_per_s"],
              "rate run kick/send/kernel (received)": (tmed["run kick/send"]["received_per_s"]
                                                       / tmed["kernel"]["received_per_s"]),
              "rate run kick/send/kernel (sent)": tmed["run kick/send"]["sent_per_s"] / tmed["kernel"]["sent_per_s"],
              "batched/kick-per-send p50": run_row["p50_us"] / med["sockperf under run, kick/send"]["p50_us"]}
    result = {"date": time.strftime("%Y-%m-%d"), "runs": args.runs, "duration": args.duration, "size": args.size,
              "latency_medians": med, "throughput_medians": tmed, "ratios": ratios, "all": lat, "throughput": tput}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "run_vs_sockperf.json").write_text(json.dumps(result, indent=2))
    print()
    for name, m in med.items():
        print(f"{name:<30} p50 {m['p50_us']:8.2f} us  p99 {m['p99_us']:8.2f} us")
    for name, m in tmed.items():
        print(f"throughput {name:<14} sent {m['sent_per_s']:12.0f} msg/s  received {m['received_per_s']:12.0f} msg/s")
    for k, v in ratios.items():
        print(f"{k:<38} {v:7.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
