#!/usr/bin/env python3
"""Steering cost per packet with 1, 16 and 128 rules from several clients, through the control plane and
in-process, timed by the kernel with BPF_PROG_TEST_RUN (no traffic, no interface speed in it).

    control plane  the rules go in through kbypass.cp.state.ControlPlane, as `kbypass cp` installs them for
                   several Client records (rule i belongs to client i % --clients, each with its socket
                   group), so the program and maps are the ones the control plane attaches to host b's veth
    in-process     the same rules, same groups, through kbypass.steer.SteerProgram (what `--no-cp` uses)
    anchor         the same program with no rule: its parse of the frame and the "unmatched" count

A 64-byte UDP frame either matches the last rule in priority order (the whole list walked) or none. Each
row is the median over --rounds of the kernel's own per-run time (BPF_PROG_TEST_RUN with --repeat runs);
the paths and the anchor take turns in every round. The control plane adds nothing per packet when its
column equals the in-process one: it only decides what goes into the maps.

    .venv/bin/python bench/cp_steering.py [--rounds 7] [--repeat 200000] [--json]

Prints the table (progress on stderr) or, with --json, the JSON; writes bench/results/cp_steering.json
and cp_steering.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from kbypass import netns as _netns
from kbypass.bpf import libbpf
from kbypass.cp.state import ControlPlane
from kbypass.gen.template import udp_template
from kbypass.host import testbed
from kbypass.steer.steering import SteerProgram

PREFIX = "kbc"
RULE_COUNTS = (1, 16, 128)
BASE_PORT = 20000
MISS_PORT = 9  # no rule takes it
ROOT = Path(__file__).resolve().parent.parent
VERDICTS = {1: "drop", 2: "pass", 3: "tx", 4: "redirect"}


def rule_text(i: int) -> str:
    return f"udp dport {BASE_PORT + i}"


class ThroughControlPlane:
    """N rules installed by `clients` Client records of one ControlPlane on host b's interface."""

    def __init__(self, iface: str, netns: str, clients: int) -> None:
        self.iface, self.netns = iface, netns
        self.cp = ControlPlane()
        self.clients = [self.cp.new_client(os.getpid(), 0, f"bench client {k}") for k in range(clients)]
        self.groups: list[int] = []  # the socket group of each rule's owner, in rule order

    def grow_to(self, n: int) -> None:
        with _netns.entered(self.netns):  # the program attaches to the interface of that namespace
            for i in range(len(self.groups), n):
                owner = self.clients[i % len(self.clients)]
                self.cp.add_rule(owner, self.iface, rule_text(i), xdp_mode="native")
                self.groups.append(owner.group)

    @property
    def prog_fd(self) -> int:
        return self.cp.served[self.iface].steering.prog_fd

    def close(self) -> None:
        self.cp.close()


class InProcess:
    """The same rules with the same socket groups in a program of its own (SteerProgram, attached nowhere)."""

    def __init__(self) -> None:
        self.prog = SteerProgram()
        self.count = 0

    def grow_to(self, n: int, groups: list[int]) -> None:
        for i in range(self.count, n):
            self.prog.add(rule_text(i), group=groups[i])
        self.count = n

    @property
    def prog_fd(self) -> int:
        return self.prog.prog_fd

    def close(self) -> None:
        self.prog.close()


def time_ns(prog_fd: int, frame: bytes, repeat: int) -> tuple[float, int]:
    run = libbpf.test_run(prog_fd, frame, repeat=repeat)
    return float(run.duration_ns), run.retval


