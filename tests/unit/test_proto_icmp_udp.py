"""ICMP echo and UDP: builders checked by scapy, scapy-built packets parsed, malformations named."""

import numpy as np
import pytest
from scapy.all import ICMP, IP, UDP, Ether, Raw, raw

from kbypass.proto import icmp, udp
from kbypass.proto.checksum import ipv4_fill_batch, udp_fill_batch
from kbypass.proto.udp import build_udp_frame

SRC, DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def test_echo_builders_dissected_by_scapy():
    for t, build in ((8, lambda: icmp.build_echo_request(0x1234, 7, b"ping!")),
                     (0, lambda: icmp.build_echo_reply(icmp.Echo(8, 0x1234, 7, b"ping!")))):
        p = ICMP(build())
        assert (p.type, p.code, p.id, p.seq, raw(p.payload)) == (t, 0, 0x1234, 7, b"ping!")
        q = p.copy()
        del q.chksum
        assert ICMP(raw(q)).chksum == p.chksum


def test_all_zero_echo_reply_checksum_is_ffff():
    # id 0, seq 0, no payload: the reply is all zeros but its checksum; RFC 1071 (and scapy, and Linux)
    # make that 0xFFFF, never 0
    reply = icmp.build_echo_reply(icmp.Echo(8, 0, 0, b""))
    assert reply == bytes.fromhex("0000ffff00000000")
    q = ICMP(reply)
    del q.chksum
    assert ICMP(raw(q)).chksum == 0xFFFF
    assert icmp.parse_echo(reply, want=icmp.ECHO_REPLY) == icmp.Echo(0, 0, 0, b"")
    assert icmp.parse_echo(bytes(8), want=icmp.ECHO_REPLY) == icmp.BAD_CHECKSUM

def test_echo_parse():
    msg = raw(ICMP(type=8, id=3, seq=4) / Raw(b"abc"))
    assert icmp.parse_echo(msg) == icmp.Echo(8, 3, 4, b"abc")
    for n in range(8):
        assert icmp.parse_echo(msg[:n]) == icmp.TRUNCATED
    assert icmp.parse_echo(msg[:-1]) == icmp.BAD_CHECKSUM
    bad = bytearray(msg)
    bad[9] ^= 1
    assert icmp.parse_echo(bytes(bad)) == icmp.BAD_CHECKSUM
    assert icmp.parse_echo(raw(ICMP(type=0, id=3, seq=4))) == icmp.UNHANDLED
    assert icmp.parse_echo(raw(ICMP(type=8, code=1))) == icmp.UNHANDLED
    assert icmp.parse_echo(raw(ICMP(type=3, code=3))) == icmp.UNHANDLED


def test_udp_frame_dissected_by_scapy():
    for payload in (b"", b"a", b"ab" * 100 + b"c"):
        f = build_udp_frame(MAC_A, MAC_B, SRC, DST, 4000, 5000, payload, ident=9)
        p = Ether(f)
        assert (p[UDP].sport, p[UDP].dport, p[UDP].len, raw(p[UDP].payload)) == (4000, 5000, 8 + len(payload), payload)
        q = p.copy()
        del q[IP].chksum, q[UDP].chksum
        q = Ether(raw(q))
        assert (q[IP].chksum, q[UDP].chksum) == (p[IP].chksum, p[UDP].chksum)


def test_udp_parse_scapy_built():
    # scapy computes the checksum only with an IP layer: build with it and take the segment
    seg = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=9999) / Raw(b"hello"))[20:]
    assert udp.parse_udp(seg, SRC, DST) == udp.UdpHeader(53, 9999, 13, int.from_bytes(seg[6:8], "big"))
    assert udp.parse_udp(seg, SRC, bytes([10, 0, 0, 3])) == udp.BAD_CHECKSUM  # pseudo-header counts


def test_udp_malformed_named():
    seg = udp.build_udp(SRC, DST, 1, 2, b"payload")
    for n in range(8):
        assert udp.parse_udp(seg[:n], SRC, DST) == udp.TRUNCATED
    for ln in (0, 7):
        assert udp.parse_udp(seg[:4] + ln.to_bytes(2, "big") + seg[6:], SRC, DST) == udp.BAD_LENGTH
    assert udp.parse_udp(seg[:4] + (len(seg) + 1).to_bytes(2, "big") + seg[6:], SRC, DST) == udp.LENGTH_LIES
    flipped = bytearray(seg)
    flipped[-1] ^= 0x80
    assert udp.parse_udp(bytes(flipped), SRC, DST) == udp.BAD_CHECKSUM
    zero = seg[:6] + b"\0\0" + seg[8:]
    assert isinstance(udp.parse_udp(zero, SRC, DST), udp.UdpHeader)
    assert udp.parse_udp(zero, SRC, DST, accept_zero_checksum=False) == udp.NO_CHECKSUM
    p0 = udp.build_udp(SRC, DST, 1, 0, b"x")
    assert udp.parse_udp(p0, SRC, DST) == udp.PORT_ZERO
    # empty datagram is valid; trailing bytes past the UDP length are ignored
    empty = udp.build_udp(SRC, DST, 1, 2, b"")
    assert udp.parse_udp(empty + b"junk", SRC, DST) == udp.UdpHeader(1, 2, 8, int.from_bytes(empty[6:8], "big"))


