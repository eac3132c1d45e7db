"""One Port conformance suite, every backend: afxdp (steered AF_XDP), packet_mmap (TPACKET_V3), socket (UDP).

Each test runs once per backend on the session testbed: host b runs the port under test, host a the kernel
peer. What every backend must do alike: exact content and count of sequence-numbered datagrams, frame
ownership (a leak, a double free, a free after transmit are caught), transmit to a kernel peer exactly,
statistics that move, and setup errors that are one clear line and leave nothing open.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import numpy as np
import pytest

from kbypass import netns
from kbypass.errors import KbypassError, UsageError
from kbypass.port import BACKENDS, open_port
from kbypass.port.batch import UDP_DPORT, UDP_PAYLOAD
from kbypass.xsk.umem import OwnershipError
from tests.kb import collect_batches

pytestmark = pytest.mark.netns

PORT = 4401  # the port under test receives this UDP port on host b
PEER = 4402  # the kernel peer's port on host a
WORDS = 4  # payload: seq, then WORDS-1 words derived from it, each checked
FRAME_LEN = UDP_PAYLOAD + 8 * WORDS
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def opened(backend, host, **options):
    """The port under test on `host`, receiving UDP to PORT."""
    return open_port(backend, host.iface, netns=host.netns, rules=[f"udp dst {host.ipv4} dport {PORT}"],
                     **options)


def udp_socket(host, bind=None):
    with netns.entered(host.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: hold a whole test's datagrams unread
    s.settimeout(2)
    if bind:
        s.bind(bind)
    return s


def payload(seq: int) -> bytes:
    return struct.pack(f"!{WORDS}Q", seq, *((seq * int(GOLDEN) + k) & (2**64 - 1) for k in range(1, WORDS)))


def drain(port, want: int, timeout: float = 3.0) -> list:
    return collect_batches(port, want, timeout)


def check_words(batch) -> np.ndarray:
    """Every word of every frame, vectorized; returns the sequence numbers."""
    words = batch.bytes_at(UDP_PAYLOAD, 8 * WORDS).view(">u8")
    seq = words[:, 0].astype(np.uint64)
    for k in range(1, WORDS):
        assert (words[:, k] == seq * GOLDEN + np.uint64(k)).all()
    return seq


def frame_to(a, b, seq: int) -> bytes:
    """Ethernet/IPv4/UDP from b:PORT to a:PEER (UDP checksum 0: none, legal on IPv4)."""
    data = payload(seq)
    udp_len = 8 + len(data)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(b.ipv4), socket.inet_aton(a.ipv4))
    ck = sum(struct.unpack("!10H", ip))
    ck = (ck & 0xFFFF) + (ck >> 16)
    ck = ~((ck & 0xFFFF) + (ck >> 16)) & 0xFFFF
    ip = ip[:10] + struct.pack("!H", ck) + ip[12:]
    eth = bytes.fromhex(a.mac.replace(":", "")) + bytes.fromhex(b.mac.replace(":", "")) + b"\x08\x00"
    return eth + ip + struct.pack("!HHHH", PORT, PEER, udp_len, 0) + data


def send_all(port, batch, timeout: float = 2.0) -> None:
    """Transmit until every frame is accepted (a full TX ring accepts a prefix: retry the rest)."""
    sent, deadline = 0, time.monotonic() + timeout
    while sent < len(batch):
        sent += port.transmit(batch[sent:])
        if sent < len(batch):
            assert time.monotonic() < deadline, f"only {sent} of {len(batch)} accepted"
            time.sleep(0.001)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def socket_mappings() -> int:
    """Rings mapped from sockets (AF_XDP, AF_PACKET): a mapping keeps its socket alive without an fd."""
    with open("/proc/self/maps") as f:
        return sum("socket:[" in line for line in f)


# ---- the suite --------------------------------------------------------------------------------------
def test_receive_exact_content_and_count(testbed_hosts, backend):
    a, b = testbed_hosts
    tx = udp_socket(a)
    with tx, opened(backend, b) as port:
        seqs = []
        for chunk in range(3):  # chunks well inside every backend's buffers, so none may be dropped
            for seq in range(chunk * 500, chunk * 500 + 500):
                tx.sendto(payload(seq), (b.ipv4, PORT))
            batches = drain(port, 500)
            held = sum(len(x) for x in batches)
            assert held == 500
            for x in batches:
                assert (x.lens == FRAME_LEN).all()
                assert (x.u16be(UDP_DPORT) == PORT).all()
                assert (x.u8(23) == 17).all() and (x.bytes_at(30, 4) == np.frombuffer(
                    socket.inet_aton(b.ipv4), dtype=np.uint8)).all()
                seqs.append(check_words(x))
            assert port.check(app=500)["app"] == 500  # received frames are ours until freed
            for x in batches:
                port.free(x)
            port.check(app=0)
        assert np.concatenate(seqs).tolist() == list(range(1500))  # none lost, none doubled, in order
        s = port.stats
        assert s["rx_packets"] == 1500 and s["rx_bytes"] == 1500 * FRAME_LEN
        assert s.get("rx_dropped", 0) == 0


def test_ownership_is_accounted(testbed_hosts, backend):
    a, b = testbed_hosts
    tx = udp_socket(a)
    peer = udp_socket(a, (a.ipv4, PEER))
    with tx, peer, opened(backend, b) as port:
        for seq in range(20):
            tx.sendto(payload(seq), (b.ipv4, PORT))
        time.sleep(0.2)  # let them all arrive, so one receive sees several (a PACKET_MMAP block may close early)
        got = drain(port, 20)
        rx = max(got, key=len)  # the test needs a batch of at least two frames
        for x in got:
            if x is not rx:
                port.free(x)
        n = len(rx)
        assert n >= 2 and port.check(app=n)["app"] == n
        with pytest.raises(OwnershipError, match="leak"):
            port.check(app=0)  # holding frames is visible
        port.free(rx[:1])
        with pytest.raises(OwnershipError):
            port.free(rx[:1])  # twice
        with pytest.raises(OwnershipError):
            port.transmit(rx[:1])  # not yours any more
        with pytest.raises(OwnershipError, match="twice"):
            port.free(rx[np.array([1, 1])])  # the same frame twice in one batch
        port.free(rx[1:])
        port.check(app=0)
        # allocated frames: yours until transmitted, and then not yours
        out = port.alloc(8)
        assert len(out) == 8 and port.check(app=8)["app"] == 8
        out.fill(frame_to(a, b, 7))
        send_all(port, out[:4])
        with pytest.raises(OwnershipError):
            port.free(out[:1])  # transmitted: no longer ours
        with pytest.raises(OwnershipError):
            port.transmit(out[:4])  # nor to send again
        port.free(out[4:])
        assert [struct.unpack_from("!Q", peer.recv(2048))[0] for _ in range(4)] == [7] * 4
        deadline = time.monotonic() + 1
        while True:  # AF_XDP/PACKET_MMAP take TX frames back when the kernel completes them
            try:
                port.check(app=0)
                break
            except OwnershipError:
                assert time.monotonic() < deadline
                time.sleep(0.01)


def test_transmit_to_kernel_peer_exact(testbed_hosts, backend):
    a, b = testbed_hosts
    peer = udp_socket(a, (a.ipv4, PEER))
    with peer, opened(backend, b) as port:
        n, chunk = 600, 100
        for start in range(0, n, chunk):
            out = port.alloc(chunk)
            assert len(out) == chunk
            out.fill(frame_to(a, b, 0))
            seq = np.arange(start, start + chunk, dtype=np.uint64)
            words = np.stack([seq] + [seq * GOLDEN + np.uint64(k) for k in range(1, WORDS)], axis=1)
            out.set_bytes(UDP_PAYLOAD, words.astype(">u8").view(np.uint8))
            send_all(port, out)
        got = [peer.recv(2048) for _ in range(n)]
        assert got == [payload(i) for i in range(n)]  # exact bytes, exact order
        s = port.stats
        assert s["tx_packets"] == n and s["tx_bytes"] == n * FRAME_LEN


def test_reflect_back_to_kernel_peer(testbed_hosts, backend):
    a, b = testbed_hosts
    peer = udp_socket(a, (a.ipv4, PEER))
    with peer, opened(backend, b) as port:
        n, seen = 300, 0
        for seq in range(n):
            peer.sendto(payload(seq), (b.ipv4, PORT))
        deadline = time.monotonic() + 3
        while seen < n and time.monotonic() < deadline:
            x = port.receive(64)
            if not x:
                port.wait(0.02)
                continue
            seen += len(x)
            x.swap_macs()
            x.swap_ips_and_ports()
            send_all(port, x)
        assert seen == n
        got = [peer.recvfrom(2048) for _ in range(n)]
        assert [g[0] for g in got] == [payload(i) for i in range(n)]
        assert {g[1] for g in got} == {(b.ipv4, PORT)}


def test_stats_counters_move(testbed_hosts, backend):
    a, b = testbed_hosts
    tx = udp_socket(a)
    peer = udp_socket(a, (a.ipv4, PEER))
    with tx, peer, opened(backend, b) as port:
        before = port.stats
        for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
            assert before[key] == 0
        for seq in range(50):
            tx.sendto(payload(seq), (b.ipv4, PORT))
        for x in drain(port, 50):
            port.free(x)
        out = port.alloc(20)
        out.fill(frame_to(a, b, 1))
        send_all(port, out)
        for _ in range(20):
            peer.recv(2048)
        s = port.stats
        assert (s["rx_packets"], s["rx_bytes"]) == (50, 50 * FRAME_LEN)
        assert (s["tx_packets"], s["tx_bytes"]) == (20, 20 * FRAME_LEN)


BAD_SETUP = {
    "afxdp": [
        ({"ifname": "kbxnope0"}, "no interface 'kbxnope0'"),
        ({"rx_size": 1000}, "not a power of two"),  # more cases in test_afxdp_port (each loads the program)
    ],
    "packet_mmap": [
        ({"ifname": "kbxnope0"}, "no interface 'kbxnope0'"),
        ({"frame_size": 1024}, "2048 or 4096"),
        ({"block_size": 1000}, "not a power of two"),
        ({"block_count": 1}, "block_count 1"),
        ({"fanout_mode": "weird"}, "fanout_mode 'weird' is unknown"),
    ],
    "socket": [
        ({"bind": ("10.255.255.1", PORT)}, "is not an address of this host"),
        ({"frame_size": 1024}, "2048 or 4096"),
        ({"batch": 0}, "batch 0"),
    ],
}


def test_bad_setup_is_one_clear_error_and_leaks_nothing(testbed_hosts, backend):
    a, b = testbed_hosts
    for kwargs, words in BAD_SETUP[backend]:
        before, mapped = fd_count(), socket_mappings()
        kwargs = dict(kwargs)
        ifname = kwargs.pop("ifname", b.iface)
        with pytest.raises(KbypassError) as info:
            open_port(backend, ifname, netns=b.netns, rules=[f"udp dst {b.ipv4} dport {PORT}"], **kwargs)
        msg = str(info.value)
        assert words in msg and "\n" not in msg, msg
        assert fd_count() == before and socket_mappings() == mapped, kwargs
    # and the interface is usable at once: nothing half-open holds it
    with opened(backend, b) as port:
        port.check(app=0)


def test_the_batch_backend_chosen_once_reaches_every_port_its_umem_and_its_batches(testbed_hosts, backend,
                                                                                     monkeypatch):
    """open_port(batch_ops=...) is the batch backend of every port underneath (each queue's UMEM too) and
    of the batches they hand out; without it, the lane in force (what --lane python selects)."""
    from kbypass import backend as backends

    _, b = testbed_hosts
    chosen = backends.PyBatch()  # an object of its own: only being passed down makes it the UMEM's
    with opened(backend, b, batch_ops=chosen) as sp:
        assert sp.batch_ops is chosen
        assert sp.ports and all(p.batch_ops is chosen for p in sp.ports)
        assert all(p.umem.ops is chosen for p in sp.ports if hasattr(p, "umem"))
        batch = sp.alloc(2)
        assert len(batch) and batch.owner.batch_ops is chosen
        sp.free(batch)
    monkeypatch.setattr(backends, "_selected", "python")
    with opened(backend, b) as sp:
        assert all(p.batch_ops is backends.PY_BATCH for p in sp.ports)
        assert all(p.umem.ops is backends.PY_BATCH for p in sp.ports if hasattr(p, "umem"))


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(UsageError, match="backend 'dpdk' is unknown: use one of afxdp, packet_mmap, socket"):
        open_port("dpdk", "eth0")


# ---- PACKET_MMAP only: what the other backends have no equivalent of ------------------------------------
def test_packet_mmap_fanout_splits_and_filter_narrows(testbed_hosts):
    """Two ports in one PACKET_FANOUT group (round robin) share the frames exactly; the filter keeps
    datagrams to other ports out of both rings."""
    from kbypass.port.packet_mmap import PacketMmapPort

    a, b = testbed_hosts
    tx = udp_socket(a)
    rule = f"udp dst {b.ipv4} dport {PORT}"
    group = os.getpid() & 0xFFFF
    with tx, PacketMmapPort(b.iface, netns=b.netns, rule=rule, fanout_group=group, fanout_mode="lb") as p1, \
            PacketMmapPort(b.iface, netns=b.netns, rule=rule, fanout_group=group, fanout_mode="lb") as p2:
        for seq in range(200):
            tx.sendto(payload(seq), (b.ipv4, PORT))
        for seq in range(200):
            tx.sendto(payload(seq), (b.ipv4, PORT + 50))  # filtered out by both
        seqs = []
        for p in (p1, p2):
            got = drain(p, 95, timeout=1.0)
            seqs.append(np.concatenate([check_words(x) for x in got]).tolist())
            for x in got:
                p.free(x)
            p.check(app=0)
        assert sorted(seqs[0] + seqs[1]) == list(range(200))
        # "lb" alternates over every frame the group sees (the filter runs after the demux), so a stray
        # ARP or ND frame in between may shift the split by one or two
        assert min(len(seqs[0]), len(seqs[1])) >= 95


def test_packet_mmap_held_frames_hold_their_block(testbed_hosts):
    from kbypass.port.packet_mmap import PacketMmapPort

    a, b = testbed_hosts
    tx = udp_socket(a)
    with tx, PacketMmapPort(b.iface, netns=b.netns, rule=f"udp dport {PORT}", block_size=1 << 16,
                            block_count=4) as port:
        for seq in range(10):
            tx.sendto(payload(seq), (b.ipv4, PORT))
        got = drain(port, 10)
        assert sum(len(x) for x in got) == 10
        assert port.stats["blocks_held"] >= 1
        for x in got:
            port.free(x[1:])
        assert port.stats["blocks_held"] >= 1  # one frame of each batch still out: its block stays ours
        for x in got:
            port.free(x[:1])
        assert port.stats["blocks_held"] == 0
        with pytest.raises(UsageError, match="cannot send a 3000-byte frame"):
            out = port.alloc(1)
            try:
                out.set_len(3000)
                port.transmit(out)
            finally:
                port.free(out)
        port.check(app=0)


# ---- the tools' --backend option (kbypass.tools._backend) ------------------------------------------------
def test_backend_option_feeds_the_sink(testbed_hosts, backend):
    import argparse

    from kbypass.apps.sink import Sink
    from kbypass.tools._backend import add_backend_option, open_backend
    from kbypass.tools._port import add_port_options

    a, b = testbed_hosts
    parser = argparse.ArgumentParser()
    add_port_options(parser, default_rule_help="")
    add_backend_option(parser)
    args = parser.parse_args(["--host", "b", "--backend", backend, "--rule", f"udp dst {b.ipv4} dport {PORT}"])
    args.command = "sink"
    tx = udp_socket(a)
    with tx, open_backend(args, args.rule) as opened_port:
        for seq in range(100):
            tx.sendto(payload(seq), (b.ipv4, PORT))
        res = Sink(opened_port.port, batch=args.batch).run(count=100, duration=3)
        assert res.packets == 100
        assert sum(r["packets"] for r in opened_port.rule_counters()) == 100
        for p in getattr(opened_port, "ports", [opened_port.port]):  # afxdp: a SteeredPort, one port per queue
            p.check(app=0)
    if backend != "afxdp":
        args.queue = 1
        with pytest.raises(UsageError, match="--queue applies to the afxdp backend only"):
            open_backend(args, args.rule)


def test_packet_mmap_full_ring_drops_are_counted_and_it_recovers(testbed_hosts):
    """Nobody reads: the kernel fills both blocks, then finds the next one still ours, freezes the queue and
    drops. What arrived is an exact prefix; received + dropped is everything; freeing thaws the ring.

    After the thaw each datagram is read before the next is sent: the kernel also hands over a block that
    is only partly full once block_timeout_ms (2 ms) passes, so a sender slower than that (a loaded machine)
    fills one block per datagram, and a 2-block ring that nobody reads drops from the third on. Lock-step
    keeps at most one block out, so every datagram after the thaw must arrive and none may be dropped."""
    from kbypass.port.packet_mmap import PacketMmapPort

    a, b = testbed_hosts
    tx = udp_socket(a)
    with tx, PacketMmapPort(b.iface, netns=b.netns, rule=f"udp dport {PORT}", block_size=1 << 16,
                            block_count=2) as port:
        n = 2000  # ~144 bytes a frame: two 64 KiB blocks hold under 1000
        for seq in range(n):
            tx.sendto(payload(seq), (b.ipv4, PORT))
        time.sleep(0.05)
        got = drain(port, n, timeout=0.5)
        seqs = np.concatenate([check_words(x) for x in got]).tolist()
        for x in got:
            port.free(x)
        s = port.stats
        assert 0 < len(seqs) < n and seqs == list(range(len(seqs)))
        assert s["rx_dropped"] > 0 and s["rx_freeze_q"] >= 1
        assert s["rx_packets"] + s["rx_dropped"] == s["kernel_packets"] == n
        after = []
        for seq in range(n, n + 100):
            tx.sendto(payload(seq), (b.ipv4, PORT))
            got = collect_batches(port, 1, linger=0)
            after += np.concatenate([check_words(x) for x in got] or [np.zeros(0)]).tolist()
            for x in got:
                port.free(x)
        assert after == list(range(n, n + 100))
        assert port.stats["rx_dropped"] == s["rx_dropped"]
        port.check(app=0)
