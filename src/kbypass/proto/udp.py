"""UDP (RFC 768) over IPv4: bounds-checked parse with checksum check, builders, and batch helpers.

Slow path: `parse_udp` / `build_udp_frame` (one frame, bytes). Fast path: `frame_template` gives the
42 header bytes of a flow once; `write_lengths_batch` + `checksum.ipv4_fill_batch` +
`checksum.udp_fill_batch` finish a batch of frames in place; `classify_batch` picks the frames of a
received batch that are plain valid UDP to one of our ports, without a Python loop per frame.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import checksum as ck
from .checksum import IPPROTO_UDP, pseudo_header_sum, udp_checksum, verify
from .ethernet import ETH_HLEN, ETH_P_IP, build_ethernet
from .ipv4 import FLAG_MF, IPV4_HLEN, OFFSET_MASK, build_ipv4_header

UDP_HLEN = 8
HEADERS_LEN = ETH_HLEN + IPV4_HLEN + UDP_HLEN  # 42

# drop reasons (counter names)
TRUNCATED = "udp_truncated"  # fewer than 8 bytes of IP payload
BAD_LENGTH = "udp_bad_length"  # UDP length field < 8 (includes 0)
LENGTH_LIES = "udp_length_lies"  # UDP length field > IP payload
BAD_CHECKSUM = "udp_bad_checksum"
NO_CHECKSUM = "udp_no_checksum"  # zero checksum field refused (when the stack is told to)
PORT_ZERO = "udp_port_zero"


class UdpHeader(NamedTuple):
    src_port: int
    dst_port: int
    length: int  # UDP length (header + payload); payload is segment[8:length]
    checksum: int


def parse_udp(segment: bytes | memoryview, src_ip: bytes, dst_ip: bytes, *,
              accept_zero_checksum: bool = True) -> UdpHeader | str:
    """Validate the UDP header at the start of `segment` (the IP payload, exactly total_length - IHL
    bytes) and its checksum. Returns the header or a drop-reason string."""
    n = len(segment)
    if n < UDP_HLEN:
        return TRUNCATED
    length = (segment[4] << 8) | segment[5]
    if length < UDP_HLEN:
        return BAD_LENGTH
    if length > n:
        return LENGTH_LIES
    csum = (segment[6] << 8) | segment[7]
    if csum == 0:
        if not accept_zero_checksum:
            return NO_CHECKSUM
    elif not verify(segment[:length], pseudo_header_sum(src_ip, dst_ip, IPPROTO_UDP, length)):
        return BAD_CHECKSUM
    dport = (segment[2] << 8) | segment[3]
    if dport == 0:
        return PORT_ZERO
    return UdpHeader((segment[0] << 8) | segment[1], dport, length, csum)


def build_udp(src_ip: bytes, dst_ip: bytes, src_port: int, dst_port: int, payload: bytes) -> bytes:
    """UDP header + payload with the checksum filled in."""
    length = UDP_HLEN + len(payload)
    head = src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big") + length.to_bytes(2, "big")
    c = udp_checksum(src_ip, dst_ip, head + b"\0\0" + payload)
    return head + c.to_bytes(2, "big") + payload


def build_udp_frame(src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes, src_port: int,
                    dst_port: int, payload: bytes, *, ident: int = 0, ttl: int = 64) -> bytes:
    """A whole Ethernet + IPv4 + UDP frame, checksums filled in."""
    seg = build_udp(src_ip, dst_ip, src_port, dst_port, payload)
    ip = build_ipv4_header(src_ip, dst_ip, IPPROTO_UDP, len(seg), ident=ident, ttl=ttl)
    return build_ethernet(dst_mac, src_mac, ETH_P_IP, ip + seg)


# ---------------------------------------------------------------------------------------------- batches


def frame_template(src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes, src_port: int,
                   dst_port: int, *, ttl: int = 64) -> bytes:
    """The 42 header bytes of one flow with lengths and checksums zero: copy it in front of each payload,
    then `write_lengths_batch`, `checksum.ipv4_fill_batch`, `checksum.udp_fill_batch`."""
    frame = bytearray(build_udp_frame(src_mac, dst_mac, src_ip, dst_ip, src_port, dst_port, b"", ttl=ttl))
    frame[16:18] = b"\0\0"  # IP total length
    frame[24:26] = b"\0\0"  # IP checksum
    frame[38:40] = b"\0\0"  # UDP length
    frame[40:42] = b"\0\0"  # UDP checksum
    return bytes(frame)


def write_lengths_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray) -> None:
    """Set IP total length and UDP length of frames that start with a 42-byte template, from frame lengths."""
    flat = buf.reshape(-1)
    addr = np.asarray(addr, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    ck._put16(flat, addr + 16, length - ETH_HLEN)
    ck._put16(flat, addr + 38, length - ETH_HLEN - IPV4_HLEN)


def classify_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray, *, mac: bytes, ip: bytes,
                   ports: np.ndarray | None = None, accept_zero_checksum: bool = True) -> np.ndarray:
    """Bool mask of received frames that are well-formed, checksum-valid, unfragmented, option-less IPv4
    UDP to `mac`/`ip` (and to one of `ports` if given), with IP total length and UDP length consistent
    with the frame. Everything else (ARP, ICMP, anything odd) should go to `Stack.receive` one by one,
    which counts why it was dropped. Payload of frame i: UDP offset 42, length udp_len - 8."""
    flat = buf.reshape(-1)
    addr = np.asarray(addr, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    ok = (length >= HEADERS_LEN) & (addr >= 0) & (addr + length <= flat.shape[0])
    a = np.where(ok, addr, 0)
    mac_v = np.frombuffer(mac, dtype=np.uint8)
    ok &= (flat[a[:, None] + np.arange(6)] == mac_v).all(axis=1)
    ok &= (flat[a + 12] == 0x08) & (flat[a + 13] == 0x00) & (flat[a + 14] == 0x45) & (flat[a + 23] == IPPROTO_UDP)
    ok &= ~(flat[a + 6] & 1).astype(bool)  # group bit in source MAC
    total = ck._be16(flat, a + 16)
    ok &= (total >= IPV4_HLEN + UDP_HLEN) & (total <= length - ETH_HLEN)
    ok &= (ck._be16(flat, a + 20) & (FLAG_MF | OFFSET_MASK)) == 0
    ok &= flat[a + 22] != 0
    src0 = flat[a + 26]
    ok &= (src0 != 127) & (src0 < 224)
    ok &= (flat[a[:, None] + 30 + np.arange(4)] == np.frombuffer(ip, dtype=np.uint8)).all(axis=1)
    ulen = ck._be16(flat, a + 38)
    ok &= ulen == total - IPV4_HLEN
    dport = ck._be16(flat, a + 36)
    ok &= dport != 0
    if ports is not None:
        ok &= np.isin(dport, ports)
    if not ok.any():
        return ok
    idx = np.flatnonzero(ok)
    # checksums only for the survivors; the IP total length bounds the UDP sum (padding excluded)
    sub_len = ETH_HLEN + total[idx]
    ok[idx] &= ck.ipv4_verify_batch(flat, addr[idx], sub_len)
    ok[idx] &= ck.udp_verify_batch(flat, addr[idx], sub_len, accept_zero=accept_zero_checksum)
    return ok
