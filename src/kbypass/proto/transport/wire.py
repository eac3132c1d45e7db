"""Wire format of the transport: one datagram = header + SACK blocks + payload + CRC32 trailer.

All integers are big-endian (network order)::

    offset size field
     0     1    version      (2: up to 200 SACK blocks; version 1 allowed 16)
     1     1    flags        SYN=0x01 ACK=0x02 FIN=0x04 RST=0x08 PING=0x10 MSG_END=0x20 MSG_MODE=0x40
     2     1    nsack        number of SACK blocks that follow the header (0..MAX_SACK_BLOCKS)
     3     1    reserved     must be 0
     4     4    src_id       connection id chosen by the sender of this datagram
     8     4    dst_id       connection id chosen by the receiver (0 in the first SYN)
    12     8    seq          stream offset of the first payload byte (a FIN occupies one unit after the data)
    20     8    ack          cumulative ack: next stream offset expected (valid when ACK is set)
    28     4    window       bytes the sender can still buffer beyond `ack` (receive-window flow control)
    32     4    tsval        sender's clock in microseconds mod 2**32, never 0
    36     4    tsecr        echo of the peer's latest tsval (0 = none); gives RTT samples without Karn ambiguity
    40     2    payload_len
    42     8*n  SACK blocks  (start - ack: u32, length: u32), each a received range above `ack`
    ..     len  payload
    -4     4    crc32        zlib.crc32 (IEEE 802.3 polynomial) over every byte before it

Sequence numbers are 64-bit stream offsets starting at 0, so they never wrap in practice and need no
serial-number arithmetic; stale datagrams of an older connection are rejected by the random connection ids.
SACK blocks are relative to `ack` so they cost 8 bytes, not 16. Up to MAX_SACK_BLOCKS (200) ride in a
datagram, as many as fit: a pure ACK has the room (178 in a 1472-byte datagram). Four (TCP's option-space
limit, and ours until 2026-11) were too few for a flight of hundreds of datagrams at 1% loss: five holes
happen, and a received range the sender is not told of, with SACKed data above it, looks lost and is sent
again. Sixteen (until 2026-12) were too few at 5% loss and a 1 MiB flight of 1426-byte segments (~37
holes): the sender retransmitted 5-6 times what was dropped (sim.measure_goodput, tests/unit/
test_transport_sack.py). The C codec (csrc/core/kb_xfer.c) encodes and takes only datagrams without SACK
blocks and leaves the others to this module, so the limit is this module's alone.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from .errors import RemoteProtocolError

# 2 since an ACK carries up to MAX_SACK_BLOCKS = 200 blocks: a version-1 peer would take those ACKs as
# bad_sack and drop them, so old and new peers refuse each other at the handshake instead (bad_version).
VERSION = 2

SYN = 0x01
ACK = 0x02
FIN = 0x04
RST = 0x08
PING = 0x10
MSG_END = 0x20
MSG_MODE = 0x40
KNOWN_FLAGS = SYN | ACK | FIN | RST | PING | MSG_END | MSG_MODE

_HEADER = struct.Struct("!BBBBIIQQIIIH")
_SACK = struct.Struct("!II")
_CRC = struct.Struct("!I")

HEADER_SIZE = _HEADER.size  # 42
SACK_SIZE = _SACK.size  # 8
CRC_SIZE = _CRC.size  # 4
OVERHEAD = HEADER_SIZE + CRC_SIZE  # bytes around a payload with no SACK blocks
MAX_SACK_BLOCKS = 200  # (nsack is a byte; a full pure ACK of a 1500-byte MTU holds 178)
MAX_U32 = 0xFFFFFFFF
MAX_U64 = 0xFFFFFFFFFFFFFFFF


class Packet(NamedTuple):
    """One decoded datagram. `sacks` holds absolute (start, end) stream ranges, end exclusive.

    A NamedTuple, not a frozen dataclass: every datagram in and out makes one, and a tuple is built in
    C (a frozen dataclass's __init__ sets each of its ten fields through object.__setattr__, about 1.5 us
    a packet here, a tenth of the whole per-datagram budget). Immutable and compared field by field
    all the same."""

    flags: int
    src_id: int
    dst_id: int
    seq: int = 0
    ack: int = 0
    window: int = 0
    tsval: int = 0
    tsecr: int = 0
    sacks: tuple[tuple[int, int], ...] = ()
    payload: bytes = b""

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def seq_len(self) -> int:
        """Sequence space the packet occupies: payload bytes plus one for a FIN."""
        return len(self.payload) + (1 if self.flags & FIN else 0)


def encode(pkt: Packet, max_size: int | None = None) -> bytes:
    """Serialize `pkt`. SACK blocks that do not fit in `max_size` are left off (the first ones are kept,
    so put the most useful block first); the payload must fit or ValueError is raised (a caller bug)."""
    return encode_fields(pkt.flags, pkt.src_id, pkt.dst_id, pkt.seq, pkt.ack, pkt.window, pkt.tsval, pkt.tsecr,
                         pkt.sacks, pkt.payload, max_size)


def encode_fields(flags: int, src_id: int, dst_id: int, seq: int, ack: int, window: int, tsval: int, tsecr: int,
                  sacks, payload: bytes, max_size: int | None = None) -> bytes:
    """`encode` without building a Packet first. The reference encoder: a Connection encodes through its
    codec (codec.py; the C one builds a datagram without SACK blocks in one call) and comes here for the
    rest."""
    plen = len(payload)
    nsack = min(len(sacks), MAX_SACK_BLOCKS)
    if max_size is not None:
        room = max_size - OVERHEAD - plen
        if room < 0:
            raise ValueError(f"payload of {plen} bytes does not fit a {max_size}-byte datagram")
        nsack = min(nsack, room // SACK_SIZE)
    head = _HEADER_PACK(VERSION, flags, nsack, 0, src_id, dst_id, seq, ack, window, tsval, tsecr, plen)
    if nsack:
        head += b"".join([_SACK_PACK(start - ack, end - start) for start, end in sacks[:nsack]])
    # the CRC runs on over the payload where it lies, so the payload is copied once, into the datagram
    return b"".join((head, payload, _CRC_PACK(_crc32(payload, _crc32(head)))))


def decode(data: bytes) -> Packet:
    """Parse and verify one datagram; raise RemoteProtocolError(reason) for anything malformed.

    The CRC is checked before any field is trusted, so a corrupted datagram is always reported as
    `bad_crc` (a 1-in-2**32 chance for random garbage aside)."""
    n = len(data)
    if n < OVERHEAD:
        raise RemoteProtocolError("too_short", f"{n} bytes, header needs {OVERHEAD}")
    mv = memoryview(data)
    if _crc32(mv[: n - CRC_SIZE]) != _CRC_UNPACK_FROM(mv, n - CRC_SIZE)[0]:
        raise RemoteProtocolError("bad_crc")
    version, flags, nsack, reserved, src, dst, seq, ack, window, tsval, tsecr, plen = _HEADER_UNPACK_FROM(mv, 0)
    if (version != VERSION or reserved or flags & ~KNOWN_FLAGS or nsack or OVERHEAD + plen != n or not src
            or seq + plen + 1 > MAX_U64):
        return _decode_checked(mv, n)  # the rare case: SACK blocks, or something to refuse with its reason
    # the common data datagram or pure ACK: checks above, no SACK blocks; built as a tuple, in C
    return _new_packet(Packet, (flags, src, dst, seq, ack, window, tsval, tsecr, (),
                                bytes(mv[HEADER_SIZE : HEADER_SIZE + plen])))


def _decode_checked(mv: memoryview, n: int) -> Packet:
    """Every check of the header, in the order that decides the reason; the CRC is already verified."""
    version, flags, nsack, reserved, src, dst, seq, ack, window, tsval, tsecr, plen = _HEADER_UNPACK_FROM(mv, 0)
    if version != VERSION:
        raise RemoteProtocolError("bad_version", f"version {version}, we speak {VERSION}")
    if reserved != 0 or flags & ~KNOWN_FLAGS:
        raise RemoteProtocolError("bad_flags", f"flags {flags:#x} reserved {reserved}")
    if nsack > MAX_SACK_BLOCKS:
        raise RemoteProtocolError("bad_sack", f"{nsack} SACK blocks, at most {MAX_SACK_BLOCKS}")
    if OVERHEAD + nsack * SACK_SIZE + plen != n:
        raise RemoteProtocolError("bad_length", f"lengths add to {OVERHEAD + nsack * SACK_SIZE + plen}, got {n}")
    if src == 0:
        raise RemoteProtocolError("bad_id", "source connection id 0")
    if seq + plen + 1 > MAX_U64:
        raise RemoteProtocolError("bad_seq")
    sacks = []
    off = HEADER_SIZE + nsack * SACK_SIZE
    for rel, length in _SACK.iter_unpack(mv[HEADER_SIZE:off]):  # (up to 200 blocks: one C loop, not 200 calls)
        if rel == 0 or length == 0 or ack + rel + length > MAX_U64:
            raise RemoteProtocolError("bad_sack", f"block +{rel} len {length}")
        sacks.append((ack + rel, ack + rel + length))
    payload = bytes(mv[off : off + plen])
    return Packet(flags, src, dst, seq, ack, window, tsval, tsecr, tuple(sacks), payload)


# bound once: these run for every datagram
_HEADER_PACK = _HEADER.pack
_HEADER_UNPACK_FROM = _HEADER.unpack_from
_SACK_PACK = _SACK.pack
_CRC_PACK = _CRC.pack
_CRC_UNPACK_FROM = _CRC.unpack_from
_crc32 = zlib.crc32
_new_packet = tuple.__new__
