"""Stack.send_ip / Stack.probe: any IP protocol (the TCP endpoint's segments) through the same next-hop
resolution as UDP: parked behind ARP and released by the reply, counted apart from UDP (ip_sent,
ip_queued), and a probe that asks without a packet to park."""

from kbypass.proto import ethernet, ipv4
from kbypass.proto.stack import Stack

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IP_A, IP_B = "10.0.0.1", "10.0.0.2"
TCP = 6


def exchange(src: Stack, dst: Stack, frames, now: float) -> list[bytes]:
    out = []
    for f in frames:
        out += dst.receive(f, now)
    return out


def test_send_ip_waits_for_arp_then_goes_out_with_its_protocol():
    a = Stack(MAC_A, IP_A, 24, 0.0)
    b = Stack(MAC_B, IP_B, 24, 0.0)
    req = a.send_ip(IP_B, TCP, b"segment", 0.0)
    assert len(req) == 1 and req[0][12:14] == b"\x08\x06"  # an ARP request; the packet waits
    assert a.counters["ip_queued"] == 1 and a.counters["ip_sent"] == 0
    reply = exchange(a, b, req, 0.1)
    released = exchange(b, a, reply, 0.2)
    assert len(released) == 1
    frame = released[0]
    assert ethernet.parse_ethernet(frame).dst == ethernet.mac_bytes(MAC_B)
    h = ipv4.parse_ipv4(memoryview(frame)[14:])
    assert h.proto == TCP and frame[14 + h.header_length:14 + h.total_length] == b"segment"
    assert a.counters["ip_sent"] == 1 and a.counters["udp_sent"] == 0
    again = a.send_ip(IP_B, TCP, b"next", 0.3)  # known now: straight out
    assert len(again) == 1 and again[0].endswith(b"next") and a.counters["ip_sent"] == 2


def test_probe_resolves_without_parking_a_packet():
    a = Stack(MAC_A, IP_A, 24, 0.0)
    b = Stack(MAC_B, IP_B, 24, 0.0)
    mac, out = a.probe(IP_B, 0.0)
    assert mac is None and len(out) == 1 and a.counters["ip_queued"] == 0
    b_answer = exchange(a, b, out, 0.1)
    assert exchange(b, a, b_answer, 0.2) == []  # nothing was parked, nothing released
    mac, out = a.probe(IP_B, 0.3)
    assert mac == ethernet.mac_bytes(MAC_B) and out == []
    assert a.next_hop_mac(IP_B, 0.3) == mac


def test_probe_in_resolve_mode_asks_the_callback():
    asked = []
    a = Stack(MAC_A, IP_A, 24, 0.0, owns_address=False, resolve=lambda ip: asked.append(ip) or MAC_B)
    mac, out = a.probe(IP_B, 0.0)
    assert asked == [IP_B] and mac == ethernet.mac_bytes(MAC_B) and out == []
