"""The transport codec in C (kbypass.backend.CCodec over kbypass._fastxfer) held to the Python reference
(kbypass.proto.transport.codec.PythonCodec), both as kbypass.backend gives them.

  * rx_run through the endpoint's real glue (TransportEndpoint._take_frames over a batch of frames):
    for hypothesis-mutated batches (drops, duplicates, reordering, corruption anywhere in the frame,
    foreign frames, other flags, truncation) the receiving connection ends in exactly the state the
    pure-Python path leaves it in: same delivered bytes, counters, drops, and the same ACK on the wire.
  * encode / encode_segments / write_frames: byte-identical to wire.encode_fields and encap.frame.
  * the sender's bookkeeping the O(1) loss-detection exit relies on (SACKed / resent segment counts)
    matches its flight at every step of a hostile simulated transfer.
"""

from __future__ import annotations

import copy
import os
import random
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbypass import backend
from kbypass.port.batch import DESC, Batch
from kbypass.proto.transport import ConnConfig, Connection, DataReceived, MessageReceived, Role, State, wire
from kbypass.proto.transport.sendbuf import Segment
from kbypass.xfer import EthEncap, UdpEncap
from kbypass.xfer.endpoint import TransportEndpoint
from tests.kb import needs_c

pytestmark = needs_c
fx = backend.codec("c") if backend.built("xfer") else None
PY = backend.codec("python")
CODECS = [pytest.param(fx, id="c"), pytest.param(PY, id="python")]

MAC_C, MAC_S = "02:00:00:00:00:01", "02:00:00:00:00:02"
IP_C, IP_S = "10.9.0.1", "10.9.0.2"
PORT_C, PORT_S = 5000, 7000
MSS = 1472 - wire.OVERHEAD
CFG = ConnConfig(max_datagram_size=1472, send_buffer=1 << 20, recv_buffer=1 << 18, max_window=1 << 19,
                 initial_window=64 * MSS)
T = 1.0


def encaps(kind: str):
    """(client's encap, server's encap), each with the other as its peer."""
    if kind == "udp":
        c, s = UdpEncap(MAC_C, IP_C, PORT_C), UdpEncap(MAC_S, IP_S, PORT_S)
        c.set_peer(IP_S, PORT_S, MAC_S)
        s.set_peer(IP_C, PORT_C, MAC_C)
    else:
        c, s = EthEncap(MAC_C), EthEncap(MAC_S)
        c.set_peer(MAC_S)
        s.set_peer(MAC_C)
    return c, s


def established(cfg: ConnConfig, seed: int = 1) -> tuple[Connection, Connection]:
    c = Connection(Role.CLIENT, cfg, 0.0, rng=random.Random(seed))
    s = Connection(Role.SERVER, cfg, 0.0, rng=random.Random(seed + 1))
    c.connect(0.0)
    for _ in range(3):
        for d in c.datagrams_to_send(0.0):
            s.receive_datagram(d, 0.0)
        for d in s.datagrams_to_send(0.0):
            c.receive_datagram(d, 0.0)
    assert c.state is State.ESTABLISHED and s.state is State.ESTABLISHED
    return c, s


def batch_of(frames: list[bytes]) -> Batch:
    mem = np.zeros(2048 * max(1, len(frames)), np.uint8)
    descs = np.zeros(len(frames), DESC)
    for i, f in enumerate(frames):
        mem[i * 2048:i * 2048 + len(f)] = np.frombuffer(f, np.uint8)
        descs[i] = (i * 2048, len(f), 0)
    return Batch(descs, mem, None, 2048)


class OneBatchPort:
    """A port whose receive() returns one prepared batch, then nothing."""

    mode = "test"

    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    def receive(self, n: int) -> Batch:
        b, self.batch = self.batch, Batch.empty(self.batch.mem)
        return b

    def free(self, batch: Batch) -> None:
        pass


def take(conn: Connection, frames: list[bytes], enc, native_path: bool) -> TransportEndpoint:
    """Feed `frames` to `conn` through the endpoint's receive path, with or without the C path."""
    ep = TransportEndpoint(OneBatchPort(batch_of(frames)), enc, config=conn.config, own_port=False,
                           codec=fx if native_path else PY, rx_batch=4096)
    ep.conn = conn
    ep._take_frames(T)
    return ep


