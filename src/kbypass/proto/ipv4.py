"""IPv4 header (RFC 791): bounds-checked parse that returns a drop reason instead of raising, and build.

Options and fragments are refused (counted by the caller): a low-latency UDP endpoint never needs them,
and reassembly done right (timeouts, overlap rules, memory bounds) costs more than it is worth here.
Addresses are 4-byte `bytes` inside kbypass; `ip_bytes` / `ip_str` convert at the edges.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from .checksum import internet_checksum, ones_sum

IPV4_HLEN = 20
DEFAULT_TTL = 64
FLAG_DF = 0x4000
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF

# drop reasons (counter names), in the order they are checked
TRUNCATED = "ip_truncated"
BAD_VERSION = "ip_bad_version"
BAD_IHL = "ip_bad_ihl"  # IHL < 5
BAD_LENGTH = "ip_bad_length"  # total length smaller than the header
LENGTH_LIES = "ip_length_lies"  # total length (or IHL) beyond the bytes received
BAD_CHECKSUM = "ip_bad_checksum"
OPTIONS = "ip_options"
FRAGMENT = "ip_fragment"
TTL_ZERO = "ip_ttl_zero"
BAD_SOURCE = "ip_bad_source"  # 0/8 (0.0.0.0 too), multicast, broadcast, loopback, class E source


class Ipv4Header(NamedTuple):
    src: bytes
    dst: bytes
    proto: int
    ttl: int
    ident: int
    tos: int
    total_length: int
    header_length: int  # bytes; payload is data[header_length:total_length]


def ip_bytes(ip: str | bytes | ipaddress.IPv4Address) -> bytes:
    if isinstance(ip, (bytes, bytearray)):
        if len(ip) != 4:
            raise ValueError(f"an IPv4 address is 4 bytes, got {len(ip)}")
        return bytes(ip)
    return ipaddress.IPv4Address(ip).packed


def ip_str(ip: bytes) -> str:
    return str(ipaddress.IPv4Address(ip))


def is_bad_source(src: bytes) -> bool:
    """Addresses a unicast IPv4 packet to us may not come from: 0/8 (0.0.0.0 included: only a host
    without an address uses it, for DHCP, which kbypass does not serve; Linux drops it as a martian),
    loopback, multicast, class E and the limited broadcast. (Subnet-directed broadcast needs the prefix;
    the stack checks it.) The fast paths (`udp.classify_batch`, the endpoint's lanes) refuse the same."""
    first = src[0]
    return first == 0 or first == 127 or first >= 224


def parse_ipv4(data: bytes | memoryview) -> Ipv4Header | str:
    """Parse and validate an IPv4 header at the start of `data` (an Ethernet payload, padding allowed).

    Returns the header or a drop-reason string. Trailing bytes past total_length (Ethernet padding) are
    ignored by the caller via header.total_length."""
    n = len(data)
    if n < IPV4_HLEN:
        return TRUNCATED
    vihl = data[0]
    if vihl >> 4 != 4:
        return BAD_VERSION
    hlen = (vihl & 0x0F) * 4
    if hlen < IPV4_HLEN:
        return BAD_IHL
    if hlen > n:
        return LENGTH_LIES
    total = (data[2] << 8) | data[3]
    if total < hlen:
        return BAD_LENGTH
    if total > n:
        return LENGTH_LIES
    if ones_sum(data[:hlen]) != 0:
        return BAD_CHECKSUM
    if hlen != IPV4_HLEN:
        return OPTIONS
    frag = (data[6] << 8) | data[7]
    if frag & (FLAG_MF | OFFSET_MASK):
        return FRAGMENT
    ttl = data[8]
    if ttl == 0:
        return TTL_ZERO
    src = bytes(data[12:16])
    if is_bad_source(src):
        return BAD_SOURCE
    return Ipv4Header(src, bytes(data[16:20]), data[9], ttl, (data[4] << 8) | data[5], data[1], total, hlen)


def build_ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, *, ident: int = 0,
                      ttl: int = DEFAULT_TTL, tos: int = 0, df: bool = True) -> bytes:
    """A 20-byte header with a correct checksum."""
    total = IPV4_HLEN + payload_len
    if total > 0xFFFF:
        raise ValueError(f"IPv4 packet of {total} bytes exceeds 65535")
    head = bytearray(IPV4_HLEN)
    head[0] = 0x45
    head[1] = tos
    head[2:4] = total.to_bytes(2, "big")
    head[4:6] = (ident & 0xFFFF).to_bytes(2, "big")
    head[6:8] = (FLAG_DF if df else 0).to_bytes(2, "big")
    head[8] = ttl
    head[9] = proto
    head[12:16] = src
    head[16:20] = dst
    head[10:12] = internet_checksum(head).to_bytes(2, "big")
    return bytes(head)


def build_ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, **kw) -> bytes:
    return build_ipv4_header(src, dst, proto, len(payload), **kw) + payload


def multicast_mac(ip: bytes) -> bytes:
    """RFC 1112 mapping of an IPv4 multicast group to its Ethernet address."""
    return bytes((0x01, 0x00, 0x5E, ip[1] & 0x7F, ip[2], ip[3]))
