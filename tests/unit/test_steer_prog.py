"""The real steering object, run with BPF_PROG_TEST_RUN on scapy-built frames, and attached to a veth.

Telling "would redirect" from "pass": an AF_XDP socket (unbound is enough for the XSKMAP) is registered for
queue 0, so a REDIRECT rule makes the program return XDP_REDIRECT; without it the fallback is XDP_PASS.
Every verdict test also checks which counter moved, so a rule that matches for the wrong reason fails.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

if os.geteuid() != 0:
    pytest.skip("loading BPF programs needs root", allow_module_level=True)

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from kbypass.bpf import libbpf
from kbypass.errors import KbypassError, UsageError
from kbypass.steer.rules import RULE_SIZE, rule_offsets
from kbypass.steer.steering import Steering, SteerProgram, SteerStats

if not libbpf.object_path("steer").exists():
    pytest.skip("bpf/steer.bpf.c is not built: run 'make bpf'", allow_module_level=True)

DROP, PASS, REDIRECT = libbpf.XDP_DROP, libbpf.XDP_PASS, libbpf.XDP_REDIRECT
AF_XDP = 44

PAYLOAD = b"kbypass-payload-" * 2


def eth() -> Ether:
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def udp4(src="10.0.0.1", dst="10.0.0.2", sport=1111, dport=4321, **ip) -> bytes:
    return bytes(eth() / IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / PAYLOAD)


def tcp4(src="10.0.0.1", dst="10.0.0.2", sport=1111, dport=80) -> bytes:
    return bytes(eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport) / PAYLOAD)


def icmp4(src="10.0.0.1", dst="10.0.0.2") -> bytes:
    return bytes(eth() / IP(src=src, dst=dst) / ICMP() / PAYLOAD)


def udp6(src="fd00::1", dst="fd00::2", sport=1111, dport=4321) -> bytes:
    return bytes(eth() / IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / PAYLOAD)


def tcp6(src="fd00::1", dst="fd00::2", sport=1111, dport=80) -> bytes:
    return bytes(eth() / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport) / PAYLOAD)


def icmp6(src="fd00::1", dst="fd00::2") -> bytes:
    return bytes(eth() / IPv6(src=src, dst=dst) / ICMPv6EchoRequest() / PAYLOAD)


@pytest.fixture(scope="module")
def program() -> Iterator[SteerProgram]:
    prog = SteerProgram()
    try:
        yield prog
    finally:
        prog.close()


@pytest.fixture()
def prog(program: SteerProgram) -> Iterator[SteerProgram]:
    """The shared program with no rules and an AF_XDP socket on queue 0, cleaned after each test."""
    program.clear()
    xsk = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    program.register_xsk(0, xsk.fileno())
    try:
        yield program
    finally:
        program.unregister_xsk(0)
        xsk.close()
        program.clear()


class Probe:
    """Run a frame and report the verdict with what moved: the rule ids hit and the stats delta."""

    def __init__(self, prog: SteerProgram) -> None:
        self.prog = prog

    def __call__(self, frame: bytes) -> tuple[int, list[int], SteerStats]:
        before_c, before_s = self.prog.counters(), self.prog.stats()
        verdict = self.prog.test_run(frame)
        after_c, after_s = self.prog.counters(), self.prog.stats()
        hit = [i for i in after_c if after_c[i][0] != before_c.get(i, (0, 0))[0]]
        delta = SteerStats(*(a - b for a, b in zip(vars(after_s).values(), vars(before_s).values())))
        return verdict, hit, delta


@pytest.fixture()
def run(prog: SteerProgram) -> Probe:
    return Probe(prog)


UNMATCHED = SteerStats(1, 0, 0)
NOT_IP = SteerStats(0, 0, 1)
CLEAN = SteerStats(0, 0, 0)
MALFORMED_MATCHED = SteerStats(0, 1, 0)
MALFORMED_UNMATCHED = SteerStats(1, 1, 0)


# ---- the contract with steer.h --------------------------------------------------------------------


def test_rule_layout_matches_btf() -> None:
    """RULE_LAYOUT in rules.py and struct steer_rule in steer.h describe the same bytes."""
    dump = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(libbpf.object_path("steer"))],
        capture_output=True, text=True, check=True,
    ).stdout
    block = dump.split("STRUCT 'steer_rule'", 1)[1].split("\n[", 1)[0]
    size = int(re.search(r"size=(\d+)", block).group(1))
    members = {m: int(off) // 8 for m, off in re.findall(r"'(\w+)' type_id=\d+ bits_offset=(\d+)", block)}
    assert size == RULE_SIZE
    assert members == rule_offsets()


def test_the_verifier_has_ample_headroom(program: SteerProgram) -> None:
    """The rule scan is a bpf_loop callback, verified once: an inline loop over the 128 rules made the
    verifier walk 909,152 instructions of its 1,000,000 limit (2.5 s per load; a little more parsing and
    the program would not have loaded at all). Now about 22,000."""
    n = libbpf.verified_insns(program.prog_fd)
    if n is None:
        pytest.skip("this kernel does not report verified_insns (Linux < 5.16)")
    assert 0 < n < 150_000


def test_map_sizes(program: SteerProgram) -> None:
    assert program.max_rules == 128 and program.max_queues == 64
    assert program._rules_map.value_size == RULE_SIZE
    assert program._order_map.value_size == 4 + 4 * program.max_rules


# ---- each rule kind -------------------------------------------------------------------------------


def test_no_rules_passes_everything(run: Probe) -> None:
    for frame in (udp4(), tcp4(), icmp4(), udp6(), tcp6(), icmp6()):
        assert run(frame) == (PASS, [], UNMATCHED)
    arp = bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.2"))
    assert run(arp) == (PASS, [], NOT_IP)


def test_udp_dst_dport_redirect(prog: SteerProgram, run: Probe) -> None:
    rid = prog.add("udp dst 10.0.0.2 dport 4321")
    assert run(udp4()) == (REDIRECT, [rid], CLEAN)
    assert run(udp4(dport=4322)) == (PASS, [], UNMATCHED)
    assert run(udp4(dst="10.0.0.3")) == (PASS, [], UNMATCHED)
    assert run(tcp4(dport=4321)) == (PASS, [], UNMATCHED)
    assert run(udp6(dport=4321)) == (PASS, [], UNMATCHED)  # family pinned by the v4 address


@pytest.mark.parametrize("payload", [3500, 9000 - 28, 60000])
def test_jumbo_frames_are_parsed_from_the_first_buffer(prog: SteerProgram, run: Probe, payload: int) -> None:
    """Section xdp.frags: BPF_PROG_RUN hands a frame larger than a page to the program as a first buffer
    plus frags, as a veth does at a jumbo MTU. The headers come from the first buffer, the lengths in them
    are checked against the whole packet (so a 60,000-byte datagram is not a "length lie"), the rule's
    byte counter counts the whole packet; a length larger than the whole packet is still malformed."""
    rid = prog.add("udp dst 10.0.0.2 dport 4321")
    frame = bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=4321) / (b"j" * payload))
    assert run(frame) == (REDIRECT, [rid], CLEAN)
    assert prog.counters()[rid] == (1, len(frame))
    liar = bytearray(frame)
    struct.pack_into("!H", liar, 16, len(frame) - 14 + 1)  # IPv4 total length one byte past the packet
    assert run(bytes(liar)) == (PASS, [], MALFORMED_UNMATCHED)
    assert run(frame[:-1]) == (PASS, [], MALFORMED_UNMATCHED)  # the UDP length claims one byte more


def test_redirect_without_socket_passes(prog: SteerProgram, run: Probe) -> None:
    rid = prog.add("udp dport 4321")
    prog.unregister_xsk(0)
    assert run(udp4()) == (PASS, [rid], CLEAN)  # matched (counted) but no socket: fallback XDP_PASS


@pytest.mark.parametrize(
    "rule,hits,misses",
    [
        ("tcp dport 80 drop", [tcp4(), tcp6()], [udp4(dport=80), tcp4(dport=81), icmp4()]),
        ("tcp sport 1111 drop", [tcp4(), tcp6()], [tcp4(sport=1112), udp4()]),
        ("udp sport 1111 dport 4321 drop", [udp4(), udp6()], [udp4(sport=1), udp4(dport=1), tcp4()]),
        ("icmp drop", [icmp4(), icmp6()], [udp4(), tcp6()]),
        ("icmp dst fd00::2 drop", [icmp6()], [icmp4(), icmp6(dst="fd00::3"), udp6()]),
        ("src 10.0.0.0/8 drop", [udp4(), tcp4(), icmp4()], [udp4(src="11.0.0.1"), udp6()]),
        ("dst 10.0.0.0/31 drop", [udp4(dst="10.0.0.1"), udp4(dst="10.0.0.0")], [udp4(dst="10.0.0.2")]),
        ("src 0.0.0.0/0 drop", [udp4(src="1.2.3.4"), tcp4()], [udp6()]),
        ("udp src fd00::/64 drop", [udp6(), udp6(src="fd00::ffff:1")], [udp6(src="fd01::1"), tcp6(), udp4()]),
        ("dst fd00::2 drop", [udp6(), tcp6(), icmp6()], [udp6(dst="fd00::3"), udp4()]),
        ("dst ::/0 drop", [udp6(), icmp6()], [udp4(), icmp4()]),
        ("udp dst fd00::2/127 dport 4321 drop", [udp6(), udp6(dst="fd00::3")], [udp6(dst="fd00::4")]),
        ("drop", [udp4(), tcp6(), icmp4()], []),
    ],
)
def test_rule_kinds(prog: SteerProgram, run: Probe, rule: str, hits: list[bytes], misses: list[bytes]) -> None:
    rid = prog.add(rule)
    for frame in hits:
        assert run(frame) == (DROP, [rid], CLEAN), (rule, frame.hex())
    for frame in misses:
        assert run(frame) == (PASS, [], UNMATCHED), (rule, frame.hex())


def test_pass_rule_and_priority(prog: SteerProgram, run: Probe) -> None:
    drop = prog.add("udp drop")
    assert run(udp4()) == (DROP, [drop], CLEAN)
    keep = prog.add("udp dport 4321 pass", index=0)  # inserted in front: first match wins
    assert list(prog.rules()) == [keep, drop]
    assert run(udp4()) == (PASS, [keep], CLEAN)
    assert run(udp4(dport=9)) == (DROP, [drop], CLEAN)
    redir = prog.add("udp dport 9 redirect", index=1)
    assert list(prog.rules()) == [keep, redir, drop]
    assert run(udp4(dport=9)) == (REDIRECT, [redir], CLEAN)
    prog.remove(keep)  # at runtime, no re-attach
    assert run(udp4()) == (DROP, [drop], CLEAN)
    prog.remove(drop)
    assert run(udp4()) == (PASS, [], UNMATCHED)
    assert list(prog.rules()) == [redir]
    with pytest.raises(UsageError, match="no rule with id"):
        prog.remove(drop)


def test_counters_count_packets_and_bytes(prog: SteerProgram) -> None:
    rid = prog.add("udp drop")
    other = prog.add("tcp pass")
    f1, f2 = udp4(), bytes(eth() / IP(dst="10.0.0.2") / UDP() / (b"z" * 300))
    for frame in (f1, f2, f1):
        assert prog.test_run(frame) == DROP
    assert prog.counters() == {rid: (3, 2 * len(f1) + len(f2)), other: (0, 0)}
    libbpf.test_run(prog.prog_fd, tcp4(), repeat=50)
    assert prog.counters()[other] == (50, 50 * len(tcp4()))


def test_reused_id_starts_with_zero_counters(prog: SteerProgram) -> None:
    rid = prog.add("udp drop")
    prog.test_run(udp4())
    prog.remove(rid)
    again = prog.add("tcp drop")
    assert again == rid and prog.counters()[again] == (0, 0)


def test_sample_drop(prog: SteerProgram) -> None:
    never = prog.add("udp dport 1 sample prob 0")
    always = prog.add("udp dport 2 sample prob 1")
    half = prog.add("udp dport 3 sample prob 0.5")
    behind = prog.add("udp pass")  # what a spared packet falls through to
    n = 2000
    for port in (1, 2, 3):
        libbpf.test_run(prog.prog_fd, udp4(dport=port), repeat=n)
    c = prog.counters()
    assert c[never][0] == 0
    assert c[always][0] == n
    assert 0.4 * n < c[half][0] < 0.6 * n  # binomial sd is 22 packets; this is 9 sd wide
    assert c[behind][0] == n + (n - c[half][0])  # spared packets reached the next rule
    assert prog.test_run(udp4(dport=2)) == DROP


def test_last_of_128_rules_is_reached(prog: SteerProgram, run: Probe) -> None:
    ids = [prog.add(f"udp dport {1000 + i} drop") for i in range(127)]
    last = prog.add("udp dport 4321 redirect")
    assert len(prog.rules()) == 128
    with pytest.raises(UsageError, match="all 128 rule slots"):
        prog.add("drop")
    assert run(udp4()) == (REDIRECT, [last], CLEAN)
    assert run(udp4(dport=1126)) == (DROP, [ids[126]], CLEAN)
    assert run(udp4(dport=999)) == (PASS, [], UNMATCHED)


def test_xsk_registration_errors(prog: SteerProgram) -> None:
    with pytest.raises(UsageError, match="queue 64 out of range"):
        prog.register_xsk(64, 0)
    with pytest.raises(KbypassError, match="AF_XDP socket"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            prog.register_xsk(1, s.fileno())
    prog.unregister_xsk(5)  # nothing there: no error


# ---- encapsulations and IPv6 extension headers ----------------------------------------------------


def test_vlan_and_qinq(prog: SteerProgram, run: Probe) -> None:
    """A rule without `vlan` takes untagged frames only: a tagged frame is the kernel's VLAN device's
    (eth0.7), and the consumers of the untagged default parse no tags (before, a VLAN-7 UDP frame was
    redirected and then dropped in user space). `vlan N` names the outer tag's VLAN id."""
    rid = prog.add("udp dst 10.0.0.2 dport 4321")
    l3 = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=4321) / PAYLOAD
    assert run(bytes(eth() / l3)) == (REDIRECT, [rid], CLEAN)
    assert run(bytes(eth() / Dot1Q(vlan=7) / l3)) == (PASS, [], UNMATCHED)
    assert run(bytes(eth() / Dot1AD(vlan=7) / Dot1Q(vlan=8) / l3)) == (PASS, [], UNMATCHED)
    v7 = prog.add("udp vlan 7 dst 10.0.0.2 dport 4321")
    assert run(bytes(eth() / Dot1Q(vlan=7) / l3)) == (REDIRECT, [v7], CLEAN)
    assert run(bytes(eth() / Dot1AD(vlan=7) / Dot1Q(vlan=8) / l3)) == (REDIRECT, [v7], CLEAN)  # the outer tag
    assert run(bytes(eth() / Dot1Q(vlan=8) / Dot1Q(vlan=7) / l3)) == (PASS, [], UNMATCHED)
    assert run(bytes(eth() / Dot1Q(vlan=7, prio=5) / l3)) == (REDIRECT, [v7], CLEAN)  # priority bits ignored
    assert run(bytes(eth() / l3)) == (REDIRECT, [rid], CLEAN)
    v6 = prog.add("udp vlan 1 dst fd00::2 drop")
    assert run(bytes(eth() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IPv6(dst="fd00::2") / UDP())) == (DROP, [v6], CLEAN)
    # three tags: deeper than we parse -> not IP, passed even with a catch-all drop
    prog.add("drop")
    deep = bytes(eth() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / l3)
    assert run(deep) == (PASS, [], NOT_IP)
    # a tag cut short
    assert run(bytes(eth() / Dot1Q(vlan=7) / l3)[:16]) == (PASS, [], NOT_IP)