def state_of(conn: Connection, ep: TransportEndpoint) -> tuple:
    """Everything the arrivals can have changed, and what the connection says next on the wire."""
    events = list(iter(conn.next_event, None))
    data = b"".join(ev.data for ev in events if isinstance(ev, DataReceived))
    messages = [ev.data for ev in events if isinstance(ev, MessageReceived)]
    rb = conn.rbuf
    return (data, messages, bytes(rb.partial), rb.rcv_nxt, rb.unread, sorted(rb.ooo.items()), rb._ooo_seqs,
            rb.ooo_bytes, rb.recent,
            rb._run_end, conn.stats, conn._ts_recent, conn._last_recv,
            conn._peer_right, conn.sbuf.snd_una, conn.state, dict(ep.drops), ep.counters["rx_datagrams"],
            conn._ack_pending, conn._ack_now, conn._unacked_bytes, conn.datagrams_to_send(T + 0.001))


def stream_datagrams(cfg: ConnConfig, n_bytes: int, seed: int = 1):
    c, s = established(cfg, seed)
    c.send(random.Random(seed).randbytes(n_bytes), 0.5)
    return c, s, c.datagrams_to_send(0.5)


MSG_CFG = ConnConfig(max_datagram_size=1472, send_buffer=1 << 20, recv_buffer=1 << 18, max_window=1 << 19,
                     initial_window=64 * MSS, message_mode=True, max_message_size=8 * MSS)


def message_datagrams(n_segments: int, seed: int = 1):
    """Messages from 1 byte to several segments long, until they fill about n_segments datagrams."""
    c, s = established(MSG_CFG, seed)
    rng = random.Random(seed)
    total = 0
    while total < n_segments * MSS:
        msg = rng.randbytes(rng.choice((1, rng.randrange(1, MSS), MSS, rng.randrange(MSS, 4 * MSS))))
        assert c.send_message(msg, 0.5)
        total += len(msg)
    return c, s, c.datagrams_to_send(0.5)


MUTATIONS = ("drop", "dup", "swap", "corrupt", "foreign", "fragment", "flags", "truncate", "window", "ack",
             "ack_window", "seq", "ids")


def mutate(frames: list[bytes], ops, enc_c) -> list[bytes]:
    out = list(frames)
    i = 0
    for op, r in ops:
        if i >= len(out):
            break
        f = bytearray(out[i])
        h = enc_c.header_len
        if op == "drop":
            del out[i]
            continue
        if op == "dup":
            out.insert(i, bytes(f))
            i += 1
        elif op == "swap" and i + 1 < len(out):
            out[i], out[i + 1] = out[i + 1], out[i]
        elif op == "corrupt":
            f[r % len(f)] ^= 1 << (r >> 20) % 8
            out[i] = bytes(f)
        elif op == "foreign":
            if isinstance(enc_c, UdpEncap):
                f[36:38] = (PORT_S + 1).to_bytes(2, "big")  # another port of the same host
            else:
                f[6:12] = bytes.fromhex("020000000099")  # another sender
            out[i] = bytes(f)
        elif op == "fragment":
            if isinstance(enc_c, UdpEncap):
                f[20] |= 0x20 if r % 2 else 0  # more fragments
                f[21] |= 0 if r % 2 else 1  # a fragment offset
            else:
                f[12:14] = b"\x08\x00"  # not our EtherType
            out[i] = bytes(f)
        elif op in ("flags", "window", "ack", "ack_window", "seq", "ids"):
            # a datagram that is valid but not plain in-order data: re-encoded with its CRC fixed
            d = bytes(f[h:])
            pkt = wire.decode(d)
            if op == "flags":
                pkt = pkt._replace(flags=pkt.flags | (wire.PING, wire.MSG_END, wire.FIN)[r % 3])
            elif op == "window":
                pkt = pkt._replace(window=pkt.window + 1 + r % 5000)
            elif op == "ack":
                pkt = pkt._replace(ack=pkt.ack + 1 + r % 3)  # beyond what the receiver ever sent
            elif op == "ack_window":  # the same right edge, from an ack beyond what the receiver sent
                pkt = pkt._replace(ack=pkt.ack + 1, window=pkt.window - 1)
            elif op == "ids":
                pkt = pkt._replace(src_id=pkt.src_id ^ 1) if r % 2 else pkt._replace(dst_id=pkt.dst_id ^ 1)
            else:
                pkt = pkt._replace(seq=pkt.seq + 1 + r % 3000)
            out[i] = bytes(f[:h]) + wire.encode(pkt)  # same length: the IP and UDP lengths still hold
        elif op == "truncate":
            out[i] = bytes(f[:r % len(f)])
        i += 1
    return out


