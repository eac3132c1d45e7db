"""The xfer encapsulations without a network: frames built, parsed back, and malformed frames dropped
with a reason (never an exception, never a wrong datagram)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kbypass.errors import UsageError
from kbypass.proto import checksum
from kbypass.proto.ethernet import parse_ethernet
from kbypass.proto.ipv4 import parse_ipv4
from kbypass.proto.transport import wire
from kbypass.xfer import EthEncap, UdpEncap
from kbypass.xfer.encap import mac_bytes

A_MAC, B_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def datagram(n: int = 100) -> bytes:
    return wire.encode(wire.Packet(wire.ACK, 1, 2, payload=bytes(range(256))[:n] * 1))


def udp_pair() -> tuple[UdpEncap, UdpEncap]:
    a = UdpEncap(A_MAC, "10.0.0.1", 7001)
    b = UdpEncap(B_MAC, "10.0.0.2", 7000)
    a.set_peer("10.0.0.2", 7000, B_MAC)
    b.set_peer("10.0.0.1", 7001, A_MAC)
    return a, b


def test_udp_round_trip_and_valid_headers() -> None:
    a, b = udp_pair()
    for n in (0, 1, 255):
        d = datagram(n)
        f = a.frame(d)
        assert len(f) == 42 + len(d)
        assert b.parse(f) == (d, ("10.0.0.1", 7001, mac_bytes(A_MAC)))
        assert checksum.verify(f[14:34])  # the IPv4 header checksum is right (kernels check it)
        eth = parse_ethernet(f)
        assert not isinstance(eth, str)
        ip = parse_ipv4(f[14:])
        assert not isinstance(ip, str), ip
    assert a.frame(d)[18:20] != a.frame(d)[18:20]  # IP ids advance
    assert a.max_datagram == 1472


def test_udp_parse_refuses_what_is_not_ours() -> None:
    a, b = udp_pair()
    f = bytearray(a.frame(datagram()))
    assert b.parse(bytes(f[:41])) == "not_udp"
    wrong_port = bytearray(f)
    wrong_port[37] ^= 1
    assert b.parse(bytes(wrong_port)) == "wrong_port"
    wrong_ip = bytearray(f)
    wrong_ip[33] ^= 1
    assert b.parse(bytes(wrong_ip)) == "wrong_address"
    lying = bytearray(f)
    lying[17] += 1  # IP total length one more than the frame
    assert b.parse(bytes(lying)) == "bad_length"
    frag = bytearray(f)
    frag[20] |= 0x20  # more fragments
    assert b.parse(bytes(frag)) == "not_udp"
    assert a.parse(bytes(f)) == "wrong_port"  # our own frame is not for us


def test_eth_round_trip_and_minimum_size() -> None:
    a, b = EthEncap(A_MAC), EthEncap(B_MAC)
    a.set_peer(B_MAC)
    d = wire.encode(wire.Packet(wire.ACK, 1, 2))
    f = a.frame(d)
    assert len(f) >= 60  # the smallest datagram still makes a minimum-size frame: never padded
    assert f[12:14] == b"\x88\xb5"
    assert b.parse(f) == (d, (mac_bytes(A_MAC),))
    assert b.parse(f[:59]) == "too_short"
    assert a.parse(f) == "wrong_address"
    other = f[:12] + b"\x88\xb6" + f[14:]
    assert b.parse(other) == "not_ours"


def test_parsers_never_raise_on_garbage() -> None:
    rng = random.Random(7)
    a, b = udp_pair()
    e = EthEncap(B_MAC)
    good = [a.frame(datagram(50)), EthEncap(A_MAC).frame(datagram(50))]
    for _ in range(3000):
        f = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 4)):
            f[rng.randrange(len(f))] = rng.randrange(256)
        f = bytes(f[: rng.randint(0, len(f))])
        for enc in (b, e):
            r = enc.parse(f)
            if not isinstance(r, str):
                try:  # whatever passes the encapsulation is a datagram the CRC then judges
                    wire.decode(r[0])
                except wire.RemoteProtocolError:
                    pass


@pytest.mark.parametrize("call,words", [
    (lambda: UdpEncap("zz", "10.0.0.1", 1), "bad MAC"),
    (lambda: UdpEncap(A_MAC, "10.0.0.300", 1), "not an IPv4 address"),
    (lambda: UdpEncap(A_MAC, "10.0.0.1", 0), "1-65535"),
    (lambda: EthEncap(A_MAC, 0x0800), "EtherType 0x0800"),
    (lambda: EthEncap(A_MAC, 0x05DC), "below 0x0600"),
])
def test_bad_arguments(call, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        call()


# ---------------------------------------------------------------------------- the endpoint's batch paths
def _sized(n: int) -> bytes:
    """A valid datagram of exactly n bytes (n >= wire.OVERHEAD)."""
    payload = (bytes(range(256)) * (n // 256 + 1))[:n - wire.OVERHEAD]
    return wire.encode(wire.Packet(wire.ACK, 1, 2, payload=payload))


def _frames_in_memory(frames: list[bytes]):
    """The frames laid out in one buffer as a port would hand them over: (memoryview, addrs, lens)."""
    mem = bytearray(2048 * len(frames))
    addrs, lens = [], []
    for i, f in enumerate(frames):
        mem[2048 * i:2048 * i + len(f)] = f
        addrs.append(2048 * i)
        lens.append(len(f))
    return memoryview(mem), addrs, lens


def _peer_pair(kind: str):
    """(sender encap, receiver encap with the sender as its peer)."""
    if kind == "udp":
        a, b = UdpEncap(A_MAC, "10.0.0.1", 7001), UdpEncap(B_MAC, "10.0.0.2", 7000)
        a.set_peer("10.0.0.2", 7000, B_MAC)
        b.set_peer("10.0.0.1", 7001, A_MAC)
    else:
        a, b = EthEncap(A_MAC), EthEncap(B_MAC)
        a.set_peer(B_MAC)
        b.set_peer(A_MAC)
    return a, b


@pytest.mark.parametrize("kind", ["udp", "eth"])
def test_peer_datagrams_judges_every_frame_as_parse_peer_does(kind: str) -> None:
    """The batch parser's shortcut for the common frame must agree with parse_peer on every frame:
    same datagrams in the same order, the same drop reasons, on valid frames, frames of another peer,
    and frames mutilated at random (truncated, bit flips, lying lengths)."""
    a, b = _peer_pair(kind)
    stranger = UdpEncap(A_MAC, "10.0.0.9", 7001) if kind == "udp" else EthEncap("02:00:00:00:00:09")
    stranger.set_peer(*(("10.0.0.2", 7000, B_MAC) if kind == "udp" else (B_MAC,)))
    rng = random.Random(5)
    frames = []
    for i in range(400):
        f = bytearray((stranger if i % 7 == 3 else a).frame(_sized(rng.randrange(wire.OVERHEAD, 1400))))
        what = rng.random()
        if what < 0.3:
            for _ in range(rng.randrange(1, 4)):
                f[rng.randrange(min(len(f), 60))] ^= 1 << rng.randrange(8)
        elif what < 0.4:
            f = f[:rng.randrange(len(f))]
        elif what < 0.45 and kind == "udp":
            f[16:18] = rng.randrange(1 << 16).to_bytes(2, "big")  # IP total length lies
        frames.append(bytes(f))
    mv, addrs, lens = _frames_in_memory(frames)
    drops: Counter = Counter()
    got = [bytes(d) for d in b.peer_datagrams(mv, addrs, lens, drops)]
    want, want_drops = [], Counter()
    for f in frames:
        r = b.parse_peer(f)
        if type(r) is str:
            want_drops[r] += 1
        else:
            want.append(bytes(r))
    assert got == want and drops == want_drops
    assert len(want) > 150 and want_drops["other_peer"] > 20 and len(want_drops) > 2


@pytest.mark.parametrize("kind", ["udp", "eth"])
def test_parse_peer_is_parse_plus_the_source_check(kind: str) -> None:
    a, b = _peer_pair(kind)
    d = datagram(300)
    f = a.frame(d)
    assert bytes(b.parse_peer(f)) == d and b.parse(f)[0] == d
    assert bytes(b.parse_peer(memoryview(f))) == d  # frames are taken where they lie: views work too
    other = UdpEncap(A_MAC, "10.0.0.9", 7001) if kind == "udp" else EthEncap("02:00:00:00:00:09")
    other.set_peer(*(("10.0.0.2", 7000, B_MAC) if kind == "udp" else (B_MAC,)))
    assert b.parse_peer(other.frame(d)) == "other_peer"
    assert b.parse_peer(f[:20]) == b.parse(f[:20])


@pytest.mark.parametrize("lane", ["c", "python"])
def test_a_frame_never_spills_into_the_next_umem_frame(lane: str) -> None:
    """The C path was given mtu + 14 as the frame limit, not the UMEM frame's room: under a large MTU with
    2 KiB frames a 2,030-byte datagram wrote 24 bytes into the next frame (maybe a kernel RX buffer).
    The Python path had no limit at all."""
    import numpy as np

    from kbypass import backend
    from kbypass.port.batch import DESC, Batch
    from kbypass.xfer.endpoint import TransportEndpoint

    if lane == "c" and not backend.built("xfer"):
        pytest.skip("kbypass._fastxfer is not built")
    a, _ = udp_pair()
    a.mtu = 3000  # the link allows it; the 2 KiB UMEM frame does not
    mem = np.zeros(2 * 2048, dtype=np.uint8)
    descs = np.zeros(1, dtype=DESC)
    batch = Batch(descs, mem, None, 2048)
    big = _sized(2048 - 42 + 24)
    ep = object.__new__(TransportEndpoint)
    ep.codec, ep.encap = backend.codec(lane), a
    with pytest.raises(ValueError, match="does not fit"):
        ep._write_frames(batch, [big], 0)
    assert not mem[2048:].any(), "bytes were written into the next UMEM frame"
    fits = _sized(2048 - 42)
    ep._write_frames(batch, [fits], 0)
    assert int(batch.descs["len"][0]) == 2048 and not mem[2048:].any()