def test_ipv6_next_header_1_is_not_icmp(prog: SteerProgram, run: Probe) -> None:
    """IPv6 next header 1 is IPv4's ICMP number, not ICMPv6: it read as STEER_PROTO_ICMP, so an `icmp`
    rule took it (skipping the ICMP length check); now only ICMPv6 and IPv4 ICMP match `icmp`."""
    rid = prog.add("icmp drop")
    not_icmp = bytes(eth() / IPv6(src="fd00::1", dst="fd00::2", nh=1) / PAYLOAD)
    assert run(not_icmp) == (PASS, [], UNMATCHED)
    frag = bytes(eth() / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(nh=1, m=1) / PAYLOAD)
    assert run(frag) == (PASS, [], UNMATCHED)
    assert run(icmp6()) == (DROP, [rid], CLEAN)
    assert run(icmp4()) == (DROP, [rid], CLEAN)


def test_ipv4_options_are_skipped(prog: SteerProgram, run: Probe) -> None:
    rid = prog.add("udp dport 4321 drop")
    frame = bytes(eth() / IP(dst="10.0.0.2", options=b"\x01" * 8) / UDP(dport=4321) / PAYLOAD)
    assert frame[14] == 0x47  # IHL 7
    assert run(frame) == (DROP, [rid], CLEAN)


