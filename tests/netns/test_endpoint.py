"""UdpEndpoint on the testbed with real kernel peers, in both address modes: datagrams both ways with a
kernel UDP socket, ping of a dedicated address answered by kbypass, malformed frames counted and never
answered, and the bad inputs refused with one clear error."""

import socket
import subprocess
import threading
import time

import pytest

from kbypass import netns
from kbypass.port.steered import SteeredPort
from kbypass.endpoint import UdpEndpoint
from kbypass.errors import KbypassError, UsageError
from kbypass.proto import arp, checksum as ck, ipv4, udp
from tests.kb import needs_c, spare_ip, xdp_attached

pytestmark = pytest.mark.netns
PORT = 4400


def kernel_socket(ns, bind, timeout=2.0):
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.bind(bind)
    return s


def exchange(ep, peer_ns, peer_ip, ep_ip, n=200):
    """n datagrams kernel -> endpoint -> kernel, each checked byte for byte."""
    s = kernel_socket(peer_ns, (peer_ip, 0))
    try:
        for i in range(n):
            msg = i.to_bytes(4, "big") + bytes((i + k) & 0xFF for k in range(i % 300))
            s.sendto(msg, (ep_ip, ep.port))
            data, addr = ep.recvfrom(2.0)
            assert data == msg and addr == s.getsockname()
            ep.sendto(data[::-1], addr)
            back, src = s.recvfrom(2048)
            assert back == msg[::-1] and src == (ep_ip, ep.port)
    finally:
        s.close()


# The C lane (kbypass._fastlane) is the default; the pure-Python lane is its fallback and reference.
LANES = [pytest.param(True, id="c-lane", marks=needs_c), pytest.param(False, id="python-lane")]


