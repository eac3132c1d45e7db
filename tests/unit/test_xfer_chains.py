"""Transport datagrams larger than one UMEM frame (multi-buffer AF_XDP): the codec writes them as chains of
frames (write_chains, C and the reference Python alike) and takes in-order runs of chained packets in C
(rx_run over ring-order descriptors) with the general Python path's result, whatever the frames' split."""

from __future__ import annotations

import copy
import dataclasses
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbypass.port.batch import DESC, Batch
from kbypass.proto.transport import ConnConfig, wire
from kbypass.xfer.datapath import EncodeInFrames, Unencoded, gathered
from kbypass.xfer.endpoint import TransportEndpoint
from kbypass.xfer.sizing import chain_frames, packet_limit
from kbypass.xsk.consts import XDP_PKT_CONTD
from tests.kb import needs_c
from tests.unit.test_transport_fastpath import (
    CODECS, MUTATIONS, PY, OneBatchPort, encaps, established, fx, mutate, state_of,
)

pytestmark = needs_c

FS = 4096
JUMBO = ConnConfig(max_datagram_size=8972, send_buffer=4 << 20, recv_buffer=4 << 20, max_window=2 << 20,
                   initial_window=64 * 8972)


def jumbo_encaps(kind: str, mtu: int):
    """encaps(kind) on a link of this MTU: (client's, server's), each with the other as its peer."""
    c, s = encaps(kind)
    for e in (c, s):
        e.mtu = mtu
        e.max_datagram = mtu - (28 if kind == "udp" else 0)
    return c, s


def empty_frames(n: int, headroom: int = 0) -> Batch:
    """n empty frames of FS bytes (what Port.alloc hands out), over memory of their own."""
    mem = np.zeros(FS * n, np.uint8)
    descs = np.zeros(n, DESC)
    descs["addr"] = np.arange(n, dtype=np.uint64) * FS + headroom
    return Batch(descs, mem, None, FS)


def gather_ring(batch: Batch, used: int) -> list[bytes]:
    """The packets written in batch.descs[:used] (ring order), each joined."""
    out, cur = [], b""
    for d in batch.descs[:used]:
        cur += bytes(batch.mem[int(d["addr"]):int(d["addr"]) + int(d["len"])])
        if not d["options"] & XDP_PKT_CONTD:
            out.append(cur)
            cur = b""
    assert cur == b""
    return out


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("kind", ["udp", "eth"])
def test_write_chains_builds_what_frame_builds_across_frames(kind, codec):
    rng = random.Random(3)
    grams = [rng.randbytes(rng.choice([60, 4000, 4054, 4055, 8972, 30000, 65507 if kind == "udp" else 65500]))
             for _ in range(12)]
    ref, enc = jumbo_encaps(kind, 65535)[0], jumbo_encaps(kind, 65535)[0]
    if kind == "udp":
        ref._ident = enc._ident = 0xFFFE  # the ident wraps inside the batch
    batch = empty_frames(200, headroom=256)
    used, wrote = enc.write_chains(codec, batch, grams, 2, 18)
    assert wrote == 10
    assert gather_ring(batch, used) == [ref.frame(g) for g in grams[2:]]
    assert (batch.descs["len"][:used] <= FS - 256).all()  # each frame within its UMEM frame
    if kind == "udp":
        assert enc._ident == ref._ident


@pytest.mark.parametrize("kind", ["udp", "eth"])
def test_c_and_python_write_the_same_chains(kind):
    rng = random.Random(5)
    grams = [rng.randbytes(rng.randrange(wire.OVERHEAD, 20000)) for _ in range(30)]
    out = []
    for codec in (fx, PY):
        enc = jumbo_encaps(kind, 65535)[0]
        batch = empty_frames(64)  # too few for all of them: both stop at the same datagram
        out.append((enc.write_chains(codec, batch, grams, 0, 18), batch.mem.tobytes(), batch.descs.tobytes()))
    assert out[0] == out[1]
    assert out[0][0][1] < len(grams)


@pytest.mark.parametrize("codec", CODECS)
def test_write_chains_refuses_a_datagram_past_the_frag_limit_and_writes_nothing(codec):
    enc = jumbo_encaps("udp", 65535)[0]
    batch = empty_frames(40)
    with pytest.raises(ValueError, match="fits no chain"):
        enc.write_chains(codec, batch, [b"a" * 100, b"b" * 20000], 0, 4)  # 20,042 bytes need 5 frames
    assert not batch.mem.any() and not batch.lens.any()
    enc.mtu = 9000
    with pytest.raises(ValueError, match="fits no chain"):
        enc.write_chains(codec, batch, [b"c" * 8973], 0, 18)  # past the MTU


