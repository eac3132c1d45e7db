"""Fuzz Stack.receive with random bytes and bit flips of valid frames.

Properties: receive never raises; every frame is accounted for exactly once (a drop reason or a use);
nothing is answered or delivered unless an independent, naive validator (written here, sharing no code
with kbypass's parsers or checksum) says the frame was valid.

Bounded and derandomized by default (a few seconds); KBYPASS_SLOW=1 runs many more random examples.
"""

import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.all import ARP, ICMP, IP, UDP, Ether, Raw, raw

from kbypass.proto.stack import DROP_REASONS, ArpResolved, Stack, UdpDatagram

SLOW = os.environ.get("KBYPASS_SLOW") == "1"
SET = settings(max_examples=20000 if SLOW else 400, derandomize=not SLOW, deadline=None,
               suppress_health_check=list(HealthCheck))

MAC, IP_ADDR = "02:00:00:00:00:0b", "10.0.0.2"
PEER_MAC, PEER_IP = "02:00:00:00:00:0c", "10.0.0.3"
MAC_B, IP_B = bytes.fromhex("02000000000b"), bytes([10, 0, 0, 2])

SEEDS = [
    raw(Ether(src=PEER_MAC, dst=MAC) / IP(src=PEER_IP, dst=IP_ADDR) / UDP(sport=5, dport=9000) / Raw(b"hello")),
    raw(Ether(src=PEER_MAC, dst=MAC) / IP(src=PEER_IP, dst=IP_ADDR) / UDP(sport=5, dport=9000, chksum=0) /
        Raw(b"nochecksum")),
    raw(Ether(src=PEER_MAC, dst=MAC) / IP(src=PEER_IP, dst=IP_ADDR) / UDP(sport=5, dport=9000)),
    raw(Ether(src=PEER_MAC, dst=MAC) / IP(src=PEER_IP, dst=IP_ADDR) / ICMP(id=7, seq=1) / Raw(b"ping" * 8)),
    raw(Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=IP_ADDR)),
    raw(Ether(src=PEER_MAC, dst=MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst=MAC, pdst=IP_ADDR)),
    raw(Ether(src=PEER_MAC, dst=MAC) / IP(src=PEER_IP, dst=IP_ADDR, options=[b"\x01\x01\x01\x00"]) / UDP()),
]


# ------------------------------------------------------------------------ independent naive validator