@pytest.mark.parametrize("messages", [False, True], ids=["stream", "messages"])
@pytest.mark.parametrize("kind", ["udp", "eth"])
def test_plain_in_order_frames_all_go_through_c_with_the_python_result(kind, messages):
    enc_c, enc_s = encaps(kind)
    c, s, grams = message_datagrams(60) if messages else stream_datagrams(CFG, 60 * MSS)
    assert len(grams) >= 60
    frames = [enc_c.frame(d) for d in grams]
    s_py = copy.deepcopy(s)
    ep_c = take(s, frames, enc_s, True)
    ep_py = take(s_py, frames, enc_s, False)
    assert ep_c.counters["rx_c"] == len(grams) and ep_py.counters["rx_c"] == 0
    got, want = state_of(s, ep_c), state_of(s_py, ep_py)
    assert got == want
    assert len(got[1]) > 20 if messages else got[0]  # the messages (or the stream) arrived


@pytest.mark.parametrize("head", ["fills the hole", "duplicate"])
@pytest.mark.parametrize("kind", ["udp", "eth"])
def test_a_frame_c_cannot_start_at_goes_alone_and_c_takes_the_rest(kind, head):
    """The batch after a loss: its first frame is the retransmission that fills the hole (or a duplicate),
    which C cannot start a run at; it goes through Python alone, and C takes the in-order data behind it,
    leaving the connection as the Python path does."""
    enc_c, enc_s = encaps(kind)
    c, s, grams = stream_datagrams(CFG, 40 * MSS)
    frames = [enc_c.frame(d) for d in grams]
    # first batch: datagram 0 lost, 1-9 arrive above the hole; second batch: its head, then 10-39
    ep0 = take(s, frames[1:10], enc_s, True)
    assert s.rbuf.ooo and ep0.counters["rx_datagrams"] == 9
    second = ([frames[0]] if head == "fills the hole" else [frames[5]]) + frames[10:]
    s_py = copy.deepcopy(s)
    ep_c = take(s, second, enc_s, True)
    ep_py = take(s_py, second, enc_s, False)
    assert state_of(s, ep_c) == state_of(s_py, ep_py)
    # after the hole is filled the rest is in order; behind a duplicate it extends the run above the hole
    assert ep_c.counters["rx_c"] == 30


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["udp", "eth"]), small=st.booleans(), messages=st.booleans(), seed=st.integers(1, 5),
       muts=st.lists(st.tuples(st.integers(0, 23), st.sampled_from(MUTATIONS), st.integers(0, 1 << 23)), max_size=4))
def test_any_mutated_batch_leaves_the_connection_as_the_python_path_does(kind, small, messages, seed, muts):
    """A few mutations at random places in a batch of about 24 in-order frames (C takes the run before the
    first one, Python the rest), byte stream or messages of 1 byte to 4 segments. `small`: the receiver's
    window is 6 segments and the sender ignores it."""
    enc_c, enc_s = encaps(kind)
    c, s, grams = message_datagrams(24, seed) if messages else stream_datagrams(CFG, 24 * MSS, seed)
    muts = [(i % len(grams), op, r) for i, op, r in muts]
    if small:
        s.rbuf.limit = 6 * MSS  # (a misbehaving sender: 24 segments into a 6-segment window)
    ops = [("keep", 0)] * len(grams)
    for i, op, r in muts:
        ops[i] = (op, r)
    frames = mutate([enc_c.frame(d) for d in grams], ops, enc_c)
    s_py = copy.deepcopy(s)
    ep_c = take(s, frames, enc_s, True)
    ep_py = take(s_py, frames, enc_s, False)
    assert state_of(s, ep_c) == state_of(s_py, ep_py)