def chained(frames: list[bytes], rng: random.Random | None, room: int = 3840) -> Batch:
    """frames as a multi-buffer RX ring hands them over: each split over frames of at most `room` bytes
    (the kernel fills each to its room; with `rng`, at random cut points too, a head too short for the
    headers included), XDP_PKT_CONTD on all but a packet's last, as a Batch of packets."""
    pieces = []
    for f in frames:
        cuts, pos = [], 0
        while len(f) - pos > room:
            take = room if rng is None or rng.random() < 0.5 else rng.randrange(1, room + 1)
            cuts.append(f[pos:pos + take])
            pos += take
        cuts.append(f[pos:])
        pieces += [(c, XDP_PKT_CONTD if j + 1 < len(cuts) else 0) for j, c in enumerate(cuts)]
    mem = np.zeros(FS * max(1, len(pieces)), np.uint8)
    descs = np.zeros(len(pieces), DESC)
    for i, (c, opt) in enumerate(pieces):
        mem[i * FS:i * FS + len(c)] = np.frombuffer(c, np.uint8)
        descs[i] = (i * FS, len(c), opt)
    return Batch.from_ring(descs, mem, None, FS)


def take_chained(conn, batch: Batch, enc, native_path: bool) -> TransportEndpoint:
    ep = TransportEndpoint(OneBatchPort(batch), enc, config=conn.config, own_port=False,
                           codec=fx if native_path else PY, rx_batch=4096)
    ep.conn = conn
    ep._take_frames(1.0)
    return ep


def jumbo_stream(n: int, seed: int = 1):
    c, s = established(JUMBO, seed)
    c.send(random.Random(seed).randbytes(n * JUMBO.mss), 0.5)
    return c, s, c.datagrams_to_send(0.5)


@pytest.mark.parametrize("kind", ["udp", "eth"])
def test_chained_in_order_frames_all_go_through_c_with_the_python_result(kind):
    enc_c, enc_s = jumbo_encaps(kind, 9000)
    c, s, grams = jumbo_stream(30)
    assert len(grams) >= 30 and max(map(len, grams)) == 8972
    batch = chained([enc_c.frame(d) for d in grams], None)
    assert batch.tails is not None
    s_py = copy.deepcopy(s)
    ep_c = take_chained(s, copy.deepcopy(batch), enc_s, True)
    ep_py = take_chained(s_py, batch, enc_s, False)
    assert ep_c.counters["rx_c"] == len(grams) and ep_py.counters["rx_c"] == 0
    got, want = state_of(s, ep_c), state_of(s_py, ep_py)
    assert got == want and len(got[0]) == 30 * JUMBO.mss


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["udp", "eth"]), seed=st.integers(1, 5), split=st.integers(0, 1 << 20),
       muts=st.lists(st.tuples(st.integers(0, 11), st.sampled_from(MUTATIONS), st.integers(0, 1 << 23)), max_size=3))
def test_any_mutated_chained_batch_leaves_the_connection_as_the_python_path_does(kind, seed, split, muts):
    """Mutations (CRC, ids, seq, truncation, ...) in a batch of 12 in-order jumbo datagrams, each split at
    random over frames: the C run over the chains and the Python path agree, frame boundaries anywhere
    (across the headers, the payload's end, the CRC trailer)."""
    enc_c, enc_s = jumbo_encaps(kind, 9000)
    c, s, grams = jumbo_stream(12, seed)
    ops = [("keep", 0)] * len(grams)
    for i, op, r in muts:
        ops[i % len(grams)] = (op, r)
    frames = mutate([enc_c.frame(d) for d in grams], ops, enc_c)
    batch = chained([f for f in frames if f], random.Random(split))
    s_py = copy.deepcopy(s)
    ep_c = take_chained(s, copy.deepcopy(batch), enc_s, True)
    ep_py = take_chained(s_py, batch, enc_s, False)
    assert state_of(s, ep_c) == state_of(s_py, ep_py)


def test_gathered_copies_each_packet_contiguous():
    rng = random.Random(9)
    frames = [rng.randbytes(n) for n in (100, 9014, 3840, 3841, 60)]
    batch = chained(frames, None)
    mv, addrs, lens = gathered(batch, 1, 5)
    assert [bytes(mv[a:a + k]) for a, k in zip(addrs, lens)] == frames[1:]


