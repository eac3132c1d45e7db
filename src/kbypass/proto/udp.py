"""UDP (RFC 768) over IPv4: bounds-checked parse with checksum check, builders, and batch helpers.

Slow path: `parse_udp` / `build_udp_frame` (one frame, bytes). Fast path: `frame_template` gives the
42 header bytes of a flow once; `write_lengths_batch` + `checksum.ipv4_fill_batch` +
`checksum.udp_fill_batch` finish a batch of frames in place; `classify_batch` picks the frames of a
received batch that are plain valid UDP to one of our ports, without a Python loop per frame.

One message at a time (the UDP endpoint's lane): `PlainUdp.accept` is `classify_batch` for one frame (one
port), and `UdpFlow.frame` builds one frame from a flow's template with an incremental checksum. They are
the one definition: the C lane (kbypass._fastlane, csrc/core/kb_lane) is held to them by the same-verdict
and byte-identical fuzz tests (tests/unit/test_endpoint_lane.py).

The transport's encapsulation (kbypass.xfer.encap.UdpEncap) uses the same two: `UdpFlow(...,
udp_checksum=False)` (UDP checksum 0, legal on IPv4, because the transport's CRC32 covers the datagram) and
`PeerUdp`, "a plain UDP datagram from this peer to us" (no checksum either, for the same reason). Their C
twins are csrc/core/kb_udp.c's kb_udp_finish and kb_udp_from_peer, which the transport codec (kb_xfer.c)
frames and takes runs with (tests/unit/test_transport_fastpath.py holds them to these).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from . import checksum as ck
from .checksum import IPPROTO_UDP, pseudo_header_sum, udp_checksum, verify
from .ethernet import ETH_HLEN, ETH_P_IP, build_ethernet
from .ipv4 import IPV4_HLEN, build_ipv4_header

UDP_HLEN = 8
MAX_PAYLOAD = 65535 - IPV4_HLEN - UDP_HLEN  # 65,507: IPv4's total length bounds a datagram
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
    flat = ck._writable(buf)
    addr = np.asarray(addr, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    if addr.size and (addr.min() < 0 or (addr + np.maximum(length, HEADERS_LEN)).max() > flat.shape[0]
                      or length.min() < HEADERS_LEN):
        raise ValueError("write_lengths_batch: frames must hold the 42 header bytes and lie inside the buffer")
    u16 = ck._view(flat, ">u2")
    u16[addr + 16] = length - ETH_HLEN
    u16[addr + 38] = length - (ETH_HLEN + IPV4_HLEN)


def _header_rule(mac: bytes, ip: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(mask, expected) over the 42 header bytes: (header & mask) == expected for plain UDP to us."""
    mask, want = np.zeros(HEADERS_LEN, np.uint8), np.zeros(HEADERS_LEN, np.uint8)
    mask[0:6], want[0:6] = 0xFF, np.frombuffer(mac, np.uint8)  # destination MAC
    mask[6] = 0x01  # group bit of the source MAC must be clear
    mask[12:15], want[12:15] = 0xFF, (0x08, 0x00, 0x45)  # IPv4, version 4, IHL 5 (no options)
    mask[20], mask[21] = 0x3F, 0xFF  # MF and fragment offset zero (DF and the reserved bit ignored)
    mask[23], want[23] = 0xFF, IPPROTO_UDP
    mask[30:34], want[30:34] = 0xFF, np.frombuffer(ip, np.uint8)  # destination IP
    return mask, want


