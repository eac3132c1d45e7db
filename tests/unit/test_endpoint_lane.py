"""The endpoint's per-message lanes without a network: the C lane (kbypass._fastlane) against the Python
lane it replaces, on rings in plain memory with the test playing the kernel. Same verdict and bytes for
every frame received, byte-identical frames sent, and the port's UMEM accounting intact throughout."""

from __future__ import annotations

import socket
from collections import deque
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from kbypass import endpoint as E
from kbypass.endpoint import xdp as xdp_mod
from kbypass.errors import UsageError
from kbypass.port import afxdp as afxdp_mod
from kbypass.port import lane as lane_mod
from kbypass.proto import udp as udpp
from kbypass.proto.stack import Stack
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


def plain_udp() -> udpp.PlainUdp:
    """What the endpoint bound to IP_:PORT on MAC accepts (proto.udp.PlainUdp, the C lane's twin)."""
    return udpp.PlainUdp(bytes.fromhex(MAC.replace(":", "")), socket.inet_aton(IP_), PORT,
                         socket.inet_aton("10.9.0.255"))


def make_lane(native: bool, poll: str = "wakeup"):
    """The port's public one-message lane (AfXdpPort.message_lane), C or Python."""
    return fake_port(poll).message_lane(plain_udp(), native=native)


@pytest.fixture
def lanes():
    made = [make_lane(True), make_lane(False)]
    yield made
    for lane in made:
        lane.close()
        lane.port.close()


def udp_frame(payload=b"hello", *, sport=5000, dport=PORT, src=PEER_IP, dst=IP_, dmac=MAC, smac=PEER_MAC,
              **ip_kw) -> bytes:
    return bytes(Ether(dst=dmac, src=smac) / IP(src=src, dst=dst, **ip_kw) / UDP(sport=sport, dport=dport)
                 / payload)


def _patch(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value):]