def test_run_params_in_order_out_of_order_and_none_while_our_own_data_is_in_flight():
    c, s, grams = stream_datagrams(CFG, 8 * MSS)
    p = s.rx_run_params()
    assert p is not None and p[2] == s.rbuf.rcv_nxt and p[-1] == Connection.RUN_IN_ORDER
    s.receive_datagram(grams[1], 0.6)  # a hole before it: the run above the hole can be extended
    p = s.rx_run_params()
    assert s.rbuf.ooo and p[2] == wire.decode(grams[1]).seq + MSS and p[-1] == Connection.RUN_OUT_OF_ORDER
    s.receive_datagram(grams[5], 0.6)  # a second hole: the latest arrival is still the highest
    assert s.rx_run_params()[2] == wire.decode(grams[5]).seq + MSS
    s.receive_datagram(grams[3], 0.6)  # an arrival below the highest run: general path only
    assert s.rx_run_params() is None
    c2, s2, _ = stream_datagrams(CFG, 8 * MSS, seed=3)
    s2.send(b"x" * 100, 0.6)
    s2.datagrams_to_send(0.6)  # something of the server's in flight: ACKs carry news for it
    assert s2.rx_run_params() is None


@settings(max_examples=200, deadline=None)
@given(flags=st.integers(0, 0x7F), src=st.integers(1, wire.MAX_U32), dst=st.integers(0, wire.MAX_U32),
       seq=st.integers(0, 1 << 62), ack=st.integers(0, 1 << 62), window=st.integers(0, wire.MAX_U32),
       tsval=st.integers(0, wire.MAX_U32), tsecr=st.integers(0, wire.MAX_U32), payload=st.binary(max_size=1500))
def test_c_encode_is_the_python_encoder(flags, src, dst, seq, ack, window, tsval, tsecr, payload):
    head = struct.pack("!BBBBIIQQIIIH", wire.VERSION, flags, 0, 0, src, dst, seq, ack, window, tsval, tsecr, len(payload))
    for codec in (fx, PY):
        c = codec.encode(flags, src, dst, seq, ack, window, tsval, tsecr, memoryview(payload))
        assert c == head + payload + struct.pack("!I", zlib.crc32(head + payload))
        assert wire.decode(c) == wire.Packet(flags, src, dst, seq, ack, window, tsval, tsecr, (), payload)


def test_c_crc_is_zlibs_at_every_length_and_alignment():
    """The C path's CRC32 (ISA-L, PCLMULQDQ folding) must be zlib.crc32 for every datagram size up to a
    jumbo frame: its folding loops have 16/64-byte steps and tails, so every length and offset is tried."""
    data = random.Random(9).randbytes(4000)
    for n in range(0, 3600):
        off = n % 13  # payload starts at odd addresses too
        payload = memoryview(data)[off:off + n]
        c = fx.encode(2, 1, 2, 3, 4, 5, 6, 7, payload)
        assert zlib.crc32(c[:-4]) == struct.unpack("!I", c[-4:])[0], n


def test_out_of_range_fields_still_raise_struct_error():
    with pytest.raises(struct.error):
        wire.encode_fields(wire.ACK, 1 << 32, 2, 0, 0, 0, 1, 0, (), b"x")
    with pytest.raises(struct.error):
        wire.encode_fields(wire.ACK, 1, 2, -1, 0, 0, 1, 0, (), b"x")


@pytest.mark.parametrize("codec", CODECS)
def test_encode_segments_matches_encode_fields_per_segment(codec):
    rng = random.Random(5)
    segs = [Segment(rng.randrange(1 << 40), rng.randbytes(rng.randrange(0, 1400)), rng.random() < 0.3,
                    rng.random() < 0.1) for _ in range(50)]
    out: list[bytes] = ["sentinel"]
    codec.encode_segments(11, 22, 333, 444, 555, 666, segs, out)
    assert out[0] == "sentinel" and len(out) == 51
    for seg, d in zip(segs, out[1:]):
        flags = wire.ACK | (wire.MSG_END if seg.msg_end else 0) | (wire.FIN if seg.fin else 0)
        assert d == wire.encode_fields(flags, 11, 22, seg.seq, 333, 444, 555, 666, (), seg.data)


