"""The endpoint's per-message lanes without a network: the C lane (kbypass._fastlane) against the Python
lane it replaces, on rings in plain memory with the test playing the kernel. Same verdict and bytes for
every frame received, byte-identical frames sent, and the port's UMEM accounting intact throughout."""

from __future__ import annotations

import socket
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, TCP
from scapy.layers.l2 import ARP, Ether

from kbypass import endpoint as E
from kbypass.port import afxdp as afxdp_mod
from kbypass.xsk import consts
from tests.fakexsk import FakeXsk
from tests.kb import needs_c

pytestmark = needs_c  # the C lane against the Python lane

MAC, PEER_MAC = "02:00:00:00:00:02", "02:00:00:00:00:01"
IP_, PEER_IP, PORT = "10.9.0.2", "10.9.0.1", 4321
RING = 16


def fake_port(poll: str = "wakeup"):
    """A real AfXdpPort over FakeXsk rings; the test is the kernel (xsk.deliver, xsk.send_all)."""
    with mock.patch.object(afxdp_mod, "XskSocket", FakeXsk):
        return afxdp_mod.AfXdpPort("fake0", frames=256, fill_size=RING, rx_size=RING, tx_size=RING,
                                   comp_size=RING, poll=poll)


def _acceptor():
    ep = object.__new__(E._XdpEndpoint)
    ep.port, ep._ipb, ep._macb = PORT, socket.inet_aton(IP_), bytes.fromhex(MAC.replace(":", ""))
    ep._bcast = socket.inet_aton("10.9.0.255")
    return ep


def make_lane(native: bool, poll: str = "wakeup"):
    port = fake_port(poll)
    ep = _acceptor()
    if native:
        return E._NativeLane(port, ep._accept, ip=ep._ipb, mac=ep._macb, udp_port=PORT, bcast=ep._bcast)
    return E._Lane(port, ep._accept)


@pytest.fixture
def lanes():
    made = [make_lane(True), make_lane(False)]
    yield made
    for lane in made:
        lane.release()
        lane.port.close()


def udp_frame(payload=b"hello", *, sport=5000, dport=PORT, src=PEER_IP, dst=IP_, dmac=MAC, smac=PEER_MAC,
              **ip_kw) -> bytes:
    return bytes(Ether(dst=dmac, src=smac) / IP(src=src, dst=dst, **ip_kw) / UDP(sport=sport, dport=dport)
                 / payload)


def _patch(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value):]


def test_the_c_lane_is_built():
    assert E._fastlane is not None, "kbypass._fastlane is missing: `make setup` builds it"


VALID = {
    "plain": udp_frame(),
    "odd length": udp_frame(b"abc"),
    "empty payload": udp_frame(b""),
    "max payload": udp_frame(bytes(range(256)) * 5 + bytes(192)),
    "no UDP checksum": _patch(udp_frame(b"zero checksum"), 40, b"\0\0"),
    "ethernet padding": udp_frame(b"x") + bytes(10),
}
INVALID = {
    "bad IP checksum": _patch(udp_frame(), 24, b"\x12\x34"),
    "bad UDP checksum": _patch(udp_frame(), 40, b"\x12\x34"),
    "other port": udp_frame(dport=PORT + 1),
    "other address": udp_frame(dst="10.9.0.3"),
    "other MAC": udp_frame(dmac="02:00:00:00:00:09"),
    "multicast source MAC": udp_frame(smac="03:00:00:00:00:01"),
    "IP options": udp_frame(options=[b"\x01\x01\x01\x00"]),
    "fragment": udp_frame(flags="MF"),
    "TTL 0": udp_frame(ttl=0),
    "TCP": bytes(Ether(dst=MAC, src=PEER_MAC) / IP(src=PEER_IP, dst=IP_) / TCP(dport=PORT)),
    "ARP": bytes(Ether(dst=MAC, src=PEER_MAC) / ARP(psrc=PEER_IP, pdst=IP_)),
    "truncated": udp_frame()[:30],
    "UDP length lies": _patch(udp_frame(), 38, b"\x01\x00"),
    "IP length lies": _patch(udp_frame(), 16, b"\x00\x10"),
    "from broadcast": udp_frame(src="10.9.0.255"),
    "from loopback": udp_frame(src="127.0.0.1"),
    "from 0/8": udp_frame(src="0.1.2.3"),
    "from multicast": udp_frame(src="224.0.0.1"),
    "from ourselves": udp_frame(src=IP_),
}


def receive_both(lanes, frame: bytes):
    out = []
    for lane in lanes:
        assert lane.port.xsk.deliver([frame]) == 1
        out.append(lane.recv_udp())
        assert lane.recv_udp() is None  # one frame in, one out
    return out


@pytest.mark.parametrize("name", list(VALID))
def test_valid_datagrams_come_out_alike(lanes, name):
    frame = VALID[name]
    c, py = receive_both(lanes, frame)
    assert c == py
    payload = bytes(UDP(frame[34:])[UDP].payload) if name != "ethernet padding" else b"x"
    assert c == (payload, socket.inet_aton(PEER_IP), 5000)


@pytest.mark.parametrize("name", list(INVALID))
def test_everything_else_goes_to_the_stack_unchanged(lanes, name):
    frame = INVALID[name]
    c, py = receive_both(lanes, frame)
    assert c == py == frame


