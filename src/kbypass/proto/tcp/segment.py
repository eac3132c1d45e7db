"""The TCP segment codec (RFC 9293 section 3.1, options of RFC 7323 and RFC 2018), checksum over the IPv4
pseudo-header.

`parse_segment` refuses what cannot be a segment (too short, a data offset that lies, a bad checksum) with a
`TcpParseError` naming the reason. Options are parsed as Linux does (tcp_parse_options): an option whose
length byte is impossible ends the scan, a known option with the wrong length is ignored, unknown options are
skipped; none of these refuses the segment.

`Segment.encode` lays options out as Linux does, so captures look familiar and the header stays 4-aligned:
SYN: MSS, SACK-permitted + timestamps (or NOP NOP timestamps), NOP window scale; others: NOP NOP timestamps,
NOP NOP SACK blocks.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

from kbypass.proto.checksum import checksum_field, ones_sum, pseudo_header_sum
from kbypass.proto.ipv4 import ip_bytes

from .errors import TcpParseError

IPPROTO_TCP = 6

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_FLAG_NAMES = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"), (ECE, "E"), (CWR, "W"))

OPT_EOL, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERM, OPT_SACK, OPT_TS = 0, 1, 2, 3, 4, 5, 8
MAX_WSCALE = 14  # RFC 7323 2.3: a larger shift is used as 14
MAX_SACK_BLOCKS = 4  # 2 + 4 * 8 = 34 bytes fits the 40 of option space; 3 when timestamps take 12

_HDR = struct.Struct("!HHIIBBHHH")


@functools.lru_cache(maxsize=4096)
def _ip_of_str(ip: str) -> bytes:
    return ip_bytes(ip)


def ip4(ip: str | bytes) -> bytes:
    """4 address bytes; dotted strings are cached (every segment names its two addresses)."""
    return _ip_of_str(ip) if isinstance(ip, str) else ip_bytes(ip)


class Options(NamedTuple):
    """TCP options of one segment. None / False / () mean "absent". Immutable (a NamedTuple: seven times
    cheaper to make than a frozen dataclass, and every segment makes one or two)."""

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None  # (TSval, TSecr)
    sack: tuple[tuple[int, int], ...] = ()  # (left edge, right edge) wire sequence numbers

    def encode(self, syn: bool) -> bytes:
        out = bytearray()
        if self.mss is not None:
            out += struct.pack("!BBH", OPT_MSS, 4, self.mss)
        if self.timestamps is not None:
            out += bytes((OPT_SACK_PERM, 2)) if (syn and self.sack_permitted) else bytes((OPT_NOP, OPT_NOP))
            out += struct.pack("!BBII", OPT_TS, 10, *self.timestamps)
        elif syn and self.sack_permitted:
            out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2))
        if self.wscale is not None:
            out += bytes((OPT_NOP, OPT_WSCALE, 3, self.wscale))
        if self.sack:
            room = (40 - len(out) - 4) // 8
            blocks = self.sack[:room]
            out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks)))
            for left, right in blocks:
                out += struct.pack("!II", left, right)
        return bytes(out)


NO_OPTIONS = Options()


class Segment(NamedTuple):
    """One TCP segment, as on the wire (32-bit sequence numbers, the unscaled window field). Immutable."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    options: Options = NO_OPTIONS
    payload: bytes = b""
    urgent: int = 0

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: payload plus one each for SYN and FIN."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    def encode(self, src_ip: str | bytes, dst_ip: str | bytes) -> bytes:
        """The segment's bytes with its checksum filled for the IPv4 pseudo-header src_ip -> dst_ip."""
        opts = b"" if self.options is NO_OPTIONS else self.options.encode(bool(self.flags & SYN))
        if len(opts) & 3:
            opts += b"\x00" * (4 - (len(opts) & 3))  # EOL padding
        if len(opts) > 40:
            raise ValueError(f"TCP options take {len(opts)} bytes, at most 40 fit")
        hlen = 20 + len(opts)
        payload = self.payload
        fields = (self.src_port, self.dst_port, self.seq & 0xFFFFFFFF, self.ack & 0xFFFFFFFF, (hlen // 4) << 4,
                  self.flags, self.window)
        head = _HDR.pack(*fields, 0, self.urgent) + opts
        # the header is 4-aligned, so the payload's words line up: sum the parts, copy the payload once
        total = (pseudo_header_sum(ip4(src_ip), ip4(dst_ip), IPPROTO_TCP, hlen + len(payload)) + ones_sum(head)
                 + (ones_sum(payload) if payload else 0))
        csum = checksum_field(total)  # the pseudo-header is never all zeros (protocol 6)
        return b"".join((_HDR.pack(*fields, csum, self.urgent), opts, payload))

    def with_(self, **kw) -> Segment:
        return self._replace(**kw)

    def __str__(self) -> str:
        fl = "".join(n for f, n in _FLAG_NAMES if self.flags & f) or "-"
        return (f"{self.src_port}>{self.dst_port} [{fl}] seq={self.seq} ack={self.ack} win={self.window} "
                f"len={len(self.payload)} {self.options}")


def parse_options(raw: bytes | memoryview) -> Options:
    mss = wscale = ts = None
    sack_ok = False
    sack: tuple[tuple[int, int], ...] = ()
    i, n = 0, len(raw)
    while i < n:
        kind = raw[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            break
        size = raw[i + 1]
        if size < 2 or i + size > n:
            break  # "silly option": stop, as Linux does
        if kind == OPT_MSS and size == 4:
            mss = (raw[i + 2] << 8) | raw[i + 3]
        elif kind == OPT_WSCALE and size == 3:
            wscale = min(raw[i + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERM and size == 2:
            sack_ok = True
        elif kind == OPT_TS and size == 10:
            ts = struct.unpack_from("!II", raw, i + 2)
        elif kind == OPT_SACK and size >= 10 and (size - 2) % 8 == 0:
            words = struct.unpack_from(f"!{(size - 2) // 4}I", raw, i + 2)
            sack = tuple(zip(words[0::2], words[1::2]))
        i += size
    if mss is None and wscale is None and ts is None and not sack_ok and not sack:
        return NO_OPTIONS
    return Options(mss, wscale, sack_ok, ts, sack)


def parse_segment(src_ip: str | bytes, dst_ip: str | bytes, raw: bytes | bytearray | memoryview,
                  *, verify_checksum: bool = True) -> Segment:
    """Parse one TCP segment (exactly the bytes the IPv4 total length gives). Raises TcpParseError.

    `verify_checksum=False` is for a NIC (or veth) that already verified it."""
    n = len(raw)
    if n < 20:
        raise TcpParseError("truncated", f"{n} bytes, a TCP header is at least 20")
    sport, dport, seq, ack, off, flags, window, _csum, urgent = _HDR.unpack_from(raw)
    hlen = (off >> 4) * 4
    if hlen < 20 or hlen > n:
        raise TcpParseError("bad data offset", f"header length {hlen} in a {n}-byte segment")
    if verify_checksum:
        total = pseudo_header_sum(ip4(src_ip), ip4(dst_ip), IPPROTO_TCP, n) + ones_sum(raw)
        if total % 0xFFFF:
            raise TcpParseError("bad checksum")
    opts = parse_options(raw[20:hlen]) if hlen > 20 else NO_OPTIONS
    return Segment(sport, dport, seq, ack, flags, window, opts, bytes(raw[hlen:]), urgent)