def test_the_c_lane_is_built():
    assert lane_mod.native_default(), "kbypass._fastlane is missing: `make setup` builds it"


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
        out.append(lane.receive_udp())
        assert lane.receive_udp() is None  # one frame in, one out
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
        assert c.stats[key] == py.stats[key] == (3 * len(frames) if key == "rx_packets"
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
            lane.close()
            lane.port.close()


def _flow(payload_to=(PEER_IP, 5000)):
    tmpl = udpp.frame_template(bytes.fromhex(MAC.replace(":", "")), bytes.fromhex(PEER_MAC.replace(":", "")),
                                 socket.inet_aton(IP_), socket.inet_aton(payload_to[0]), PORT, payload_to[1])
    return udpp.UdpFlow(tmpl)


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
            port.check(app=0)
            if i % 10 == 9:
                got += port.xsk.send_all()
        got += port.xsk.send_all()
        assert [Ether(f)[UDP].load for f in got] == [b"m%d" % i for i in range(200)]
        port.check(app=0)  # reaps the last completions
        assert port.stats["tx_packets"] == port.stats["tx_completed"] == 200
        # a full TX ring refuses, and the frame stays the lane's
        for _ in range(RING):
            assert lane.send_udp(flow, b"x", 0)
        assert not lane.send_udp(flow, b"y", 0)
        port.check(app=0)
        port.xsk.send_all()
        counts = port.check(app=0)
        assert counts["tx"] == 0
        # whole frames from elsewhere (ARP answers) take the same path
        arp = bytes(Ether(dst=PEER_MAC, src=MAC) / ARP(op=2, psrc=IP_, pdst=PEER_IP))
        assert lane.send_one(arp) and port.xsk.send_all() == [arp]
    finally:
        lane.close()
        port.check(app=0)  # the stash went back to the port
        port.close()


def test_the_c_lane_refuses_what_would_corrupt_the_umem():
    lane = make_lane(True)
    port = lane.port
    try:
        with pytest.raises(ValueError, match="frame of 2049 bytes"):
            lane.c.send_frame(bytes(2049))
        assert not lane.send_one(bytes(2049))  # the lane refuses it before C sees it
        lent = int(port.xsk.fill.slots[0])  # a frame the kernel holds for receiving
        with pytest.raises(ValueError, match="not an application-held frame"):
            lane.c.give([lent])
        with pytest.raises(ValueError, match="42 header bytes"):
            lane.c.send_udp(b"short", b"", 0)
    finally:
        lane.close()
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
        lane.close()
        lane.port.close()


# ---- item: jumbo MTU against the UMEM frame ---------------------------------------------------------


def test_payload_limits_follow_the_umem_frame_not_only_the_mtu():
    assert E.payload_limits(1500, 2048) == (1472, 1472)
    # MTU 9000: a 2048-byte frame carries 2006 bytes of payload out, and receives 1750 (XDP headroom)
    assert E.payload_limits(9000, 2048) == (2048 - 42, 2048 - 256 - 42)
    assert E.payload_limits(9000, 4096) == (4096 - 42, 4096 - 256 - 42)
    with pytest.raises(UsageError, match="2048 or 4096"):
        E.payload_limits(1500, 3000)


@pytest.mark.parametrize("native", [True, False])
def test_a_frame_larger_than_a_umem_frame_is_never_written(native):
    lane = make_lane(native)
    port = lane.port
    try:
        before = port.umem.array.copy()
        flow = _flow()
        assert not lane.send_udp(flow, bytes(3000), 1)  # 3042 bytes: would spill into the next frame
        assert not lane.send_one(b"\xaa" * 3042)
        assert (port.umem.array == before).all()
        assert port.xsk.send_all() == []
        assert lane.send_udp(flow, bytes(2048 - 42), 2)  # exactly one frame still goes
        assert len(port.xsk.send_all()[0]) == 2048
        port.check(app=0)
    finally:
        lane.close()
        port.close()


def _jumbo_endpoint(lane, mtu=9000, frame_size=2048):
    ep = object.__new__(E.XdpEndpoint)
    ep._closed, ep.ifname, ep.mtu, ep.frame_size, ep.port = False, "fake0", mtu, frame_size, PORT
    ep.max_payload, ep.max_rx_payload = E.payload_limits(mtu, frame_size)
    ep.counters = {"rx_datagrams": 0, "tx_datagrams": 0, "rx_slow_path": 0, "rx_vector": 0, "tx_failed": 0}
    ep.stack = Stack(MAC, IP_, 24, 0.0, mtu=ep.max_payload + 28)
    ep._templates = {(PEER_IP, 5000): (float("inf"), _flow())}
    ep._tx_lane, ep._lanes, ep._ident = lane, [lane], 0
    return ep


@pytest.mark.parametrize("native", [True, False])
def test_sendto_refuses_a_message_above_the_frame_with_the_fix_named(native):
    lane = make_lane(native)
    try:
        ep = _jumbo_endpoint(lane)
        with pytest.raises(UsageError, match="frame_size=4096"):
            ep.sendto(bytes(3000), (PEER_IP, 5000))
        with pytest.raises(UsageError, match="frame_size=4096"):
            ep.send_batch([bytes(10)] * 5 + [bytes(3000)], (PEER_IP, 5000))
        assert lane.port.xsk.send_all() == []
        assert ep.sendto(bytes(2006), (PEER_IP, 5000)) == 2006
    finally:
        lane.close()
        lane.port.close()


# ---- item: sendto with a full TX ring -----------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_sendto_raises_blocking_io_error_when_nothing_was_sent(native):
    lane = make_lane(native)
    try:
        ep = _jumbo_endpoint(lane, mtu=1500)
        for i in range(RING):  # the kernel (the test) does not drain the TX ring
            assert ep.sendto(b"m%d" % i, (PEER_IP, 5000)) == len(b"m%d" % i)
        with pytest.raises(BlockingIOError):
            ep.sendto(b"lost", (PEER_IP, 5000))
        assert ep.counters["tx_failed"] == 1 and ep.counters["tx_datagrams"] == RING
        # the kernel catches up: the next send goes
        assert len(lane.port.xsk.send_all()) == RING
        lane.port.reap()  # the fake completion ring is as small as the TX ring
        assert ep.sendto(b"again", (PEER_IP, 5000)) == 5
        assert lane.port.xsk.send_all()[0].endswith(b"again")
        lane.port.check(app=0)
    finally:
        lane.close()
        lane.port.close()


# ---- item: several queues are served round robin --------------------------------------------------------


class _FakeQueue:
    """A lane that always has a datagram waiting (a busy queue)."""

    def __init__(self, name: bytes):
        self.name, self.taken = name, 0

    def receive_udp(self):
        self.taken += 1
        return (self.name, socket.inet_aton(PEER_IP), 5000)


def test_poll_once_serves_every_queue_in_turn():
    ep = object.__new__(E.XdpEndpoint)
    ep._lanes = [_FakeQueue(b"q0"), _FakeQueue(b"q1"), _FakeQueue(b"q2")]
    ep._next_lane, ep._pending, ep._names = 0, deque(), {}
    ep.counters = {"rx_datagrams": 0}
    ep.stack = Stack(MAC, IP_, 24, 0.0)
    for _ in range(6):
        assert ep._poll_once()
    assert [lane.taken for lane in ep._lanes] == [2, 2, 2]
    assert [p for p, _ in ep._pending] == [b"q0", b"q1", b"q2"] * 2


# ---- item: the kernel-socket baseline with its defaults -------------------------------------------------


def test_socket_backend_defaults_on_an_empty_socket():
    for poll in ("wakeup", "busy"):
        _socket_backend_defaults(poll)


def _socket_backend_defaults(poll):
    ep = E.UdpEndpoint(None, "127.0.0.1", 0, backend="socket", poll=poll)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert ep.recv_batch() == []  # timeout 0.0: nothing waiting, nothing raised
        with pytest.raises(TimeoutError):
            ep.recvfrom(0)
        with pytest.raises(TimeoutError):
            ep.recvfrom(0.01)
        peer.sendto(b"one", ("127.0.0.1", ep.port))
        peer.sendto(b"two", ("127.0.0.1", ep.port))
        got = ep.recv_batch(timeout=1.0)
        assert [d for d, _ in got] == [b"one", b"two"]
        assert ep.recv_batch(timeout=0.0) == []
    finally:
        peer.close()
        ep.close()


# ---- item: a gateway for off-subnet peers ------------------------------------------------------------

GW_IP, GW_MAC, FAR_IP = "10.9.0.254", "02:00:00:00:00:fe", "192.0.2.1"


class _FakeIface:
    """What XdpEndpoint reads from netlink (kbypass.net.Interface): the interface holds IP_/24."""

    def __init__(self, ifname, netns):
        import ipaddress

        self.ifindex, self.mac, self.mtu = 1, MAC, 1500
        self.nets = [ipaddress.IPv4Interface(f"{IP_}/24")]
        self.all_local = {IP_}

    def neighbour(self, ip):
        return GW_MAC if ip == GW_IP else None

    def close(self):
        pass


class _FakeSteered:
    def __init__(self, ifname, queue, rules, **kw):
        self.kw = kw
        self.ports = [fake_port()]
        self.port = self.ports[0]

    def rule_counters(self):
        return []

    def close(self):
        for p in self.ports:
            p.close()


def _placeholder(netns, ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))  # the kernel does not have IP_ here
    return s