def naive_ok(data: bytes) -> bool:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] * 256 + data[i + 1]
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def ip_valid(frame: bytes):
    """The IP payload if `frame` holds a plain valid IPv4 packet for us, else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[14] != 0x45:
        return None
    total = int.from_bytes(frame[16:18], "big")
    if total < 20 or 14 + total > len(frame) or not naive_ok(frame[14:34]):
        return None
    if int.from_bytes(frame[20:22], "big") & 0x3FFF or frame[22] == 0 or frame[30:34] != IP_B:
        return None
    return frame[34:14 + total]


def udp_valid(frame: bytes) -> bool:
    body = ip_valid(frame)
    if body is None or frame[23] != 17 or len(body) < 8:
        return False
    ulen = int.from_bytes(body[4:6], "big")
    if not 8 <= ulen <= len(body):
        return False
    if body[6:8] == b"\0\0":
        return True
    pseudo = frame[26:34] + b"\0\x11" + ulen.to_bytes(2, "big")
    return naive_ok(pseudo + body[:ulen])


def echo_valid(frame: bytes) -> bool:
    body = ip_valid(frame)
    return body is not None and frame[23] == 1 and len(body) >= 8 and body[0] == 8 and body[1] == 0 \
        and naive_ok(body)


def arp_request_for_us(frame: bytes) -> bool:
    return (len(frame) >= 42 and frame[12:14] == b"\x08\x06" and frame[14:22] == bytes.fromhex("0001080006040001")
            and frame[38:42] == IP_B)


USES = ("udp_delivered", "icmp_echo_answered", "arp_requests_answered", "arp_replies_accepted")
RX_DROPS = [r for r in DROP_REASONS if not r.startswith("tx_")]


def released_datagram(out: bytes) -> bool:
    """A frame the stack may emit on its own: the datagram queued before the test, now resolved."""
    return out[12:14] == b"\x08\x00" and out[23] == 17 and out[26:30] == IP_B and out[30:34] == bytes([10, 0, 0, 3])


def check(frame: bytes):
    s = Stack(MAC, IP_ADDR, 24, 0.0)
    s.bind(9000)
    s.send_udp(PEER_IP, 7, 9000, b"queued", 0.0)  # a pending resolution: ARP replies matter to the stack
    out = s.receive(frame, 1.0)
    events = s.events()
    c = s.counters
    assert sum(c[r] for r in RX_DROPS) + sum(c[u] for u in USES) == c["rx_frames"] == 1
    assert all(isinstance(o, bytes) for o in out)
    if any(isinstance(e, UdpDatagram) for e in events):
        assert udp_valid(frame)
    answers = [o for o in out if not released_datagram(o)]
    if c["icmp_echo_answered"]:
        assert echo_valid(frame)
        assert len(answers) == 1 and naive_ok(answers[0][14:34]) and naive_ok(answers[0][34:])
    if c["arp_requests_answered"]:
        assert arp_request_for_us(frame)
        assert len(answers) == 1
    if len(answers) != len(out):  # the queued datagram left: only a well-formed ARP packet can do that
        assert frame[12:14] == b"\x08\x06" and frame[14:22] in (bytes.fromhex("0001080006040001"),
                                                                bytes.fromhex("0001080006040002"))
        assert frame[28:32] == bytes([10, 0, 0, 3])
    if answers:
        assert c["icmp_echo_answered"] + c["arp_requests_answered"] == 1
    assert all(isinstance(e, (UdpDatagram, ArpResolved)) for e in events)
    # the vectorized fast path is never more permissive than the slow path, and agrees on valid UDP
    buf = np.full(len(frame) + 7, 0xA5, dtype=np.uint8)
    buf[3:3 + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    fast = bool(s.fast_path_mask(buf, np.array([3]), np.array([len(frame)]))[0])
    if fast:
        assert c["udp_delivered"] == 1
    return s


@SET
@given(st.binary(max_size=120))
def test_random_bytes(data):
    check(data)


@SET
@given(st.sampled_from([b"", MAC_B + bytes.fromhex("02000000000c0800"), MAC_B + bytes.fromhex("02000000000c0806"),
                        MAC_B + bytes.fromhex("02000000000c080045")]), st.binary(max_size=80))
def test_random_bytes_behind_plausible_headers(prefix, data):
    check(prefix + data)


@SET
@given(st.sampled_from(SEEDS), st.lists(st.integers(0, 10**6), min_size=1, max_size=4))
def test_bit_flips_of_valid_frames(seed, flips):
    f = bytearray(seed)
    for x in flips:
        f[(x >> 3) % len(f)] ^= 1 << (x & 7)
    check(bytes(f))


@SET
@given(st.sampled_from(SEEDS), st.integers(0, 200), st.binary(max_size=8))
def test_truncated_or_extended_valid_frames(seed, cut, tail):
    check(seed[:cut] + tail)


def test_seeds_themselves_are_used():
    uses = [check(f).counters for f in SEEDS]
    stack = Stack(MAC, IP_ADDR, 24, 0.0)
    stack.bind(9000)
    buf = np.frombuffer(b"".join(SEEDS), dtype=np.uint8)
    addr = np.cumsum([0] + [len(f) for f in SEEDS[:-1]])
    assert stack.fast_path_mask(buf, addr, np.array([len(f) for f in SEEDS])).tolist() == [
        True, True, True, False, False, False, False]
    assert [u["udp_delivered"] for u in uses] == [1, 1, 1, 0, 0, 0, 0]
    assert uses[3]["icmp_echo_answered"] == 1 and uses[4]["arp_requests_answered"] == 1
    assert uses[5]["arp_replies_accepted"] == 1 and uses[6]["ip_options"] == 1
    assert check(SEEDS[5]).counters["udp_sent"] == 1  # the reply released the queued datagram