def run(a: testbed.Host, b: testbed.Host, clients: int, rounds: int, repeat: int, progress) -> dict:
    def frame(dport: int) -> bytes:
        return udp_template(a.mac, b.mac, a.ipv4, 9, b.ipv4, dport, 64)

    anchor = SteerProgram()
    cp = ThroughControlPlane(b.iface, b.netns, clients)
    inproc = InProcess()
    rows = []
    try:
        for n in RULE_COUNTS:
            cp.grow_to(n)
            inproc.grow_to(n, cp.groups)
            cases = {"last rule": frame(BASE_PORT + n - 1), "no rule": frame(MISS_PORT)}
            samples: dict[tuple[str, str], list[float]] = {}
            verdicts: dict[tuple[str, str], int] = {}
            for r in range(rounds):
                paths = [("control plane", cp.prog_fd), ("in-process", inproc.prog_fd), ("anchor", anchor.prog_fd)]
                paths = paths[r % 3:] + paths[: r % 3]  # who goes first changes each round
                for match, data in cases.items():
                    for name, fd in paths:
                        ns, verdict = time_ns(fd, data, repeat)
                        samples.setdefault((match, name), []).append(ns)
                        verdicts[(match, name)] = verdict
                progress(f"  {n:>3} rules, round {r + 1}/{rounds}: " + ", ".join(
                    f"{m} {p} {samples[(m, p)][-1]:.1f} ns" for m in cases for p, _ in paths))
            for match in cases:
                med = {p: statistics.median(samples[(match, p)]) for p in ("control plane", "in-process", "anchor")}
                if verdicts[(match, "control plane")] != verdicts[(match, "in-process")]:
                    raise AssertionError(f"{n} rules, {match}: the two programs decided differently")
                rows.append({"rules": n, "clients": min(n, clients), "match": match,
                             "control_plane_ns": med["control plane"], "in_process_ns": med["in-process"],
                             "anchor_ns": med["anchor"], "cp_over_in_process": med["control plane"] / med["in-process"],
                             "rule_cost_ns": med["control plane"] - med["anchor"],
                             "verdict": VERDICTS.get(verdicts[(match, "control plane")], "?"),
                             "samples": {p: samples[(match, p)] for p in med}})
    finally:
        cp.close()
        inproc.close()
        anchor.close()
    return {"repeat": repeat, "rounds": rounds, "clients": clients, "frame_bytes": 64, "rows": rows}


def save(result: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "cp_steering.json", out / "cp_steering.png"
    json_path.write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for match, style in (("last rule", "-"), ("no rule", "--")):
        mine = [r for r in result["rows"] if r["match"] == match]
        xs = [r["rules"] for r in mine]
        ax.plot(xs, [r["control_plane_ns"] for r in mine], style, marker="o", color="#1f77b4",
                label=f"control plane, {match}")
        ax.plot(xs, [r["in_process_ns"] for r in mine], style, marker="x", color="#ff7f0e",
                label=f"in-process, {match}")
    anchor = statistics.median(r["anchor_ns"] for r in result["rows"])
    ax.axhline(anchor, color="#999999", linestyle=":", label=f"anchor: no rule installed ({anchor:.0f} ns)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(RULE_COUNTS), [str(n) for n in RULE_COUNTS])
    ax.set_xlabel("rules installed (spread over the clients)")
    ax.set_ylabel("ns per packet (BPF_PROG_TEST_RUN)")
    ax.set_title("steering cost per 64-byte UDP packet")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"steering cost per 64-byte UDP packet, ns: median of {result['rounds']} rounds of "
                    f"{result['repeat']} BPF_PROG_TEST_RUN runs, paths taking turns; anchor: no rule installed")
    for col in ("rules (clients)", "matches", "via cp", "in-process", "cp/in-proc", "anchor", "rules cost"):
        t.add_column(col, justify="left" if col in ("rules (clients)", "matches") else "right")
    for r in result["rows"]:
        t.add_row(f"{r['rules']} ({r['clients']})", r["match"], f"{r['control_plane_ns']:.1f}",
                  f"{r['in_process_ns']:.1f}", f"{r['cp_over_in_process']:.2f}x", f"{r['anchor_ns']:.1f}",
                  f"{r['rule_cost_ns']:+.1f}")
    Console().print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4, help="clients the rules are spread over (default 4)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds; medians are reported (default 7)")
    ap.add_argument("--repeat", type=int, default=200_000, help="BPF_PROG_TEST_RUN runs per sample (default 200k)")
    ap.add_argument("--prefix", default=PREFIX, help=f"the testbed to bring up and down (default {PREFIX})")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where cp_steering.json and .png go")
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root", file=sys.stderr)
        return 2
    if not 1 <= args.clients <= 63 or args.rounds < 1 or args.repeat < 1:
        print("bench: --clients 1-63, --rounds and --repeat at least 1", file=sys.stderr)
        return 2
    hosts = testbed.up(testbed.TestbedConfig(prefix=args.prefix))
    try:
        result = run(*hosts, args.clients, args.rounds, args.repeat, lambda s: print(s, file=sys.stderr))
    finally:
        testbed.down(args.prefix)
    json_path, png_path = save(result, Path(args.out))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)
        print(f"results: {json_path}\nchart:   {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
