"""AfXdpPort on a real kernel: two namespaces joined by a veth pair, the steering program on the
receiving end, sequence-numbered UDP from a kernel socket on the peer.

Veth has native XDP and AF_XDP copy mode, no zero-copy: `mode="auto"` must report "copy".
Every namespace, link and program made here is removed in a finally, whatever happens.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import numpy as np
import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from kbypass import netns
from kbypass.errors import KbypassError, UsageError
from kbypass.port.afxdp import AfXdpPort
from kbypass.port.batch import UDP_DPORT, UDP_PAYLOAD
from kbypass.testing.plugin import needs_root
from kbypass.xsk.socket import XskError
from kbypass.xsk.umem import OwnershipError
from tests.kb import collect_batches, needs_c

pytestmark = pytest.mark.netns

PORT = 4321  # steered to the AF_XDP socket
OTHER = 5555  # not steered: must still reach the kernel
IP_A, IP_B = "10.213.0.1", "10.213.0.2"  # a: the port under test, b: the sender
MAC_A, MAC_B = "02:00:00:d5:00:01", "02:00:00:d5:00:02"
WORDS = 4  # payload: seq, then WORDS-1 words derived from seq, checked word by word


class Link:
    def __init__(self, tag: str):
        self.ns_a, self.ns_b = f"kbx{tag}-a", f"kbx{tag}-b"
        self.if_a, self.if_b = f"kbx{tag}a", f"kbx{tag}b"


@pytest.fixture(scope="module")
def link():
    needs_root()
    link = Link(str(os.getpid() % 100000))
    try:
        for ns in (link.ns_a, link.ns_b):
            pr_netns.create(ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=link.if_a, kind="veth", peer=link.if_b)
            for ifname, ns in ((link.if_a, link.ns_a), (link.if_b, link.ns_b)):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], net_ns_fd=ns)
        for ns, ifname, mac, ip, peer_ip, peer_mac in (
            (link.ns_a, link.if_a, MAC_A, IP_A, IP_B, MAC_B),
            (link.ns_b, link.if_b, MAC_B, IP_B, IP_A, MAC_A),
        ):
            with netns.entered(ns), IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.link("set", index=idx, address=mac, state="up")
                ipr.addr("add", index=idx, address=ip, prefixlen=24)
                # static neighbours: no ARP round trip racing the first packets of a test
                ipr.neigh("add", dst=peer_ip, lladdr=peer_mac, ifindex=idx, state=0x80)
        yield link
    finally:
        for ns in (link.ns_a, link.ns_b):
            if netns.exists(ns):
                pr_netns.remove(ns)  # deleting a namespace deletes its end of the veth, and its XDP link


@pytest.fixture(scope="module")
def steering(link):
    """One steering program for the module; each test registers its
    own port, and closing a port removes it from the XSKMAP."""
    from kbypass.steer import Rule, Steering

    with Steering(link.if_a, netns=link.ns_a) as st:
        st.add(Rule.parse(f"udp dport {PORT}"))
        yield st


@pytest.fixture
def sender(link):
    with netns.entered(link.ns_b):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield s
    s.close()


def payload(seq: int) -> bytes:
    return struct.pack(f"!{WORDS}Q", seq, *((seq * 0x9E3779B97F4A7C15 + k) & (2**64 - 1) for k in range(1, WORDS)))


def send(sock, seqs, port=PORT) -> None:
    for seq in seqs:
        sock.sendto(payload(seq), (IP_A, port))


def drain(port: AfXdpPort, want: int, timeout: float = 2.0) -> list:
    return collect_batches(port, want, timeout)


def assert_in_order_then_free(port: AfXdpPort, batches: list, n: int) -> None:
    """The batches carry sequence numbers 0..n-1 in order; give them back and check nothing leaked."""
    assert [int(x) for b in batches for x in b.payload_u64()] == list(range(n))
    for b in batches:
        port.free(b)
    port.check(app=0)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_receive_exact_content_and_count(link, steering, sender):
    with AfXdpPort(link.if_a, 0, netns=link.ns_a, frames=4096) as port:
        assert port.mode == "copy"  # veth: auto falls back from zero-copy
        steering.register_xsk(0, port.fd)
        matched_before = sum(p for p, _ in steering.counters().values())
        total = 0
        seqs = []
        for chunk in range(3):  # chunks below the fill ring size, so nothing may be dropped
            send(sender, range(total, total + 1000))
            batches = drain(port, 1000)
            total += 1000
            for b in batches:
                assert (b.u16be(UDP_DPORT) == PORT).all()
                assert (b.lens == 42 + 8 * WORDS).all()
                words = b.bytes_at(UDP_PAYLOAD, 8 * WORDS).view(">u8")
                seq = words[:, 0].astype(np.uint64)
                for k in range(1, WORDS):  # every word of every frame, vectorized
                    expect = seq * np.uint64(0x9E3779B97F4A7C15) + np.uint64(k)
                    assert (words[:, k] == expect).all()
                seqs.append(seq)
            held = sum(len(b) for b in batches)
            assert port.check(app=held)  # all received frames are ours until freed
            for b in batches:
                port.free(b)
            assert held == 1000
        allseq = np.concatenate(seqs)
        assert allseq.tolist() == list(range(3000))  # exact: none lost, none duplicated, in order
        stats = port.stats
        assert stats["rx_packets"] == 3000 and stats["rx_bytes"] == 3000 * (42 + 8 * WORDS)
        assert stats["rx_dropped"] == 0 and stats["rx_ring_full"] == 0
        counts = port.check(app=0)
        assert counts["fill"] == port.stats["frames_in_fill"] > 0
        assert sum(p for p, _ in steering.counters().values()) - matched_before == 3000


def test_kernel_socket_on_other_port_still_receives(link, steering, sender):
    with netns.entered(link.ns_a):
        k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with k, AfXdpPort(link.if_a, 0, netns=link.ns_a) as port:
        steering.register_xsk(0, port.fd)
        k.bind((IP_A, OTHER))
        k.settimeout(2)
        send(sender, range(50), port=OTHER)
        got = [struct.unpack_from("!Q", k.recv(2048))[0] for _ in range(50)]
        assert got == list(range(50))
        assert len(port.receive(256)) == 0  # nothing of it reached the bypass
        send(sender, range(5))  # while the steered port still works
        assert sum(len(b) for b in drain(port, 5)) == 5


def test_starved_fill_ring_is_counted(link, steering, sender):
    # 32 frames lent to the kernel, a big RX ring: the 33rd packet finds the fill ring empty
    with AfXdpPort(link.if_a, 0, netns=link.ns_a, frames=256, fill_size=32, comp_size=32, rx_size=512,
                   tx_size=32) as port:
        steering.register_xsk(0, port.fd)
        assert port.stats["frames_in_fill"] == 32
        send(sender, range(100))
        time.sleep(0.1)
        s = port.stats
        # what this kernel reports in copy mode: each drop counts as rx_dropped and fill-ring-empty
        assert s["rx_fill_ring_empty_descs"] == 68 and s["rx_dropped"] == 68, s
        assert s["rx_ring_full"] == 0
        batches = drain(port, 32)
        assert_in_order_then_free(port, batches, 32)


def test_unread_rx_ring_is_counted(link, steering, sender):
    # plenty of fill frames but a 16-slot RX ring nobody reads: the 17th packet finds it full
    with AfXdpPort(link.if_a, 0, netns=link.ns_a, frames=1024, fill_size=256, rx_size=16) as port:
        steering.register_xsk(0, port.fd)
        send(sender, range(60))
        time.sleep(0.1)
        s = port.stats
        # what this kernel reports: rx_ring_full only (rx_dropped stays 0 when asked with the full struct)
        assert s["rx_ring_full"] == 44 and s["rx_dropped"] == 0, s
        assert s["rx_fill_ring_empty_descs"] == 0
        batches = drain(port, 16)
        assert_in_order_then_free(port, batches, 16)


def test_transmit_to_kernel_socket(link):
    with netns.entered(link.ns_b):
        k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with k, AfXdpPort(link.if_a, 0, netns=link.ns_a) as port:
        k.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: hold all 300 until we read
        k.bind((IP_B, PORT))
        k.settimeout(2)
        n = 300
        b = port.alloc(n)
        assert len(b) == n and port.check(app=n)
        b.fill(udp_template(payload(0)))
        b.set_payload_u64(UDP_PAYLOAD, np.arange(n, dtype=np.uint64))
        sent = 0
        while sent < n:
            sent += port.transmit(b[sent:])
        got = [struct.unpack_from("!Q", k.recv(2048))[0] for _ in range(n)]
        assert got == list(range(n))
        deadline = time.monotonic() + 1
        while port.stats["tx_completed"] < n and time.monotonic() < deadline:
            port.reap()
        s = port.stats
        assert s["tx_packets"] == s["tx_completed"] == n and s["tx_invalid_descs"] == 0
        port.check(app=0)


def udp_template(data: bytes) -> bytes:
    """Ethernet/IPv4/UDP from a to b with UDP checksum 0 (none, legal on IPv4) so payloads may vary."""
    udp_len = 8 + len(data)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(IP_A), socket.inet_aton(IP_B))
    ck = sum(struct.unpack("!10H", ip))
    ck = (ck & 0xFFFF) + (ck >> 16)
    ck = ~((ck & 0xFFFF) + (ck >> 16)) & 0xFFFF
    ip = ip[:10] + struct.pack("!H", ck) + ip[12:]
    eth = bytes.fromhex(MAC_B.replace(":", "")) + bytes.fromhex(MAC_A.replace(":", "")) + b"\x08\x00"
    return eth + ip + struct.pack("!HHHH", PORT, PORT, udp_len, 0) + data


def test_invalid_tx_descriptors_are_refused(link):
    with AfXdpPort(link.if_a, 0, netns=link.ns_a, frames=64, fill_size=32, comp_size=32, rx_size=32,
                   tx_size=32) as port:
        b = port.alloc(4)
        b.set_len(60)
        bad = b[0:1]
        bad.descs["addr"] = port.umem.size + 4096  # outside the UMEM
        with pytest.raises(UsageError, match="outside the UMEM"):
            port.transmit(bad)
        b = b[1:]
        b.descs["len"][0] = 2049  # longer than a frame
        with pytest.raises(UsageError, match="crosses its 2048-byte frame"):
            port.transmit(b)
        b.descs["len"][0] = 60
        b.descs["addr"][1] += 2000  # offset 2000 + 60 bytes crosses into the next frame
        with pytest.raises(UsageError, match="crosses"):
            port.transmit(b)
        b.descs["addr"][1] -= 2000
        port.free(b[2:])
        with pytest.raises(OwnershipError, match="is 'free', not 'app'"):
            port.transmit(b)  # the last frame was freed: not yours any more
        with pytest.raises(OwnershipError):
            port.free(b[2:])  # and not twice
        s = port.stats
        assert s["tx_packets"] == 0 and s["tx_invalid_descs"] == 0  # the kernel saw none of them
        port.free(b[:2])
        # the first frame's descriptor was overwritten above; it is still app-owned and leaks visibly
        with pytest.raises(OwnershipError, match="1 frames in state 'app', expected 0"):
            port.check(app=0)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"ifname": "kbxnope0"}, UsageError, "no interface 'kbxnope0'"),
    ({"queue": 1}, UsageError, "queue 1 does not exist"),
    ({"rx_size": 1000}, UsageError, "RX ring size 1000 is not a power of two"),
    ({"fill_size": 3}, UsageError, "not a power of two"),
    ({"mode": "zerocopy"}, XskError, "no zero-copy support"),
    ({"mode": "fast"}, UsageError, "mode 'fast' is unknown"),
    ({"frame_size": 1024}, UsageError, "2048 or 4096"),
])
def test_bad_setup_is_one_clear_error_and_leaks_nothing(link, kwargs, error, words):
    before = fd_count()
    args = {"ifname": link.if_a, "queue": 0, "netns": link.ns_a, **kwargs}
    with pytest.raises(error) as info:
        AfXdpPort(args.pop("ifname"), args.pop("queue"), **args)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, KbypassError)
    assert fd_count() == before


def test_busy_queue_is_refused_and_rebind_works(link):
    before = fd_count()
    small = dict(frames=256, fill_size=64, comp_size=64, rx_size=64, tx_size=64)
    with AfXdpPort(link.if_a, 0, netns=link.ns_a, **small):
        with pytest.raises(XskError, match="already uses this queue"):
            AfXdpPort(link.if_a, 0, netns=link.ns_a, mode="copy", **small)
    for _ in range(5):  # teardown and re-bind at once, repeatedly
        with AfXdpPort(link.if_a, 0, netns=link.ns_a, **small) as port:
            assert port.mode == "copy"
    assert fd_count() == before


def test_wait_times_out_cleanly(link):
    for poll in ("wakeup", "busy"):
        with AfXdpPort(link.if_a, 0, netns=link.ns_a, frames=256, fill_size=64, poll=poll) as port:
            t0 = time.monotonic()
            assert port.wait(0.05) is False
            assert 0.04 <= time.monotonic() - t0 < 0.5
            assert len(port.receive()) == 0


def test_busy_poll_receive(link, steering, sender):
    with AfXdpPort(link.if_a, 0, netns=link.ns_a, poll="busy", busy_budget=32) as port:
        steering.register_xsk(0, port.fd)
        send(sender, range(200))
        batches = drain(port, 200)
        assert_in_order_then_free(port, batches, 200)


def test_headroom_moves_packet_data(link, steering, sender):
    with AfXdpPort(link.if_a, 0, netns=link.ns_a, frames=256, fill_size=64, headroom=128) as port:
        steering.register_xsk(0, port.fd)
        send(sender, range(10))
        batches = drain(port, 10)
        b = batches[0]
        # data starts after our headroom plus the kernel's XDP_PACKET_HEADROOM (256)
        assert (b.addr % 2048 == 128 + 256).all()
        assert_in_order_then_free(port, batches, 10)
        a = port.alloc(2)
        assert (a.addr % 2048 == 128).all()  # frames to send start after the headroom too
        port.free(a)


def test_a_jumbo_mtu_takes_the_frags_aware_steering_program(link):
    """veth takes an XDP program without frags support only up to a peer MTU of 3506 (one 4 KiB page per
    frame, ERANGE above); kbypass's steering program is in section xdp.frags, so it attaches natively up to
    veth's maximum MTU, 65535. (A veth pair of its own, both ends in namespace b.)"""
    from kbypass.steer import Steering

    ends = (link.if_b[:-1] + "m", link.if_b[:-1] + "n")

    def set_mtu(mtu: int) -> None:
        with netns.entered(link.ns_b), IPRoute() as ipr:
            for ifname in ends:
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], mtu=mtu, state="up")

    with netns.entered(link.ns_b), IPRoute() as ipr:
        ipr.link("add", ifname=ends[0], kind="veth", peer=ends[1])
    try:
        for mtu in (4000, 9000, 65535):
            set_mtu(mtu)
            with Steering(ends[0], netns=link.ns_b) as st:
                assert st.attached_mode == "native"
    finally:
        with netns.entered(link.ns_b), IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ends[0])
            if idx:
                ipr.link("del", index=idx[0])


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_c), False])
def test_a_lane_whose_socket_closed_refuses_use_instead_of_crashing(link, native):
    """The C lane held the rings' kb_ring structs but not the socket's ring mappings: after the socket
    closed under an open lane, its next send followed the cleared pointers and the process died (SIGSEGV).
    In a child, since that is what it did."""
    import subprocess
    import sys

    code = f"""
import socket
from kbypass.port.afxdp import AfXdpPort
from kbypass.proto.udp import PlainUdp
port = AfXdpPort({link.if_a!r}, 0, netns={link.ns_a!r}, frames=256)
lane = port.message_lane(PlainUdp(bytes(6), socket.inet_aton({IP_A!r}), {PORT}, None), native={native})
port.xsk.close()  # the rings go while the lane is open
for name, call in (("send_one", lambda: lane.send_one(bytes(60))), ("receive_udp", lane.receive_udp),
                   ("wake", lane.wake), ("waiting", lane.waiting)):
    try:
        call()
        print(name, "worked")
    except ValueError as e:
        print(name, "refused:", e)
lane.close()
port.close()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-600:])
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and all(" refused: " in line and "closed" in line for line in lines), r.stdout
