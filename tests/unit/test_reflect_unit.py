"""The reflector without a network: which frames it bounces (and how), which it frees, and its clock.
scapy is the independent judge of the reflected headers."""

from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from kbypass.apps.reflect import Reflector
from kbypass.port.batch import DESC, Batch

# every test twice: per-batch bookkeeping in C (kbypass._fastbatch) and in numpy
pytestmark = pytest.mark.usefixtures("batch_impl")

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


class ListPort:
    """Hands out one batch of `frames`, then nothing; records what is transmitted and what is freed."""

    mode = "test"

    def __init__(self, frames: list[bytes]) -> None:
        self.mem = np.zeros(2048 * len(frames), np.uint8)
        descs = np.zeros(len(frames), DESC)
        for i, f in enumerate(frames):
            self.mem[i * 2048:i * 2048 + len(f)] = np.frombuffer(f, np.uint8)
            descs[i] = (i * 2048, len(f), 0)
        self.pending = Batch(descs, self.mem)
        self.sent: list[bytes] = []
        self.freed: list[int] = []

    def receive(self, n: int) -> Batch:
        batch, self.pending = self.pending, Batch(np.zeros(0, DESC), self.mem)
        return batch

    def wait(self, timeout: float) -> None:
        pass

    def transmit(self, batch: Batch) -> int:
        self.sent += [bytes(self.mem[a:a + k]) for a, k in zip(batch.addr.tolist(), batch.lens.tolist())]
        return len(batch)

    def free(self, batch: Batch) -> None:
        self.freed += batch.addr.tolist()


def test_only_frames_the_fixed_offsets_fit_are_swapped_the_rest_freed():
    udp = Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=7) / b"ping"
    tcp = Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1001, dport=7) / b"ping"
    bad = [
        Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=7) / b"v6",
        Ether(src=A, dst=B) / Dot1Q(vlan=5) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(dport=7) / b"tag",
        Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01" * 4) / UDP(dport=7) / b"opt",
        *(Ether(src=A, dst=B) / f for f in fragment(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(dport=7)
                                                   / (b"f" * 2000), fragsize=1000)),
    ]
    frames = [bytes(udp), *map(bytes, bad), bytes(tcp), bytes(udp)[:30]]  # and a runt
    port = ListPort(frames)
    res = Reflector(port).run(count=len(frames))
    assert (res.packets, res.sent, res.not_reflected) == (len(frames), 2, len(frames) - 2)
    assert sorted(port.freed) == [i * 2048 for i in range(1, len(frames) - 2)] + [(len(frames) - 1) * 2048]
    back_udp, back_tcp = (Ether(f) for f in port.sent)
    for back, l4 in ((back_udp, UDP), (back_tcp, TCP)):
        assert (back.src, back.dst, back[IP].src, back[IP].dst) == (B, A, "10.0.0.2", "10.0.0.1")
        assert (back[l4].sport, back[l4].dport) == (7, 1000 if l4 is UDP else 1001)
        # the checksums were valid before and the swap keeps them valid: scapy recomputes the same ones
        again = Ether(bytes(back))
        del again[IP].chksum, again[l4].chksum
        again = Ether(bytes(again))
        assert (again[IP].chksum, again[l4].chksum) == (back[IP].chksum, back[l4].chksum)


def test_macs_only_bounces_every_frame():
    v6 = bytes(Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=7) / b"v6")
    port = ListPort([v6])
    res = Reflector(port, swap_l3=False).run(count=1)
    assert (res.sent, res.not_reflected) == (1, 0)
    assert port.sent == [v6[6:12] + v6[0:6] + v6[12:]]


def test_rate_clock_stops_at_the_last_packet():
    frame = bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=7))
    res = Reflector(ListPort([frame] * 4)).run(duration=0.3)  # the loop idles ~0.3 s after the batch
    assert res.packets == 4 and res.seconds < 0.05