@pytest.mark.parametrize("codec", CODECS)
def test_encode_segments_encodes_views_of_the_send_buffer_as_their_bytes(codec):
    """SendBuffer.cut_run hands segments as views of its chunks: both codecs encode a view as the bytes it
    shows (and the C one refuses a payload over 65,535 bytes, view or not)."""
    rng = random.Random(6)
    chunk = rng.randbytes(70_000)
    segs = [Segment(1000 + i * 1400, memoryview(chunk)[i * 1400:(i + 1) * 1400], i == 3) for i in range(5)]
    out: list[bytes] = []
    codec.encode_segments(11, 22, 333, 444, 555, 666, segs, out)
    assert out == [wire.encode_fields(wire.ACK | (wire.MSG_END if s.msg_end else 0), 11, 22, s.seq, 333, 444,
                                      555, 666, (), bytes(s.data)) for s in segs]
    if codec.name == "c":
        with pytest.raises(TypeError):
            codec.encode_segments(1, 2, 3, 4, 5, 6, [Segment(0, memoryview(chunk)[:65_536])], [])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("kind", ["udp", "eth"])
def test_write_frames_builds_what_frame_builds(kind, codec):
    rng = random.Random(7)
    grams = [rng.randbytes(rng.randrange(wire.OVERHEAD, 1472)) for _ in range(40)]
    ref, enc = encaps(kind)[0], encaps(kind)[0]
    if kind == "udp":
        ref._ident = enc._ident = 0xFFF0  # the ident wraps inside the batch
    want = [ref.frame(g) for g in grams[3:]]
    batch = batch_of([b""] * 37)
    enc.write_frames(codec, batch, grams, 3)
    got = [bytes(batch.mem[a:a + k]) for a, k in zip(batch.addr.tolist(), batch.lens.tolist())]
    assert got == want
    if kind == "udp":
        assert enc._ident == ref._ident


@pytest.mark.parametrize("codec", CODECS)
def test_write_frames_refuses_a_datagram_over_the_mtu_and_writes_nothing(codec):
    enc = encaps("udp")[0]
    batch = batch_of([b""] * 2)
    with pytest.raises(ValueError, match="does not fit"):
        enc.write_frames(codec, batch, [b"a" * 100, b"b" * 1473], 0)
    assert not batch.mem.any() and not batch.lens.any()


def test_the_codec_is_chosen_once_and_passed_in(monkeypatch):
    """No native= any more: the caller picks the codec through kbypass.backend (which names the fix when C
    is not built) and the endpoint takes it, or the lane in force."""
    with pytest.raises(TypeError, match="native"):
        TransportEndpoint(OneBatchPort(batch_of([])), encaps("udp")[1], native=True)
    c, s = established(CFG)
    for native_path, name in ((True, "c"), (False, "python")):
        ep = take(s, [], encaps("udp")[1], native_path)
        assert ep.codec.name == name and ep.native == (name == "c")
    monkeypatch.setitem(backend.MODULES, "xfer", "kbypass._fastxfer_not_built")
    with pytest.raises(backend.NativeMissing, match="not built"):
        backend.codec("c")
    assert backend.codec("python").name == "python"  # the reference needs nothing built
    assert Connection(Role.CLIENT, CFG).codec.name == "python"  # sans-IO: C only when given


def test_the_python_codec_takes_no_run_the_general_path_is_the_reference():
    enc_c, enc_s = encaps("udp")
    c, s, grams = stream_datagrams(CFG, 4 * MSS)
    batch = batch_of([enc_c.frame(d) for d in grams])
    assert PY.rx_run(batch.mem, batch.descs, 1, enc_s.kind, enc_s.peer_key, *s.rx_run_params()) == (1, b"", 0, [])


@pytest.mark.parametrize("seed", range(6))
def test_sacked_and_resent_counts_follow_the_flight(seed):
    """_detect_losses' O(1) exit trusts these two counts: check them after every step of a hostile run."""
    from tests.unit.test_transport_batch import CFG as BATCH_CFG, hostile_pair
    from kbypass.proto.transport.sim import PairSim

    sim = PairSim(*hostile_pair(seed, []), BATCH_CFG, seed=seed)
    sim.client.stream = random.Random(seed).randbytes(60_000)
    sim.server.stream = random.Random(seed + 1).randbytes(20_000)
    sim.start()
    checked = 0

    def counts_hold(s):
        nonlocal checked
        for conn in (s.client.conn, s.server.conn):
            if conn is not None:
                sb = conn.sbuf
                assert sb.sacked_segments == sum(seg.sacked for seg in sb.inflight)
                assert sb.resent_segments == sum(seg.tx_count > 1 for seg in sb.inflight)
                checked += 1
        return s.both_finished()

    assert sim.run(counts_hold, max_time=3000)
    assert checked > 100 and sim.client.conn.stats.retransmits > 0


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["udp", "eth"]), frames=st.lists(st.binary(min_size=0, max_size=200), max_size=8),
       keep_header=st.booleans())