class _Umem:
    frame_size, headroom = 4096, 0


class _Port:
    xsk = object()
    umem = _Umem()

    def __init__(self, multi_buffer: bool) -> None:
        self.multi_buffer = multi_buffer
        self.max_tx_frames = 18 if multi_buffer else 1


def test_packet_limit_is_the_chains_on_a_multi_buffer_port_and_one_frame_otherwise():
    assert packet_limit(_Port(False)) == 4096 - 256
    assert packet_limit(_Port(True)) == 65535 + 14  # 18 frames of 4096 hold more than IPv4 describes
    assert chain_frames(_Port(True), 9014) == (18, 4096)
    assert chain_frames(_Port(True), 1514) == (0, 0)  # fits one frame: the one-frame path
    assert chain_frames(_Port(False), 9014) == (0, 0)


def test_a_jumbo_flight_holds_64_datagrams_up_to_4_mib():
    from kbypass.xfer.endpoint import default_config

    assert default_config(1472).max_window == 1 << 20  # the one-frame sizes keep theirs
    assert default_config(8972).max_window == 1 << 20
    assert default_config(65507).max_window == 64 * 65507  # just under 4 MiB
    assert default_config(65507).send_buffer == default_config(65507).recv_buffer == 2 * 64 * 65507


def test_an_eth_datagram_stops_at_the_transports_limit_on_the_largest_mtu():
    from kbypass.xfer import EthEncap
    from kbypass.xfer.endpoint import default_config

    enc = EthEncap("02:00:00:00:00:01", mtu=65535)
    assert enc.max_datagram == 65507
    assert default_config(enc.max_datagram).max_datagram_size == 65507
    assert EthEncap("02:00:00:00:00:01", mtu=9000).max_datagram == 9000


def _new_data_out(codec, n: int, seed: int = 4, fin: bool = False) -> list:
    """What a jumbo connection with this codec emits for n segments of new data (and a FIN)."""
    c, _ = established(JUMBO, seed)
    c.codec = codec
    data = random.Random(seed).randbytes(n * JUMBO.mss - 1234)  # the last segment shorter
    c.send(data[:5000], 0.5)
    c.send(data[5000:], 0.5)  # two chunks: a segment may span them (a copy) or lie in one (a view)
    if fin:
        c.close(0.5)
    return c.datagrams_to_send(0.5)


@pytest.mark.parametrize("fin", [False, True])
@pytest.mark.parametrize("kind", ["udp", "eth"])
def test_segments_encoded_in_their_frames_make_the_chains_of_their_encoded_bytes(kind, fin):
    """EncodeInFrames: new segments leave the connection Unencoded and write_chains encodes them straight into
    their frames, byte for byte what encoding first and copying after writes (C and Python codecs)."""
    encoded, deferred = _new_data_out(fx, 12, fin=fin), _new_data_out(EncodeInFrames(fx), 12, fin=fin)
    assert sum(type(d) is Unencoded for d in deferred) >= 12
    assert [bytes(d) for d in deferred] == encoded and [len(d) for d in deferred] == list(map(len, encoded))
    out = []
    for codec, grams in ((fx, deferred), (fx, encoded), (PY, encoded)):
        enc = jumbo_encaps(kind, 9000)[0]
        batch = empty_frames(20, headroom=256)  # too few for all: each stops at the same datagram
        out.append((enc.write_chains(codec, batch, grams, 1, 18), batch.mem.tobytes(), batch.descs.tobytes()))
    assert out[0] == out[1] == out[2] and 0 < out[0][0][1] < len(deferred) - 1


@pytest.mark.parametrize("bad, error", [
    ("long", (ValueError, "at most 65535 bytes")),
    ("field", (OverflowError, "out of its range")),
    ("neither", (TypeError, "bytes \\(or unencoded segments\\)")),
])
def test_write_chains_refuses_a_bad_unencoded_datagram_and_writes_nothing(bad, error):
    grams = _new_data_out(EncodeInFrames(fx), 3)
    u = grams[1]
    if bad == "long":
        grams[1] = Unencoded(fx.encode, u.fields, dataclasses.replace(u.seg, data=bytes(70000)))
    elif bad == "field":
        grams[1] = Unencoded(fx.encode, (1 << 32,) + u.fields[1:], u.seg)
    else:
        grams[1] = bytearray(bytes(u))
    batch = empty_frames(20)
    before = batch.mem.tobytes(), batch.descs.tobytes()
    with pytest.raises(error[0], match=error[1]):
        jumbo_encaps("udp", 9000)[0].write_chains(fx, batch, grams, 0, 18)
    assert (batch.mem.tobytes(), batch.descs.tobytes()) == before


