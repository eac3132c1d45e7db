"""UDP ping-pong latency on the testbed, in one run: sockperf (the kernel anchor, C) against kbypass
pingpong over a kernel socket, over AF_XDP with wakeups, and over AF_XDP with busy polling (with the
endpoint's per-message ring work in C, and once more with the pure-Python lane). Server in host
b on CPU 1, client in host a on CPU 0; latency is half the round trip. Prints a table of medians over
--runs, writes bench/results/latency.json and latency.png.

    python bench/latency.py --runs 3 --duration 3     (brings its own testbed up and down)
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

from kbypass import testbed

PREFIX = "kbl"

PY = sys.executable
CLIENT_CPU, SERVER_CPU = 0, 1
PORT = 11311
HERE = os.path.dirname(os.path.abspath(__file__))


def _sockperf(a, b, duration: float, size: int) -> dict:
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, "taskset", "-c", str(SERVER_CPU), "sockperf",
                               "server", "-i", b.ipv4, "-p", str(PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["ip", "netns", "exec", a.netns, "taskset", "-c", str(CLIENT_CPU), "sockperf",
                              "ping-pong", "-i", b.ipv4, "-p", str(PORT), "-t", str(int(max(1, duration))),
                              "-m", str(size)], capture_output=True, text=True, timeout=duration + 30).stdout
    finally:
        server.terminate()
        server.wait()

    def pct(name: str) -> float:
        return float(re.search(rf"percentile {name} =\s+([\d.]+)", out).group(1))

    return {"p50_us": pct(r"50\.000"), "p90_us": pct(r"90\.000"), "p99_us": pct(r"99\.000"),
            "p999_us": pct(r"99\.900"), "max_us": float(re.search(r"<MAX> observation =\s+([\d.]+)", out).group(1))}


def _kbypass(backend: str, poll: str, duration: float, size: int, b, lane: str | None = None) -> dict:
    common = ["--backend", backend, "--poll", poll, "--json", *(["--lane", lane] if lane else [])]
    server = subprocess.Popen([PY, "-m", "kbypass", "pingpong", "server", "--host", "b", "--port", str(PORT),
                               "--cpu", str(SERVER_CPU), "--duration", str(duration + 20), "--idle-timeout", "1",
                               *common], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # import, steering and sockets up
        proc = subprocess.run([PY, "-m", "kbypass", "pingpong", "client", "--host", "a", "--server",
                               f"{b.ipv4}:{PORT}", "--cpu", str(CLIENT_CPU), "--duration", str(duration),
                               "--warmup", "1000", "--size", str(size), *common],
                              capture_output=True, text=True, timeout=duration + 60)
        server.communicate(timeout=30)
    finally:
        server.kill()
    if proc.returncode:
        raise SystemExit(f"kbypass pingpong client failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


CONTENDERS = [
    ("sockperf (kernel, C)", lambda a, b, d, s: _sockperf(a, b, d, s)),
    ("kbypass socket", lambda a, b, d, s: _kbypass("socket", "wakeup", d, s, b)),
    ("kbypass socket busy", lambda a, b, d, s: _kbypass("socket", "busy", d, s, b)),
    ("kbypass afxdp wakeup", lambda a, b, d, s: _kbypass("afxdp", "wakeup", d, s, b, "c")),
    ("kbypass afxdp busy", lambda a, b, d, s: _kbypass("afxdp", "busy", d, s, b, "c")),
    ("afxdp busy, Python lane", lambda a, b, d, s: _kbypass("afxdp", "busy", d, s, b, "python")),
]


def run_all(a, b, args) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name, _ in CONTENDERS}
    for _ in range(args.runs):
        for name, fn in CONTENDERS:  # interleaved, so drift in machine load hits every contender alike
            results[name].append(fn(a, b, args.duration, args.size))
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    # Its own testbed, like the other benches; tools started below find it through $KBYPASS_TESTBED.
    os.environ["KBYPASS_TESTBED"] = PREFIX
    a, b = testbed.up(testbed.TestbedConfig(prefix=PREFIX))
    try:
        results = run_all(a, b, args)
    finally:
        testbed.down(PREFIX)
    keys = ("p50_us", "p90_us", "p99_us", "p999_us")
    table = {name: {k: statistics.median(r[k] for r in runs) for k in keys} for name, runs in results.items()}
    anchor = table["sockperf (kernel, C)"]

    print(f"{'contender':24} " + " ".join(f"{k:>9}" for k in keys) + "   p50/sockperf  p99/sockperf")
    for name, row in table.items():
        print(f"{name:24} " + " ".join(f"{row[k]:9.2f}" for k in keys)
              + f"   {row['p50_us'] / anchor['p50_us']:12.2f}  {row['p99_us'] / anchor['p99_us']:12.2f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "latency.json"), "w") as f:
        json.dump({"runs": args.runs, "duration": args.duration, "size": args.size, "medians": table,
                   "all": results}, f, indent=2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    names = list(table)
    for i, k in enumerate(("p50_us", "p99_us")):
        ax.bar([j + i * 0.4 for j in range(len(names))], [table[n][k] for n in names], width=0.4, label=k)
    ax.set_xticks([j + 0.2 for j in range(len(names))], names, rotation=15)
    ax.set_ylabel("one-way latency, us (half RTT)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"UDP ping-pong on the veth testbed, {args.size} B, median of {args.runs} runs")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "latency.png"), dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
