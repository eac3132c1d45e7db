#!/usr/bin/env python3
"""kbypass against its anchors, in one run, on the netns testbed, with one generator.

    receive:  kbypass sink (AF_XDP, steered)  vs  dpdk-testpmd rxonly over net_af_xdp
                                              vs  a Python kernel UDP socket receiver
    forward:  kbypass reflect --macs-only (zero copy)  vs  dpdk-testpmd macswap

The generator is the BPF live-frames sender (kbypass.gen.live) in host a, pinned to CPU 0; each system
under test runs in host b pinned to CPU 1. Every trial sends the same burst of frames as fast as the
generator can; the score is what the system under test handled per second of that burst:

    receive: packets the receiver counted / burst seconds
    forward: packets that came back to host a (counted there by an XDP_DROP rule) / burst seconds

Both placements of host b's receive-side kernel work (XDP, the copy into the AF_XDP ring) are measured,
each a table of its own (kbypass.bench.kit):
    sut     threaded NAPI pinned to CPU 1: the receiver's one core does everything, as on a NIC whose
            interrupt is on the application's core. This scores the receivers.
    sender  veth's default: that work runs in the generator's softirq on CPU 0. Every receiver then gets
            all the generator offers, and the score is how fast the generator gets through a frame with
            each receiver attached.
Each trial is repeated --runs times in rotating order; medians are reported with the ratios kbypass/anchor.

Usage:  .venv/bin/python bench/afxdp_vs_dpdk.py [--packets 3000000] [--runs 3] [--placement both]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kbypass.host import testbed
from kbypass.bench.kit import GEN_CPU, PLACEMENTS, PORT, contenders, place_receive_work, trial
from kbypass.gen.live import LiveGenerator
from kbypass.gen.template import udp_template

PREFIX = "kbb"
ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=3_000_000, help="frames per trial (default 3M)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions of every trial (default 3)")
    ap.add_argument("--size", type=int, default=64, help="frame size (default 64)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this contender (repeatable), e.g. --only 'kbypass reflect'")
    ap.add_argument("--placement", choices=[*PLACEMENTS, "both"], default="both",
                    help="where host b's receive work runs (default: both, one table each)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "afxdp_vs_dpdk.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {GEN_CPU})
    os.environ["KBYPASS_TESTBED"] = PREFIX  # the kbypass children find the bench testbed
    console = Console()
    hosts = testbed.up(testbed.TestbedConfig(prefix=PREFIX, queues=2))
    a, b = hosts
    results: list[dict] = []
    placements = list(PLACEMENTS) if args.placement == "both" else [args.placement]
    try:
        frame = udp_template(a.mac, b.mac, a.ipv4, 9, b.ipv4, PORT, args.size)
        with LiveGenerator(a.iface, frame, netns_name=a.netns) as gen:
            field = [c for c in contenders(b) if not args.only or c.name in args.only]
            for placement in placements:
                place_receive_work(b, placement)
                console.print(f"[bold]placement {placement}[/]: {PLACEMENTS[placement]}")
                for run in range(args.runs):
                    order = field[run % len(field):] + field[: run % len(field)]
                    for c in order:
                        r = trial(c, gen, a, b, args.packets, placement)
                        r["run"] = run
                        results.append(r)
                        console.print(f"run {run + 1}/{args.runs}  {r['name']:<16} {r['pps'] / 1e6:7.3f} Mpps "
                                      f"({r['handled']}/{r['sent']} in {r['gen_seconds']:.2f} s, "
                                      f"generator {r['gen_pps'] / 1e6:.2f} Mpps)")
    finally:
        testbed.down(PREFIX)
    summary = {p: summarize([r for r in results if r["placement"] == p]) for p in placements}
    for p in placements:
        show(console, summary[p], p)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"summary": summary, "trials": results}, indent=2))
    console.print(f"results: {args.json}")
    return 0


def summarize(results: list[dict]) -> dict:
    med = {}
    for name in dict.fromkeys(r["name"] for r in results):
        med[name] = statistics.median(r["pps"] for r in results if r["name"] == name)
    ratios = {}
    for mine, anchor in (("kbypass sink", "testpmd rxonly"), ("kbypass sink", "python socket"),
                         ("kbypass reflect", "testpmd macswap")):
        if mine in med and anchor in med and med[anchor] > 0:
            ratios[f"{mine} / {anchor}"] = med[mine] / med[anchor]
    return {"median_pps": med, "ratios": ratios}


def show(console: Console, summary: dict, placement: str) -> None:
    t = Table(title=f"median packets per second handled (same generator, same run)\n"
                    f"placement {placement}: {PLACEMENTS[placement]}")
    t.add_column("system under test")
    t.add_column("Mpps", justify="right")
    for name, pps in summary["median_pps"].items():
        t.add_row(name, f"{pps / 1e6:.3f}")
    console.print(t)
    r = Table(title=f"ratios, placement {placement}")
    r.add_column("kbypass / anchor")
    r.add_column("ratio", justify="right")
    for name, x in summary["ratios"].items():
        r.add_row(name, f"{x:.2f}x")
    console.print(r)


if __name__ == "__main__":
    raise SystemExit(main())
