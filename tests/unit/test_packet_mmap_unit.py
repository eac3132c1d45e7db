"""PacketMmapPort pieces that need no kernel: the rule -> classic BPF compiler (run here by a tiny cBPF
interpreter over scapy-built frames) and the size checks."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from kbypass.errors import UsageError
from kbypass.port.packet_mmap import PacketMmapPort
from kbypass.steer.cbpf import compile_filter


def run_cbpf(prog: bytes, pkt: bytes) -> int:
    """Just the instructions compile_filter emits, with the kernel's rule: a load past the end returns 0."""
    ins = [struct.unpack_from("HBBI", prog, i) for i in range(0, len(prog), 8)]
    a = x = pc = 0

    def load(off, size):
        if off + size > len(pkt):
            raise IndexError
        return int.from_bytes(pkt[off : off + size], "big")

    try:
        while True:
            code, jt, jf, k = ins[pc]
            pc += 1
            if code == 0x20:
                a = load(k, 4)
            elif code == 0x28:
                a = load(k, 2)
            elif code == 0x30:
                a = load(k, 1)
            elif code == 0x48:
                a = load(x + k, 2)
            elif code == 0xB1:
                x = 4 * (load(k, 1) & 0xF)
            elif code == 0x54:
                a &= k
            elif code == 0x15:
                pc += jt if a == k else jf
            elif code == 0x45:
                pc += jt if a & k else jf
            elif code == 0x06:
                return k
            else:
                raise AssertionError(f"unexpected opcode {code:#x}")
    except IndexError:
        return 0


def eth(payload) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / payload)


@pytest.mark.parametrize("rule, frame, accepted", [
    ("udp dport 4321", eth(IP(dst="10.0.0.2") / UDP(dport=4321)), True),
    ("udp dport 4321", eth(IP(dst="10.0.0.2") / UDP(dport=4322)), False),
    ("udp dport 4321", eth(IP(dst="10.0.0.2") / TCP(dport=4321)), False),
    ("udp dport 4321", eth(IP(dst="10.0.0.2", options=[IPOption_RR()]) / UDP(dport=4321)), True),  # IHL > 5
    ("udp dport 4321", eth(IP(dst="10.0.0.2", frag=100) / UDP(dport=4321)), False),  # not the first fragment
    ("udp dport 4321", eth(IPv6() / UDP(dport=4321)), False),
    ("udp dport 4321", eth(ARP()), False),
    ("udp dport 4321", eth(IP())[:20], False),  # truncated
    ("udp dst 10.0.0.2 dport 4321", eth(IP(dst="10.0.0.3") / UDP(dport=4321)), False),
    ("udp dst 10.0.0.0/24 sport 9", eth(IP(dst="10.0.0.77") / UDP(sport=9)), True),
    ("udp dst 10.0.0.0/24 sport 9", eth(IP(dst="10.0.1.77") / UDP(sport=9)), False),
    ("udp src 10.9.0.1", eth(IP(src="10.9.0.1") / UDP()), True),
    ("tcp", eth(IP() / TCP()), True),
    ("any", eth(IP() / TCP()), True),
])
def test_filter_accepts_exactly_what_the_rule_matches(rule, frame, accepted):
    assert (run_cbpf(compile_filter(rule), frame) > 0) == accepted


@pytest.mark.parametrize("rule, words", [
    ("udp dst fd00::1", "IPv4 only"),
    ("udp dport 1 drop", "drop the action 'drop'"),
    ("udp vlan 7 dport 1", "untagged frames only"),
    (42, "give a steering rule"),
])
def test_filter_refuses_what_it_cannot_express(rule, words):
    with pytest.raises(UsageError, match=words):
        compile_filter(rule)


@pytest.mark.parametrize("kwargs, words", [
    ({"block_size": 1000}, "not a power of two of at least 4096"),
    ({"block_size": 1 << 27}, "above 64 MiB"),
    ({"block_count": 1}, "block_count 1"),
    ({"frame_size": 1024}, "2048 or 4096"),
    ({"block_timeout_ms": -1}, "block_timeout_ms -1"),
    ({"tx_frames": 0}, "tx_frames 0"),
    ({"fanout_mode": "x"}, "fanout_mode 'x' is unknown"),
    ({"fanout_group": 70000}, "fanout_group 70000"),
    ({"rule": "udp dport"}, "needs a value"),
])
def test_bad_sizes_fail_before_any_socket(kwargs, words):
    with pytest.raises(UsageError) as info:
        PacketMmapPort("lo", **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_ethertype_rule_compiles_to_a_type_match():
    prog = compile_filter("ether 0x88b5")
    raw = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x88B5) / (b"x" * 20))
    assert run_cbpf(prog, raw) > 0
    assert run_cbpf(prog, eth(IP(dst="10.0.0.2") / UDP(dport=4321))) == 0
    assert run_cbpf(prog, raw[:13]) == 0  # too short to hold the type


def test_bare_ether_rule_accepts_any_non_ip_frame():
    """Like the XDP program's bare ether rule (bpf/steer.h): every non-IP frame, never IPv4/IPv6/VLAN."""
    prog = compile_filter("ether")
    raw = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x88B5) / (b"x" * 20))
    assert run_cbpf(prog, raw) > 0
    assert run_cbpf(prog, eth(ARP())) > 0
    assert run_cbpf(prog, eth(IP(dst="10.0.0.2") / UDP(dport=4321))) == 0
    assert run_cbpf(prog, eth(IPv6() / UDP(dport=4321))) == 0
    for vlan in (0x8100, 0x88A8):
        tag = b"\0\1\x88\xb5" + b"x" * 20  # VLAN 1, then the raw type 0x88b5
        tagged = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=vlan) / tag)
        assert run_cbpf(prog, tagged) == 0
    assert run_cbpf(prog, raw[:13]) == 0  # too short to hold the type
    with pytest.raises(UsageError, match="drop the action"):
        compile_filter("ether drop")
