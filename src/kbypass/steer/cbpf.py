"""Steering rules as classic BPF: the filter a PACKET_MMAP socket (or any packet socket) attaches.

The XDP steering program (kbypass.steer.steering) is the bypass's filter; a packet socket has no XDP, so the
`packet_mmap` backend gets the same rule as a classic BPF program (SO_ATTACH_FILTER) that accepts exactly
the untagged frames the rule matches. Only what classic BPF can express in a few loads is supported: one
IPv4 rule (proto, src/dst with prefixes, sport/dport) or one EtherType rule; the rest is refused with the
reason. A test runs the programs on frames in a small interpreter of the kernel's semantics.
"""

from __future__ import annotations

import ipaddress
import struct

from kbypass.errors import UsageError
from kbypass.steer.rules import PROTOS, RESERVED_ETHERTYPES, Rule

# classic BPF opcodes (linux/filter.h): ld word/half/byte absolute, ldh indirect, ldx 4*(IP header length)
_LD_W, _LD_H, _LD_B, _LDH_IND, _LDX_MSH = 0x20, 0x28, 0x30, 0x48, 0xB1
_AND_K, _JEQ_K, _JSET_K, _RET_K = 0x54, 0x15, 0x45, 0x06


def compile_filter(rule) -> bytes:
    """A classic BPF program (struct sock_filter[]) accepting the untagged frames `rule` matches.

    Supports proto, IPv4 src/dst (with prefix), sport and dport (non-first fragments never match a port),
    and EtherType rules: "ether 0x88b5" (that type) and bare "ether" (any frame whose EtherType at offset 12
    is not IPv4, IPv6 or a VLAN tag: "any non-IP frame", as the XDP steering program reads a bare ether rule).
    """
    if isinstance(rule, str):
        rule = Rule.parse(rule)
    if not isinstance(rule, Rule):
        raise UsageError(f"rule {rule!r}: give a steering rule like 'udp dport 4321'")
    if rule.action != "redirect":
        raise UsageError(f"rule '{rule}': PACKET_MMAP filters only select frames; drop the action "
                         f"'{rule.action}'")
    if rule.family == 6:
        raise UsageError(f"rule '{rule}': PACKET_MMAP filters match IPv4 only; use an IPv4 address or none")
    if rule.vlan is not None:  # the kernel hands a packet socket VLAN tags as metadata, not in the frame
        raise UsageError(f"rule '{rule}': PACKET_MMAP filters match untagged frames only; drop 'vlan "
                         f"{rule.vlan}' or use the afxdp backend")
    ins: list[tuple[int, int, int, int]] = []  # (code, jt, jf, k); jf/jt == -1 means "to drop"
    if rule.proto == "ether":  # an EtherType rule: the untagged frame's type field, nothing else
        ins.append((_LD_H, 0, 0, 12))
        if rule.ethertype is not None:
            ins.append((_JEQ_K, 0, -1, rule.ethertype))
        else:  # bare "ether": any non-IP frame, as in bpf/steer.h (IP and VLAN types never match)
            ins += [(_JEQ_K, -1, 0, t) for t in sorted(RESERVED_ETHERTYPES)]
        return _assemble(ins)
    ins += [(_LD_H, 0, 0, 12), (_JEQ_K, 0, -1, 0x0800)]
    if rule.proto != "any":
        ins += [(_LD_B, 0, 0, 23), (_JEQ_K, 0, -1, PROTOS[rule.proto])]
    for off, value in ((26, rule.src), (30, rule.dst)):
        if value is not None:
            net = ipaddress.IPv4Network(value)
            ins.append((_LD_W, 0, 0, off))
            if net.prefixlen < 32:
                ins.append((_AND_K, 0, 0, int(net.netmask)))
            ins.append((_JEQ_K, 0, -1, int(net.network_address)))
    if rule.sport is not None or rule.dport is not None:
        ins += [(_LD_H, 0, 0, 20), (_JSET_K, -1, 0, 0x1FFF), (_LDX_MSH, 0, 0, 14)]
        for off, value in ((14, rule.sport), (16, rule.dport)):
            if value is not None:
                ins += [(_LDH_IND, 0, 0, off), (_JEQ_K, 0, -1, value)]
    return _assemble(ins)


def _assemble(ins: list[tuple[int, int, int, int]]) -> bytes:
    """The program: the tests `ins`, then accept; a jump offset of -1 in `ins` goes to the final drop."""
    ins = ins + [(_RET_K, 0, 0, 0x40000)]
    drop = len(ins)
    ins.append((_RET_K, 0, 0, 0))
    out = b""
    for i, (code, jt, jf, k) in enumerate(ins):
        jt = drop - i - 1 if jt == -1 else jt
        jf = drop - i - 1 if jf == -1 else jf
        out += struct.pack("HBBI", code, jt, jf, k)
    return out
