#!/usr/bin/env python3
"""kbypass against its anchors, in one run, on the netns testbed, with one generator.

    receive:  kbypass sink (AF_XDP, steered)  vs  dpdk-testpmd rxonly over net_af_xdp
                                              vs  a Python kernel UDP socket receiver
    forward:  kbypass reflect --macs-only (zero copy)  vs  dpdk-testpmd macswap

The generator is the BPF live-frames sender (kbypass.gen.live) in host a, pinned to CPU 0; each system
under test runs in host b pinned to CPU 1. Every trial sends the same burst of frames as fast as the
generator can; the score is what the system under test handled per second of that burst:

    receive: packets the receiver counted / burst seconds
    forward: packets that came back to host a's veth / burst seconds

On veth the receive-side kernel work (XDP, the copy into the AF_XDP ring) runs in the sender's softirq,
on CPU 0, for every contender alike. Each trial is repeated --runs times in rotating order; medians are
reported with the ratios kbypass/anchor.

Usage:  .venv/bin/python bench/afxdp_vs_dpdk.py [--packets 3000000] [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pyroute2 import NetNS
from rich.console import Console
from rich.table import Table

from kbypass import netns, testbed
from kbypass.bpf import libbpf
from kbypass.gen.live import LiveGenerator
from kbypass.gen.template import udp_template

PREFIX = "kbb"
GEN_CPU, SUT_CPU = 0, 1
PORT = 4321
ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# A plain kernel UDP socket receiver: the baseline a Python user would write first.
SOCKET_RECEIVER = r"""
import signal, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
s.bind((sys.argv[1], int(sys.argv[2])))
n = 0
stop = False
def handler(*_):
    global stop
    stop = True
signal.signal(signal.SIGINT, handler)
s.settimeout(0.2)
print("ready", flush=True)
buf = bytearray(2048)
while not stop:
    try:
        s.recv_into(buf)
        n += 1
    except socket.timeout:
        pass
    except InterruptedError:
        pass