def test_ethernet_padding_is_fine(prog: SteerProgram, run: Probe) -> None:
    rid = prog.add("udp dport 4321")
    frame = bytes(eth() / IP(dst="10.0.0.2") / UDP(dport=4321)) + bytes(20)  # tot_len < frame: padding
    assert run(frame) == (REDIRECT, [rid], CLEAN)


def test_fragments_are_matched_on_l3_only_so_a_datagram_is_never_split(prog: SteerProgram, run: Probe) -> None:
    """Real fragments (scapy's fragment(): the first one's UDP length covers the whole datagram): a port
    rule decides none of them, so all go the same way - to the kernel, or by a rule without ports."""
    whole = eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1111, dport=4321) / (b"x" * 3000)
    frags = [bytes(eth() / f) for f in fragment(whole[IP], fragsize=1400)]
    assert len(frags) == 3
    ports = prog.add("udp dport 4321 drop")
    assert run(bytes(whole)) == (DROP, [ports], CLEAN)  # unfragmented: the port rule decides
    assert [run(f) for f in frags] == [(PASS, [], UNMATCHED)] * 3  # no parse error either
    l3only = prog.add("udp dst 10.0.0.2")
    assert [run(f) for f in frags] == [(REDIRECT, [l3only], CLEAN)] * 3
    prog.remove(l3only)
    frag_icmp = bytes(eth() / IP(dst="10.0.0.2", frag=3) / ICMP() / PAYLOAD)
    icmp_rule = prog.add("icmp drop")
    assert run(frag_icmp) == (DROP, [icmp_rule], CLEAN)
    # IPv6: the same, with fragment6()
    whole6 = IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment() / UDP(sport=1, dport=4321) / (b"y" * 3000)
    frags6 = [bytes(eth() / f) for f in fragment6(whole6, 1400)]
    assert len(frags6) == 3
    assert [run(f) for f in frags6] == [(PASS, [], UNMATCHED)] * 3
    l3six = prog.add("udp dst fd00::2 redirect")
    assert [run(f) for f in frags6] == [(REDIRECT, [l3six], CLEAN)] * 3
    atomic = bytes(eth() / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(m=0, offset=0)
                   / UDP(dport=4321) / PAYLOAD)  # offset 0, no M: a whole datagram, its ports count
    assert run(atomic) == (DROP, [ports], CLEAN)


