"""Micro-benchmark of the user-space side of the two hot paths, without a network (`python bench/micro_lane.py`
from the repository root): rings in plain memory with the test harness tests/fakexsk.py playing the kernel,
whose own work is left out of the timings.

    lane   one UDP message received and one sent by the port's message lane (AfXdpPort.message_lane: C and
           Python), as the UDP endpoint drives it
    batch  AfXdpPort.receive(256) then transmit() of the same 256 frames

Prints the median of several rounds, in ns per message and us per batch. The fake kernel is Python, so
only the differences between two runs of this script on the same machine mean anything.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from kbypass.port import afxdp as afxdp_mod  # noqa: E402
from kbypass.port.lane import native_default  # noqa: E402
from kbypass.proto import udp as udpp  # noqa: E402
from tests.fakexsk import FakeXsk  # noqa: E402

MAC, PEER_MAC, IP_, PEER_IP, PORT = "02:00:00:00:00:02", "02:00:00:00:00:01", "10.9.0.2", "10.9.0.1", 4321
RING, ROUND, ROUNDS = 1024, 512, 15


def fake_port():
    with mock.patch.object(afxdp_mod, "XskSocket", FakeXsk):
        return afxdp_mod.AfXdpPort("fake0", frames=4096, fill_size=RING, rx_size=RING, tx_size=RING,
                                   comp_size=RING)


def lane_ns(native: bool) -> float:
    port = fake_port()
    ipb, macb = socket.inet_aton(IP_), bytes.fromhex(MAC.replace(":", ""))
    lane = port.message_lane(udpp.PlainUdp(macb, ipb, PORT, socket.inet_aton("10.9.0.255")), native=native)
    frame = bytes(Ether(dst=MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=IP_) / UDP(sport=5000, dport=PORT)
                  / (b"x" * 64))
    tmpl = udpp.frame_template(macb, bytes.fromhex(PEER_MAC.replace(":", "")), ipb,
                               socket.inet_aton(PEER_IP), PORT, 5000)
    flow = udpp.UdpFlow(tmpl)
    per = []
    try:
        for _ in range(ROUNDS):
            port.xsk.deliver([frame] * ROUND)
            t0 = time.perf_counter_ns()
            for i in range(ROUND):
                payload, _, _ = lane.receive_udp()
                lane.send_udp(flow, payload, i)
            per.append((time.perf_counter_ns() - t0) / ROUND)
            port.xsk.send_all()
            port.reap()
    finally:
        lane.close()
        port.close()
    return statistics.median(per)


def batch_us() -> float:
    port = fake_port()
    frame = bytes(Ether(dst=MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=IP_) / UDP(sport=5000, dport=PORT)
                  / (b"x" * 64))
    per = []
    try:
        for _ in range(ROUNDS):
            port.xsk.deliver([frame] * 256)
            t0 = time.perf_counter_ns()
            b = port.receive(256)
            assert port.transmit(b) == 256
            per.append((time.perf_counter_ns() - t0) / 1000)
            port.xsk.send_all()
            port.reap()
            port.refill(force=True)
    finally:
        port.close()
    return statistics.median(per)


def main() -> None:
    native = native_default()
    if native:
        print(f"lane C       recv+send {lane_ns(True):8.0f} ns/message")
    print(f"lane Python  recv+send {lane_ns(False):8.0f} ns/message")
    print(f"batch 256    receive+transmit {batch_us():8.1f} us/batch ({'C' if native else 'pure Python'} "
          "bookkeeping)")


if __name__ == "__main__":
    main()