print(n, flush=True)
"""


def testpmd_cmd(host: testbed.Host, mode: str) -> list[str]:
    return ["ip", "netns", "exec", host.netns, "dpdk-testpmd", "--no-huge", "-m", "1024", "--no-pci",
            "-l", f"{GEN_CPU},{SUT_CPU}", "--main-lcore", str(GEN_CPU), "--file-prefix", f"kbb{os.getpid()}",
            "--vdev", f"net_af_xdp0,iface={host.iface},start_queue=0,queue_count=1",
            "--", f"--forward-mode={mode}", "-a", "--stats-period", "1"]


class Contender:
    """A system under test: start it, know when it is ready, stop it and read its count."""

    def __init__(self, name: str, kind: str, argv: list[str], ready, count) -> None:
        self.name, self.kind, self.argv, self._ready, self._count = name, kind, argv, ready, count
        self.proc: subprocess.Popen | None = None
        self.out = ""

    def start(self, b: testbed.Host) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + 60
        while not self._ready(self, b):
            self._read()
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.out[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not get ready:\n{self.out[-2000:]}")
            time.sleep(0.05)
        time.sleep(0.3)

    def _read(self) -> None:
        try:
            chunk = self.proc.stdout.read()
        except (BlockingIOError, TypeError):
            chunk = None
        if chunk:
            self.out += chunk

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.set_blocking(self.proc.stdout.fileno(), True)
        self.out += self.proc.stdout.read() or ""
        return self._count(self)


def xdp_on(b: testbed.Host) -> bool:
    with netns.entered(b.netns):
        return libbpf.xdp_query(socket.if_nametoindex(b.iface)).attached


def kbypass_json_count(c: Contender) -> int:
    start = c.out.index("{")
    return json.loads(c.out[start:])["packets"]


def forwarded(c: Contender) -> int:
    return 0  # forwarders are scored by what arrives back at host a, not by what they say they sent


def testpmd_count(field: str):
    def count(c: Contender) -> int:
        found = re.findall(rf"{field}:\s+(\d+)", c.out.split("Accumulated forward statistics")[-1])
        if not found:
            raise RuntimeError(f"no {field} in testpmd output:\n{c.out[-2000:]}")
        return int(found[0])

    return count


def contenders(b: testbed.Host) -> list[Contender]:
    kb = [PY, "-m", "kbypass"]
    common = ["--host", "b", "--queue", "0", "--cpu", str(SUT_CPU), "--json", "--frames", "16384",
              "--ring-size", "8192", "--rule", f"udp dport {PORT}"]
    out = [
        Contender("kbypass sink", "receive", kb + ["sink", *common], lambda c, b: xdp_on(b), kbypass_json_count),
        Contender("python socket", "receive",
                  ["ip", "netns", "exec", b.netns, "taskset", "-c", str(SUT_CPU), PY, "-c", SOCKET_RECEIVER,
                   b.ipv4, str(PORT)],
                  lambda c, b: "ready" in c.out, lambda c: int(c.out.split()[-1])),
        # --macs-only: the same work as testpmd macswap, so host a's kernel treats both outputs alike.
        Contender("kbypass reflect", "forward", kb + ["reflect", "--macs-only", *common], lambda c, b: xdp_on(b),
                  forwarded),
    ]
    if shutil.which("dpdk-testpmd"):
        started = lambda c, b: "start packet forwarding" in c.out
        out += [
            Contender("testpmd rxonly", "receive", testpmd_cmd(b, "rxonly"), started, testpmd_count("RX-packets")),
            Contender("testpmd macswap", "forward", testpmd_cmd(b, "macswap"), started, forwarded),
        ]
    return out


def rx_packets(host: testbed.Host) -> int:
    with NetNS(host.netns) as ns:
        link = ns.get_links(host.ifindex)[0]
    return link.get("IFLA_STATS64")["rx_packets"]


def trial(c: Contender, gen: LiveGenerator, a: testbed.Host, b: testbed.Host, packets: int) -> dict:
    c.start(b)
    before = rx_packets(a)
    res = gen.run(count=packets)
    time.sleep(0.5)  # let the system under test drain its rings
    counted = c.stop()
    handled = counted if c.kind == "receive" else rx_packets(a) - before
    return {"name": c.name, "kind": c.kind, "sent": res.packets, "gen_seconds": res.seconds,
            "handled": handled, "pps": handled / res.seconds, "gen_pps": res.pps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=3_000_000, help="frames per trial (default 3M)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions of every trial (default 3)")
    ap.add_argument("--size", type=int, default=64, help="frame size (default 64)")
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
    try:
        frame = udp_template(a.mac, b.mac, a.ipv4, 9, b.ipv4, PORT, args.size)
        with LiveGenerator(a.iface, frame, netns_name=a.netns) as gen:
            field = contenders(b)
            for run in range(args.runs):
                order = field[run % len(field):] + field[: run % len(field)]
                for c in order:
                    r = trial(c, gen, a, b, args.packets)
                    r["run"] = run
                    results.append(r)
                    console.print(f"run {run + 1}/{args.runs}  {r['name']:<16} {r['pps'] / 1e6:7.3f} Mpps "
                                  f"({r['handled']}/{r['sent']} in {r['gen_seconds']:.2f} s)")
    finally:
        testbed.down(PREFIX)
    summary = summarize(results)
    show(console, summary)
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


def show(console: Console, summary: dict) -> None:
    t = Table(title="median packets per second handled (same generator, same run)")
    t.add_column("system under test")
    t.add_column("Mpps", justify="right")
    for name, pps in summary["median_pps"].items():
        t.add_row(name, f"{pps / 1e6:.3f}")
    console.print(t)
    r = Table(title="ratios")
    r.add_column("kbypass / anchor")
    r.add_column("ratio", justify="right")
    for name, x in summary["ratios"].items():
        r.add_row(name, f"{x:.2f}x")
    console.print(r)


if __name__ == "__main__":
    raise SystemExit(main())