@pytest.mark.parametrize("native", LANES)
@pytest.mark.parametrize("poll", ["wakeup", "busy"])
def test_own_address_kernel_peer_both_ways(testbed_hosts, poll, native):
    a, b = testbed_hosts
    with UdpEndpoint(b.iface, b.ipv4, PORT, netns=b.netns, poll=poll, native=native) as ep:
        assert ep.native is native
        exchange(ep, a.netns, a.ipv4, b.ipv4)
        # the kernel keeps the rest of the address: ping and another UDP port still work
        ping = subprocess.run(["ip", "netns", "exec", a.netns, "ping", "-c", "1", "-W", "2", b.ipv4],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout
        assert ep.stats["drops"] == {}
        counts = ep.check()  # UMEM accounting: nothing leaked
        assert counts["tx"] + counts["fill"] + counts["free"] + counts["app"] == sum(counts.values())
    assert not xdp_attached(b)


def test_own_address_resolves_through_the_kernel_neighbour_table(testbed_hosts):
    a, b = testbed_hosts
    subprocess.run(["ip", "-n", b.netns, "neigh", "flush", "dev", b.iface], check=True)
    s = kernel_socket(a.netns, (a.ipv4, 5601))
    try:
        with UdpEndpoint(b.iface, b.ipv4, PORT, netns=b.netns) as ep:
            ep.sendto(b"first", (a.ipv4, 5601))  # no entry yet: the kernel is asked to resolve it
            assert s.recvfrom(100) == (b"first", (b.ipv4, PORT))
            assert ep.stack.counters["arp_requests_sent"] == 0  # the kernel did the ARP, not us
    finally:
        s.close()


@pytest.mark.parametrize("native", LANES)
def test_dedicated_address_answers_ping_and_udp(testbed_hosts, native):
    a, b = testbed_hosts
    ip = spare_ip(b, 0 if native else 4)  # a fresh address per lane: the peer must not know it yet
    with UdpEndpoint(b.iface, ip, PORT, netns=b.netns, dedicated=True, native=native) as ep:
        stop = threading.Event()
        t = threading.Thread(target=lambda: [ep.poll(0.05) for _ in iter(stop.is_set, True)])
        t.start()
        try:
            ping = subprocess.run(["ip", "netns", "exec", a.netns, "ping", "-c", "3", "-i", "0.2", "-W", "2", ip],
                                  capture_output=True, text=True, timeout=20)
        finally:
            stop.set()
            t.join()
        assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout
        assert ep.stack.counters["icmp_echo_answered"] >= 3
        assert ep.stack.counters["arp_requests_answered"] >= 1 or ep.stack.counters["arp_learned"] >= 1
        exchange(ep, a.netns, a.ipv4, ip, n=100)
        assert ep.stats["drops"].keys() <= {"udp_no_listener", "arp_not_for_us", "arp_unsolicited"}
    # the kernel never had the address
    out = subprocess.run(["ip", "-n", b.netns, "-4", "addr"], capture_output=True, text=True).stdout
    assert ip not in out


def test_dedicated_address_resolves_peer_with_its_own_arp(testbed_hosts):
    a, b = testbed_hosts
    ip = spare_ip(b, 1)
    s = kernel_socket(a.netns, (a.ipv4, 5602))
    try:
        with UdpEndpoint(b.iface, ip, PORT, netns=b.netns, dedicated=True) as ep:
            ep.sendto(b"hello", (a.ipv4, 5602))  # unknown peer: ARP request, answer, then the datagram
            assert s.recvfrom(100) == (b"hello", (ip, PORT))
            assert ep.stack.counters["arp_requests_sent"] >= 1
            with pytest.raises(KbypassError, match="did not answer ARP"):
                ep.sendto(b"nobody", (spare_ip(b, 9), 9))
    finally:
        s.close()


# ---- malformed frames ------------------------------------------------------------------------------


def _ip_fix(f: bytearray) -> bytearray:
    ihl = (f[14] & 15) * 4
    f[24:26] = b"\0\0"
    f[24:26] = ck.internet_checksum(bytes(f[14:14 + ihl])).to_bytes(2, "big")
    return f


def malformed_frames(src_mac, dst_mac, src_ip, dst_ip, port):
    def good(payload=b"malformed"):
        return bytearray(udp.build_udp_frame(src_mac, dst_mac, src_ip, dst_ip, 5603, port, payload))

    frames = {}
    f = good(); f[41] ^= 0x55; frames["udp_bad_checksum"] = f
    f = good(); f[25] ^= 0x55; frames["ip_bad_checksum"] = f
    f = good(); f[16:18] = (400).to_bytes(2, "big"); frames["ip_length_lies"] = _ip_fix(f)
    f = good(); f[38:40] = (300).to_bytes(2, "big"); frames["udp_length_lies"] = f
    f = good(); f[38:40] = b"\0\0"; f[40:42] = b"\0\0"; frames["udp_zero_length"] = f
    f = good(); f[20] = 0x20; frames["fragment"] = _ip_fix(f)
    f = good(); f[20:22] = (10).to_bytes(2, "big"); frames["later_fragment"] = _ip_fix(f)
    seg = udp.build_udp(src_ip, dst_ip, 5603, port, b"options")
    hdr = bytearray(ipv4.build_ipv4_header(src_ip, dst_ip, 17, len(seg)))
    hdr[0], hdr[2:4] = 0x46, (24 + len(seg)).to_bytes(2, "big")
    frames["ip_options"] = _ip_fix(bytearray(dst_mac + src_mac + b"\x08\x00") + hdr + b"\x01\x01\x01\x00" + seg)
    body = bytearray(b"\x08\x00\x00\x00\x12\x34\x00\x01" + b"bad icmp")
    body[2:4] = ck.internet_checksum(bytes(body)).to_bytes(2, "big")
    body[10] ^= 0xFF  # now the checksum is wrong
    frames["icmp_bad_checksum"] = bytearray(dst_mac + src_mac + b"\x08\x00") + ipv4.build_ipv4(src_ip, dst_ip, 1,
                                                                                                  bytes(body))
    frames["truncated"] = good()[:38]
    return frames


@pytest.mark.parametrize("native", LANES)
def test_malformed_frames_are_counted_dropped_and_never_answered(testbed_hosts, native):
    a, b = testbed_hosts
    ip = spare_ip(b, 2 if native else 5)
    a_mac, b_mac = (bytes.fromhex(h.mac.replace(":", "")) for h in (a, b))
    a_ip, d_ip = socket.inet_aton(a.ipv4), socket.inet_aton(ip)
    with netns.entered(a.netns):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    raw.bind((a.iface, 0))
    try:
        with UdpEndpoint(b.iface, ip, PORT, netns=b.netns, dedicated=True, native=native) as ep:
            # the peer learns our MAC the normal way (so nothing below needs ARP)
            raw.send(arp.reply_frame(a_mac, a_ip, b_mac, d_ip))
            frames = malformed_frames(a_mac, b_mac, a_ip, d_ip, PORT)
            tx_before = ep.stats["port"]["tx_packets"]
            for _ in range(3):
                for f in frames.values():
                    raw.send(bytes(f))
            valid = udp.build_udp_frame(a_mac, b_mac, a_ip, d_ip, 5603, PORT, b"valid")
            raw.send(valid)
            assert ep.recvfrom(2.0) == (b"valid", (a.ipv4, 5603))
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                ep.poll(0.05)
            drops = ep.stats["drops"]
            assert not ep._pending, "a malformed frame was delivered"
            assert ep.stats["port"]["tx_packets"] == tx_before, "a malformed frame was answered"
            for reason in ("udp_bad_checksum", "ip_bad_checksum", "ip_fragment", "ip_options", "icmp_bad_checksum"):
                assert drops.get(reason, 0) >= 3, (reason, sorted(drops.items()))
            # headers whose lengths lie (or end early) are caught one step earlier, by the steering
            # program's parser, which passes them to the kernel (which drops them) and counts them
            lying = sum(drops.get(r, 0) for r in ("udp_length_lies", "udp_bad_length", "ip_length_lies",
                                                  "ip_truncated", "udp_truncated"))
            assert lying + ep._steered.steering.stats().parse_errors >= 4 * 3, sorted(drops.items())
            # and the loop still works
            exchange(ep, a.netns, a.ipv4, ip, n=20)
    finally:
        raw.close()


# ---- bad input ------------------------------------------------------------------------------------------


def test_bad_input_is_refused_clearly(testbed_hosts):
    a, b = testbed_hosts
    with pytest.raises(UsageError, match="not an address of the interface"):
        UdpEndpoint(b.iface, "10.99.0.5", PORT, netns=b.netns)
    with pytest.raises(UsageError, match="outside the interface's subnets"):
        UdpEndpoint(b.iface, "10.99.0.5", PORT, netns=b.netns, dedicated=True)
    with pytest.raises(UsageError, match="already an address of the kernel"):
        UdpEndpoint(b.iface, b.ipv4, PORT, netns=b.netns, dedicated=True)
    with pytest.raises(UsageError, match="no interface"):
        UdpEndpoint("nosuch0", b.ipv4, PORT, netns=b.netns)
    with SteeredPort(b.iface, None, ["udp dport 9"], netns=b.netns):  # another user holds every queue
        with pytest.raises(UsageError, match=r"queue 0 of \S+ is taken by client \d+ \(pid "):
            UdpEndpoint(b.iface, b.ipv4, PORT, netns=b.netns)
    with SteeredPort(b.iface, 0, ["udp dport 9"], netns=b.netns, control_plane=False):  # holds the interface
        with pytest.raises(KbypassError, match="already steered by someone else"):
            UdpEndpoint(b.iface, b.ipv4, PORT, netns=b.netns, control_plane=False, queue=1)
    held = kernel_socket(b.netns, (b.ipv4, PORT + 1))
    try:
        with pytest.raises(UsageError, match="already bound"):
            UdpEndpoint(b.iface, b.ipv4, PORT + 1, netns=b.netns)
    finally:
        held.close()
    with UdpEndpoint(b.iface, b.ipv4, PORT, netns=b.netns, control_plane=False):
        with pytest.raises(UsageError, match="this process's endpoint"):
            UdpEndpoint(b.iface, b.ipv4, PORT + 2, netns=b.netns, control_plane=False)
    with UdpEndpoint(b.iface, b.ipv4, PORT, netns=b.netns) as ep:
        # through the control plane a second endpoint may share the interface, on queues of its own
        with pytest.raises(UsageError, match=r"queue 0 of \S+ is taken by client \d+ \(pid "):
            UdpEndpoint(b.iface, b.ipv4, PORT + 2, netns=b.netns)
        with pytest.raises(UsageError, match="exceeds the MTU"):
            ep.sendto(bytes(ep.max_payload + 1), (a.ipv4, 5555))
        ep.sendto(bytes(ep.max_payload), (a.ipv4, 5555))  # the largest one is fine
    assert not xdp_attached(b)


def test_socket_backend_same_api(testbed_hosts):
    a, b = testbed_hosts
    with UdpEndpoint(b.iface, b.ipv4, 0, netns=b.netns, backend="socket") as ep:
        assert ep.port != 0
        exchange(ep, a.netns, a.ipv4, b.ipv4, n=20)
    with pytest.raises(UsageError, match="dedicated address needs the bypass"):
        UdpEndpoint(b.iface, spare_ip(b, 3), PORT, netns=b.netns, backend="socket", dedicated=True)


def test_batches_both_ways(testbed_hosts):
    a, b = testbed_hosts
    s = kernel_socket(a.netns, (a.ipv4, 5604))
    try:
        with UdpEndpoint(b.iface, b.ipv4, PORT, netns=b.netns) as ep:
            msgs = [i.to_bytes(2, "big") * (i % 50 + 1) for i in range(200)]
            for m in msgs:
                s.sendto(m, (b.ipv4, PORT))
            got = []
            deadline = time.monotonic() + 3
            while len(got) < len(msgs) and time.monotonic() < deadline:
                got += ep.recv_batch(64, timeout=0.2)
            assert sorted(d for d, _ in got) == sorted(msgs)
            assert {addr for _, addr in got} == {(a.ipv4, 5604)}
            assert ep.counters["rx_vector"] > 0  # the burst went through the numpy batch path
            assert ep.counters["rx_slow_path"] == 0
            assert ep.send_batch(msgs, (a.ipv4, 5604)) == len(msgs)
            back = [s.recvfrom(2048)[0] for _ in msgs]
            assert sorted(back) == sorted(msgs)
            ep.check()
    finally:
        s.close()
