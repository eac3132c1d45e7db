"""Frame templates for the generators: one IPv4/UDP frame of an exact size, stamped payload room included."""

from __future__ import annotations

import ipaddress

from kbypass.errors import UsageError
from kbypass.proto.ethernet import mac_bytes
from kbypass.proto.ipv4 import ip_bytes
from kbypass.proto.stamp import ETH_IPV4_UDP
from kbypass.proto.udp import build_udp_frame


def udp_template(src_mac: str, dst_mac: str, src_ip: str, sport: int, dst_ip: str, dport: int, size: int) -> bytes:
    """A `size`-byte Ethernet/IPv4/UDP frame (no FCS) with a zero payload and a UDP checksum of zero:
    generators rewrite the payload per frame, and zero means "no checksum" in IPv4 UDP."""
    for what, ip in (("source", src_ip), ("destination", dst_ip)):
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise UsageError(f"{what} address {ip!r} is not an IPv4 address") from None
    for what, port in (("source", sport), ("destination", dport)):
        if not 0 <= port <= 65535:
            raise UsageError(f"{what} port {port} is out of range 0-65535")
    if size < ETH_IPV4_UDP:
        raise UsageError(f"frame size {size}: an IPv4/UDP frame needs at least {ETH_IPV4_UDP} bytes")
    frame = bytearray(build_udp_frame(mac_bytes(src_mac), mac_bytes(dst_mac), ip_bytes(src_ip), ip_bytes(dst_ip),
                                      sport, dport, bytes(size - ETH_IPV4_UDP)))
    frame[40:42] = b"\0\0"
    return bytes(frame)
