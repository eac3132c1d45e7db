"""SocketPort on loopback: synthetic frames checked by an independent dissector (scapy), ownership, sendmmsg,
errors. No namespace needed: 127.0.0.1 only."""

from __future__ import annotations

import os
import socket
import struct

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from kbypass.errors import KbypassError, UsageError
from kbypass.port.socket_port import SocketPort
from kbypass.xsk.umem import OwnershipError
from tests.kb import collect_batches

# every test twice: per-batch bookkeeping in C (kbypass._fastbatch) and in numpy
pytestmark = pytest.mark.usefixtures("batch_impl")

LO = "127.0.0.1"


@pytest.fixture
def port():
    with SocketPort(LO, 0, batch=32) as p:
        yield p


@pytest.fixture
def peer():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((LO, 0))
    s.settimeout(2)
    yield s
    s.close()


def receive(port, want, timeout=2.0):
    return collect_batches(port, want, timeout, linger=0, size=64)


def test_synthetic_frames_dissect_as_valid_ipv4_udp(port, peer):
    sizes = [0, 1, 17, 100, 1400]
    for i, size in enumerate(sizes):
        peer.sendto(bytes([i]) * size, (LO, port.port))
    batches = receive(port, len(sizes))
    frames = [b.tobytes(i) for b in batches for i in range(len(b))]
    assert len(frames) == len(sizes)
    for i, (raw, size) in enumerate(zip(frames, sizes)):
        pkt = Ether(raw)
        assert pkt.type == 0x0800 and pkt.src == pkt.dst == "00:00:00:00:00:00"
        ip, udp = pkt[IP], pkt[UDP]
        assert (ip.src, ip.dst, ip.proto, ip.ttl, ip.len) == (LO, LO, 17, 64, 28 + size)
        recomputed = IP(bytes(ip))
        del recomputed.chksum
        assert IP(bytes(recomputed)).chksum == ip.chksum  # the header checksum is right
        assert (udp.sport, udp.dport, udp.len, udp.chksum) == (peer.getsockname()[1], port.port, 8 + size, 0)
        assert bytes(udp.payload) == bytes([i]) * size
    for b in batches:
        port.free(b)
    port.check(app=0)


def test_vectorized_accessors_and_reflection(port, peer):
    for seq in range(100):
        peer.sendto(struct.pack("!Q", seq) + bytes(8), (LO, port.port))
    batches = receive(port, 100)
    seqs = []
    for b in batches:
        assert (b.u16be(36) == port.port).all()
        seqs += b.payload_u64().tolist()
        b.swap_macs()
        b.swap_ips_and_ports()
        assert port.transmit(b) == len(b)
    assert seqs == list(range(100))
    back = [struct.unpack_from("!Q", peer.recv(100))[0] for _ in range(100)]
    assert back == list(range(100))
    s = port.stats
    assert s["rx_packets"] == s["tx_packets"] == 100 and s["rx_bytes"] == s["tx_bytes"] == 100 * (42 + 16)
    port.check(app=0)


def test_ownership(port, peer):
    peer.sendto(b"x" * 8, (LO, port.port))
    (b,) = receive(port, 1)
    assert port.check(app=1)["app"] == 1
    with pytest.raises(OwnershipError, match="expected 0"):
        port.check(app=0)
    port.free(b)
    with pytest.raises(OwnershipError, match="'free', not 'app'"):
        port.free(b)
    with pytest.raises(OwnershipError):
        port.transmit(b)
    a = port.alloc(3)
    with pytest.raises(OwnershipError, match="twice"):
        port.free(a[np.array([0, 0])])
    port.free(a)
    port.check(app=0)


def test_transmit_refuses_frames_it_cannot_send(port):
    a = port.alloc(2)
    a.set_len(30)
    with pytest.raises(UsageError, match="no room for Ethernet/IPv4/UDP"):
        port.transmit(a)
    a.set_len(60)
    a.set_bytes(12, np.array([0x86, 0xDD], dtype=np.uint8))  # IPv6
    with pytest.raises(UsageError, match="only untagged IPv4/UDP"):
        port.transmit(a)
    port.free(a)
    port.check(app=0)


def test_pool_exhaustion_returns_empty_batches(peer):
    with SocketPort(LO, 0, batch=8, frames=16) as port:
        for _ in range(20):
            peer.sendto(b"y", (LO, port.port))
        held = receive(port, 16)
        assert sum(len(b) for b in held) == 16
        assert len(port.receive(8)) == 0  # no free frame: nothing taken from the socket
        for b in held:
            port.free(b)
        assert sum(len(b) for b in receive(port, 4)) == 4


@pytest.mark.parametrize("args, kwargs, words", [
    (("10.0.0.300", 1), {}, "is not an IPv4 address"),
    ((LO, 70000), {}, "UDP port 70000"),
    ((LO, 0), {"batch": 0}, "batch 0"),
    ((LO, 0), {"batch": 2000}, "batch 2000"),
    ((LO, 0), {"frame_size": 1500}, "2048 or 4096"),
    (("192.0.2.1", 0), {}, "is not an address of this host"),
])
def test_bad_setup_is_one_clear_error(args, kwargs, words):
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(KbypassError) as info:
        SocketPort(*args, **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert len(os.listdir("/proc/self/fd")) == before


def test_port_in_use(port):
    with pytest.raises(UsageError, match="another socket has UDP port"):
        SocketPort(LO, port.port)
