"""IPv4 header: builder checked by scapy, scapy-built headers parsed, each malformation named."""

import pytest
from scapy.all import IP, UDP, Raw, raw

from kbypass.proto import ipv4
from kbypass.proto.checksum import internet_checksum

SRC, DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def fix_checksum(h: bytearray) -> bytearray:
    hl = (h[0] & 15) * 4
    h[10:12] = b"\0\0"
    h[10:12] = internet_checksum(h[:hl]).to_bytes(2, "big")
    return h


def test_build_dissected_by_scapy():
    pkt = ipv4.build_ipv4(SRC, DST, 17, b"12345678abc", ident=77, ttl=9, tos=0x10)
    p = IP(pkt)
    assert (p.src, p.dst, p.proto, p.ttl, p.id, p.tos, p.len, p.flags) == (
        "10.0.0.1", "10.0.0.2", 17, 9, 77, 0x10, 31, "DF")
    q = p.copy()
    del q.chksum
    assert IP(raw(q)).chksum == p.chksum


def test_parse_scapy_built():
    data = raw(IP(src="10.0.0.9", dst="10.0.0.1", ttl=3, id=5) / UDP(sport=1, dport=2) / Raw(b"x"))
    h = ipv4.parse_ipv4(data + b"\0" * 10)  # Ethernet padding after total length is fine
    assert h == ipv4.Ipv4Header(bytes([10, 0, 0, 9]), bytes([10, 0, 0, 1]), 17, 3, 5, 0, 29, 20)


def test_truncated_at_every_offset():
    data = ipv4.build_ipv4(SRC, DST, 17, b"x" * 12)
    for n in range(len(data)):
        r = ipv4.parse_ipv4(data[:n])
        assert r in (ipv4.TRUNCATED, ipv4.LENGTH_LIES), n
    assert isinstance(ipv4.parse_ipv4(data), ipv4.Ipv4Header)


def mutate(field_off, value, data=None):
    h = bytearray(data or ipv4.build_ipv4(SRC, DST, 17, b"x" * 12))
    h[field_off:field_off + len(value)] = value
    return bytes(fix_checksum(h))


@pytest.mark.parametrize("data,reason", [
    (mutate(0, b"\x65"), ipv4.BAD_VERSION),
    (mutate(0, b"\x44"), ipv4.BAD_IHL),
    (mutate(0, b"\x40"), ipv4.BAD_IHL),
    (mutate(0, b"\x4f"), ipv4.LENGTH_LIES),  # IHL 15 = 60 bytes > 32 received
    (mutate(2, (19).to_bytes(2, "big")), ipv4.BAD_LENGTH),
    (mutate(2, (33).to_bytes(2, "big")), ipv4.LENGTH_LIES),
    (mutate(2, (0xFFFF).to_bytes(2, "big")), ipv4.LENGTH_LIES),
    (mutate(8, b"\x00"), ipv4.TTL_ZERO),
    (mutate(6, b"\x20\x00"), ipv4.FRAGMENT),  # MF
    (mutate(6, b"\x00\x10"), ipv4.FRAGMENT),  # offset, last fragment
    (mutate(12, bytes([224, 0, 0, 1])), ipv4.BAD_SOURCE),
    (mutate(12, bytes([255, 255, 255, 255])), ipv4.BAD_SOURCE),
    (mutate(12, bytes([127, 0, 0, 1])), ipv4.BAD_SOURCE),
])
def test_malformed_named(data, reason):
    assert ipv4.parse_ipv4(data) == reason


def test_bad_checksum_and_options():
    data = bytearray(ipv4.build_ipv4(SRC, DST, 17, b"x" * 12))
    data[10] ^= 0x40
    assert ipv4.parse_ipv4(bytes(data)) == ipv4.BAD_CHECKSUM
    opt = raw(IP(src="10.0.0.9", dst="10.0.0.1", options=[b"\x01\x01\x01\x00"]) / Raw(b"abc"))
    assert opt[0] == 0x46
    assert ipv4.parse_ipv4(opt) == ipv4.OPTIONS
    frag = raw(IP(src="10.0.0.9", dst="10.0.0.1", flags="MF") / Raw(b"abcdefgh"))
    assert ipv4.parse_ipv4(frag) == ipv4.FRAGMENT
    # DF alone is fine
    assert isinstance(ipv4.parse_ipv4(raw(IP(src="10.0.0.9", dst="10.0.0.1", flags="DF"))), ipv4.Ipv4Header)


def test_multicast_mac_and_addresses():
    assert ipv4.multicast_mac(bytes([239, 129, 2, 3])) == bytes.fromhex("01005e010203")
    assert ipv4.ip_str(ipv4.ip_bytes("192.0.2.1")) == "192.0.2.1"
    with pytest.raises(ValueError):
        ipv4.ip_bytes("10.0.0.256")
    with pytest.raises(ValueError):
        ipv4.build_ipv4_header(SRC, DST, 17, 65516)
