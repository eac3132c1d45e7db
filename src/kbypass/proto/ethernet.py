"""Ethernet II framing: parse (bounds-checked, never raises) and build.

MAC addresses are 6-byte `bytes` everywhere inside kbypass; `mac_bytes` / `mac_str` convert at the edges.
"""

from __future__ import annotations

from typing import NamedTuple

ETH_HLEN = 14
ETH_ZLEN = 60  # minimum frame without FCS; short frames we build are padded to it
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IPV6 = 0x86DD
BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6

# drop reasons (counter names)
TRUNCATED = "eth_truncated"
BAD_SOURCE = "eth_bad_source"
VLAN = "eth_vlan"
UNKNOWN_ETHERTYPE = "eth_unknown_ethertype"


class EthernetHeader(NamedTuple):
    dst: bytes
    src: bytes
    ethertype: int


def mac_bytes(mac: str | bytes) -> bytes:
    """'02:00:00:00:00:01' (or '-' separated, or 6 raw bytes) -> 6 bytes; ValueError on anything else."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}")
        return bytes(mac)
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"not a MAC address: {mac!r} (expected aa:bb:cc:dd:ee:ff)")
    return bytes(int(p, 16) for p in parts)


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def is_multicast_mac(mac: bytes) -> bool:
    """Group bit set: multicast or broadcast. Never a valid source address."""
    return bool(mac[0] & 1)


def parse_ethernet(frame: bytes | memoryview) -> EthernetHeader | str:
    """Header of an untagged Ethernet II frame, or a drop-reason string. The payload starts at ETH_HLEN."""
    if len(frame) < ETH_HLEN:
        return TRUNCATED
    src = bytes(frame[6:12])
    if src[0] & 1:
        return BAD_SOURCE
    ethertype = (frame[12] << 8) | frame[13]
    return EthernetHeader(bytes(frame[0:6]), src, ethertype)


def build_ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes, *, pad: bool = False) -> bytes:
    """One frame (no FCS). `pad` fills it with zeros up to 60 bytes, as a NIC would for short frames."""
    frame = dst + src + ethertype.to_bytes(2, "big") + payload
    if pad and len(frame) < ETH_ZLEN:
        frame += bytes(ETH_ZLEN - len(frame))
    return frame