def classify_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray, *, mac: bytes, ip: bytes,
                   ports: np.ndarray | None = None, accept_zero_checksum: bool = True,
                   broadcast: bytes | None = None) -> np.ndarray:
    """Bool mask of received frames that are well-formed, checksum-valid, unfragmented, option-less IPv4
    UDP to `mac`/`ip` (and to one of `ports` if given), with IP total length and UDP length consistent
    with the frame, from a plausible source (not multicast, loopback, 0/8, ourselves or `broadcast`).

    It is conservative: anything it refuses (ARP, ICMP, anything odd) goes to `Stack.receive` one frame at
    a time, which answers it or counts why it was dropped. Payload of an accepted frame i starts at
    addr[i] + 42 and is (UDP length - 8) bytes long; read the UDP length with `udp_lengths_batch`.

    Cost: the 42 header bytes of every frame are gathered once into a matrix and checked against a
    mask/expected pair; only the payload sum needs a second gather."""
    flat = ck._as_flat(buf)
    addr = np.asarray(addr, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    size = flat.shape[0]
    if size < HEADERS_LEN or addr.size == 0:
        return np.zeros(addr.shape, dtype=bool)
    ok = (addr >= 0) & (length >= HEADERS_LEN) & (addr + length <= size)
    a = np.where(ok, addr, 0)
    hdr = np.ndarray((size - HEADERS_LEN + 1, HEADERS_LEN), np.uint8, flat, 0, (1, 1))[a]
    mask, want = _header_rule(mac, ip)
    ok &= ((hdr & mask) == want).all(axis=1)
    w = hdr.view(">u2").astype(np.int64)  # 16-bit big-endian words at even offsets 0, 2, ... 40
    total, ulen, dport = w[:, 8], w[:, 19], w[:, 18]
    ok &= (total >= IPV4_HLEN + UDP_HLEN) & (total <= length - ETH_HLEN) & (ulen == total - IPV4_HLEN)
    ok &= (hdr[:, 22] != 0) & (dport != 0)  # TTL, destination port
    src_hi = w[:, 13]
    src = (src_hi << 16) | w[:, 14]
    ok &= (src_hi >= 0x0100) & (src_hi >> 8 != 127) & (src_hi < 0xE000) & (src != int.from_bytes(ip, "big"))
    if broadcast is not None:
        ok &= src != int.from_bytes(broadcast, "big")
    if ports is not None:
        ok &= np.isin(dport, ports)
    # IPv4 header checksum: words 7..16 are the 20 header bytes
    ok &= w[:, 7:17].sum(axis=1) % 0xFFFF == 0
    if not ok.any():
        return ok
    sel = None if ok.all() else np.flatnonzero(ok)
    if sel is not None:
        a, w, ulen = a[sel], w[sel], ulen[sel]
    # UDP: payload + header (from offset 34, UDP length bytes; padding excluded) + pseudo-header, whose
    # addresses are words 13..16 of the IP header
    usum = ck.ones_sum_batch(flat, a + ETH_HLEN + IPV4_HLEN, ulen) + w[:, 13:17].sum(axis=1) + IPPROTO_UDP + ulen
    good = usum % 0xFFFF == 0
    if accept_zero_checksum:
        good |= w[:, 20] == 0
    else:
        good &= w[:, 20] != 0
    if sel is None:
        return good
    ok[sel] = good
    return ok


def udp_lengths_batch(buf: np.ndarray, addr: np.ndarray) -> np.ndarray:
    """UDP length field (header + payload) of frames laid out as Ethernet + 20-byte IPv4 + UDP."""
    return ck._view(ck._as_flat(buf), ">u2")[np.asarray(addr, dtype=np.int64) + 38].astype(np.int64)


# ---------------------------------------------------------------------------------- one message at a time

_MOD = 0xFFFF
# Ethernet + IPv4 + UDP headers of a received frame: dst MAC, first byte of the source MAC, EtherType,
# version/IHL, fragment field, TTL, protocol, src, dst, ports, UDP length and checksum
_HDR = struct.Struct("!6sB5xHB5xHBB2x4s4sHHHH")
# the 42 header bytes of an outgoing frame: Ethernet + IPv4 up to the length, total length, ident,
# flags/TTL/protocol, checksum, addresses and ports, UDP length, UDP checksum
_OUT = struct.Struct("!16sHH4sH12sHH")


class PlainUdp:
    """"Plain valid UDP to us" for one frame: the scalar twin of `classify_batch` for one port.

    mac/ip/bcast are bytes (6, 4, 4 or None: the subnet's broadcast address, refused as a source); port is
    the UDP port. `accept(frame)` returns (payload, source IP as 4 bytes, source port), or None for anything
    else (the stack's business). The C lane takes the same four fields and is held to `accept`."""

    __slots__ = ("mac", "ip", "port", "bcast", "accept")

    def __init__(self, mac: bytes, ip: bytes, port: int, bcast: bytes | None = None) -> None:
        self.mac, self.ip, self.port, self.bcast = mac, ip, port, bcast
        self.accept = _acceptor(mac, ip, port, bcast)

    def __repr__(self) -> str:
        return f"<PlainUdp to {'.'.join(map(str, self.ip))}:{self.port}>"


def _acceptor(mac: bytes, ip: bytes, port: int, bcast: bytes | None):
    unpack, mod = _HDR.unpack_from, _MOD

    def accept(f: bytes):
        """(payload, src_ip4, src_port) for plain valid UDP to ip:port, else None. One unpack of the 42
        header bytes, then both checksums as big-integer sums mod 0xFFFF (see proto.checksum)."""
        n = len(f)
        if n < 42:
            return None
        (dmac, smac0, etype, vihl, frag, ttl, proto, src, dst, sport, dport, ulen, ucsum) = unpack(f)
        total = ulen + 20
        if (etype != 0x0800 or vihl != 0x45 or proto != 17 or dport != port or dst != ip
                or dmac != mac or smac0 & 1 or frag & 0x3FFF or not ttl
                or ((f[16] << 8) | f[17]) != total or ulen < 8 or total + 14 > n):
            return None
        if src[0] == 0 or src[0] == 127 or src[0] >= 224 or src == ip or src == bcast:
            return None
        if int.from_bytes(f[14:34], "big") % mod:
            return None
        end = 14 + total
        if ucsum:
            s = int.from_bytes(f[34:end], "big")
            if ulen & 1:
                s <<= 8
            if (s + int.from_bytes(f[26:34], "big") + 17 + ulen) % mod:
                return None
        return f[42:end], src, sport

    return accept


class UdpFlow:
    """One flow's outgoing header: `template` (the 42 bytes of `frame_template`) split once into the pieces
    `frame` packs around the computed fields, with the partial sums of the IP header and of the UDP
    pseudo-header and ports. Per message only the lengths, the IP ident and the payload are left to add
    (the C lane's send_udp takes `template` and does the same: kb_udp_finish).

    The template's lengths, ident and checksums are ignored (overwritten per frame). udp_checksum=False:
    the UDP checksum field is 0, "none" (legal over IPv4; the transport's CRC32 covers its datagrams)."""

    __slots__ = ("template", "head", "mid", "addrs", "ip_partial", "udp_partial", "udp_checksum")

    def __init__(self, template: bytes, *, udp_checksum: bool = True) -> None:
        if len(template) != HEADERS_LEN:
            raise ValueError(f"a flow template is {HEADERS_LEN} bytes, not {len(template)}")
        t = self.template = bytes(template)
        self.head, self.mid, self.addrs = t[0:16], t[20:24], t[26:38]
        self.udp_checksum = udp_checksum
        self.ip_partial = ck.ones_sum(t[14:16] + self.mid + t[26:34])  # the fixed words of the IP header
        self.udp_partial = (int.from_bytes(t[26:34], "big") + IPPROTO_UDP + int.from_bytes(t[34:38], "big")) % _MOD

    def frame(self, payload: bytes, ident: int) -> bytes:
        """One whole frame carrying payload, IP ident `ident`, lengths and both checksums filled in."""
        ulen = len(payload) + 8
        total = ulen + 20
        r = (self.ip_partial + total + ident) % _MOD
        if self.udp_checksum:
            r2 = (self.udp_partial + 2 * ulen + (int.from_bytes(payload, "big") << (8 * (ulen & 1)))) % _MOD
            u = (_MOD - r2 if r2 else 0) or 0xFFFF
        else:
            u = 0
        return _OUT.pack(self.head, total, ident, self.mid, _MOD - r if r else 0, self.addrs, ulen, u) + payload


# drop reasons of PeerUdp.reason (the transport endpoint's counter names)
NOT_UDP = "not_udp"  # too short, not IPv4/UDP, options or a fragment: not something a peer of ours sends
WRONG_PORT = "wrong_port"
WRONG_ADDRESS = "wrong_address"
LENGTHS = "bad_length"  # IP and UDP lengths that disagree or do not fit the frame
OTHER_PEER = "other_peer"  # valid, from another address or port
# bytes 12..39 of a received frame in one unpack: EtherType, version/IHL, total length, flags and fragment
# offset, protocol, addresses and ports (26..37: `PeerUdp.key`, compared as one string), UDP length
_PEER = struct.Struct("!12xHBxH2xHxB2x12sH")


class PeerUdp:
    """"A plain UDP datagram from this peer to us": IPv4 without options, not a fragment, IP and UDP
    lengths that agree and fit the frame, from peer_ip:peer_port to ip:port. No checksum is checked (the
    transport's CRC32 covers its datagrams) and neither MAC (frames from the socket port are synthetic).

    ip/peer_ip are 4 bytes; the peer may be set later (`set_peer`: a server learns it from the first SYN).
    `accept(f)`: the datagram (a slice of f) or None; its C twin is kb_udp_from_peer (the transport codec's
    rx_run). `reason(f)`: why accept refuses f, for the drop counters; None when it would take it after
    all: the socket port's synthetic frames may say 0.0.0.0 for us (`datagram(f)` takes those too).
    `source(f)`: (end of the datagram, source address bytes, source port, source MAC), or the reason."""

    __slots__ = ("ip", "port", "key")

    def __init__(self, ip: bytes, port: int, peer_ip: bytes | None = None, peer_port: int = 0) -> None:
        self.ip, self.port, self.key = ip, port, None
        if peer_ip is not None:
            self.set_peer(peer_ip, peer_port)

    def set_peer(self, peer_ip: bytes, peer_port: int) -> None:
        # bytes 26..37 of a frame from the peer to us: addresses and ports, compared at once
        self.key = bytes(peer_ip) + self.ip + peer_port.to_bytes(2, "big") + self.port.to_bytes(2, "big")

    def accept(self, f):
        if len(f) < HEADERS_LEN:
            return None
        etype, vihl, total, frag, proto, ends, ulen = _PEER.unpack_from(f)
        if (ends != self.key or etype != 0x0800 or vihl != 0x45 or proto != 17 or frag & 0x3FFF
                or total + ETH_HLEN > len(f) or ulen != total - 20 or ulen < 8):
            return None
        return f[HEADERS_LEN:ETH_HLEN + total]

    def source(self, f):
        if len(f) < HEADERS_LEN:
            return NOT_UDP
        etype, vihl, total, frag, proto, ends, ulen = _PEER.unpack_from(f)
        if etype != 0x0800 or vihl != 0x45 or proto != 17 or frag & 0x3FFF:
            return NOT_UDP  # options, fragments or another protocol: not something we send
        if (ends[10] << 8 | ends[11]) != self.port:
            return WRONG_PORT
        dst = ends[4:8]
        if dst != self.ip and dst != b"\0\0\0\0":
            return WRONG_ADDRESS
        if total + ETH_HLEN > len(f) or ulen != total - 20 or ulen < 8:
            return LENGTHS
        return ETH_HLEN + total, ends[0:4], ends[8] << 8 | ends[9], bytes(f[6:12])

    def datagram(self, f):
        """The datagram of a frame from the peer to us (a slice of f), else the reason (`source`'s, or
        OTHER_PEER for a valid frame from another address or port). set_peer first."""
        r = self.source(f)
        if type(r) is str:
            return r
        if self.key is None or r[1] != self.key[0:4] or r[2] != (self.key[8] << 8 | self.key[9]):
            return OTHER_PEER
        return f[HEADERS_LEN:r[0]]

    def datagrams(self, mv, addrs, lens, drops) -> list:
        """`datagram` over a batch of frames (in `mv` at addrs, lens): the datagrams (views of `mv`) of the
        frames from the peer, in order; every other frame counted in `drops` by its reason. A frame `accept`
        takes is recognised by one unpack and one comparison, inline (a call per frame cost as much
        again); any other goes through `datagram`."""
        key = self.key
        unpack = _PEER.unpack_from
        out = []
        for a, k in zip(addrs, lens):
            if k >= HEADERS_LEN:
                etype, vihl, total, frag, proto, ends, ulen = unpack(mv, a)
                if (ends == key and etype == 0x0800 and vihl == 0x45 and proto == 17 and not frag & 0x3FFF
                        and total + ETH_HLEN <= k and ulen == total - 20 and ulen >= 8):
                    out.append(mv[a + HEADERS_LEN:a + ETH_HLEN + total])
                    continue
            r = self.datagram(mv[a:a + k])
            if type(r) is str:
                drops[r] += 1
            else:
                out.append(r)
        return out

    def __repr__(self) -> str:
        return f"<PeerUdp to {'.'.join(map(str, self.ip))}:{self.port}>"
