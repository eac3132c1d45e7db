"""Differential fuzzing of the steering program against a Python model of bpf/steer.h's rules.

Valid frames (v4/v6, UDP/TCP/ICMP, VLAN/QinQ, IPv4 options and fragments, IPv6 extension headers) get
random byte overwrites and truncations; the kernel's verdict, the rule that decided and the stats that
moved must equal what `model()` predicts. The model is written from the header's prose, not from the C,
so a disagreement is a bug in one of them. Seeds are derandomized: the run is the same every time.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

import pytest

if os.geteuid() != 0:
    pytest.skip("loading BPF programs needs root", allow_module_level=True)

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from kbypass.bpf import libbpf
from kbypass.steer.rules import Rule
from kbypass.steer.steering import SteerProgram

if not libbpf.object_path("steer").exists():
    pytest.skip("bpf/steer.bpf.c is not built: run 'make bpf'", allow_module_level=True)

RULES = [
    "udp queue 1 drop",  # never at rx queue 0 (BPF_PROG_TEST_RUN's): the queue compare runs on every frame
    "udp dport 4321 redirect",
    "tcp src 10.0.0.0/8 sport 1111 drop",
    "icmp dst 10.0.0.2 pass",
    "udp dst fd00::/16 drop",
    "src fd00::1 redirect",
    "dst 10.0.0.0/24 drop",
    "udp vlan 3 dport 4321 redirect",
    "vlan 3 drop",
    "tcp queue 0 pass",
]
VERDICT = {"redirect": libbpf.XDP_REDIRECT, "drop": libbpf.XDP_DROP, "pass": libbpf.XDP_PASS}

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
P = b"0123456789abcdef" * 2
SEEDS = [
    E / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1111, dport=4321) / P,
    E / IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01" * 4) / TCP(sport=1111, dport=80) / P,
    E / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP() / P,
    E / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF", frag=0) / UDP(sport=1, dport=4321) / P,
    E / IP(src="10.0.0.1", dst="10.0.0.9", frag=20) / UDP(dport=4321) / P,
    E / Dot1Q(vlan=3) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(dport=4321) / P,
    E / Dot1AD(vlan=3) / Dot1Q(vlan=4) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1111) / P,
    E / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=4321) / P,
    E / IPv6(src="fd00::3", dst="fd00::2") / TCP(sport=1111) / P,
    E / IPv6(src="fd00::3", dst="fe80::2") / ICMPv6EchoRequest() / P,
    E / IPv6(src="fd00::3", dst="fd00::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(dport=4321) / P,
    E / IPv6(src="fd00::3", dst="fe80::2") / IPv6ExtHdrFragment(offset=0, m=1) / UDP(dport=4321) / P,
    E / IPv6(src="fd00::3", dst="fe80::2") / IPv6ExtHdrFragment(offset=5, nh=17) / P,
    E / IPv6(src="fd00::3", dst="fd00::2") / IPv6ExtHdrFragment(offset=0, m=0) / UDP(dport=4321) / P,  # atomic
]
SEED_BYTES = [bytes(s) for s in SEEDS]

V6_EXT = {0, 43, 60, 44, 51}


def model(frame: bytes) -> tuple[str, dict | None]:
    """("not_ip" | "unreadable" | "malformed" | "ok", flow) for a frame, per bpf/steer.h."""
    kind, flow = _l3(frame)
    if flow is not None:
        flow["vlan"] = _outer_vlan(frame)
    return kind, flow


def _outer_vlan(frame: bytes) -> int | None:
    """The outer tag's VLAN id, or None for an untagged frame."""
    if frame[12:14] in (b"\x81\x00", b"\x88\xa8") and len(frame) >= 16:
        return struct.unpack_from(">H", frame, 14)[0] & 0x0FFF
    return None


def _l3(frame: bytes) -> tuple[str, dict | None]:
    n = len(frame)
    et, off = frame[12:14], 14
    for _ in range(2):
        if et not in (b"\x81\x00", b"\x88\xa8"):
            break
        if n < off + 4:
            return "not_ip", None
        et, off = frame[off + 2 : off + 4], off + 4
    if et == b"\x08\x00":
        return _v4(frame, off)
    if et == b"\x86\xdd":
        return _v6(frame, off)
    return "not_ip", None


def _norm(proto: int, family: int) -> int:
    """ICMP on IPv4 and ICMPv6 on IPv6 are both STEER_PROTO_ICMP (1); any other number is kept, except that
    an IPv6 next header of 1 (not ICMPv6) reads as the reserved 255, so no `icmp` rule takes it."""
    if proto == (1 if family == 4 else 58):
        return 1
    return 255 if proto == 1 else proto


def _l4(frame: bytes, o: int, proto: int, avail: int, flow: dict) -> str:
    n = len(frame)
    icmp = 1 if flow["family"] == 4 else 58
    flow["proto"] = _norm(proto, flow["family"])
    if proto == 17:
        if n < o + 8 or avail < 8:
            return "malformed"
        ulen = struct.unpack_from(">H", frame, o + 4)[0]
        if ulen < 8 or ulen > avail:
            return "malformed"
    elif proto == 6:
        if n < o + 20 or avail < 20:
            return "malformed"
        doff = frame[o + 12] >> 4
        if doff < 5 or doff * 4 > avail:
            return "malformed"
    elif proto == icmp:
        return "malformed" if n < o + 8 or avail < 8 else "ok"
    else:
        return "ok"
    flow["sport"], flow["dport"] = struct.unpack_from(">HH", frame, o)
    return "ok"


