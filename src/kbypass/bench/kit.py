"""Side-by-side receive/forward trials on the testbed: start a system under test in host b, send one burst
from host a with the live-frames generator, score what it handled per second of the burst.

Used by bench/afxdp_vs_dpdk.py and by `kbypass demo`. The system under test runs pinned to SUT_CPU; where its
receive-side kernel work (XDP, the copy into an AF_XDP ring, the stack) runs is the placement:

    "sut"     threaded NAPI pinned to SUT_CPU: the receiver's core does all of its receive work, as on a NIC
              whose interrupt is on the application's core. The score is what the receiver handles on one
              core; the generator's core only generates.
    "sender"  veth's default: the peer's NAPI runs in the sender's softirq, on the generator's CPU, for
              every contender alike. The receiver's kernel work then slows the generator, so the score is how
              fast the generator gets through a frame with each receiver attached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from kbypass.host import napi, testbed

if TYPE_CHECKING:  # the generator (numpy) loads with the trials, not with `kbypass bench --help`
    from kbypass.gen.live import LiveGenerator

GEN_CPU, SUT_CPU = 0, 1
PORT = 4321
PLACEMENTS = {
    "sut": "receive work (threaded NAPI) on the receiver's core",
    "sender": "receive work in the sender's softirq (veth default)",
}


def place_receive_work(b: testbed.Host, placement: str) -> None:
    """Put host b's receive work where `placement` says (see the module doc); "sender" is veth's default."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r}: use one of {', '.join(PLACEMENTS)}")
    napi.set_threaded(b.iface, b.netns, placement == "sut")
    if placement == "sut":
        napi.pin(b.iface, SUT_CPU)
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
            "-l", f"{GEN_CPU},{SUT_CPU}", "--main-lcore", str(GEN_CPU), "--file-prefix", f"kb{os.getpid()}",
            "--vdev", f"net_af_xdp0,iface={host.iface},start_queue=0,queue_count=1",
            "--", f"--forward-mode={mode}", "-a", "--stats-period", "1"]


class Contender:
    """A system under test that is a process: start it, know when it is ready, stop it, read its count."""

    def __init__(self, name: str, kind: str, argv: list[str], ready, count) -> None:
        self.name, self.kind, self.argv, self._ready, self._count = name, kind, argv, ready, count
        self.proc: subprocess.Popen | None = None
        self.out = ""

    def start(self, b: testbed.Host) -> None:
        self.out = ""  # a contender runs once per repetition; each run reads only its own output
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


class NftDrop:
    """The kernel's cheapest drop before the stack: an nftables rule at raw-priority PREROUTING."""

    kind = "receive"

    def __init__(self, name: str = "nftables raw drop") -> None:
        self.name = name
        self.netns = None

    def _nft(self, *args: str, stdin: str | None = None) -> str:
        return subprocess.run(["ip", "netns", "exec", self.netns, "nft", *args], input=stdin, text=True,
                              capture_output=True, check=True).stdout

    def start(self, b: testbed.Host) -> None:
        self.netns = b.netns
        self._nft("-f", "-", stdin=f"""
            table inet kbbench {{
                chain pre {{ type filter hook prerouting priority raw; udp dport {PORT} counter drop; }}
            }}""")

    def stop(self) -> int:
        try:
            data = json.loads(self._nft("-j", "list", "table", "inet", "kbbench"))
            for item in data["nftables"]:
                for expr in item.get("rule", {}).get("expr", []):
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
            return 0
        finally:
            self._nft("delete", "table", "inet", "kbbench")


class XdpDrop:
    """XDP_DROP by the steering program: the floor of what any receive path can cost on this machine."""

    kind = "receive"

    def __init__(self, name: str = "XDP_DROP (steering rule)") -> None:
        self.name = name
        self.steering = None

    def start(self, b: testbed.Host) -> None:
        from kbypass.steer.steering import Steering

        self.steering = Steering(b.iface, netns=b.netns)
        self.rule = self.steering.add(f"udp dport {PORT} drop")
        self.steering.attach()

    def stop(self) -> int:
        try:
            return self.steering.counters().get(self.rule, (0, 0))[0]
        finally:
            self.steering.close()


def cpu_ticks() -> dict[int, tuple[int, int, int]]:
    """Per CPU: (busy, softirq, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                idle = v[3] + v[4]
                out[int(name[3:])] = (sum(v[:8]) - idle, v[6], sum(v[:8]))
    return out


def cpu_used(before: dict, after: dict) -> float:
    """Cores the receive path used: everything on the SUT's CPU, plus the softirq share of the
    generator's CPU (where veth runs the receive side of XDP and the kernel stack)."""
    def frac(cpu: int, field: int) -> float:
        total = after[cpu][2] - before[cpu][2]
        return (after[cpu][field] - before[cpu][field]) / total if total else 0.0

    return round(frac(SUT_CPU, 0) + frac(GEN_CPU, 1), 3)