def test_ipv6_extension_headers(prog: SteerProgram, run: Probe) -> None:
    ports = prog.add("udp dport 4321 redirect")
    l3only = prog.add("udp dst fd00::2 drop")
    ip6 = IPv6(src="fd00::1", dst="fd00::2")
    udp = UDP(sport=1, dport=4321) / PAYLOAD
    for ext in (
        IPv6ExtHdrHopByHop(),
        IPv6ExtHdrDestOpt(),
        IPv6ExtHdrRouting(),
        IPv6ExtHdrFragment(offset=0, m=0),  # an atomic fragment: whole, so its ports count
        IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt(),
        IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(),  # 4: the most
    ):
        assert run(bytes(eth() / ip6 / ext / udp)) == (REDIRECT, [ports], CLEAN), ext.summary()
    later = bytes(eth() / ip6 / IPv6ExtHdrFragment(offset=10, m=0, nh=17) / PAYLOAD)
    assert run(later) == (DROP, [l3only], CLEAN)
    # more extension headers than we walk: L4 unknown, only proto-any rules can match
    chain = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
    long_chain = bytes(eth() / ip6 / chain / udp)
    assert run(long_chain) == (PASS, [], UNMATCHED)
    anyrule = prog.add("dst fd00::2 drop")
    assert run(long_chain) == (DROP, [anyrule], CLEAN)
    # an unknown next header (no L4 we know): proto-any rules only
    prog.remove(anyrule)
    assert run(bytes(eth() / IPv6(dst="fd00::2", nh=59) / PAYLOAD)) == (PASS, [], UNMATCHED)


