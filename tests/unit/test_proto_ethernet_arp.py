"""Ethernet and ARP: builders checked by scapy, scapy-built packets parsed, garbage refused."""

import pytest
from scapy.all import ARP, Ether, raw

from kbypass.proto import arp, ethernet
from kbypass.proto.arp import ArpResolver

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
IP_A, IP_B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def test_mac_conversions():
    assert ethernet.mac_bytes("02:00:00:00:00:0a") == bytes.fromhex("02000000000a")
    assert ethernet.mac_bytes("02-00-00-00-00-0A") == bytes.fromhex("02000000000a")
    assert ethernet.mac_str(bytes.fromhex("02000000000a")) == "02:00:00:00:00:0a"
    for bad in ("02:00:00:00:00", "zz:00:00:00:00:00", b"\x01\x02", "020000000001"):
        with pytest.raises(ValueError):
            ethernet.mac_bytes(bad)


def test_ethernet_parse_and_build_against_scapy():
    f = ethernet.build_ethernet(MAC_B, MAC_A, 0x1234, b"xyz")
    p = Ether(f)
    assert (p.dst, p.src, p.type, raw(p.payload)) == ("02:00:00:00:00:02", "02:00:00:00:00:01", 0x1234, b"xyz")
    assert len(ethernet.build_ethernet(MAC_B, MAC_A, 0x1234, b"xyz", pad=True)) == 60
    h = ethernet.parse_ethernet(raw(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x0806)))
    assert h == ethernet.EthernetHeader(MAC_B, MAC_A, 0x0806)


def test_ethernet_refuses_truncated_and_group_source():
    f = ethernet.build_ethernet(MAC_B, MAC_A, 0x0800, b"")
    for n in range(14):
        assert ethernet.parse_ethernet(f[:n]) == ethernet.TRUNCATED
    assert ethernet.parse_ethernet(MAC_B + b"\x01" + MAC_A[1:] + b"\x08\x00") == ethernet.BAD_SOURCE
    assert ethernet.parse_ethernet(MAC_B + ethernet.BROADCAST_MAC + b"\x08\x00") == ethernet.BAD_SOURCE


def test_arp_request_reply_gratuitous_dissected_by_scapy():
    req = Ether(arp.request_frame(MAC_A, IP_A, IP_B))
    assert req.dst == "ff:ff:ff:ff:ff:ff" and req[ARP].op == 1
    assert (req[ARP].hwsrc, req[ARP].psrc, req[ARP].pdst) == ("02:00:00:00:00:01", "10.0.0.1", "10.0.0.2")
    rep = Ether(arp.reply_frame(MAC_B, IP_B, MAC_A, IP_A))
    assert rep.dst == "02:00:00:00:00:01" and rep[ARP].op == 2
    assert (rep[ARP].hwsrc, rep[ARP].psrc, rep[ARP].hwdst, rep[ARP].pdst) == (
        "02:00:00:00:00:02", "10.0.0.2", "02:00:00:00:00:01", "10.0.0.1")
    for reply in (False, True):
        g = Ether(arp.gratuitous_frame(MAC_A, IP_A, reply=reply))
        assert g.dst == "ff:ff:ff:ff:ff:ff" and g[ARP].psrc == g[ARP].pdst == "10.0.0.1"
        assert g[ARP].op == (2 if reply else 1)
    assert len(arp.request_frame(MAC_A, IP_A, IP_B)) == 60


def test_arp_parse_scapy_built():
    f = raw(Ether(src="02:00:00:00:00:02", dst="ff:ff:ff:ff:ff:ff") /
            ARP(op=1, hwsrc="02:00:00:00:00:02", psrc="10.0.0.2", pdst="10.0.0.1"))
    p = arp.parse_arp(f[14:])
    assert p == arp.ArpPacket(1, MAC_B, IP_B, b"\0" * 6, IP_A)


def test_arp_parse_refuses_garbage():
    good = arp.build_arp(arp.OP_REQUEST, MAC_A, IP_A, b"\0" * 6, IP_B)
    for n in range(28):
        assert arp.parse_arp(good[:n]) == arp.TRUNCATED
    assert arp.parse_arp(b"\x00\x06" + good[2:]) == arp.UNSUPPORTED  # htype IEEE 802
    assert arp.parse_arp(good[:2] + b"\x86\xdd" + good[4:]) == arp.UNSUPPORTED
    assert arp.parse_arp(good[:4] + b"\x06\x10" + good[6:]) == arp.UNSUPPORTED
    assert arp.parse_arp(good[:6] + b"\x00\x03" + good[8:]) == arp.BAD_OP  # RARP
    assert arp.parse_arp(good[:8] + b"\xff" * 6 + good[14:]) == arp.BAD_SENDER
    assert arp.parse_arp(good[:8] + b"\0" * 6 + good[14:]) == arp.BAD_SENDER


