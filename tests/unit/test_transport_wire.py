"""The packet codec: round trips, and every kind of malformed datagram refused with its reason."""

import struct
import zlib

import pytest

from kbypass.proto.transport import wire
from kbypass.proto.transport.errors import RemoteProtocolError

PKT = wire.Packet(
    flags=wire.ACK | wire.MSG_END, src_id=0x11223344, dst_id=0x55667788, seq=1 << 40, ack=5000,
    window=65536, tsval=123456, tsecr=654321, sacks=((6000, 7000), (9000, 9500)), payload=b"hello world",
)


def reason(data):
    with pytest.raises(RemoteProtocolError) as ei:
        wire.decode(data)
    return ei.value.reason


def recrc(body: bytes) -> bytes:
    """Re-seal a tampered datagram with a valid CRC, to reach the checks behind the CRC."""
    return body + struct.pack("!I", zlib.crc32(body))


def test_round_trip_keeps_every_field():
    data = wire.encode(PKT)
    assert len(data) == wire.OVERHEAD + 2 * wire.SACK_SIZE + len(PKT.payload)
    assert wire.decode(data) == PKT


def test_header_layout_is_as_documented():
    data = wire.encode(PKT)
    assert data[0] == wire.VERSION and data[1] == PKT.flags and data[2] == 2 and data[3] == 0
    assert struct.unpack_from("!IIQQIIIH", data, 4) == (
        PKT.src_id, PKT.dst_id, PKT.seq, PKT.ack, PKT.window, PKT.tsval, PKT.tsecr, len(PKT.payload))
    assert struct.unpack_from("!II", data, wire.HEADER_SIZE) == (1000, 1000)  # relative to ack
    assert data[-4:] == struct.pack("!I", zlib.crc32(data[:-4]))


def test_sack_blocks_that_do_not_fit_are_left_off_first_kept():
    size = wire.OVERHEAD + len(PKT.payload) + wire.SACK_SIZE  # room for exactly one block
    got = wire.decode(wire.encode(PKT, max_size=size))
    assert got.sacks == ((6000, 7000),)
    with pytest.raises(ValueError):
        wire.encode(PKT, max_size=wire.OVERHEAD + 3)


def test_seq_len_counts_fin_as_one():
    assert wire.Packet(wire.FIN, 1, 2, payload=b"ab").seq_len == 3
    assert wire.Packet(wire.ACK, 1, 2).seq_len == 0


@pytest.mark.parametrize("cut", range(0, 70))
def test_truncated_at_every_offset_is_refused(cut):
    data = wire.encode(PKT)
    assert cut < len(data)
    r = reason(data[:cut])
    assert r in ("too_short", "bad_crc")


def test_every_single_bit_flip_is_caught_by_the_crc():
    data = wire.encode(PKT)
    for bit in range(len(data) * 8):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert reason(bytes(bad)) == "bad_crc"


def test_fields_behind_a_valid_crc_are_still_checked():
    body = bytearray(wire.encode(PKT)[:-4])
    v = bytearray(body); v[0] = wire.VERSION - 1  # version 1 (at most 16 SACK blocks) is refused
    assert reason(recrc(bytes(v))) == "bad_version"
    f = bytearray(body); f[1] |= 0x80
    assert reason(recrc(bytes(f))) == "bad_flags"
    r = bytearray(body); r[3] = 1
    assert reason(recrc(bytes(r))) == "bad_flags"
    n = bytearray(body); n[2] = 3  # says three SACK blocks, has two: lengths no longer add up
    assert reason(recrc(bytes(n))) == "bad_length"
    n5 = bytearray(body); n5[2] = wire.MAX_SACK_BLOCKS + 1
    assert reason(recrc(bytes(n5))) == "bad_sack"
    pl = bytearray(body); struct.pack_into("!H", pl, 40, 500)  # payload length lies
    assert reason(recrc(bytes(pl))) == "bad_length"
    src = bytearray(body); struct.pack_into("!I", src, 4, 0)
    assert reason(recrc(bytes(src))) == "bad_id"
    zero = bytearray(body); struct.pack_into("!II", zero, wire.HEADER_SIZE, 0, 10)  # block at ack
    assert reason(recrc(bytes(zero))) == "bad_sack"
    empty = bytearray(body); struct.pack_into("!II", empty, wire.HEADER_SIZE, 10, 0)
    assert reason(recrc(bytes(empty))) == "bad_sack"
    huge = bytearray(body); struct.pack_into("!Q", huge, 12, wire.MAX_U64)
    assert reason(recrc(bytes(huge))) == "bad_seq"


def test_up_to_max_sack_blocks_round_trip_and_one_more_is_refused():
    blocks = tuple((10_000 + 3000 * i, 11_000 + 3000 * i) for i in range(wire.MAX_SACK_BLOCKS + 3))
    pkt = wire.Packet(wire.ACK, 1, 2, ack=5000, window=1 << 20, tsval=9, sacks=blocks)
    got = wire.decode(wire.encode(pkt, max_size=65507))
    assert wire.MAX_SACK_BLOCKS >= 178 and got.sacks == blocks[: wire.MAX_SACK_BLOCKS]
    fit = (1472 - wire.OVERHEAD) // wire.SACK_SIZE  # a pure ACK of a 1500-byte MTU: as many as fit
    assert wire.decode(wire.encode(pkt, max_size=1472)).sacks == blocks[:fit] and fit == 178
    body = bytearray(wire.encode(wire.Packet(wire.ACK, 1, 2, ack=5000, sacks=blocks[:1]))[:-4])
    body[2] = wire.MAX_SACK_BLOCKS + 1
    body += bytes(wire.SACK_SIZE * wire.MAX_SACK_BLOCKS)
    assert reason(recrc(bytes(body))) == "bad_sack"