def test_rx_run_on_random_bytes_takes_nothing_and_reads_only_its_frames(kind, frames, keep_header):
    """Random frames (or random datagrams behind a valid header of ours): nothing qualifies (the CRC alone
    refuses random bytes but for 1 in 2**32), and frames whose descriptors point past the memory are
    refused without reading there."""
    enc_c, enc_s = encaps(kind)
    c, s = established(CFG)
    if keep_header:
        frames = [enc_c.frame(f) for f in frames]
    batch = batch_of(frames + [b"\0" * 64])
    batch.descs[-1] = (len(batch.mem) - 10, 64, 0)  # the last descriptor runs off the end of the memory
    params = s.rx_run_params()
    stop, data, tsval, ends = fx.rx_run(batch.mem, batch.descs, 0, enc_s.kind, enc_s.peer_key, *params)
    assert stop == 0 and data == b"" and tsval == 0 and ends == []


def test_rx_run_refuses_bad_arguments():
    enc_c, enc_s = encaps("udp")
    c, s, grams = stream_datagrams(CFG, 2 * MSS)
    batch = batch_of([enc_c.frame(d) for d in grams])
    params = s.rx_run_params()
    with pytest.raises(ValueError):
        fx.rx_run(batch.mem, batch.descs, 3, enc_s.kind, enc_s.peer_key, *params)  # start beyond the batch
    with pytest.raises(ValueError):
        fx.rx_run(batch.mem, batch.descs, 0, 7, enc_s.peer_key, *params)  # unknown kind
    with pytest.raises(TypeError):
        fx.rx_run(batch.mem, np.zeros(4, np.uint8), 0, enc_s.kind, enc_s.peer_key, *params)  # not descriptors
    # a key of the wrong length matches nothing instead of reading past it
    assert fx.rx_run(batch.mem, batch.descs, 0, enc_s.kind, b"short", *params)[0] == 0
    assert fx.rx_run(batch.mem, batch.descs, 0, enc_s.kind, enc_s.peer_key, *params)[0] == 2


# --- Python running inside a C call (a finalizer, a property) must not make it read or write out of bounds --

def _child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_rx_run_copies_what_pass_one_checked_even_when_a_finalizer_changes_the_descriptors():
    """rx_run's second pass re-parsed the frames through the descriptors and trusted pass one's sizes; a
    garbage collection in pass 2 (its first allocation) can run a finalizer that changes them: a NULL
    dereference (a segfault) here, a heap overflow with other changes. Pass 2 now copies from pass 1's
    record. Thousands of tries with a finalizer armed each time: some collections land inside pass 2."""
    r = _child(textwrap.dedent("""
        import gc
        from tests.unit.test_transport_fastpath import encaps, stream_datagrams, batch_of, CFG, fx
        enc_c, enc_s = encaps("udp")
        c, s, grams = stream_datagrams(CFG, 8 * 1400)
        batch = batch_of([enc_c.frame(d) for d in grams])
        descs, lens = batch.descs, batch.descs["len"].copy()

        class Boom:
            def __del__(self):
                descs["len"][:] = 0

        args = (batch.mem, descs, 0, enc_s.kind, enc_s.peer_key, *s.rx_run_params()[:7], 1)
        gc.set_threshold(1, 1, 1)
        inside = 0
        for _ in range(3000):
            descs["len"][:] = lens
            b = Boom(); b.me = b; del b
            stop, data, tsval, ends = fx.rx_run(*args)
            if stop:
                assert stop == len(grams) and [len(p) for p in data] == [len(g) - 46 for g in grams]
                inside += descs["len"][0] == 0
        print("inside pass 2:", inside)
    """))
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-600:]}"