# ---- truncation and lying lengths: never REDIRECT, never crash -----------------------------------


TRUNCATION_CASES = [
    ("udp", udp4), ("tcp", tcp4), ("icmp", icmp4), ("udp", udp6), ("tcp", tcp6), ("icmp", icmp6),
]


@pytest.mark.parametrize("proto,make", TRUNCATION_CASES, ids=[f"{p}-{m.__name__}" for p, m in TRUNCATION_CASES])
def test_truncated_at_every_offset(prog: SteerProgram, run: Probe, proto: str, make) -> None:
    frame = make()
    l3_end = 14 + (20 if frame[12:14] == b"\x08\x00" else 40)
    redirect_all = prog.add(f"{proto} redirect")  # would redirect anything readable
    assert run(frame) == (REDIRECT, [redirect_all], CLEAN)
    for n in range(14, len(frame)):
        verdict, hit, delta = run(frame[:n])
        assert verdict == PASS, n
        assert delta.parse_errors == 1 and delta.not_ip == 0, n
        if n >= l3_end:  # addresses readable: the rule matched at L3 but a malformed frame is not redirected
            assert hit == [redirect_all] and delta.unmatched == 0, n
        else:
            assert hit == [] and delta.unmatched == 1, n
    prog.clear()
    ported = prog.add(f"{proto} dport {80 if proto == 'tcp' else 4321} drop") if proto != "icmp" else None
    l3drop = prog.add(f"{proto} drop")
    for n in range(14, len(frame)):
        verdict, hit, delta = run(frame[:n])
        if n >= l3_end:  # the drop rule matches on L3; the port rule never does (no L4 header trusted)
            assert (verdict, hit) == (DROP, [l3drop]), n
        else:
            assert (verdict, hit) == (PASS, []), n
    assert ported is None or run(frame)[:2] == (DROP, [ported])
    for n in range(0, 14):  # the kernel refuses test runs shorter than an Ethernet header
        with pytest.raises(KbypassError, match="Invalid argument"):
            prog.test_run(frame[:n])


