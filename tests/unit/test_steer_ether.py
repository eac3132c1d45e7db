"""EtherType rules ("ether 0x88b5"): the raw-L2 match of the steering program, for kbypass xfer's eth
encapsulation. Rule values without root; the real object through BPF_PROG_TEST_RUN with root."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from kbypass.steer.rules import FAMILY_ETHER, RULE_SIZE, Rule, RuleError, rule_offsets

ET = 0x88B5


# ---- rule values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["ether 0x88b5 redirect", "ether 0x88b5 sample prob 0.05", "ether drop",
                                  "ether 0x0806 pass"])
def test_round_trip(text: str) -> None:
    rule = Rule.parse(text)
    assert str(rule) == text and Rule.parse(str(rule)) == rule


def test_parse_and_pack() -> None:
    r = Rule.parse("ether 0x88b5")
    assert r == Rule(proto="ether", ethertype=ET) and r.action == "redirect"
    assert Rule.parse("ether 34997") == r  # decimal too
    assert r.family == FAMILY_ETHER
    raw = r.pack()
    off = rule_offsets()
    assert len(raw) == RULE_SIZE == 88  # the EtherType rides in dport: no field of its own
    assert raw[off["family"]] == 1 and raw[off["proto"]] == 0
    assert raw[off["dport"]:off["dport"] + 2] == b"\x88\xb5" and raw[off["dport_mask"]:off["dport_mask"] + 2] == b"\xff\xff"
    assert raw[off["sport"]:off["dport"]] == bytes(4) and raw[off["src"]:off["vlan"]] == bytes(64)
    anyl2 = Rule.parse("ether drop").pack()
    assert anyl2[off["dport_mask"]:off["dport_mask"] + 2] == b"\0\0"


@pytest.mark.parametrize("text,words", [
    ("ether 0x0800", "is IPv4"),
    ("ether 0x86dd", "is IPv6"),
    ("ether 0x8100", "VLAN"),
    ("ether 1500", "802.3 lengths"),
    ("ether 0x10000", "0x0600-0xffff"),
    ("ether 0x88b5 dst 10.0.0.1", "does not go with ether"),
    ("ether 0x88b5 dport 7", "does not go with ether"),
    ("ether 0x88b5 sample", "needs 'prob P'"),
    ("udp 0x88b5", "unknown word"),
    ("drop ether", "must come first"),
])
def test_bad_rules(text: str, words: str) -> None:
    with pytest.raises(RuleError, match=words):
        Rule.parse(text)


def test_constructor_checks() -> None:
    with pytest.raises(RuleError, match="needs proto ether"):
        Rule(proto="udp", ethertype=ET)
    with pytest.raises(RuleError, match="0x0600-0xffff"):
        Rule(proto="ether", ethertype=True)


# ---- the program ------------------------------------------------------------------------------------

needs_bpf = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


@pytest.fixture(scope="module")
def program():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    from kbypass.bpf import libbpf
    from kbypass.steer.steering import SteerProgram

    if not libbpf.object_path("steer").exists():
        pytest.skip("bpf/steer.bpf.c is not built: run 'make bpf'")
    prog = SteerProgram()
    xsk = socket.socket(44, socket.SOCK_RAW, 0)  # AF_XDP, unbound: REDIRECT shows as XDP_REDIRECT
    prog.register_xsk(0, xsk.fileno())
    try:
        yield prog
    finally:
        xsk.close()
        prog.close()


@pytest.fixture()
def prog(program) -> Iterator:
    program.clear()
    yield program
    program.clear()


def run(prog, frame: bytes) -> tuple[int, list[int], tuple[int, int, int]]:
    c0, s0 = prog.counters(), prog.stats()
    verdict = prog.test_run(frame)
    c1, s1 = prog.counters(), prog.stats()
    hit = [i for i in c1 if c1[i][0] != c0.get(i, (0, 0))[0]]
    return verdict, hit, (s1.unmatched - s0.unmatched, s1.parse_errors - s0.parse_errors, s1.not_ip - s0.not_ip)


MACS = bytes.fromhex("020000000002020000000001")


def raw(et: int = ET, payload: bytes = b"x" * 46, tags: tuple[int, ...] = ()) -> bytes:
    out = MACS
    for t in tags:
        out += t.to_bytes(2, "big") + b"\x00\x07"
    return out + et.to_bytes(2, "big") + payload


def udp4() -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(dst="10.0.0.2") / UDP(dport=4321) / b"p")


@needs_bpf
def test_matches_the_ethertype(prog) -> None:
    from kbypass.bpf.libbpf import XDP_DROP, XDP_PASS, XDP_REDIRECT

    rid = prog.add("ether 0x88b5")
    assert run(prog, raw()) == (XDP_REDIRECT, [rid], (0, 0, 0))
    # tagged frames are the kernel's VLAN devices' unless a rule names the VLAN (outer tag 7 here)
    assert run(prog, raw(tags=(0x8100,))) == (XDP_PASS, [], (0, 0, 1))
    tagged = prog.add("ether 0x88b5 vlan 7")
    assert run(prog, raw(tags=(0x8100,))) == (XDP_REDIRECT, [tagged], (0, 0, 0))  # through a VLAN tag
    assert run(prog, raw(tags=(0x88A8, 0x8100))) == (XDP_REDIRECT, [tagged], (0, 0, 0))
    assert run(prog, raw(0x88B6)) == (XDP_PASS, [], (0, 0, 1))  # another EtherType: not ours, NOT_IP
    assert run(prog, raw(0x0806)) == (XDP_PASS, [], (0, 0, 1))  # ARP still passes
    deep = raw(tags=(0x88A8, 0x8100, 0x8100))  # three tags: deeper than parsed
    assert run(prog, deep) == (XDP_PASS, [], (0, 0, 1))
    drop_all_l2 = prog.add("ether drop")
    assert run(prog, raw(0x0806)) == (XDP_DROP, [drop_all_l2], (0, 0, 0))
    assert run(prog, raw()) == (XDP_REDIRECT, [rid], (0, 0, 0))  # first match still wins


@needs_bpf
def test_ip_and_l2_rules_do_not_mix(prog) -> None:
    from kbypass.bpf.libbpf import XDP_DROP, XDP_PASS

    l2 = prog.add("ether drop")  # any non-IP frame
    assert run(prog, udp4()) == (XDP_PASS, [], (1, 0, 0))  # an IP packet is not a raw L2 frame
    catch_all = prog.add("drop")  # family any: IPv4 and IPv6, never raw L2
    prog.remove(l2)
    assert run(prog, raw()) == (XDP_PASS, [], (0, 0, 1))
    assert run(prog, udp4()) == (XDP_DROP, [catch_all], (0, 0, 0))


@needs_bpf
def test_truncated_frames(prog) -> None:
    from kbypass.bpf.libbpf import XDP_PASS, XDP_REDIRECT
    from kbypass.errors import KbypassError

    rid = prog.add("ether 0x88b5")
    assert run(prog, raw(payload=b"")) == (XDP_REDIRECT, [rid], (0, 0, 0))  # header alone: matched
    tagged = raw(tags=(0x8100,), payload=b"")
    for n in range(14, len(tagged)):  # the tag or the inner EtherType cut off: not matched, passed
        assert run(prog, tagged[:n]) == (XDP_PASS, [], (0, 0, 1)), n
    for n in range(0, 14):  # the kernel refuses test runs shorter than an Ethernet header
        with pytest.raises(KbypassError):
            prog.test_run(raw()[:n])


@needs_bpf
def test_sample_drop_in_front_of_redirect(prog) -> None:
    from kbypass.bpf import libbpf

    sample = prog.add("ether 0x88b5 sample prob 0.25")
    redir = prog.add("ether 0x88b5 redirect")
    n = 4000
    libbpf.test_run(prog.prog_fd, raw(), repeat=n)
    c = prog.counters()
    assert 0.2 * n < c[sample][0] < 0.3 * n  # binomial sd ~27: this is > 7 sd wide
    assert c[sample][0] + c[redir][0] == n  # every spared frame reached the redirect rule