def test_encode_segments_keeps_each_segment_alive_while_it_reads_it():
    """encode_segments held a borrowed list item across attribute look-ups; a property that empties the
    list freed the segment under it (AttributeError on freed memory, then a segfault)."""
    r = _child(textwrap.dedent("""
        from kbypass import _fastxfer as fx

        class Seg:
            __slots__ = ("lst", "data", "msg_end", "fin")
            def __init__(self, lst):
                self.lst, self.data, self.msg_end, self.fin = lst, b"x" * 100, False, False
            @property
            def seq(self):
                self.lst.clear()
                [bytearray(64) for _ in range(50)]
                return 5

        for _ in range(2000):
            segs, out = [], []
            segs.append(Seg(segs))
            fx.encode_segments(1, 2, 3, 4, 5, 6, segs, out)
            assert len(out) == 1 and len(out[0]) == 146
    """))
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-600:]}"


# ------------------------------------------------------- write_frames: the same refusals, nothing written
def _refusal_cases():
    """(what, args builder) of write_frames calls C refuses; each args builder gets (mem, descs)."""
    hdr = encaps("udp")[0]._flow.template
    ok = [b"x" * 100]
    return [
        ("kind", lambda m, d: (m, d, 0, 2048, 1514, 2, hdr, 0, ok), ValueError),
        ("header length", lambda m, d: (m, d, 0, 2048, 1514, 0, hdr[:14], 0, ok), ValueError),
        ("eth header length", lambda m, d: (m, d, 0, 2048, 1514, 1, hdr, 0, ok), ValueError),
        ("negative start", lambda m, d: (m, d, -1, 2048, 1514, 0, hdr, 0, ok), ValueError),
        ("start past the list", lambda m, d: (m, d, 2, 2048, 1514, 0, hdr, 0, ok), ValueError),
        ("ident too big", lambda m, d: (m, d, 0, 2048, 1514, 0, hdr, 0x10000, ok), ValueError),
        ("negative ident", lambda m, d: (m, d, 0, 2048, 1514, 0, hdr, -1, ok), ValueError),
        ("frame size zero", lambda m, d: (m, d, 0, 0, 1514, 0, hdr, 0, ok), ValueError),
        ("frame size not a power of two", lambda m, d: (m, d, 0, 3000, 1514, 0, hdr, 0, ok), ValueError),
        ("negative limit", lambda m, d: (m, d, 0, 2048, -1, 0, hdr, 0, ok), ValueError),
        ("over the limit", lambda m, d: (m, d, 0, 2048, 141, 0, hdr, 0, ok), ValueError),
        ("past the chunk", lambda m, d: (m, d, 0, 2048, 1 << 20, 0, hdr, 0, [b"x", b"y" * 2007]), ValueError),
        ("past the memory", lambda m, d: (m, d, 0, 1 << 16, 1 << 20, 0, hdr, 0, [b"x", b"y" * 2007]), ValueError),
        ("not bytes", lambda m, d: (m, d, 0, 2048, 1514, 0, hdr, 0, [b"x", bytearray(10)]), TypeError),
        ("not a list", lambda m, d: (m, d, 0, 2048, 1514, 0, hdr, 0, tuple(ok)), TypeError),
        ("read-only memory", lambda m, d: (bytes(len(m)), d, 0, 2048, 1514, 0, hdr, 0, ok), BufferError),
        ("not descriptors", lambda m, d: (m, np.zeros(2, np.uint64), 0, 2048, 1514, 0, hdr, 0, ok), TypeError),
    ]


@pytest.mark.parametrize("case", _refusal_cases(), ids=lambda c: c[0])
def test_write_frames_refuses_alike_and_writes_nothing(case):
    """The reference makes the C core's all-or-nothing checks: the same exception type for the same call,
    and no frame written nor length set (the first, valid, datagram included)."""
    _, build, exc = case
    raised = []
    for codec in (fx, PY):
        batch = batch_of([b""] * 2)
        with pytest.raises(exc) as info:
            codec.write_frames(*build(batch.mem, batch.descs))
        raised.append(type(info.value))
        assert not batch.mem.any() and not batch.lens.any(), codec
    assert raised[0] is raised[1]


