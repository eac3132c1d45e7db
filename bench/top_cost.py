#!/usr/bin/env python3
"""What `kbypass top` costs: its own CPU time over --intervals intervals of 1 s while `gen` runs into a `sink`
on a testbed of its own (the acceptance line: under 5% of a core).

Three watchers run side by side over the same traffic, each a process of its own, measured by the kernel
(the children's rusage: user + system time, startup included, and over the intervals alone from top's own
records, `self.cpu_seconds`):

    top --json       every program, rule, queue, socket and NAPI thread; JSON lines
    top (rendered)   the same, drawn as the rich tables (to a file: the full view each interval)
    stats --json     the anchor: `kbypass stats`, one interface's ethtool counters (what `watch ethtool -S`
                     users run), on the same run

    .venv/bin/python bench/top_cost.py [--prefix P (default $KBYPASS_TESTBED or kbt)] [--intervals 10] [--rate 100k] [--json]

Writes bench/results/top_cost.json. The machine's other load shows in these numbers: say so with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KB = [sys.executable, "-m", "kbypass"]


def start(argv: list[str], out) -> subprocess.Popen:
    return subprocess.Popen([*KB, *argv], stdout=out, stderr=subprocess.PIPE, text=True)


def cpu_of(proc: subprocess.Popen, timeout: float) -> tuple[float, float]:
    """(CPU seconds the child used, wall seconds it ran) from the kernel's rusage of the reaped child."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime, time.monotonic() - t0
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{proc.args} did not finish in {timeout} s")
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default=os.environ.get("KBYPASS_TESTBED", "kbt"))
    ap.add_argument("--intervals", type=int, default=10)
    ap.add_argument("--rate", default="100k")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    env_ns = f"{a.prefix}-b"
    (ROOT / "bench/results").mkdir(exist_ok=True)
    subprocess.run([*KB, "testbed", "up", "--prefix", a.prefix], check=True, capture_output=True)
    os.environ["KBYPASS_TESTBED"] = a.prefix
    procs: list[subprocess.Popen] = []
    try:
        dev = subprocess.DEVNULL
        sink = start(["sink", "--host", "b", "--rule", "udp dport 4321", "-t", str(a.intervals + 30)], dev)
        procs.append(sink)
        time.sleep(3)  # the sink's rule in place
        gen = start(["gen", "--host", "a", "--backend", "afxdp", "--rate", a.rate, "-t", str(a.intervals + 8)], dev)
        procs.append(gen)
        time.sleep(1)
        n = str(a.intervals)
        out_json = open(ROOT / "bench/results/top_cost.top.jsonl", "w")  # noqa: SIM115
        out_view = open(os.devnull, "w")  # noqa: SIM115
        watchers = {
            "top --json": start(["top", "--netns", env_ns, "--json", "-c", n], out_json),
            "top (rendered)": start(["top", "--netns", env_ns, "-c", n, "--record",
                                     str(ROOT / "bench/results/top_cost.view.jsonl")], out_view),
            "stats --json (anchor)": start(["stats", "--host", "b", "--json", "-c", n], subprocess.DEVNULL),
        }
        procs += watchers.values()
        rows = {}
        for name, p in watchers.items():
            cpu, _ = cpu_of(p, a.intervals * 3 + 60)
            if p.returncode != 0:
                raise SystemExit(f"{name} failed: {p.stderr.read()}")
            rows[name] = {"cpu_seconds": round(cpu, 3), "percent_of_a_core": round(100 * cpu / a.intervals, 2)}
        out_json.close()
        for name, f in (("top --json", "top_cost.top.jsonl"), ("top (rendered)", "top_cost.view.jsonl")):
            recs = [json.loads(x) for x in (ROOT / "bench/results" / f).read_text().splitlines()]
            # top's own count (os.times) from its first sample to its last: the steady state, no imports
            rows[name]["intervals_only_percent"] = recs[-1]["self"]["cpu_percent"]
        seen_pps = max((r["pps"] for rec in recs for p in rec["programs"] for r in p.get("rules", [])), default=0)
        result = {"intervals": a.intervals, "interval_s": 1.0, "gen_rate": a.rate, "rule_pps_seen": round(seen_pps),
                  "watchers": rows, "note": "2-core VM shared with other work: CPU times include its noise",
                  "when": time.strftime("%Y-%m-%d %H:%M")}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(10)
            except (ChildProcessError, subprocess.TimeoutExpired):
                pass
        subprocess.run([*KB, "testbed", "down", "--prefix", a.prefix], capture_output=True)
    (ROOT / "bench/results/top_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    if a.json:
        print(json.dumps(result))
    else:
        print(f"{a.intervals} intervals of 1 s, gen at {a.rate} (rule saw up to {seen_pps:,.0f} pps):")
        for name, r in rows.items():
            extra = (f", over the intervals alone {r['intervals_only_percent']:.2f}%"
                     if "intervals_only_percent" in r else "")
            print(f"  {name:24} {r['cpu_seconds']:6.3f} s CPU = {r['percent_of_a_core']:5.2f}% of a core "
                  f"(startup included){extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
