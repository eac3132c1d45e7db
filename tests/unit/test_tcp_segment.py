"""The TCP codec against scapy as the independent judge: our bytes parse in scapy with the checksum scapy
computes, scapy's bytes parse in ours, options at every length, truncation and lying offsets refused."""

import random

import pytest
from scapy.layers.inet import IP, TCP

from kbypass.proto import tcp
from kbypass.proto.tcp.segment import parse_options

A, B = "10.1.0.1", "10.1.0.2"


def scapy_raw(pkt) -> bytes:
    return bytes(IP(src=A, dst=B) / pkt)[20:]


def test_encode_is_what_scapy_computes():
    seg = tcp.Segment(40000, 80, 0xFFFFFFF0, 12345, tcp.SYN | tcp.ACK, 29200,
                      tcp.Options(mss=1460, wscale=7, sack_permitted=True, timestamps=(111, 222)), b"")
    raw = seg.encode(A, B)
    p = TCP(raw)
    assert (p.sport, p.dport, p.seq, p.ack, p.window) == (40000, 80, 0xFFFFFFF0, 12345, 29200)
    assert str(p.flags) == "SA"
    opts = dict((k, v) for k, v in p.options if k != "NOP")
    assert opts["MSS"] == 1460 and opts["WScale"] == 7 and opts["Timestamp"] == (111, 222) and "SAckOK" in opts
    ref = TCP(raw)
    del ref.chksum  # scapy recomputes it over the pseudo-header of A -> B
    assert TCP(bytes(IP(src=A, dst=B) / ref)[20:]).chksum == p.chksum


def test_parse_scapy_segments_with_payload_and_sack():
    raw = scapy_raw(TCP(sport=5, dport=6, seq=7, ack=8, flags="PA", window=100,
                        options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2)), ("NOP", None),
                                 ("NOP", None), ("SAck", (10, 20, 30, 40))]) / b"hello!")
    seg = tcp.parse_segment(A, B, raw)
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.window) == (5, 6, 7, 8, 100)
    assert seg.flags == tcp.PSH | tcp.ACK and seg.payload == b"hello!"
    assert seg.options.timestamps == (1, 2) and seg.options.sack == ((10, 20), (30, 40))
    assert seg.encode(A, B) == raw  # the same layout as scapy's, byte for byte


@pytest.mark.parametrize("odd", [0, 1])
def test_checksum_refused_when_any_bit_flips(odd):
    raw = bytearray(scapy_raw(TCP(sport=1, dport=2, flags="A") / (b"x" * (10 + odd))))
    tcp.parse_segment(A, B, bytes(raw))
    for i in range(len(raw) * 8):
        bad = bytearray(raw)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(tcp.TcpParseError):
            tcp.parse_segment(A, B, bytes(bad))
    with pytest.raises(tcp.TcpParseError, match="checksum"):
        tcp.parse_segment(A, "10.1.0.3", bytes(raw))  # the pseudo-header is covered


def test_truncated_and_lying_offsets_refused():
    raw = scapy_raw(TCP(sport=1, dport=2, flags="S", options=[("MSS", 1460)]))
    for n in range(len(raw)):
        with pytest.raises(tcp.TcpParseError):
            tcp.parse_segment(A, B, raw[:n], verify_checksum=False)
    for off in (0, 1, 4, 7, 15):
        bad = bytearray(raw)
        bad[12] = off << 4
        with pytest.raises(tcp.TcpParseError, match="data offset"):
            tcp.parse_segment(A, B, bytes(bad), verify_checksum=False)


@pytest.mark.parametrize("length", range(0, 41))
def test_options_at_every_length(length):
    """Unknown options of every length, NOP and EOL padding, known options around them: parsed, never refused."""
    rng = random.Random(length)
    body = bytearray()
    while len(body) < length:
        room = length - len(body)
        if room >= 4 and rng.random() < 0.3:
            body += bytes((2, 4, 5, 0xB4))  # MSS 1460
        elif room >= 2 and rng.random() < 0.7:
            n = rng.randint(2, room)
            body += bytes((rng.choice((30, 34, 99, 253)), n)) + bytes(n - 2)
        else:
            body += b"\x01"
    raw = bytearray(20) + body + bytes((-len(body)) % 4)
    raw[12] = (len(raw) // 4) << 4
    raw = bytes(raw)
    seg = tcp.parse_segment(A, B, raw, verify_checksum=False)
    expected_mss = 1460 if b"\x02\x04\x05\xb4" in body else None
    assert seg.options.mss in (expected_mss, None)


def test_silly_option_lengths_end_the_scan_like_linux():
    assert parse_options(bytes((2, 4, 5, 0xB4, 8, 1, 3, 3, 7))).mss == 1460  # length 1: stop, keep MSS
    assert parse_options(bytes((8, 40))).timestamps is None  # runs past the end
    assert parse_options(bytes((2, 3, 5, 3, 3, 9))).mss is None  # MSS with the wrong length: ignored
    assert parse_options(bytes((1, 3, 3, 20))).wscale == 14  # RFC 7323: above 14 counts as 14


def test_reset_for_a_closed_port():
    syn = tcp.Segment(1, 2, 100, 0, tcp.SYN, 1000, payload=b"ab")
    rst = tcp.reset_for(syn)
    assert rst.flags == tcp.RST | tcp.ACK and rst.seq == 0 and rst.ack == 103
    ack = tcp.Segment(1, 2, 100, 555, tcp.ACK, 1000)
    assert tcp.reset_for(ack).seq == 555 and tcp.reset_for(ack).flags == tcp.RST
    assert tcp.reset_for(tcp.Segment(1, 2, 0, 0, tcp.RST, 0)) is None