def test_an_endpoint_encodes_in_frames_only_with_chains_from_c(monkeypatch):
    from kbypass.xfer import endpoint as ep_mod

    monkeypatch.setattr(ep_mod, "check_fits", lambda *a: None)
    for chains, codec, deferred in (((18, 3840), fx, True), ((0, 0), fx, False), ((18, 3840), PY, False)):
        monkeypatch.setattr(ep_mod, "chain_frames", lambda port, n, chains=chains: chains)
        ep = TransportEndpoint(OneBatchPort(empty_frames(1)), jumbo_encaps("udp", 9000)[0], config=JUMBO,
                               own_port=False, codec=codec)
        assert isinstance(ep._conn_codec, EncodeInFrames) is deferred and ep.codec is codec


@needs_c
def test_write_chains_refuses_descriptors_rewritten_while_it_reads_and_writes_nothing():
    """Reading an unencoded datagram's attributes runs Python, which may rewrite the (writable) descriptors
    after an earlier datagram's chain was checked: write_chains checks them all again before writing (it
    wrote past a frame's end once: a segfault)."""
    from kbypass import backend
    from kbypass.proto.transport.sendbuf import Segment

    fx = backend.native_module("xfer")
    fs, n = 4096, 3
    mem = np.zeros(fs * n, np.uint8)
    descs = np.zeros(n, DESC)
    descs["addr"] = np.arange(n, dtype=np.uint64) * fs

    class Rewrites(Segment):
        @property
        def data(self):  # read after datagram 0's chain was checked
            descs["addr"] = np.arange(n, dtype=np.uint64) * fs + 4000  # frames of 96 bytes' room
            return b"y" * 10

        @data.setter
        def data(self, v):
            pass

    fields = (1, 2, 3, 4, 5, 6)
    grams = [Unencoded(fx.encode, fields, Segment(0, b"x" * 5000)), Unencoded(fx.encode, fields, Rewrites(5000, b""))]
    with pytest.raises(ValueError, match="descriptors changed"):
        fx.write_chains(mem, descs, 0, fs, 1 << 17, 60, 1, bytes(14), 0, grams)
    assert not mem.any()


@pytest.mark.parametrize("chain", [True, False])
@pytest.mark.parametrize("where", [0, 1, 4000, 5000, 8925])
def test_rx_run_checks_and_copies_in_one_pass_and_stops_at_a_corrupt_payload_byte(chain, where):
    """rx_run copies each payload while its CRC is computed (a chunk at a time): a flipped payload byte, in
    any chunk of a datagram (or of its chain's frames), still ends the run there, and the joined bytes are
    exactly the payloads before it (what was copied of the refused one is cut off)."""
    enc_c, enc_s = jumbo_encaps("udp", 9000)
    c, s, grams = jumbo_stream(6)
    frames = [bytearray(enc_c.frame(d)) for d in grams]
    frames[3][enc_c.header_len + wire.HEADER_SIZE + where] ^= 0x40  # a payload byte of the fourth
    if chain:
        batch = chained([bytes(f) for f in frames], None)
        descs = batch.ring_descs()
    else:  # one frame per datagram (a UMEM of 16 KiB frames)
        mem = np.zeros(16384 * len(frames), np.uint8)
        descs = np.zeros(len(frames), DESC)
        for i, f in enumerate(frames):
            mem[i * 16384:i * 16384 + len(f)] = np.frombuffer(bytes(f), np.uint8)
            descs[i] = (i * 16384, len(f), 0)
        batch = Batch(descs, mem, None, 16384)
    params = s.rx_run_params()
    stop, data, tsval, ends = fx.rx_run(batch.mem, descs, 0, enc_s.kind, enc_s.peer_key, *params)
    assert stop == 3 and data == b"".join(wire.decode(g).payload for g in grams[:3])
    frames[3][enc_c.header_len + wire.HEADER_SIZE + where] ^= 0x40  # repaired: the run takes all six
    whole = chained([bytes(f) for f in frames], None)
    stop, data, _, _ = fx.rx_run(whole.mem, whole.ring_descs(), 0, enc_s.kind, enc_s.peer_key, *params)
    assert stop == 6 and data == b"".join(wire.decode(g).payload for g in grams)
