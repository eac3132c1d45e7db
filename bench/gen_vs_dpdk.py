#!/usr/bin/env python3
"""Generators on the testbed, in one run: kbypass's live-frames and AF_XDP engines against dpdk-testpmd
txonly over net_af_xdp.

Host b drops everything with the steering program's XDP_DROP rule (the cheapest receiver there is, and
the same for every sender); the score is what arrives at host b's veth per second of sending, read from
the kernel's interface counters, and the sender's own count beside it. Every sender sends the same frame:
64-byte UDP from host a to host b (testpmd is told the same MACs, addresses and ports). The sender runs
pinned to CPU 1 (testpmd: forwarding lcore 1, main lcore 0).

Host b's receive work (its NAPI: the XDP_DROP) runs as a kernel thread pinned to CPU 0 by default
(--placement receiver, see kbypass.host.napi), so the sender's core does nothing but send. With --placement
sender it runs where veth puts it, in the sender's softirq on CPU 1, and every sender also pays for the drop.

Usage:  .venv/bin/python bench/gen_vs_dpdk.py [--seconds 5] [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kbypass.host import napi, testbed
from kbypass.bench.kit import PORT, Contender, rx_packets, testpmd_count
from kbypass.steer.steering import Steering

PREFIX = "kbg"
ROOT = Path(__file__).resolve().parent.parent
SENDER_CPU = 1
RECEIVER_CPU = 0


# name -> (engine, extra options): the live engine with the time on every frame and on one frame in 64
KBYPASS_SENDERS = {"live": ("live", []), "live, time on 1/64": ("live", ["--time-every", "64"]),
                   "afxdp": ("afxdp", [])}


def kbypass_gen(name: str, seconds: float) -> list[str]:
    engine, extra = KBYPASS_SENDERS[name]
    return [sys.executable, "-m", "kbypass", "gen", "--backend", engine, "--host", "a", "--duration", str(seconds),
            "--cpu", str(SENDER_CPU), "--json", "--size", "64", *extra]


def testpmd(a: testbed.Host, b: testbed.Host) -> list[str]:
    return ["ip", "netns", "exec", a.netns, "dpdk-testpmd", "--no-huge", "-m", "1024", "--no-pci",
            "-l", f"0,{SENDER_CPU}", "--main-lcore", "0", "--file-prefix", f"kbg{os.getpid()}",
            "--vdev", f"net_af_xdp0,iface={a.iface},start_queue=0,queue_count=1",
            "--", "--forward-mode=txonly", "-a", "--stats-period", "1", f"--eth-peer=0,{b.mac}",
            f"--tx-ip={a.ipv4},{b.ipv4}", f"--tx-udp=9,{PORT}", "--txpkts=64"]


def run_kbypass(name: str, a, b, seconds: float) -> dict:
    before = rx_packets(b)
    t0 = time.perf_counter()
    out = subprocess.run(kbypass_gen(name, seconds), capture_output=True, text=True, check=True).stdout
    elapsed = time.perf_counter() - t0
    arrived = rx_packets(b) - before
    summary = json.loads(out)
    return {"name": f"kbypass gen {name}", "sent": summary["packets"], "seconds": summary["seconds"],
            "sender_pps": summary["pps"], "arrived": arrived, "pps": arrived / summary["seconds"],
            "wall": elapsed}


def run_testpmd(a, b, seconds: float) -> dict:
    pmd = Contender("testpmd txonly", "send", testpmd(a, b), lambda c, b: "start packet forwarding" in c.out,
                    testpmd_count("TX-packets"))
    pmd.start(b)
    before = rx_packets(b)
    t0 = time.perf_counter()
    time.sleep(seconds)
    arrived = rx_packets(b) - before
    elapsed = time.perf_counter() - t0
    sent = pmd.stop()
    return {"name": "testpmd txonly", "sent": sent, "seconds": elapsed, "sender_pps": None,
            "arrived": arrived, "pps": arrived / elapsed, "wall": elapsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--placement", choices=("receiver", "sender"), default="receiver",
                    help="where host b's receive work runs (default: a NAPI thread on the other core)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "gen_vs_dpdk.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root", file=sys.stderr)
        return 2
    os.environ["KBYPASS_TESTBED"] = PREFIX
    console = Console()
    a, b = testbed.up(testbed.TestbedConfig(prefix=PREFIX))
    results = []
    try:
        with Steering(b.iface, netns=b.netns) as drop:
            drop.add(f"udp dport {PORT} drop")
            if args.placement == "receiver":
                napi.place(b.iface, b.netns, RECEIVER_CPU)
            for run in range(args.runs):
                for name in (*KBYPASS_SENDERS, "testpmd"):
                    if name == "testpmd":
                        if not shutil.which("dpdk-testpmd"):
                            continue
                        r = run_testpmd(a, b, args.seconds)
                    else:
                        r = run_kbypass(name, a, b, args.seconds)
                    r["run"] = run
                    results.append(r)
                    console.print(f"run {run + 1}/{args.runs}  {r['name']:<20} {r['pps'] / 1e6:7.3f} Mpps arrived")
    finally:
        testbed.down(PREFIX)
    med = {n: statistics.median(r["pps"] for r in results if r["name"] == n)
           for n in dict.fromkeys(r["name"] for r in results)}
    t = Table(title="frames arriving at host b per second of sending (median)")
    t.add_column("sender")
    t.add_column("Mpps", justify="right")
    for n, v in med.items():
        t.add_row(n, f"{v / 1e6:.3f}")
    console.print(t)
    ratios = {}
    if "testpmd txonly" in med:
        ratios["kbypass gen afxdp / testpmd txonly"] = med["kbypass gen afxdp"] / med["testpmd txonly"]
        console.print(f"kbypass gen afxdp / testpmd txonly: {ratios['kbypass gen afxdp / testpmd txonly']:.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"placement": args.placement, "median_pps": med, "ratios": ratios,
                                           "trials": results}, indent=2))
    console.print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