def test_template_batch_build_matches_scalar():
    tmpl = udp.frame_template(MAC_A, MAC_B, SRC, DST, 4000, 5000)
    payloads = [b"", b"x", b"hello world", bytes(range(256)) * 3]
    width = 42 + max(map(len, payloads))
    buf = np.zeros(len(payloads) * width, dtype=np.uint8)
    addr = np.arange(len(payloads)) * width
    length = np.array([42 + len(p) for p in payloads])
    for a, p in zip(addr, payloads):  # the copy-in is the port's job; here just lay frames out
        buf[a:a + 42 + len(p)] = np.frombuffer(tmpl + p, dtype=np.uint8)
    udp.write_lengths_batch(buf, addr, length)
    assert ipv4_fill_batch(buf, addr, length).all() and udp_fill_batch(buf, addr, length).all()
    for a, n, p in zip(addr, length, payloads):
        got = buf[a:a + n].tobytes()
        assert got == build_udp_frame(MAC_A, MAC_B, SRC, DST, 4000, 5000, p)


def _batch(frames):
    width = max(map(len, frames)) + 3
    buf = np.zeros(len(frames) * width, dtype=np.uint8)
    addr = np.arange(len(frames)) * width + 1  # odd start on purpose
    for a, f in zip(addr, frames):
        buf[a:a + len(f)] = np.frombuffer(f, dtype=np.uint8)
    return buf, addr, np.array([len(f) for f in frames])


def test_classify_batch():
    good = build_udp_frame(MAC_B, MAC_A, DST, SRC, 7, 9000, b"data")
    other_port = build_udp_frame(MAC_B, MAC_A, DST, SRC, 7, 9001, b"data")
    padded = good + b"\0" * 20
    bad_ck = bytearray(good)
    bad_ck[-1] ^= 1
    bad_ip = bytearray(good)
    bad_ip[24] ^= 1
    opts = raw(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") /
               IP(src="10.0.0.2", dst="10.0.0.1", options=[b"\x01\x01\x01\x00"]) / UDP(sport=7, dport=9000))
    frag = raw(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") /
               IP(src="10.0.0.2", dst="10.0.0.1", flags="MF") / UDP(sport=7, dport=9000))
    wrong_mac = build_udp_frame(MAC_B, bytes.fromhex("020000000009"), DST, SRC, 7, 9000, b"data")
    lie = bytearray(good)
    lie[16:18] = (len(good) - 14 + 4).to_bytes(2, "big")
    frames = [good, other_port, padded, bytes(bad_ck), bytes(bad_ip), opts, frag, wrong_mac, bytes(lie), good[:41]]
    buf, addr, length = _batch(frames)
    got = udp.classify_batch(buf, addr, length, mac=MAC_A, ip=SRC, ports=np.array([9000]))
    assert got.tolist() == [True, False, True, False, False, False, False, False, False, False]
    got = udp.classify_batch(buf, addr, length, mac=MAC_A, ip=SRC)
    assert got.tolist()[:3] == [True, True, True]
    assert udp.udp_lengths_batch(buf, addr[:3]).tolist() == [12, 12, 12]
    zero = bytearray(good)
    zero[40:42] = b"\0\0"
    buf, addr, length = _batch([bytes(zero), good])
    assert udp.classify_batch(buf, addr, length, mac=MAC_A, ip=SRC).tolist() == [True, True]
    assert udp.classify_batch(buf, addr, length, mac=MAC_A, ip=SRC, accept_zero_checksum=False).tolist() == [
        False, True]
    assert udp.classify_batch(buf, addr, length, mac=MAC_A, ip=SRC, broadcast=DST).tolist() == [False, False]
    assert udp.classify_batch(buf, addr[:0], length[:0], mac=MAC_A, ip=SRC).shape == (0,)


def test_write_lengths_refuses_frames_outside_buffer():
    buf = np.zeros(100, np.uint8)
    with pytest.raises(ValueError, match="42 header bytes"):
        udp.write_lengths_batch(buf, np.array([80]), np.array([42]))
    with pytest.raises(ValueError, match="42 header bytes"):
        udp.write_lengths_batch(buf, np.array([0]), np.array([30]))