def _set(frame: bytes, off: int, fmt: str, value: int) -> bytes:
    b = bytearray(frame)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def lying_frames() -> list[tuple[str, bytes, str]]:
    """(name, frame, expectation): "unreadable" = no rule can match, "l3" = only rules without ports."""
    u4, t4, u6 = udp4(), tcp4(), udp6()
    ip_tot = len(u4) - 14
    cases = [
        ("ihl 4", _set(u4, 14, "B", 0x44), "unreadable"),
        ("ihl 0", _set(u4, 14, "B", 0x40), "unreadable"),
        ("version 6 in v4 ethertype", _set(u4, 14, "B", 0x65), "unreadable"),
        ("ihl 15 past the end", _set(u4, 14, "B", 0x4F)[:14 + 40], "unreadable"),
        ("tot_len < ihl", _set(u4, 16, ">H", 19), "l3"),
        ("tot_len > frame", _set(u4, 16, ">H", ip_tot + 1), "l3"),
        ("tot_len 0xffff", _set(u4, 16, ">H", 0xFFFF), "l3"),
        ("tot_len leaves no room for udp", _set(u4, 16, ">H", 24), "l3"),
        ("udp len 7", _set(u4, 14 + 20 + 4, ">H", 7), "l3"),
        ("udp len > ip payload", _set(u4, 14 + 20 + 4, ">H", ip_tot - 20 + 1), "l3"),
        ("tcp doff 4", _set(t4, 14 + 20 + 12, "B", 0x40), "l3"),
        ("tcp doff 15 past the end", _set(t4, 14 + 20 + 12, "B", 0xF0), "l3"),
        ("ipv6 payload_len > frame", _set(u6, 14 + 4, ">H", len(u6) - 54 + 1), "l3"),
        ("ipv6 payload_len 0", _set(u6, 14 + 4, ">H", 0), "l3"),
        ("ipv6 version 4", _set(u6, 14, "B", 0x40), "unreadable"),
        ("ipv6 udp len > payload", _set(u6, 54 + 4, ">H", len(u6) - 54 + 1), "l3"),
        (
            "ipv6 ext header past the end",
            bytes(eth() / IPv6(dst="fd00::2", plen=8) / IPv6ExtHdrDestOpt(len=5, nh=17)),
            "l3",
        ),
    ]
    return cases


@pytest.mark.parametrize("name,frame,kind", lying_frames(), ids=[c[0] for c in lying_frames()])
def test_lengths_that_lie(prog: SteerProgram, run: Probe, name: str, frame: bytes, kind: str) -> None:
    proto = "tcp" if "tcp" in name else "udp"
    # a cut extension header hides the L4 protocol: only proto-any rules can match it
    redirect_all = prog.add("redirect" if "ext header" in name else f"{proto} redirect")
    verdict, hit, delta = run(frame)
    assert verdict == PASS and delta.parse_errors == 1
    assert hit == ([] if kind == "unreadable" else [redirect_all])
    prog.clear()
    with_ports = prog.add(f"{proto} dport {80 if proto == 'tcp' else 4321} drop")
    catch_all = prog.add("drop")
    verdict, hit, delta = run(frame)
    if kind == "unreadable":
        assert (verdict, hit, delta) == (PASS, [], MALFORMED_UNMATCHED)
    else:
        assert (verdict, hit, delta) == (DROP, [catch_all], MALFORMED_MATCHED)
    assert with_ports not in hit