def _v4(frame: bytes, off: int) -> tuple[str, dict | None]:
    if len(frame) < off + 20 or frame[off] >> 4 != 4 or frame[off] & 15 < 5:
        return "unreadable", None
    hlen = (frame[off] & 15) * 4
    if len(frame) < off + hlen:
        return "unreadable", None
    (tot,) = struct.unpack_from(">H", frame, off + 2)
    (frag,) = struct.unpack_from(">H", frame, off + 6)
    proto = frame[off + 9]
    flow = {
        "family": 4, "proto": _norm(proto, 4), "sport": None, "dport": None,
        "src": ipaddress.IPv4Address(frame[off + 12 : off + 16]),
        "dst": ipaddress.IPv4Address(frame[off + 16 : off + 20]),
    }
    if tot < hlen or tot > len(frame) - off:
        return "malformed", flow
    if frag & 0x3FFF:  # more-fragments or an offset: any fragment is matched on L3 only
        return "ok", flow
    return _l4(frame, off + hlen, proto, tot - hlen, flow), flow


def _v6(frame: bytes, off: int) -> tuple[str, dict | None]:
    if len(frame) < off + 40 or frame[off] >> 4 != 6:
        return "unreadable", None
    plen, nh = struct.unpack_from(">HB", frame, off + 4)
    flow = {
        "family": 6, "proto": _norm(nh, 6), "sport": None, "dport": None,
        "src": ipaddress.IPv6Address(frame[off + 8 : off + 24]),
        "dst": ipaddress.IPv6Address(frame[off + 24 : off + 40]),
    }
    o = off + 40
    if plen == 0 or plen > len(frame) - o:
        return "malformed", flow
    avail = plen
    for _ in range(4):
        if nh not in V6_EXT:
            break
        if len(frame) < o + 4:
            return "malformed", flow
        elen = 8 if nh == 44 else (frame[o + 1] + 2) * 4 if nh == 51 else (frame[o + 1] + 1) * 8
        if elen > avail or len(frame) < o + elen:
            return "malformed", flow
        avail -= elen
        if nh == 44 and struct.unpack_from(">H", frame, o + 2)[0] & 0xFFF9:  # offset or M: a fragment
            flow["proto"] = _norm(frame[o], 6)
            return "ok", flow
        nh = frame[o]
        flow["proto"] = _norm(nh, 6)
        o += elen
    if nh in V6_EXT:
        flow["proto"] = 255
        return "ok", flow
    return _l4(frame, o, nh, avail, flow), flow


def matches(rule: Rule, flow: dict) -> bool:
    if rule.family and rule.family != flow["family"]:
        return False
    if rule.vlan != flow["vlan"]:  # None (untagged only) or the outer tag's id
        return False
    if rule.queue is not None and rule.queue != 0:  # BPF_PROG_TEST_RUN runs on rx queue 0
        return False
    if rule.proto != "any" and {"udp": 17, "tcp": 6, "icmp": 1}[rule.proto] != flow["proto"]:
        return False
    for field in ("sport", "dport"):
        want = getattr(rule, field)
        if want is not None and flow[field] != want:
            return False
    for field in ("src", "dst"):
        want = getattr(rule, field)
        if want is not None and flow[field] not in ipaddress.ip_network(want):
            return False
    return True


def expected(rules: dict[int, Rule], frame: bytes) -> tuple[int, list[int], tuple[int, int, int]]:
    kind, flow = model(frame)
    if kind == "not_ip":
        return libbpf.XDP_PASS, [], (0, 0, 1)
    bad = int(kind in ("unreadable", "malformed"))
    if flow is not None:
        for rid, rule in rules.items():
            if matches(rule, flow):
                verdict = VERDICT[rule.action]
                if bad and verdict == libbpf.XDP_REDIRECT:
                    verdict = libbpf.XDP_PASS
                return verdict, [rid], (0, bad, 0)
    return libbpf.XDP_PASS, [], (1, bad, 0)


@pytest.fixture(scope="module")
def prog() -> Iterator[SteerProgram]:
    p = SteerProgram()
    xsk = socket.socket(44, socket.SOCK_RAW, 0)  # AF_XDP: lets REDIRECT show as XDP_REDIRECT
    try:
        p.register_xsk(0, xsk.fileno())
        for text in RULES:
            p.add(text)
        yield p
    finally:
        xsk.close()
        p.close()


def observe(p: SteerProgram, frame: bytes) -> tuple[int, list[int], tuple[int, int, int]]:
    c0, s0 = p.counters(), p.stats()
    verdict = p.test_run(frame)
    c1, s1 = p.counters(), p.stats()
    hit = [i for i in c1 if c1[i] != c0[i]]
    return verdict, hit, (s1.unmatched - s0.unmatched, s1.parse_errors - s0.parse_errors, s1.not_ip - s0.not_ip)


def test_model_agrees_on_seeds(prog: SteerProgram) -> None:
    kinds = set()
    for frame in SEED_BYTES:
        kinds.add(model(frame)[0])
        assert observe(prog, frame) == expected(prog.rules(), frame)
    assert kinds == {"ok"}  # the seeds are valid frames


@settings(derandomize=True, max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.sampled_from(range(len(SEED_BYTES))),
    edits=st.lists(st.tuples(st.integers(0, 90), st.integers(0, 255)), max_size=4),
    cut=st.one_of(st.none(), st.integers(14, 120)),
)
def test_mutated_frames_match_the_model(prog: SteerProgram, seed: int, edits: list, cut: int | None) -> None:
    frame = bytearray(SEED_BYTES[seed])
    for pos, value in edits:
        if pos < len(frame):
            frame[pos] = value
    if cut is not None:
        del frame[cut:]
    got = observe(prog, bytes(frame))
    assert got == expected(prog.rules(), bytes(frame)), bytes(frame).hex()