def test_resolver_retries_timeout_and_bounds():
    r = ArpResolver(ttl=10, interval=1, attempts=3, max_queue=2, max_pending=1)
    assert r.enqueue(IP_B, "p1", 0.0) == (True, True)
    assert r.enqueue(IP_B, "p2", 0.1) == (True, False)
    assert r.enqueue(IP_B, "p3", 0.2) == (False, False)  # per-address queue full
    assert r.enqueue(IP_A, "q", 0.2) == (False, False)  # pending table full
    assert r.next_timer() == 1.0
    assert r.handle_timer(0.5) == ([], [], [])
    assert r.handle_timer(1.0) == ([IP_B], [], [])
    assert r.handle_timer(2.0) == ([IP_B], [], [])
    assert r.handle_timer(3.0) == ([], [(IP_B, ["p1", "p2"])], [])
    assert r.next_timer() is None and not r.is_pending(IP_B)


def test_resolver_learn_releases_and_expires():
    r = ArpResolver(ttl=10, interval=1, attempts=3)
    r.enqueue(IP_B, "p1", 0.0)
    assert r.refresh(IP_A, MAC_A, 0.0) == []  # stranger: not added
    assert r.lookup(IP_A, 0.0) is None
    assert r.refresh(IP_B, MAC_B, 0.5) == ["p1"]  # pending: merged and released
    assert r.lookup(IP_B, 10.4) == MAC_B
    assert r.lookup(IP_B, 10.5) is None  # expired
    r.learn(IP_A, MAC_A, 0.0)
    r.handle_timer(11.0)
    assert len(r) == 0


def test_resolver_refreshes_entries_in_use_only():
    r = ArpResolver(ttl=10, interval=1, attempts=3, refresh_ahead=2)
    r.learn(IP_A, MAC_A, 0.0)
    r.learn(IP_B, MAC_B, 0.0)
    assert r.next_timer() is None  # nothing used yet: nothing to refresh
    assert r.lookup(IP_B, 1.0) == MAC_B
    assert r.next_timer() == 8.0
    assert r.handle_timer(7.9) == ([], [], [])
    assert r.handle_timer(8.0) == ([], [], [(IP_B, MAC_B)])
    assert r.next_timer() == 9.0  # the next probe, not earlier
    assert r.lookup(IP_B, 8.05) == MAC_B and r.next_timer() == 9.0  # using it does not re-arm the refresh
    assert r.handle_timer(8.5) == ([], [], [])
    r.learn(IP_B, MAC_B, 8.1)  # the answer: a fresh lifetime, probing over
    assert r.next_timer() is None
    assert r.lookup(IP_B, 17.0) == MAC_B and r.lookup(IP_A, 10.0) is None


def test_resolver_refresh_of_a_silent_peer_probes_then_fails():
    # Linux's PROBE: `attempts` unicast probes `interval` apart, one broadcast, then FAILED
    r = ArpResolver(ttl=10, interval=1, attempts=3, refresh_ahead=5)
    r.learn(IP_B, MAC_B, 0.0)
    probes = []
    for i in range(9900):
        t = i / 1000
        r.lookup(IP_B, t)  # in use at 1 kpps throughout
        if (r.next_timer() or 1e9) <= t:
            retry, expired, refresh = r.handle_timer(t)
            assert retry == []
            probes += [(round(t, 3), mac) for _, mac in refresh]
            if expired:
                assert expired == [(IP_B, [])]
                break
    assert probes == [(5.0, MAC_B), (6.0, MAC_B), (7.0, MAC_B), (8.0, None)]
    assert round(t, 3) == 9.0 and r.lookup(IP_B, t) is None  # FAILED: the entry is gone
    assert ArpResolver(ttl=10, refresh_ahead=0).lookup(IP_A, 0.0) is None


def test_resolver_bounded_cache():
    r = ArpResolver(max_entries=3)
    for i in range(5):
        r.learn(bytes([10, 0, 0, i]), MAC_A, 0.0)
    assert len(r) == 3 and r.lookup(bytes([10, 0, 0, 0]), 0.0) is None and r.lookup(bytes([10, 0, 0, 4]), 0.0)