@pytest.mark.parametrize("codec", CODECS)
def test_a_too_large_limit_never_writes_past_the_umem_frame(codec):
    """kb_xfer_frame_fits trusted the caller's room: told a frame may be 64 KiB, it wrote a 2,050-byte
    frame across its 2 KiB UMEM frame into the next one (maybe a kernel RX buffer). The core now checks the
    chunk it writes into, also from an address past a headroom."""
    hdr = encaps("udp")[0]._flow.template
    for addr, size in ((0, 2048 - 42 + 2), (256, 2048 - 256 - 42 + 1)):
        mem = np.zeros(2 * 2048, np.uint8)
        descs = np.zeros(1, DESC)
        descs["addr"] = addr
        with pytest.raises(ValueError, match="does not fit"):
            codec.write_frames(mem, descs, 0, 2048, 0xFFFF, 0, hdr, 0, [bytes(size)])
        assert not mem.any()
        codec.write_frames(mem, descs, 0, 2048, 0xFFFF, 0, hdr, 0, [bytes(size - 2)])
        assert int(descs["len"][0]) == 42 + size - 2 and not mem[2048:].any()


# --------------------------------------------- "plain UDP from the peer to us": PeerUdp and kb_udp_from_peer
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 41), st.integers(0, 255)), max_size=3),
       cut=st.integers(-60, 8))
def test_peer_check_gives_the_c_verdict(flips, cut):
    """rx_run takes a frame carrying the next data segment exactly when proto.udp.PeerUdp.accept gives its
    datagram (kb_udp_from_peer is its C twin): header bytes overwritten, frames cut short or padded."""
    c, s, grams = stream_datagrams(CFG, MSS)
    enc_c, enc_s = encaps("udp")
    f = bytearray(enc_c.frame(grams[0]))
    for at, v in flips:
        f[at] = v
    f = bytes(f[:len(f) + cut] if cut < 0 else f + bytes(cut))
    py = enc_s._from_peer.accept(f)
    batch = batch_of([f])
    p = s.rx_run_params()
    stop = fx.rx_run(batch.mem, batch.descs, 0, 0, enc_s.peer_key, *p)[0]
    assert (stop == 1) == (py is not None and bytes(py) == grams[0])


@pytest.mark.parametrize("codec", CODECS)
def test_view_segments_survive_loss_retransmission_and_sack(codec):
    """1 MiB bytes writes at the largest datagram: the send buffer keeps them whole and cut_run hands the
    segments as views of them (VIEW_FROM), through 5% loss, reordering and duplicates both ways, so views
    are SACKed and resent; the receiver gets the same bytes, with either codec encoding the views."""
    from kbypass.proto.faults import FaultyLink
    from kbypass.proto.transport.sendbuf import VIEW_FROM
    from kbypass.proto.transport.sim import PairSim

    cfg = ConnConfig(max_datagram_size=65_507, send_buffer=8 << 20, recv_buffer=8 << 20, max_window=4 << 20,
                     min_rto=0.05, initial_rto=0.3, max_rto=3.0, max_retransmits=30, idle_timeout=60.0)
    kw = dict(loss=0.05, reorder=0.1, reorder_delay=0.03, duplicate=0.02, delay=0.005, jitter=0.001)
    sim = PairSim(FaultyLink(31, **kw), FaultyLink(32, **kw), cfg, seed=3)
    sim.client.conn.codec = codec
    sim.listener.codec = codec
    sim.client.close_when_done = False  # the test writes and closes (PairSim writes 64 KiB copies)
    rng = random.Random(5)
    blocks = [rng.randbytes(1 << 20) for _ in range(6)]
    left = list(blocks)
    seen = {"views": 0, "sacked views": 0, "resent views": 0}
    sim.start()

    def app(sim) -> bool:
        conn = sim.client.conn
        while left and sim.client.connected and conn.send_space >= len(left[0]):
            assert conn.send(left.pop(0), sim.now) == 1 << 20  # taken whole: no copy, views cut of it
        if not left and not sim.client.close_called:
            sim.client.close_called = True
            conn.close(sim.now)
        for seg in conn.sbuf.inflight:
            if type(seg.data) is memoryview:
                seen["views"] += 1
                seen["sacked views"] += seg.sacked
                seen["resent views"] += seg.tx_count > 1
        return len(sim.server.received) == len(blocks) << 20 and sim.both_finished()

    assert sim.run(app, max_time=300.0)
    assert bytes(sim.server.received) == b"".join(blocks)
    assert sim.client.lost is None and sim.server.lost is None
    assert sim.client.conn.stats.retransmits > 0
    assert all(n > 0 for n in seen.values()), seen  # views were in flight, SACKed and resent
    assert cfg.max_datagram_size - wire.OVERHEAD >= VIEW_FROM