def announced(c: Contender, b: testbed.Host) -> bool:
    """kbypass tools print "receiving on ..." to stderr once their port is open (tools/_port.announce)."""
    return "receiving on" in c.out


def kbypass_json_count(c: Contender) -> int:
    # The JSON summary is on stdout; stderr (merged) may carry a status line before or after it.
    start = c.out.index("{")
    summary, _ = json.JSONDecoder().raw_decode(c.out[start:])
    return summary["packets"]


def forwarded(c: Contender) -> int:
    return 0  # forwarders are scored by what arrives back at host a (see trial), not by what they say


def testpmd_count(field: str):
    def count(c: Contender) -> int:
        found = re.findall(rf"{field}:\s+(\d+)", c.out.split("Accumulated forward statistics")[-1])
        if not found:
            raise RuntimeError(f"no {field} in testpmd output:\n{c.out[-2000:]}")
        return int(found[0])

    return count


def contenders(b: testbed.Host, *, dpdk: bool = True, forward: bool = True) -> list[Contender]:
    kb = [PY, "-m", "kbypass"]
    common = ["--host", "b", "--queue", "0", "--cpu", str(SUT_CPU), "--json", "--frames", "16384",
              "--ring-size", "8192", "--rule", f"udp dport {PORT}"]
    out = [
        Contender("kbypass sink", "receive", kb + ["sink", *common], announced, kbypass_json_count),
        Contender("python socket", "receive",
                  ["ip", "netns", "exec", b.netns, "taskset", "-c", str(SUT_CPU), PY, "-c", SOCKET_RECEIVER,
                   b.ipv4, str(PORT)],
                  lambda c, b: "ready" in c.out, lambda c: int(c.out.split()[-1])),
        # --macs-only: the same work as testpmd macswap, so host a's kernel treats both outputs alike.
        Contender("kbypass reflect", "forward", kb + ["reflect", "--macs-only", *common], announced, forwarded),
    ]
    if not forward:
        out = [c for c in out if c.kind != "forward"]
    if dpdk and shutil.which("dpdk-testpmd"):
        started = lambda c, b: "start packet forwarding" in c.out
        out += [
            Contender("testpmd rxonly", "receive", testpmd_cmd(b, "rxonly"), started, testpmd_count("RX-packets")),
        ]
        if forward:
            out.append(Contender("testpmd macswap", "forward", testpmd_cmd(b, "macswap"), started, forwarded))
    return out


def rx_packets(host: testbed.Host) -> int:
    with testbed.rtnl(host.netns) as ns:
        link = ns.get_links(host.ifindex)[0]
    return link.get("IFLA_STATS64")["rx_packets"]


def trial(c, gen: LiveGenerator, a: testbed.Host, b: testbed.Host, packets: int, placement: str = "sender") -> dict:
    """One burst of `packets` frames through contender `c`; see the module doc for the score.

    Forwarders are scored by what comes back to host a, counted there by an XDP_DROP rule: that counts
    exactly, and the frames coming back cost host a's kernel as little as possible, the same for every
    forwarder (without it, each returning frame would go up host a's IP stack on the forwarder's CPU)."""
    from kbypass.steer.steering import Steering

    back = Steering(a.iface, netns=a.netns) if c.kind == "forward" else None
    started = stopping = False
    try:
        rule = None
        if back is not None:
            rule = back.add("udp drop")
            back.attach()
        started = True  # before start(): a start that fails half-way (process up, never ready) is stopped too
        c.start(b)
        if placement == "sut":  # attaching a contender's XDP program may have made new NAPI threads
            napi.pin(b.iface, SUT_CPU)
        ticks = cpu_ticks()
        res = gen.run(count=packets)
        cpu = cpu_used(ticks, cpu_ticks())
        time.sleep(0.5)  # let the system under test drain its rings
        stopping = True
        counted = c.stop()
        handled = counted if back is None else back.counters().get(rule, (0, 0))[0]
    finally:
        # On any failure, stop the contender here: its nft table, its process holding XDP on host b's veth
        # must not outlive the trial (the next trial or the next run would find them in the way).
        if started and not stopping:
            try:
                c.stop()
            except Exception:  # it may never have got far enough to stop; the first error is the one to see
                pass
        if back is not None:
            back.close()
    return {"name": c.name, "kind": c.kind, "placement": placement, "sent": res.packets, "gen_seconds": res.seconds,
            "handled": handled, "pps": handled / res.seconds, "gen_pps": res.pps, "cpu": cpu}