def _fake_endpoint(**kw):
    from kbypass.port import steered

    with mock.patch.object(xdp_mod, "Interface", _FakeIface), mock.patch.object(steered, "SteeredPort", _FakeSteered), \
            mock.patch.object(xdp_mod, "bind_udp", _placeholder):
        return E.UdpEndpoint("fake0", IP_, 0, **kw)


def test_gateway_carries_off_subnet_datagrams():
    with _fake_endpoint(gateway=GW_IP) as ep:
        assert ep.sendto(b"far away", (FAR_IP, 53)) == 8
        (frame,) = ep._tx_lane.port.xsk.send_all()
        p = Ether(frame)
        assert (p.dst, p[IP].dst, p[UDP].dport, bytes(p[UDP].payload)) == (GW_MAC, FAR_IP, 53, b"far away")
    with _fake_endpoint() as ep:
        with pytest.raises(UsageError, match="gateway="):
            ep.sendto(b"x", (FAR_IP, 53))
    with pytest.raises(UsageError, match="on-link gateway"):
        _fake_endpoint(gateway="192.0.2.254")


def test_frame_size_reaches_the_port_and_sets_the_limits():
    with _fake_endpoint(frame_size=4096) as ep:
        assert ep._steered.kw["frame_size"] == 4096
        assert (ep.max_payload, ep.max_rx_payload) == (1472, 1472)
        assert ep.stats["rx_dropped"] == 0  # the kernel's count of frames too long for a UMEM frame


# --- the C lane's own guards (each crashed the interpreter before) ----------------------------------------