# ---- attaching to a real interface ----------------------------------------------------------------


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture()
def veth_ns() -> Iterator[str]:
    """A fresh namespace holding veth pair kb0 <-> kb1 (both up); deleted afterwards, even on failure."""
    name = f"kbsteer-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ip("netns", "add", name)
    try:
        two_queues = ("numrxqueues", "2", "numtxqueues", "2")
        ip("-n", name, "link", "add", "kb0", *two_queues, "type", "veth", "peer", "name", "kb1")
        ip("-n", name, "link", "set", "kb0", "up")
        ip("-n", name, "link", "set", "kb1", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def query(ns: str, ifname: str) -> libbpf.XdpInfo:
    from kbypass import netns

    with netns.entered(ns):
        return libbpf.xdp_query(socket.if_nametoindex(ifname))


def wait_detached(ns: str, ifname: str, timeout: float = 5.0) -> libbpf.XdpInfo:
    deadline = time.monotonic() + timeout
    info = query(ns, ifname)
    while info.attached and time.monotonic() < deadline:
        time.sleep(0.02)
        info = query(ns, ifname)
    return info


@pytest.mark.netns
def test_attach_and_close(veth_ns: str) -> None:
    with Steering("kb0", netns=veth_ns) as st:
        info = query(veth_ns, "kb0")
        assert info.attached and info.attach_mode == libbpf.XDP_ATTACHED_DRV
        assert info.prog_id == st.prog_id and st.attached_mode == "native"
        rid = st.add("udp dport 4321 drop")  # rules change while attached
        assert st.rules() == {rid: st.rules()[rid]}
        assert not query(veth_ns, "kb1").attached
    assert not query(veth_ns, "kb0").attached


@pytest.mark.netns
def test_real_traffic_through_attached_program(veth_ns: str) -> None:
    """Attached on kb1, the program drops one UDP port and passes another (and ARP) on real frames."""
    from kbypass import netns

    peer = veth_ns + "-peer"  # the sender needs its own namespace, or the kernel routes via loopback
    ip("netns", "add", peer)
    try:
        ip("-n", veth_ns, "link", "set", "kb0", "netns", peer)
        ip("-n", peer, "addr", "add", "10.213.0.1/24", "dev", "kb0")
        ip("-n", peer, "link", "set", "kb0", "up")
        ip("-n", veth_ns, "addr", "add", "10.213.0.2/24", "dev", "kb1")
        with Steering("kb1", netns=veth_ns) as st:
            drop = st.add("udp dst 10.213.0.2 dport 4321 drop")
            keep = st.add("udp dport 4322 pass")
            with netns.entered(veth_ns):
                rx_drop = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                rx_keep = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with netns.entered(peer):
                tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with rx_drop, rx_keep, tx:
                rx_drop.bind(("10.213.0.2", 4321))
                rx_keep.bind(("10.213.0.2", 4322))
                rx_keep.settimeout(3.0)
                for i in range(5):
                    tx.sendto(b"d%d" % i, ("10.213.0.2", 4321))
                    tx.sendto(b"k%d" % i, ("10.213.0.2", 4322))
                got = sorted(rx_keep.recv(100) for _ in range(5))
                rx_drop.setblocking(False)
                with pytest.raises(BlockingIOError):
                    rx_drop.recv(100)
            assert got == [b"k%d" % i for i in range(5)]
            counters = st.counters()
            assert counters[drop] == (5, 5 * 44) and counters[keep] == (5, 5 * 44)  # 14+20+8+2 bytes
            assert st.stats().not_ip >= 1  # the ARP exchange passed through untouched
    finally:
        subprocess.run(["ip", "netns", "del", peer], capture_output=True)


@pytest.mark.netns
def test_redirect_follows_the_rx_queue(veth_ns: str, program: SteerProgram) -> None:
    """The XSKMAP is indexed by ctx->rx_queue_index: only the queue with a socket redirects."""
    from kbypass import netns

    program.clear()
    rid = program.add("udp dport 4321")
    xsk = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    try:
        program.register_xsk(1, xsk.fileno())
        with netns.entered(veth_ns):
            ifindex = socket.if_nametoindex("kb0")
            frame = udp4()
            # struct xdp_md: data, data_end (must be the frame length), data_meta, ingress_ifindex,
            # rx_queue_index, egress_ifindex
            verdicts = [
                libbpf.test_run(program.prog_fd, frame, ctx=struct.pack("6I", 0, len(frame), 0, ifindex, q, 0)).retval
                for q in (0, 1)
            ]
        assert verdicts == [PASS, REDIRECT]
        assert program.counters()[rid][0] == 2  # both matched; queue 0 fell back to the kernel
    finally:
        program.unregister_xsk(1)
        xsk.close()
        program.clear()


@pytest.mark.netns
def test_queue_rules_follow_the_rx_queue(veth_ns: str, program: SteerProgram) -> None:
    """`queue Q` matches ctx->rx_queue_index: a packet on another queue goes on to later rules."""
    from kbypass import netns

    program.clear()
    on_1 = program.add("udp dport 4321 queue 1 drop")
    rest = program.add("udp dport 4321 pass")
    try:
        with netns.entered(veth_ns):
            ifindex = socket.if_nametoindex("kb0")
            frame = udp4()
            verdicts = [
                libbpf.test_run(program.prog_fd, frame, ctx=struct.pack("6I", 0, len(frame), 0, ifindex, q, 0)).retval
                for q in (0, 1, 1)
            ]
        assert verdicts == [PASS, DROP, DROP]
        counters = program.counters()
        assert (counters[on_1][0], counters[rest][0]) == (2, 1)
    finally:
        program.clear()


@pytest.mark.netns
def test_skb_mode_and_detach(veth_ns: str) -> None:
    st = Steering("kb1", netns=veth_ns, mode="skb")
    try:
        st.attach()
        info = query(veth_ns, "kb1")
        assert info.attach_mode == libbpf.XDP_ATTACHED_SKB and info.skb_prog_id == st.prog_id
        with pytest.raises(UsageError, match="already attached"):
            st.attach()
        st.detach()
        assert not query(veth_ns, "kb1").attached
        st.attach()  # re-attach after detach works at once
        assert query(veth_ns, "kb1").prog_id == st.prog_id
    finally:
        st.close()
    assert not query(veth_ns, "kb1").attached


@pytest.mark.netns
def test_native_unsupported_and_auto_fallback(veth_ns: str) -> None:
    # the namespace's own loopback has no driver XDP (and dummy/ifb modules may be missing here)
    ip("-n", veth_ns, "link", "set", "lo", "up")
    with pytest.raises(KbypassError, match="lo has no native \\(driver\\) XDP support.*mode='skb'"):
        with Steering("lo", netns=veth_ns):
            pass
    assert not query(veth_ns, "lo").attached
    with Steering("lo", netns=veth_ns, mode="auto") as st:
        assert st.attached_mode == "skb"
        assert query(veth_ns, "lo").attach_mode == libbpf.XDP_ATTACHED_SKB
    assert not query(veth_ns, "lo").attached


@pytest.mark.netns
def test_refuses_when_another_program_is_attached(veth_ns: str) -> None:
    with Steering("kb0", netns=veth_ns) as first:
        second = Steering("kb0", netns=veth_ns)
        try:
            with pytest.raises(KbypassError) as info:
                second.attach()
        finally:
            second.close()
        msg = str(info.value)
        assert f"XDP program id {first.prog_id} ('kbypass_steer')" in msg
        assert "already steered by kbypass" in msg and "kbypass cp status" in msg and "stop it" in msg
        assert f"ip -n {veth_ns} link set dev kb0 xdp off" in msg  # for a program no process holds
        assert query(veth_ns, "kb0").prog_id == first.prog_id  # the first one is untouched
    # a netlink-attached program (what `ip link set xdp` makes) is refused the same way
    ip("-n", veth_ns, "link", "set", "dev", "kb0", "xdpgeneric", "obj", str(libbpf.object_path("steer")), "sec", "xdp.frags")
    try:
        other = query(veth_ns, "kb0").prog_id
        assert other
        with pytest.raises(KbypassError, match=f"XDP program id {other}.*xdp off"):
            with Steering("kb0", netns=veth_ns, mode="auto"):
                pass
    finally:
        ip("-n", veth_ns, "link", "set", "dev", "kb0", "xdpgeneric", "off")
    assert not query(veth_ns, "kb0").attached


@pytest.mark.netns
def test_bad_names(veth_ns: str) -> None:
    with pytest.raises(UsageError, match=f"no interface 'nope0' in namespace '{veth_ns}'.*ip -n {veth_ns} link show"):
        Steering("nope0", netns=veth_ns)
    with pytest.raises(UsageError, match="unknown XDP mode"):
        Steering("kb0", netns=veth_ns, mode="turbo")
    with pytest.raises(KbypassError, match="does not exist"):
        Steering("kb0", netns=veth_ns + "-missing")


CHILD = """
import sys, time
from kbypass.steer.steering import Steering
st = Steering("kb0", netns=sys.argv[1])
st.attach()
st.add("udp dport 4321 drop")
print(st.prog_id, flush=True)
time.sleep(60)
"""


@pytest.mark.netns
def test_kill_9_leaves_no_program(veth_ns: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, veth_ns], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip().isdigit(), "child did not attach"
        assert query(veth_ns, "kb0").prog_id == int(line)
        child.kill()  # SIGKILL: no Python cleanup runs
        child.wait(timeout=10)
        assert not wait_detached(veth_ns, "kb0").attached
        with Steering("kb0", netns=veth_ns):  # a second start after the crash works at once
            assert query(veth_ns, "kb0").attached
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