def test_frames_go_back_to_the_fill_ring_and_counters_match(lanes):
    frames = list(VALID.values()) + list(INVALID.values())
    for _ in range(3):  # more frames than the fill ring holds: each must come back
        for f in frames:
            receive_both(lanes, f)
    c, py = (lane.port for lane in lanes)
    for key in ("rx_packets", "rx_bytes"):
        assert c._counters[key] == py._counters[key] == (3 * len(frames) if key == "rx_packets"
                                                          else 3 * sum(map(len, frames)))
    for port in (c, py):
        assert port.check(app=0)["fill"] == RING


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(list(VALID.values())), cut=st.integers(0, 1600),
       flips=st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 255)), max_size=4))
def test_fuzzed_frames_get_the_same_verdict(base, cut, flips):
    frame = bytearray(base[:max(1, cut)])
    for at, value in flips:
        if at < len(frame):
            frame[at] = value
    made = [make_lane(True), make_lane(False)]
    try:
        c, py = receive_both(made, bytes(frame))
        assert c == py
    finally:
        for lane in made:
            lane.release()
            lane.port.close()


def _flow(payload_to=(PEER_IP, 5000)):
    tmpl = E.udpp.frame_template(bytes.fromhex(MAC.replace(":", "")), bytes.fromhex(PEER_MAC.replace(":", "")),
                                 socket.inet_aton(IP_), socket.inet_aton(payload_to[0]), PORT, payload_to[1])
    return (float("inf"), E.split_template(tmpl), tmpl)


@pytest.mark.parametrize("size", [0, 1, 13, 14, 64, 1001, 1472])
def test_sent_frames_are_byte_identical_and_checksums_right(lanes, size):
    payload = bytes((i * 31 + size) & 0xFF for i in range(size))
    flow = _flow()
    sent = []
    for ident in (1, 0xFFFF):
        for lane in lanes:
            assert lane.send_udp(flow, payload, ident)
        c_frame, py_frame = (lane.port.xsk.send_all()[0] for lane in lanes)
        assert c_frame == py_frame
        sent.append(c_frame)
    for raw in sent:
        pkt = Ether(raw)
        again = Ether(raw)
        del again[IP].chksum, again[UDP].chksum
        again = Ether(bytes(again))
        assert pkt[IP].chksum == again[IP].chksum and pkt[UDP].chksum == again[UDP].chksum
        assert bytes(pkt[UDP].payload) == payload and pkt[UDP].dport == 5000 and pkt[IP].dst == PEER_IP


def test_the_stash_refills_from_the_port_and_nothing_leaks():
    lane = make_lane(True)
    port = lane.port
    try:
        flow = _flow()
        got = []
        for i in range(200):  # many times the stash, with completions arriving in bursts
            assert lane.send_udp(flow, b"m%d" % i, i)
            port.check(app=lane.stashed())
            if i % 10 == 9:
                got += port.xsk.send_all()
        got += port.xsk.send_all()
        assert [Ether(f)[UDP].load for f in got] == [b"m%d" % i for i in range(200)]
        port.check(app=lane.stashed())  # reaps the last completions
        assert port._counters["tx_packets"] == port._counters["tx_completed"] == 200
        # a full TX ring refuses, and the frame stays the lane's
        for _ in range(RING):
            assert lane.send_udp(flow, b"x", 0)
        assert not lane.send_udp(flow, b"y", 0)
        port.check(app=lane.stashed())
        port.xsk.send_all()
        counts = port.check(app=lane.stashed())
        assert counts["tx"] == 0
        # whole frames from elsewhere (ARP answers) take the same path
        arp = bytes(Ether(dst=PEER_MAC, src=MAC) / ARP(op=2, psrc=IP_, pdst=PEER_IP))
        assert lane.send(arp) and port.xsk.send_all() == [arp]
    finally:
        lane.release()
        port.check(app=0)  # the stash went back to the port
        port.close()


def test_the_c_lane_refuses_what_would_corrupt_the_umem():
    lane = make_lane(True)
    port = lane.port
    try:
        with pytest.raises(ValueError, match="frame of 2049 bytes"):
            lane.send(bytes(2049))
        lent = int(port.xsk.fill.slots[0])  # a frame the kernel holds for receiving
        with pytest.raises(ValueError, match="not an application-held frame"):
            lane.c.give([lent])
        with pytest.raises(ValueError, match="42 header bytes"):
            lane.c.send_udp(b"short", b"", 0)
    finally:
        lane.release()
        port.close()
    with pytest.raises(ValueError, match="closed"):
        lane.c.recv()


def _pending_wakeups(xsk, queued: int) -> int:
    """How many of `queued` empty datagrams on the lane's fd its recv() calls consumed."""
    left = 0
    while True:
        try:
            xsk.sock.recv(1)
            left += 1
        except BlockingIOError:
            return queued - left


@pytest.mark.parametrize("native", [True, False])
def test_a_busy_spin_makes_the_busy_poll_call_every_few_empty_looks(native):
    lane = make_lane(native, poll="busy")
    xsk = lane.port.xsk
    if not native:  # the Python lane goes through the port's socket object
        xsk.wake_rx = lambda: xsk.sock.recv(1)
    try:
        for _ in range(100):
            xsk.peer.send(b"")
        for _ in range(3 * lane.BUSY_POLL_EVERY):
            lane.wake()
        assert _pending_wakeups(xsk, 100) == 3
        # the fill ring asking for a wakeup gets one on every look
        flags = xsk._fl["flags_off"]
        xsk._fb[flags] = consts.XDP_RING_NEED_WAKEUP
        for _ in range(100):
            xsk.peer.send(b"")
        for _ in range(5):
            lane.wake()
        assert _pending_wakeups(xsk, 100) == 5
    finally:
        lane.release()
        lane.port.close()