def _in_child(code: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_lane_never_initialised_is_closed():
    """Lane.__new__(Lane) started with closed == 0 and NULL rings: recv() segfaulted."""
    r = _in_child("from kbypass._fastlane import Lane\nLane.__new__(Lane).recv()\n")
    assert r.returncode == 1 and "ValueError" in r.stderr and "closed" in r.stderr, (r.returncode, r.stderr[-400:])


def test_a_failed_reinit_leaves_the_lane_closed():
    """A second __init__ that fails half-way cleared the rings but left the lane open."""
    lane = make_lane(True)
    try:
        with pytest.raises(ValueError, match="mac must be 6 bytes"):
            lane.c.__init__(*([()] * 4), b"", b"", b"", 2048, -1, b"\0" * 5, b"\0" * 4, 1, None, 1, 0)
        with pytest.raises(ValueError, match="closed"):
            lane.c.recv()
    finally:
        lane.port.close()


# --- descriptors from the kernel outside the UMEM: the same verdict in C and Python ----------------------

def _post(ring, values: np.ndarray) -> None:
    """The kernel's side: publish `values` on `ring` (k_rx or k_comp)."""
    idx, n = ring.reserve(len(values))
    assert n == len(values)
    ring.write_slots(idx, values)
    ring.submit(n)


def _verdict(lane, act):
    """What `act(lane)` decided: its result or its exception (type and message), and what changed: the
    port's counters, whether any UMEM state moved, what is left on the RX and completion rings."""
    port = lane.port
    counters, state = port.counters.copy(), port.umem.state.copy()
    try:
        out = act(lane)
    except (IndexError, RuntimeError, ValueError) as e:  # the verdicts under test
        out = (type(e).__name__, str(e))
    return (out, (port.counters - counters).tolist(), bool((port.umem.state != state).any()), lane.waiting(),
            port.xsk.comp.available())


def _both(act, kernel):
    """The verdict of the C lane and of the Python lane, each on a fresh port after `kernel(xsk, umem)`."""
    out = []
    for native in (True, False):
        lane = make_lane(native)
        try:
            kernel(lane.port.xsk, lane.umem)
            out.append(_verdict(lane, act))
        finally:
            lane.close()
            lane.port.close()
    return out


@pytest.mark.parametrize("bad", [lambda size: [size], lambda size: [1 << 40], lambda size: [0, size + 2047]])
def test_a_completion_outside_the_umem_gets_the_same_verdict_and_is_not_written(bad):
    """reclaim wrote state[addr >> shift] for any completion address, in C (now checked, as push_free and
    mark check theirs) and in Python (it still did): both refuse the whole peek and take nothing."""
    def kernel(xsk, umem):
        _post(xsk.k_comp, np.array(bad(umem.size), dtype=np.uint64))

    c, py = _both(lambda lane: lane.send_one(udp_frame()), kernel)
    assert c == py
    first_bad = next(a for a in bad(256 * 2048) if a >= 256 * 2048)  # fake_port's UMEM: 256 frames
    assert c == (("IndexError", f"completed address {first_bad:#x} is outside the UMEM"), [0] * len(c[1]), False,
                 0, len(bad(0)))


@pytest.mark.parametrize("desc", [lambda size: (size, 60), lambda size: (size - 100, 200),
                                  lambda size: (256, 1 << 31), lambda size: (size + 256, 0),
                                  lambda size: (size - 100, 100), lambda size: (256, 4000),
                                  lambda size: (256, 1793), lambda size: (4096 + 2000, 60),
                                  lambda size: (256, 1792)])
def test_an_rx_descriptor_outside_its_frame_gets_the_same_verdict_and_stays_on_the_ring(desc):
    """The C lane raised for an RX descriptor that reaches past the UMEM; the Python lane copied what
    fitted (a truncated frame) and went on. Inside the UMEM but past the end of its own frame (into the
    next): both refuse it too (kb_desc_in_frame and desc_in_frame, one verdict)."""
    def kernel(xsk, umem):
        _, n = xsk.k_fill.peek(1)  # the kernel takes a lent frame, as for any received one
        xsk.k_fill.release(n)
        d = np.zeros(1, dtype=consts.XDP_DESC)
        d[0] = (*desc(umem.size), 0)
        _post(xsk.k_rx, d)

    c, py = _both(lambda lane: lane.receive_udp(), kernel)
    assert c == py
    addr, n = desc(1 << 20)
    if addr >= 1 << 20 or n > 2048 - addr % 2048:
        assert c == (("RuntimeError", "RX descriptor outside its UMEM frame"), [0] * len(c[1]), False, 1, 0)
    else:
        assert c[0] != ("RuntimeError", "RX descriptor outside its UMEM frame") and c[3] == 0


# --- multi-buffer ports (XDP_USE_SG): chains of frames through both lanes, one verdict ------------------

MB_FRAME = 4096  # as the endpoint's ports at a jumbo MTU: 18 frames carry a 65,549-byte frame
MB_ROOM = MB_FRAME - consts.XDP_PACKET_HEADROOM  # what one frame receives in copy mode
JUMBO = [MB_ROOM - 42 + 1, 8958, 30001, 60000, 65507]  # payloads: just past one frame, MTU 9000, ..., the most


def make_mb_lane(native: bool):
    with mock.patch.object(afxdp_mod, "XskSocket", FakeXsk):
        port = afxdp_mod.AfXdpPort("fake0", frame_size=MB_FRAME, frames=512, fill_size=256, rx_size=256,
                                   tx_size=256, comp_size=256, multi_buffer=True)
    return port.message_lane(plain_udp(), native=native)


@pytest.fixture
def mb_lanes():
    made = [make_mb_lane(True), make_mb_lane(False)]
    yield made
    for lane in made:
        lane.close()
        lane.port.close()


def _jumbo_payload(size: int, salt: int = 0) -> bytes:
    return (np.arange(size, dtype=np.uint32) * 7 + salt).astype(np.uint8).tobytes()


def receive_chains_both(lanes, frame: bytes):
    out = []
    for lane in lanes:
        lane.port.xsk.deliver_chains([frame], MB_ROOM)
        out.append(lane.receive_udp())
        assert lane.receive_udp() is None  # one packet in, one out, however many frames
    return out


@pytest.mark.parametrize("size", JUMBO)
def test_chained_datagrams_come_out_alike(mb_lanes, size):
    payload = _jumbo_payload(size)
    c, py = receive_chains_both(mb_lanes, udp_frame(payload))
    assert c == py == (payload, socket.inet_aton(PEER_IP), 5000)
    for lane in mb_lanes:
        assert lane.port.check(app=0)["fill"] == 256  # every frame of the chain back on the fill ring


@pytest.mark.parametrize("case", ["bad UDP checksum in the last frame", "UDP length lies", "other port"])
def test_chained_frames_for_the_stack_come_out_whole_and_alike(mb_lanes, case):
    frame = udp_frame(_jumbo_payload(9000), **({"dport": PORT + 1} if case == "other port" else {}))
    if case.startswith("bad"):
        frame = frame[:-1] + bytes([frame[-1] ^ 0x55])
    elif case == "UDP length lies":
        frame = _patch(frame, 38, b"\x01\x00")
    c, py = receive_chains_both(mb_lanes, frame)
    assert c == py == frame


@settings(max_examples=60, deadline=None)
@given(size=st.integers(MB_ROOM - 60, 65507), cut=st.integers(0, 70000),
       flips=st.lists(st.tuples(st.integers(0, 66000), st.integers(0, 255)), max_size=3))
def test_fuzzed_chains_get_the_same_verdict(size, cut, flips):
    frame = bytearray(udp_frame(_jumbo_payload(size))[:max(1, cut)])
    for at, value in flips:
        if at < len(frame):
            frame[at] = value
    made = [make_mb_lane(True), make_mb_lane(False)]
    try:
        c, py = receive_chains_both(made, bytes(frame))
        assert c == py
        assert [lane.port.stats["rx_bytes"] for lane in made] == [len(frame)] * 2
    finally:
        for lane in made:
            lane.close()
            lane.port.close()


def test_a_chain_with_a_descriptor_outside_its_frame_gets_the_same_verdict_and_stays_on_the_ring():
    """Each descriptor of a chain is checked against its own frame (kb_desc_in_frame, desc_in_frame): one
    that runs into the next frame refuses the whole packet, which stays on the ring, in C as in Python."""
    out = []
    for native in (True, False):
        lane = make_mb_lane(native)
        try:
            xsk = lane.port.xsk
            idx, n = xsk.k_fill.peek(3)
            addrs = [int(a) for a in xsk.k_fill.read_slots(idx, n)]
            xsk.k_fill.release(n)
            d = np.zeros(3, dtype=consts.XDP_DESC)
            d[0] = (addrs[0] + 256, MB_ROOM, consts.XDP_PKT_CONTD)
            d[1] = (addrs[1] + 256, MB_ROOM + 1, consts.XDP_PKT_CONTD)  # one byte into the next frame
            d[2] = (addrs[2] + 256, 100, 0)
            _post(xsk.k_rx, d)
            out.append(_verdict(lane, lambda lane: lane.receive_udp()))
        finally:
            lane.close()
            lane.port.close()
    assert out[0] == out[1] == (("RuntimeError", "RX descriptor outside its UMEM frame"), [0] * len(out[0][1]),
                                False, 3, 0)


@pytest.mark.parametrize("size", JUMBO)
def test_chained_sends_are_byte_identical_and_checksums_right(mb_lanes, size):
    payload = _jumbo_payload(size, salt=size)
    flow = _flow()
    for ident in (7, 0xFFFF):
        for lane in mb_lanes:
            assert lane.send_udp(flow, payload, ident)
        (c_frame,), (py_frame,) = (lane.port.xsk.send_all() for lane in mb_lanes)
        assert c_frame == py_frame
        pkt, again = Ether(c_frame), Ether(c_frame)
        del again[IP].chksum, again[UDP].chksum
        again = Ether(bytes(again))
        assert pkt[IP].chksum == again[IP].chksum and pkt[UDP].chksum == again[UDP].chksum
        assert bytes(pkt[UDP].payload) == payload and pkt[IP].id == ident
    c, py = (lane.port for lane in mb_lanes)
    for key in ("tx_packets", "tx_bytes", "tx_kicks"):
        assert c.stats[key] == py.stats[key]
    for lane in mb_lanes:
        lane.reclaim()
        lane.port.check(app=0)


def test_a_chain_longer_than_the_kernel_sends_is_refused_by_both_lanes(mb_lanes):
    """MAX_SKB_FRAGS + 1 frames at most (kbypass.xsk.multibuf): one byte more is not sent, nothing written."""
    for lane in mb_lanes:
        assert lane.max_frame == MB_FRAME * 18
        assert not lane.send_one(bytes(lane.max_frame + 1))
        assert lane.send_one(bytes(lane.max_frame))
        (sent,) = lane.port.xsk.send_all()
        assert len(sent) == lane.max_frame
    assert mb_lanes[0].port.stats["tx_packets"] == mb_lanes[1].port.stats["tx_packets"] == 1


def test_chained_sends_refill_the_stash_and_nothing_leaks():
    lane = make_mb_lane(True)
    try:
        flow = _flow()
        for i in range(40):  # 16 frames a message: the stash (32) runs dry every other message
            assert lane.send_udp(flow, _jumbo_payload(60000, salt=i), i)
            (sent,) = lane.port.xsk.send_all()
            assert sent[42:] == _jumbo_payload(60000, salt=i)
            lane.port.check(app=0)
    finally:
        lane.close()
        lane.port.close()


def test_a_ring_of_continuations_alone_is_dropped_and_counted_alike_and_does_not_stall():
    """Continuation descriptors with no packet end (a kernel bug: it publishes a chain at once) stalled both
    lanes for good: nothing whole, ever. Now their frames go back to the fill ring, counted in
    rx_broken_chains (as the port's receive and the C sink do), and the packets after them arrive."""
    out = []
    for native in (True, False):
        lane = make_mb_lane(native)
        try:
            xsk = lane.port.xsk
            idx, n = xsk.k_fill.peek(5)
            addrs = xsk.k_fill.read_slots(idx, n)
            xsk.k_fill.release(n)
            d = np.zeros(n, dtype=consts.XDP_DESC)
            d["addr"], d["len"], d["options"] = addrs + 256, 100, consts.XDP_PKT_CONTD
            _post(xsk.k_rx, d)
            verdict = _verdict(lane, lambda lane: lane.receive_udp())
            payload = _jumbo_payload(9000)
            xsk.deliver_chains([udp_frame(payload)], MB_ROOM)
            assert lane.receive_udp() == (payload, socket.inet_aton(PEER_IP), 5000)
            assert lane.port.check(app=0)["fill"] == 256
            out.append(verdict)
        finally:
            lane.close()
            lane.port.close()
    assert out[0] == out[1]
    assert out[0][0] is None and out[0][3] == 0  # nothing received, the ring emptied
    assert out[0][1][afxdp_mod.PORT_STATS.index("rx_broken_chains")] == 5


def test_a_udp_payload_past_ipv4s_limit_is_refused_alike_by_both_lanes(mb_lanes):
    """18 frames of 4 KiB hold more than the 65,507 bytes an IPv4 datagram carries: both lanes say so."""
    from kbypass.proto.udp import MAX_PAYLOAD, UdpFlow, frame_template

    flow = UdpFlow(frame_template(b"\x02" * 6, b"\x02" * 6, bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2]), 1, 2))
    for lane in mb_lanes:
        assert lane.max_frame - 42 > MAX_PAYLOAD
        with pytest.raises(ValueError, match="65507"):
            lane.send_udp(flow, bytes(MAX_PAYLOAD + 1), 1)
        assert lane.send_udp(flow, bytes(MAX_PAYLOAD), 1)
