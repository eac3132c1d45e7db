"""The sans-IO host: two Stacks over a fake link with simulated time, and one Stack fed crafted frames."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scapy.all import ARP, ICMP, IP, UDP, Dot1Q, Ether, Raw, raw

from kbypass.errors import UsageError
from kbypass.proto import arp
from kbypass.proto.checksum import ipv4_fill_batch, udp_fill_batch
from kbypass.proto.udp import write_lengths_batch
from kbypass.proto.stack import DROP_REASONS, ArpResolved, ArpTimeout, Stack, UdpDatagram

MAC_A, MAC_B, MAC_C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
IP_A, IP_B, IP_C = "10.0.0.1", "10.0.0.2", "10.0.0.3"


def is_arp(frame: bytes, op: int | None = None) -> bool:
    return frame[12:14] == b"\x08\x06" and (op is None or frame[20:22] == op.to_bytes(2, "big"))


class Link:
    """Frames in flight between two stacks; `drop(frame)` decides what the wire loses."""

    def __init__(self, a: Stack, b: Stack, drop=lambda frame: False):
        self.a, self.b, self.drop = a, b, drop
        self.wire: list[tuple[Stack, bytes]] = []
        self.delivered = 0
        self.udp_carried = {id(a): 0, id(b): 0}  # non-ARP frames that reached each stack

    def send(self, src: Stack, frames: list[bytes]):
        dst = self.b if src is self.a else self.a
        self.wire.extend((dst, f) for f in frames)

    def run(self, now: float):
        while self.wire:
            dst, frame = self.wire.pop(0)
            if self.drop(frame):
                continue
            self.delivered += 1
            if not is_arp(frame):
                self.udp_carried[id(dst)] += 1
            self.send(dst, dst.receive(frame, now))


@pytest.fixture
def pair():
    a = Stack(MAC_A, IP_A, 24, 0.0, arp_ttl=30.0, arp_interval=1.0, arp_attempts=3, arp_max_queue=4)
    b = Stack(MAC_B, IP_B, 24, 0.0, arp_ttl=30.0)
    return a, b, Link(a, b)


def test_arp_resolution_then_udp_both_ways(pair):
    a, b, link = pair
    out = a.send_udp(IP_B, 9000, 4000, b"hello", 0.0)
    assert len(out) == 1 and is_arp(out[0], arp.OP_REQUEST)
    assert a.next_timer() == 1.0
    link.send(a, out)
    link.run(0.001)
    assert a.events() == [ArpResolved(IP_B, MAC_B)]
    assert b.events() == [UdpDatagram(IP_A, 4000, 9000, b"hello")]
    assert a.next_timer() is None
    # b learned a's MAC from the request itself: its answer goes out at once, no ARP
    out = b.send_udp(IP_A, 4000, 9000, b"world", 0.002)
    assert len(out) == 1 and not is_arp(out[0])
    link.send(b, out)
    link.run(0.003)
    assert a.events() == [UdpDatagram(IP_B, 9000, 4000, b"world")]
    assert a.counters["arp_requests_sent"] == 1 and b.counters["arp_requests_answered"] == 1
    assert a.counters["udp_sent"] == b.counters["udp_sent"] == 1
    assert a.counters["udp_delivered"] == b.counters["udp_delivered"] == 1
    assert not a.drops() and not b.drops()


def test_datagrams_queued_during_resolution_keep_order_and_queue_is_bounded(pair):
    a, b, link = pair
    frames = []
    for i in range(6):
        frames += a.send_udp(IP_B, 9000, 4000, b"m%d" % i, 0.0)
    assert len(frames) == 1  # one ARP request, the rest waits
    assert a.counters["udp_queued"] == 4 and a.counters["tx_arp_queue_full"] == 2
    link.send(a, frames)
    link.run(0.01)
    assert [e.payload for e in b.events()] == [b"m0", b"m1", b"m2", b"m3"]


def test_arp_retries_then_timeout(pair):
    a, b, _ = pair
    link = Link(a, b, drop=lambda f: is_arp(f, arp.OP_REPLY))  # the peer's answers are lost
    link.send(a, a.send_udp(IP_B, 9000, 4000, b"x", 0.0))
    link.send(a, a.send_udp(IP_B, 9000, 4000, b"y", 0.2))
    link.run(0.2)
    assert a.handle_timer(0.5) == []  # not due yet
    sent = 1
    for t in (1.0, 2.0):
        assert a.next_timer() == t
        out = a.handle_timer(t)
        assert len(out) == 1 and is_arp(out[0], arp.OP_REQUEST)
        sent += 1
        link.send(a, out)
        link.run(t)
    assert a.events() == []
    assert a.handle_timer(3.0) == []
    assert a.events() == [ArpTimeout(IP_B, 2)]
    assert a.counters["arp_requests_sent"] == sent == 3
    assert a.counters["arp_timeouts"] == 1 and a.counters["tx_arp_timeout"] == 2
    assert a.next_timer() is None
    assert b.events() == []
    # a new datagram starts a fresh resolution
    assert is_arp(a.send_udp(IP_B, 9000, 4000, b"z", 4.0)[0], arp.OP_REQUEST)


def test_arp_retry_succeeds_after_a_lost_reply(pair):
    a, b, _ = pair
    lost = []
    link = Link(a, b, drop=lambda f: is_arp(f, arp.OP_REPLY) and not lost and not lost.append(f))
    link.send(a, a.send_udp(IP_B, 9000, 4000, b"x", 0.0))
    link.run(0.0)
    assert len(lost) == 1 and b.events() == []
    link.send(a, a.handle_timer(1.0))
    link.run(1.0)
    assert b.events() == [UdpDatagram(IP_A, 4000, 9000, b"x")]
    assert a.next_timer() is None


def test_cache_expiry_triggers_new_resolution(pair):
    a, b, link = pair
    link.send(a, a.send_udp(IP_B, 9000, 4000, b"x", 0.0))
    link.run(0.0)
    assert not is_arp(a.send_udp(IP_B, 9000, 4000, b"x", 29.9)[0])
    assert is_arp(a.send_udp(IP_B, 9000, 4000, b"x", 30.0)[0], arp.OP_REQUEST)


def test_entry_in_use_is_refreshed_before_it_expires(pair):
    a, b, link = pair  # ttl 30 s: refresh 7.5 s before expiry, by unicast request
    link.send(a, a.send_udp(IP_B, 9000, 4000, b"x", 0.0))
    link.run(0.0)
    assert a.next_timer() is None
    a.send_udp(IP_B, 9000, 4000, b"y", 1.0)
    assert a.next_timer() == 22.5
    out = a.handle_timer(22.5)
    assert len(out) == 1 and is_arp(out[0], arp.OP_REQUEST) and Ether(out[0]).dst == MAC_B
    link.send(a, out)
    link.run(22.6)
    assert a.counters["arp_refreshes"] == 1
    assert b.next_timer() is None  # b heard from a but never sent to it: nothing to refresh
    frames = a.send_udp(IP_B, 9000, 4000, b"z", 40.0)  # past the old expiry: no resolution stall
    assert len(frames) == 1 and not is_arp(frames[0])


def test_silent_peer_in_use_gets_a_bounded_number_of_arp_requests(pair):
    # the peer stops answering after it was resolved; we keep sending at 1 kpps through its refresh
    a, b, link = pair  # ttl 30 s, interval 1 s, 3 attempts: refresh due at 22.5 s
    link.send(a, a.send_udp(IP_B, 9000, 4000, b"x", 0.0))
    link.run(0.0)
    requests, t = [], 20.0
    for i in range(int(7.5 * 1000)):  # 20 s .. 27.5 s
        t = 20.0 + i / 1000
        out = a.send_udp(IP_B, 9000, 4000, b"x", t)
        if (a.next_timer() or 1e9) <= t:
            out += a.handle_timer(t)
        requests += [Ether(f).dst for f in out if is_arp(f, arp.OP_REQUEST)]
    # 3 unicast probes and a broadcast one (22.5 .. 25.5), FAILED at 26.5, then one fresh resolution
    assert requests[:4] == [MAC_B, MAC_B, MAC_B, "ff:ff:ff:ff:ff:ff"]
    assert len(requests) <= 6, len(requests)
    assert a.counters["arp_refreshes"] == 4 and a.counters["arp_timeouts"] == 1
    assert ArpTimeout(IP_B, 0) in a.events()


def test_checksum_rejection_between_stacks(pair):
    a, b, link = pair
    link.send(a, a.send_udp(IP_B, 9000, 4000, b"x", 0.0))
    link.run(0.0)
    b.events()
    frame = bytearray(a.send_udp(IP_B, 9000, 4000, b"payload", 0.1)[0])
    bad_udp = bytearray(frame)
    bad_udp[-1] ^= 0x01
    bad_ip = bytearray(frame)
    bad_ip[22] -= 1  # TTL changed without fixing the header checksum
    assert b.receive(bytes(bad_udp), 0.2) == [] and b.receive(bytes(bad_ip), 0.2) == []
    assert b.events() == []
    assert b.drops() == {"udp_bad_checksum": 1, "ip_bad_checksum": 1}
    b.receive(bytes(frame), 0.3)
    assert b.events() == [UdpDatagram(IP_A, 4000, 9000, b"payload")]


def test_ping_answered_with_same_id_seq_payload(pair):
    _, b, _ = pair
    req = raw(Ether(src=MAC_C, dst=MAC_B) / IP(src=IP_C, dst=IP_B, id=1) / ICMP(type=8, id=0xBEEF, seq=42) /
              Raw(b"0123456789" * 5))
    out = b.receive(req, 0.0)
    assert len(out) == 1
    p = Ether(out[0])
    assert (p.src, p.dst, p[IP].src, p[IP].dst, p[ICMP].type, p[ICMP].code) == (MAC_B, MAC_C, IP_B, IP_C, 0, 0)
    assert (p[ICMP].id, p[ICMP].seq, raw(p[ICMP].payload)) == (0xBEEF, 42, b"0123456789" * 5)
    q = p.copy()
    del q[IP].chksum, q[ICMP].chksum
    q = Ether(raw(q))
    assert (q[IP].chksum, q[ICMP].chksum) == (p[IP].chksum, p[ICMP].chksum)
    assert b.counters["icmp_echo_answered"] == 1 and not b.drops()


def test_arp_request_from_kernel_style_peer_answered():
    s = Stack(MAC_B, IP_B, 24, 0.0)
    req = raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_C, psrc=IP_C, pdst=IP_B))
    out = s.receive(req, 0.0)
    assert len(out) == 1
    p = Ether(out[0])
    assert p.dst == MAC_C and p[ARP].op == 2
    assert (p[ARP].hwsrc, p[ARP].psrc, p[ARP].hwdst, p[ARP].pdst) == (MAC_B, IP_B, MAC_C, IP_C)
    # requests for other addresses are not answered; a sender we know is refreshed (gratuitous ARP)
    other = raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_C, psrc=IP_C, pdst="10.0.0.77"))
    assert s.receive(other, 0.0) == []
    assert s.counters["arp_not_for_us"] == 1
    moved = "02:00:00:00:00:0d"
    s.receive(raw(Ether(src=moved, dst="ff:ff:ff:ff:ff:ff") /
                  ARP(op=1, hwsrc=moved, psrc=IP_C, pdst=IP_C)), 1.0)
    assert Ether(s.send_udp(IP_C, 1, 2, b"", 1.0)[0]).dst == moved
    # nobody else may claim our address
    s.receive(raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=2, hwsrc=MAC_C, psrc=IP_B, pdst=IP_B)), 1.0)
    assert s.counters["arp_ip_conflict"] == 1


def test_unsolicited_reply_does_not_create_an_entry():
    s = Stack(MAC_B, IP_B, 24, 0.0)
    rep = raw(Ether(src=MAC_C, dst=MAC_B) / ARP(op=2, hwsrc=MAC_C, psrc=IP_C, hwdst=MAC_B, pdst=IP_B))
    assert s.receive(rep, 0.0) == []
    assert s.drops() == {"arp_unsolicited": 1} and len(s.arp) == 0
    assert is_arp(s.send_udp(IP_C, 9, 9, b"", 0.0)[0], arp.OP_REQUEST)  # still unresolved
    s.receive(rep, 0.1)  # now it is the answer to our request
    assert s.counters["arp_replies_accepted"] == 1 and s.events() == [ArpResolved(IP_C, MAC_C)]


def test_gratuitous_arp():
    s = Stack(MAC_A, IP_A, 24, 0.0)
    p = Ether(s.gratuitous_arp())
    assert p.dst == "ff:ff:ff:ff:ff:ff" and p[ARP].psrc == p[ARP].pdst == IP_A and p[ARP].hwsrc == MAC_A


# ------------------------------------------------------------------------------- malformed frames


def udp_frame(**kw):
    ip = dict(src=IP_C, dst=IP_B)
    ip.update(kw.pop("ip", {}))
    eth = dict(src=MAC_C, dst=MAC_B)
    eth.update(kw.pop("eth", {}))
    return raw(Ether(**eth) / IP(**ip) / UDP(sport=5, dport=kw.pop("dport", 9000)) / Raw(kw.pop("load", b"hi")))


def patched(frame: bytes, off: int, value: bytes, fix_ip: bool = True) -> bytes:
    f = bytearray(frame)
    f[off:off + len(value)] = value
    if fix_ip:
        from kbypass.proto.checksum import internet_checksum
        hl = (f[14] & 15) * 4
        f[24:26] = b"\0\0"
        f[24:26] = internet_checksum(f[14:14 + hl]).to_bytes(2, "big")
    return bytes(f)


GOOD = udp_frame()
MALFORMED = [
    ("eth_truncated", GOOD[:13]),
    ("eth_bad_source", udp_frame(eth=dict(src="01:00:5e:00:00:01"))),
    ("eth_not_for_us", udp_frame(eth=dict(dst=MAC_A))),
    ("eth_vlan", raw(Ether(src=MAC_C, dst=MAC_B) / Dot1Q(vlan=5) / IP(src=IP_C, dst=IP_B) / UDP(dport=9000))),
    ("eth_unknown_ethertype", patched(GOOD, 12, b"\x88\xb5", fix_ip=False)),
    ("ip_truncated", GOOD[:14 + 19]),
    ("ip_bad_version", patched(GOOD, 14, b"\x65")),
    ("ip_bad_ihl", patched(GOOD, 14, b"\x43")),
    ("ip_bad_length", patched(GOOD, 16, b"\x00\x10")),
    ("ip_length_lies", patched(GOOD, 16, (len(GOOD) - 14 + 1).to_bytes(2, "big"))),
    ("ip_bad_checksum", patched(GOOD, 24, b"\x12\x34", fix_ip=False)),
    ("ip_options", raw(Ether(src=MAC_C, dst=MAC_B) / IP(src=IP_C, dst=IP_B, options=[b"\x01\x01\x01\x00"]) /
                       UDP(dport=9000))),
    ("ip_fragment", raw(Ether(src=MAC_C, dst=MAC_B) / IP(src=IP_C, dst=IP_B, flags="MF") / UDP(dport=9000))),
    ("ip_fragment", raw(Ether(src=MAC_C, dst=MAC_B) / IP(src=IP_C, dst=IP_B, frag=100) / Raw(b"12345678"))),
    ("ip_ttl_zero", udp_frame(ip=dict(ttl=0))),
    ("ip_bad_source", udp_frame(ip=dict(src="224.0.0.5"))),
    ("ip_bad_source", udp_frame(ip=dict(src="10.0.0.255"))),  # subnet broadcast
    ("ip_bad_source", udp_frame(ip=dict(src=IP_B))),  # spoofing us
    ("ip_bad_source", udp_frame(ip=dict(src="0.0.0.0"))),
    ("ip_bad_source", raw(Ether(src=MAC_C, dst=MAC_B) / IP(src="0.0.0.0", dst=IP_B) / ICMP(type=8))),
    ("ip_not_for_us", udp_frame(ip=dict(dst=IP_C))),
    ("ip_not_for_us", udp_frame(ip=dict(dst="10.0.0.255"), eth=dict(dst="ff:ff:ff:ff:ff:ff"))),
    ("ip_unknown_protocol", raw(Ether(src=MAC_C, dst=MAC_B) / IP(src=IP_C, dst=IP_B, proto=132) / Raw(b"x" * 12))),
    ("udp_truncated", patched(GOOD[:14 + 20 + 7], 16, (27).to_bytes(2, "big"))),
    ("udp_bad_length", patched(GOOD, 38, b"\x00\x00", fix_ip=False)),  # zero-length UDP field
    ("udp_bad_length", patched(GOOD, 38, b"\x00\x07", fix_ip=False)),
    ("udp_length_lies", patched(GOOD, 38, b"\x00\x40", fix_ip=False)),
    ("udp_bad_checksum", patched(GOOD, 40, b"\x00\x01", fix_ip=False)),
    ("udp_port_zero", udp_frame(dport=0)),
    ("icmp_truncated", raw(Ether(src=MAC_C, dst=MAC_B) / IP(src=IP_C, dst=IP_B, proto=1) / Raw(b"\x08\0\0"))),
    ("icmp_bad_checksum", patched(raw(Ether(src=MAC_C, dst=MAC_B) / IP(src=IP_C, dst=IP_B) / ICMP(chksum=1)), 0, b"")),
    ("icmp_unhandled_type", raw(Ether(src=MAC_C, dst=MAC_B) / IP(src=IP_C, dst=IP_B) / ICMP(type=13))),
    ("arp_truncated", raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(b"\x00\x01\x08\x00"))),
    ("arp_unsupported", raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") /
                            ARP(hwtype=6, hwlen=6, plen=4, hwsrc=MAC_C, psrc=IP_C, pdst=IP_B))),
    ("arp_bad_op", raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=3, hwsrc=MAC_C, psrc=IP_C, pdst=IP_B))),
    ("arp_bad_sender", raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") /
                           ARP(op=1, hwsrc="ff:ff:ff:ff:ff:ff", psrc=IP_C, pdst=IP_B))),
    # martian sender addresses: asked, never answered (Linux's route check refuses them too)
    ("arp_bad_sender", raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_C, psrc="224.0.0.1",
                                                                            pdst=IP_B))),
    ("arp_bad_sender", raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_C, psrc="10.0.0.255",
                                                                            pdst=IP_B))),
    ("arp_bad_sender", raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_C, psrc="127.0.0.1",
                                                                            pdst=IP_B))),
]


def test_arp_probe_answered_like_linux():
    # RFC 5227 probe (sender 0.0.0.0) for our address: answered unicast to the prober, target 0.0.0.0
    # (Linux's arp_process does the same); nothing learned
    s = Stack(MAC_B, IP_B, 24, 0.0)
    probe = raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_C, psrc="0.0.0.0", pdst=IP_B))
    out = s.receive(probe, 0.0)
    assert len(out) == 1
    p = Ether(out[0])
    assert (p.dst, p[ARP].op, p[ARP].psrc, p[ARP].hwdst, p[ARP].pdst) == (MAC_C, 2, IP_B, MAC_C, "0.0.0.0")
    assert len(s.arp) == 0 and not s.drops()
    # an off-subnet (but unicast) sender is answered, not learned
    far = raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_C, psrc="192.0.2.7", pdst=IP_B))
    assert len(s.receive(far, 0.0)) == 1 and len(s.arp) == 0


@pytest.mark.parametrize("reason,frame", MALFORMED, ids=[f"{i}-{r}" for i, (r, _) in enumerate(MALFORMED)])
def test_malformed_frame_counted_and_not_answered(reason, frame):
    s = Stack(MAC_B, IP_B, 24, 0.0)
    assert s.receive(frame, 0.0) == []
    assert s.events() == []
    assert s.drops() == {reason: 1}


def test_every_drop_reason_is_reachable_or_transmit_side():
    seen = {r for r, _ in MALFORMED}
    # each of these has its own test above
    others = {"arp_ip_conflict", "arp_not_for_us", "arp_unsolicited", "arp_not_owned", "icmp_not_owned",
              "udp_no_listener", "udp_no_checksum", "tx_arp_queue_full", "tx_arp_pending_full", "tx_arp_timeout"}
    assert set(DROP_REASONS) == seen | others


def test_good_frame_delivered_and_trailing_padding_ignored():
    s = Stack(MAC_B, IP_B, 24, 0.0)
    s.receive(GOOD + b"\0" * 12, 0.0)
    assert s.events() == [UdpDatagram(IP_C, 5, 9000, b"hi")]


def test_truncated_at_every_offset_never_answered():
    s = Stack(MAC_B, IP_B, 24, 0.0)
    ping = raw(Ether(src=MAC_C, dst=MAC_B) / IP(src=IP_C, dst=IP_B) / ICMP(id=1, seq=1) / Raw(b"abcd"))
    arpreq = raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_C, psrc=IP_C, pdst=IP_B))
    for frame in (GOOD, ping, arpreq):
        for n in range(len(frame)):
            assert s.receive(frame[:n], 0.0) == [], n
    assert s.events() == []
    assert sum(s.drops().values()) == len(GOOD) + len(ping) + len(arpreq)


def test_ports_and_zero_checksum_policy():
    s = Stack(MAC_B, IP_B, 24, 0.0, udp_ports=[7], accept_zero_udp_checksum=False)
    s.receive(GOOD, 0.0)
    assert s.drops() == {"udp_no_listener": 1}
    s.bind(9000)
    s.receive(patched(GOOD, 40, b"\0\0", fix_ip=False), 0.0)
    assert s.drops()["udp_no_checksum"] == 1
    s.receive(GOOD, 0.0)
    assert len(s.events()) == 1
    s.unbind(9000)
    s.receive(GOOD, 0.0)
    assert s.drops()["udp_no_listener"] == 2


# ------------------------------------------------------------------------------- kernel-owned address


def test_kernel_owned_mode_ignores_arp_icmp_and_resolves_by_callback():
    table = {}
    asked = []

    def resolve(ip):
        asked.append(ip)
        return table.get(ip)

    s = Stack(MAC_B, IP_B, 24, 0.0, owns_address=False, resolve=resolve, arp_attempts=2)
    req = raw(Ether(src=MAC_C, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_C, psrc=IP_C, pdst=IP_B))
    ping = raw(Ether(src=MAC_C, dst=MAC_B) / IP(src=IP_C, dst=IP_B) / ICMP())
    assert s.receive(req, 0.0) == [] and s.receive(ping, 0.0) == []
    assert s.drops() == {"arp_not_owned": 1, "icmp_not_owned": 1}
    # not in the neighbour table yet: queued, no ARP on the wire
    assert s.send_udp(IP_C, 9000, 5, b"q", 0.0) == []
    assert asked == [IP_C]
    table[IP_C] = MAC_C
    out = s.handle_timer(1.0)
    assert len(out) == 1 and Ether(out[0]).dst == MAC_C and raw(Ether(out[0])[UDP].payload) == b"q"
    assert s.events() == [ArpResolved(IP_C, MAC_C)]
    # cached from now on: no more questions
    assert len(s.send_udp(IP_C, 9000, 5, b"r", 1.5)) == 1 and asked == [IP_C, IP_C]
    # an address the kernel never learns times out
    assert s.send_udp("10.0.0.50", 9000, 5, b"lost", 2.0) == []
    s.handle_timer(3.0)
    s.handle_timer(4.0)
    assert s.events() == [ArpTimeout("10.0.0.50", 1)]
    # an entry in use is re-read from the kernel before it expires (learned at 1.0, ttl 60, ahead 15)
    assert s.next_timer() == 46.0
    assert s.handle_timer(46.0) == [] and asked[-1] == IP_C and s.counters["arp_refreshes"] == 1
    assert s.events() == []


# ------------------------------------------------------------------------------- routing and errors


def test_gateway_broadcast_and_multicast():
    s = Stack(MAC_A, IP_A, 24, 0.0, gateway="10.0.0.254")
    out = s.send_udp("192.0.2.1", 53, 5000, b"q", 0.0)
    assert Ether(out[0])[ARP].pdst == "10.0.0.254"
    assert Ether(s.send_udp("10.0.0.255", 9, 9, b"", 0.0)[0]).dst == "ff:ff:ff:ff:ff:ff"
    assert Ether(s.send_udp("255.255.255.255", 9, 9, b"", 0.0)[0]).dst == "ff:ff:ff:ff:ff:ff"
    assert Ether(s.send_udp("239.1.2.3", 9, 9, b"", 0.0)[0]).dst == "01:00:5e:01:02:03"


def test_pending_table_bound():
    s = Stack(MAC_A, IP_A, 24, 0.0, arp_max_pending=2)
    for host in (2, 3, 4):
        s.send_udp(f"10.0.0.{host}", 9, 9, b"", 0.0)
    assert s.drops() == {"tx_arp_pending_full": 1}


@pytest.mark.parametrize("kwargs,words", [
    (dict(mac="01:00:00:00:00:01"), "unicast MAC"),
    (dict(mac="nope"), "bad stack address"),
    (dict(ip="224.0.0.1"), "host address"),
    (dict(ip="10.0.0.0"), "network or broadcast"),
    (dict(prefixlen=33), "bad stack address"),
    (dict(owns_address=False), "resolve="),
    (dict(gateway="192.168.1.1"), "on-link gateway"),
    (dict(mtu=20), "MTU"),
    (dict(gateway="10.0.0.300"), "bad gateway"),
    (dict(arp_attempts=0), "attempts"),
])
def test_constructor_errors_name_the_fix(kwargs, words):
    args = dict(mac=MAC_A, ip=IP_A, prefixlen=24, now=0.0)
    args.update(kwargs)
    with pytest.raises(UsageError, match=words):
        Stack(**args)


def test_send_errors_name_the_fix():
    s = Stack(MAC_A, IP_A, 24, 0.0, mtu=1500)
    assert len(s.send_udp(IP_B, 9, 9, b"x" * 1472, 0.0)) == 1
    with pytest.raises(UsageError, match="exceeds the MTU"):
        s.send_udp(IP_B, 9, 9, b"x" * 1473, 0.0)
    with pytest.raises(UsageError, match="no gateway"):
        s.send_udp("192.0.2.1", 9, 9, b"", 0.0)
    with pytest.raises(UsageError, match="ports"):
        s.send_udp(IP_B, 0, 9, b"", 0.0)
    with pytest.raises(UsageError, match="own address"):
        s.send_udp(IP_A, 9, 9, b"", 0.0)
    with pytest.raises(UsageError, match="destination"):
        s.send_udp("10.0.0", 9, 9, b"", 0.0)


def test_events_are_frozen():
    e = UdpDatagram(IP_A, 1, 2, b"x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.payload = b"y"


def test_fast_path_mask_follows_bound_ports():
    s = Stack(MAC_B, IP_B, 24, 0.0)
    frames = [GOOD, udp_frame(dport=9001), patched(GOOD, 40, b"\0\x01", fix_ip=False)]
    width = 128
    buf = np.zeros(width * 3, dtype=np.uint8)
    addr = np.arange(3) * width
    for a, f in zip(addr, frames):
        buf[a:a + len(f)] = np.frombuffer(f, dtype=np.uint8)
    length = np.array([len(f) for f in frames])
    assert s.fast_path_mask(buf, addr, length).tolist() == [True, True, False]
    s.bind(9000)
    assert s.fast_path_mask(buf, addr, length).tolist() == [True, False, False]


def test_receive_takes_a_numpy_view_of_a_frame():
    s = Stack(MAC_B, IP_B, 24, 0.0)
    umem = np.zeros(4096, np.uint8)
    umem[2048:2048 + len(GOOD)] = np.frombuffer(GOOD, np.uint8)
    s.receive(umem[2048:2048 + len(GOOD)], 0.0)
    assert s.events() == [UdpDatagram(IP_C, 5, 9000, b"hi")]
    umem[2048 + len(GOOD) - 1] ^= 1  # the datagram was copied out: changing the buffer later changes nothing delivered
    s.receive(umem[2048:2048 + len(GOOD)], 0.0)
    assert s.events() == [] and s.drops() == {"udp_bad_checksum": 1}


# ------------------------------------------------------------------------------- accounting property


@settings(derandomize=True, deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.floats(0, 1.5)), max_size=40),
       st.lists(st.booleans(), max_size=200))
def test_every_datagram_is_delivered_lost_on_the_wire_or_counted(sends, losses):
    """Random sends both ways, random frame loss, simulated time: at rest, each stack's datagrams are
    all accounted for (sent, or counted as timed out / refused), and each receiver got exactly the UDP
    frames the wire carried."""
    a = Stack(MAC_A, IP_A, 24, 0.0, arp_ttl=2.0, arp_interval=0.5, arp_attempts=2, arp_max_queue=3)
    b = Stack(MAC_B, IP_B, 24, 0.0, arp_ttl=2.0, arp_interval=0.5, arp_attempts=2, arp_max_queue=3)
    loss = iter(losses)
    link = Link(a, b, drop=lambda frame: next(loss, False))
    now = 0.0
    calls = {id(a): 0, id(b): 0}
    for from_a, size, dt in sends:
        now += dt
        for s in (a, b):
            link.send(s, s.handle_timer(now))
        src = a if from_a else b
        calls[id(src)] += 1
        link.send(src, src.send_udp(IP_B if from_a else IP_A, 9000, 9000, b"x" * size, now))
        link.run(now)
    for _ in range(10):  # let every retry and timeout fire
        now += 1.0
        for s in (a, b):
            link.send(s, s.handle_timer(now))
        link.run(now)
    for s in (a, b):
        c = s.counters
        assert s.next_timer() is None
        assert calls[id(s)] == c["udp_sent"] + c["tx_arp_timeout"] + c["tx_arp_queue_full"] + c["tx_arp_pending_full"]
        assert c["udp_delivered"] == link.udp_carried[id(s)]
        assert not {k for k in s.drops() if not k.startswith("tx_")}


def test_udp_template_for_batch_transmit(pair):
    a, b, link = pair
    assert a.udp_template(IP_B, 9000, 4000, 0.0) is None  # unknown peer: resolve first
    link.send(a, a.send_udp(IP_B, 9000, 4000, b"first", 0.0))
    link.run(0.0)
    tmpl = a.udp_template(IP_B, 9000, 4000, 0.1)
    assert tmpl is not None and len(tmpl) == 42
    buf = np.zeros(256, np.uint8)
    frame = tmpl + b"batched"
    buf[0:len(frame)] = np.frombuffer(frame, np.uint8)
    write_lengths_batch(buf, np.array([0]), np.array([len(frame)]))
    ipv4_fill_batch(buf, np.array([0]), np.array([len(frame)]))
    udp_fill_batch(buf, np.array([0]), np.array([len(frame)]))
    b.events()
    b.receive(buf[:len(frame)].tobytes(), 0.2)
    assert b.events() == [UdpDatagram(IP_A, 4000, 9000, b"batched")]
    assert a.udp_template(IP_B, 9000, 4000, 31.0) is None  # the entry expired
    with pytest.raises(UsageError):
        a.udp_template(IP_A, 9000, 4000, 0.0)
