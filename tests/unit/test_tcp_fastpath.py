"""The TCP fast path in C (csrc/core/kb_tcp.c via kbypass._fasttcp) held to its reference, kbypass.proto.tcp.

Same verdict: for random segments against connections caught mid-transfer, the C header prediction either
declines (the segment goes to TcpConnection.receive) or the connection fed through receive_predicted ends in
the same state, with the same events and the same segments to send, as one fed through receive(); and the
prediction C advanced equals the one the connection gives afresh. The frame builder makes byte for byte what
Segment.encode and build_ipv4_header make. A whole transfer run through the fast path is predicted almost
segment by segment and delivers the bytes intact.
"""

import copy
import enum
import hashlib
import random
import socket
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbypass.proto import tcp
from kbypass.proto.faults import FaultyLink
from kbypass.proto.ipv4 import build_ipv4_header
from kbypass.proto.tcp import fastpath
from kbypass.proto.tcp.segment import (
    ACK,
    FIN,
    NO_OPTIONS,
    PSH,
    RST,
    SYN,
    URG,
    Options,
    Segment,
    parse_segment,
)
from kbypass.proto.tcp.sim import (
    CLIENT_IP,
    CLIENT_PORT,
    SERVER_IP,
    SERVER_PORT,
    App,
    TcpPair,
)
from tests.kb import needs_c

pytestmark = needs_c

ETH = bytes.fromhex("020000000002" "020000000001" "0800")
CIP, SIP = socket.inet_aton(CLIENT_IP), socket.inet_aton(SERVER_IP)
KEY = (int.from_bytes(CIP, "big") << 32) | (CLIENT_PORT << 16) | SERVER_PORT
M = 0xFFFFFFFF
PAYLOAD = bytes(range(256)) * 12


def frame_of(seg: Segment, ident: int = 7) -> bytes:
    """The client's segment to the server as an Ethernet frame, by the Python codec (the reference)."""
    body = seg.encode(CIP, SIP)
    return ETH + build_ipv4_header(CIP, SIP, 6, len(body), ident=ident) + body


def snap(o):
    """A connection's whole state as plain values, for ==."""
    if isinstance(o, enum.Enum) or o is None or isinstance(o, (int, float, str, bytes, bool)):
        return o
    if isinstance(o, (bytearray, memoryview)):
        return bytes(o)
    if isinstance(o, (list, tuple, deque)):
        return [snap(x) for x in o]
    if isinstance(o, dict):
        return {k: snap(v) for k, v in o.items()}
    if hasattr(o, "__dict__"):
        return (type(o).__name__, {k: snap(v) for k, v in vars(o).items()})
    return o


def _bases():
    """Server-side connections caught mid-transfer both ways (data in flight each way, so ACKs can move)."""
    out = []
    for seed, (up, down, cfg, shut) in enumerate([
            (3_000_000, 2_000_000, None, False), (50_000, 4_000_000, None, False),
            (2_000_000, 0, tcp.TcpConfig(timestamps=False), False),
            (1_000_000, 1_000_000, tcp.TcpConfig(sack=False, recv_buffer=20_000), False),
            (30_000, 200_000, None, True), (200_000, 30_000, None, True),  # FIN_WAIT_*, CLOSE_WAIT, LAST_ACK
            (500_000, 3_000_000, None, "lossy")]):  # the server's data lost: recovery, SACK scoreboard
        lossy = FaultyLink(seed + 1, loss=0.05, delay=0.0005) if shut == "lossy" else None
        shut = shut is True
        p = TcpPair(None, lossy, client=App(data=random.Random(seed).randbytes(up), shutdown_when_sent=shut),
                    server=App(data=random.Random(seed + 9).randbytes(down), shutdown_when_sent=shut),
                    client_cfg=cfg, server_cfg=cfg, seed=seed)
        for stop in (0.0012, 0.002, 0.003, 0.004, 0.006, 0.01, 0.02):
            p.run(until=stop)
            if p.server.conn is not None and p.server.conn.prediction() is not None:
                out.append((copy.deepcopy(p.server.conn), p.now))
    for conn, now in out[:6]:  # and some with an ACK owed (last_ack_sent < rcv_nxt: ts_recent must stay)
        c = copy.deepcopy(conn)
        ts = Options(timestamps=((c.ts_recent + 3) & M, 0)) if c.ts_ok else NO_OPTIONS
        c.receive(Segment(CLIENT_PORT, SERVER_PORT, c.rcv_nxt & M, c.sq.snd_una & M, ACK, c.snd_wnd >> c.snd_wscale,
                          ts, PAYLOAD[:500]), now)
        if c.prediction() is not None and c._last_ack_sent < c.rcv_nxt:
            out.append((c, now))
    return out


def _caught(pair, wants, until=30.0):
    """Run the pair and keep a copy of the server's connection the first time each of `wants` (in the order
    they come) holds of it while it is predictable; every one must be reached, so the bases cannot silently
    stop covering a state when the TCP changes."""
    out = []
    for name, want in wants:
        def stop(p, want=want):
            c = p.server.conn
            return c is not None and c.prediction() is not None and want(c)
        pair.run(until=until, stop=stop)
        assert stop(pair), f"the base never reached {name}"
        out.append((copy.deepcopy(pair.server.conn), pair.now))
    return out


def _edge_bases():
    """The states the mid-transfer snapshots miss: sequence numbers about to wrap and wrapped (both ways),
    duplicate ACKs held without SACK (the next one, the third, comes through the fast path), CLOSE_WAIT and
    LAST_ACK with data in flight, our receive window closed, the peer's window closed."""
    rnd = random.Random(5).randbytes
    out = []
    for cfg in (None, tcp.TcpConfig(timestamps=False)):
        p = TcpPair(client=App(data=rnd(200_000), shutdown_when_sent=False),
                    server=App(data=rnd(200_000), shutdown_when_sent=False), client_cfg=cfg, server_cfg=cfg,
                    seed=21, isns=(M - 30_000, M - 30_000))
        (c, now), *rest = _caught(p, [
            ("rcv_nxt less than 64 KiB below 2**32", lambda c: (c.rcv_nxt & M) > M - 65536),
            ("snd_una and snd_max either side of 2**32", lambda c: (c.sq.snd_una & M) > (c.sq.snd_max & M)),
            ("both wrapped, data in flight", lambda c: c.rcv_nxt > M and c.sq.snd_una > M and
             c.sq.snd_una < c.sq.snd_max)])
        while (c.rcv_nxt & M) < M - 1448:  # in-order data up to less than a segment below 2**32
            n = min(1448, M - 1000 - (c.rcv_nxt & M))
            ts = Options(timestamps=((c.ts_recent + 1) & M, 0)) if c.ts_ok else NO_OPTIONS
            c.receive(Segment(CLIENT_PORT, SERVER_PORT, c.rcv_nxt & M, c.sq.snd_una & M, ACK,
                              c.snd_wnd >> c.snd_wscale, ts, PAYLOAD[:n]), now)
        c.segments_to_send(now)
        assert c.prediction() is not None and (c.rcv_nxt & M) > M - 1448
        out += [(c, now), *rest]
    cfg = tcp.TcpConfig(sack=False)
    for seed in (31, 32):  # the server's data lost on the way: the client's duplicate ACKs come back
        p = TcpPair(None, FaultyLink(seed, loss=0.05, delay=0.0005), client=App(shutdown_when_sent=False),
                    server=App(data=rnd(3_000_000), shutdown_when_sent=False), client_cfg=cfg, server_cfg=cfg,
                    seed=seed)
        out += _caught(p, [("one duplicate ACK held", lambda c: c._dupacks == 1 and not c._in_recovery),
                           ("two duplicate ACKs held", lambda c: c._dupacks == 2 and not c._in_recovery)])
    p = TcpPair(client=App(data=rnd(5_000)), server=App(data=rnd(3_000_000)), seed=33)
    out += _caught(p, [("CLOSE_WAIT, data in flight", lambda c: c.state is tcp.State.CLOSE_WAIT and
                        c.sq.snd_una < c.sq.snd_max),
                       ("LAST_ACK, data in flight", lambda c: c.state is tcp.State.LAST_ACK and
                        c.sq.snd_una + 2000 < c.sq.snd_max)])
    small = tcp.TcpConfig(recv_buffer=1448 * 40)  # whole segments fill it: the window gets to exactly 0
    p = TcpPair(client=App(data=rnd(3_000_000), shutdown_when_sent=False),
                server=App(shutdown_when_sent=False, read_from=60.0), seed=34,  # the server never reads
                server_cfg=small)
    out += _caught(p, [("our receive window closed", lambda c: c.prediction()[3] == 0)])
    p = TcpPair(client=App(shutdown_when_sent=False, read_from=60.0),
                server=App(data=rnd(3_000_000), shutdown_when_sent=False), seed=35,  # the client never reads
                client_cfg=small)
    out += _caught(p, [("the peer's window closed", lambda c: c.snd_wnd == 0)])
    return out


EDGES = _edge_bases()
BASES = _bases() + EDGES


FIELDS = ("seq", "ack", "flags", "window", "ts", "sack", "len", "corrupt")


@st.composite
def segments(draw, bases=None):
    """A segment the prediction expects, with at most two fields drawn at random instead (so hits and near
    misses both come often), against one of `bases` (default BASES)."""
    bases = BASES if bases is None else bases
    conn, now = bases[draw(st.integers(0, len(bases) - 1))]
    bad = draw(st.sets(st.sampled_from(FIELDS), max_size=2))
    rcv_nxt, una, smax = conn.rcv_nxt, conn.sq.snd_una, conn.sq.snd_max
    seq = rcv_nxt
    if "seq" in bad:
        seq += draw(st.sampled_from([-1, 1, -1448, 1448, 1 << 31]) | st.integers(-70_000, 70_000))
    ack = draw(st.sampled_from([una, smax, (una + smax) // 2]))
    if "ack" in bad:
        ack = draw(st.sampled_from([una - 1, smax + 1, una - (1 << 31)]) | st.integers(una - 3000, smax + 3000))
    flags = draw(st.sampled_from([ACK, ACK | PSH]))
    if "flags" in bad:
        flags = draw(st.sampled_from([ACK | FIN, ACK | RST, ACK | SYN, ACK | URG, PSH, 0, ACK | 0x40, ACK | 0x80,
                                      ACK | PSH | FIN]) | st.integers(0, 255))
    window = conn.snd_wnd >> conn.snd_wscale
    if "window" in bad:
        window = draw(st.sampled_from([window + 1, window - 1, 0]) | st.integers(0, 0xFFFF)) & 0xFFFF
    ts = ((conn.ts_recent + draw(st.integers(0, 1000))) & M, draw(st.integers(0, M))) if conn.ts_ok else None
    if "ts" in bad:
        ts = draw(st.none() | st.tuples(st.sampled_from([-1, -1000, 1 << 31, (1 << 31) - 1, 1 << 30])
                                        .map(lambda d: (conn.ts_recent + d) & M), st.integers(0, M)))
    sack = ((((una + 100) & M, (una + 1548) & M),) if "sack" in bad else ())
    wnd = conn.prediction()[3]
    n = draw(st.sampled_from([0, 1, 100, 1448]).filter(lambda n: n <= wnd) | st.integers(0, min(1448, wnd)))
    if "len" in bad:
        n = draw(st.integers(wnd + 1, wnd + 1500)) if wnd < 1448 else draw(st.integers(0, 1448))
    seg = Segment(CLIENT_PORT, SERVER_PORT, seq & M, ack & M, flags, window,
                  Options(timestamps=ts, sack=sack) if ts or sack else NO_OPTIONS, PAYLOAD[:n])
    raw = bytearray(frame_of(seg))
    if "corrupt" in bad:  # one bit of the IP header, TCP header or payload
        raw[draw(st.integers(14, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
    later = now + draw(st.sampled_from([0.0, 0.0001, 0.05, 1.0]))
    return conn, bytes(raw), later


def _agree(fast, base, raw, now):
    """raw through the C prediction armed from base: None on a decline (which must change nothing), else
    the connection after receive_predicted, checked against a copy of base fed the frame through receive():
    the same state, events and segments to send, and what C advanced is what the connection gives afresh."""
    pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, "owner")
    pred.arm(*base.prediction())
    armed = pred.state()
    hit = fast.rx(raw, {KEY: pred})
    if hit is None:
        assert pred.state() == armed  # a decline changes nothing
        return None
    owner, seq, ack, flags, window, tsval, tsecr, payload = hit
    assert owner == "owner"
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    opts = NO_OPTIONS if tsval is None else Options(timestamps=(tsval, tsecr))
    still = a.receive_predicted(Segment(CLIENT_PORT, SERVER_PORT, seq, ack, flags, window, opts, payload), now)
    b.receive(parse_segment(CIP, SIP, raw[34:]), now)
    assert snap(a) == snap(b)
    fresh = b.prediction()
    assert still == (fresh is not None)
    if still:  # what C advanced is what the connection gives afresh
        assert pred.state() == fresh
    assert a.segments_to_send(now) == b.segments_to_send(now)
    assert [a.next_event() for _ in range(4)] == [b.next_event() for _ in range(4)]
    return a


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(segments())
def test_the_c_prediction_declines_or_agrees_with_receive(fast, case):
    base, raw, now = case
    _agree(fast, base, raw, now)


def test_the_edge_states_are_predicted_as_receive_takes_them(fast):
    """In each edge base (wrapping sequence numbers, duplicate ACKs held, CLOSE_WAIT, LAST_ACK, zero windows
    both ways) the peer's usual next segments are HITs that leave the connection as receive() does; the
    third duplicate ACK, coming through the fast path, starts fast retransmit as it does through receive()."""
    third = 0
    for base, now in EDGES:
        una, smax, wnd = base.sq.snd_una, base.sq.snd_max, base.prediction()[3]
        opts = Options(timestamps=((base.ts_recent + 1) & M, 5)) if base.ts_ok else NO_OPTIONS
        cases = [(smax, 0)] + [(una, 0)] * (una < smax) + [(una, min(1448, wnd))] * (wnd > 0)
        for ack, n in cases:
            seg = Segment(CLIENT_PORT, SERVER_PORT, base.rcv_nxt & M, ack & M, ACK | (PSH if n else 0),
                          base.snd_wnd >> base.snd_wscale, opts, PAYLOAD[:n])
            after = _agree(fast, base, frame_of(seg), now)
            assert after is not None, (base.state, ack - una, n, wnd)
            if base._dupacks == 2 and ack == una and not n:
                assert after.stats.dup_acks == base.stats.dup_acks + 1
                third += after.stats.fast_recoveries - base.stats.fast_recoveries
    assert third == 2  # one per lossy run without SACK


def test_the_common_cases_are_predicted(fast):
    """The in-order data segment and the ACK advancing snd_una, as they come, are HITs (the fuzz above
    would pass with a C side that declines everything)."""
    hits = 0
    for base, now in BASES:
        rcv_nxt, una, smax = base.rcv_nxt, base.sq.snd_una, base.sq.snd_max
        ts = (base.ts_recent + 1, 5) if base.ts_ok else None
        field = base.snd_wnd >> base.snd_wscale
        opts = Options(timestamps=ts) if ts else NO_OPTIONS
        for ack, n in ((smax, 0), (smax, min(100, base._rcv_wnd())), (una + (smax > una), 0)):
            if n == 0 and ack == una and una != smax:
                continue
            pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT)
            pred.arm(*base.prediction())
            seg = Segment(CLIENT_PORT, SERVER_PORT, rcv_nxt & M, ack & M, ACK | (PSH if n else 0), field, opts, b"d" * n)
            hits += fast.rx(frame_of(seg), {KEY: pred}) is not None
    assert hits >= 2 * len(BASES)


def test_a_transfer_through_the_fast_path_is_predicted_and_intact(fast):
    """The server takes every segment as TcpHost does: C first (receive_predicted on a HIT), receive() else;
    armed after every segments_to_send, cleared on every slow segment and timer."""
    data, back = random.randbytes(2_000_000), random.randbytes(300_000)
    p = TcpPair(client=App(data=data), server=App(data=back), seed=3)
    p.run(until=1, stop=lambda p: p.server.conn is not None)
    conn = p.server.conn
    pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT)
    table = {KEY: pred}
    counts = {"hit": 0, "slow": 0}
    receive, to_send, on_timer = conn.receive, conn.segments_to_send, conn.on_timer

    def receive_either(seg, now):
        hit = fast.rx(frame_of(seg), table)
        if hit is None:
            counts["slow"] += 1
            pred.disarm()
            return receive(seg, now)
        counts["hit"] += 1
        _o, seq, ack, flags, window, tsval, tsecr, payload = hit
        opts = NO_OPTIONS if tsval is None else Options(timestamps=(tsval, tsecr))
        if conn.receive_predicted(Segment(CLIENT_PORT, SERVER_PORT, seq, ack, flags, window, opts, payload), now):
            assert pred.state() == conn.prediction()  # C advanced its copy as the connection moved
        else:
            pred.disarm()

    def send_and_arm(now):
        out = to_send(now)
        state = conn.prediction()
        pred.arm(*state) if state is not None else pred.disarm()
        return out

    def timer(now):
        pred.disarm()
        on_timer(now)

    conn.receive, conn.segments_to_send, conn.on_timer = receive_either, send_and_arm, timer
    p.run()
    assert hashlib.sha256(p.server.received).digest() == hashlib.sha256(data).digest()
    assert hashlib.sha256(p.client.received).digest() == hashlib.sha256(back).digest()
    assert conn.state is tcp.State.CLOSED
    assert counts["hit"] > 0.9 * (counts["hit"] + counts["slow"]), counts


@settings(max_examples=200, deadline=None)
@given(seq=st.integers(0, M), ack=st.integers(0, M), flags=st.integers(0, 255), window=st.integers(0, 0xFFFF),
       ts=st.none() | st.tuples(st.integers(0, M), st.integers(0, M)), n=st.integers(0, 1600),
       ident=st.integers(0, 0xFFFF), ports=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)))
def test_the_c_frame_is_the_python_encoding(fast, seq, ack, flags, window, ts, n, ident, ports):
    payload = random.randbytes(n)
    seg = Segment(ports[0], ports[1], seq, ack, flags, window, Options(timestamps=ts) if ts else NO_OPTIONS,
                  payload)
    body = seg.encode(SIP, CIP)
    want = ETH + build_ipv4_header(SIP, CIP, 6, len(body), ident=ident) + body
    args = (ETH, SIP, CIP, ident, ports[0], ports[1], seq, ack, flags, window, ts, payload)
    assert fast.frame(*args) == want
    assert fastpath.frame(*args) == want  # the Python side a host without the C module uses


def test_the_python_side_predicts_nothing():
    """kbypass.proto.tcp.fastpath, for a host without the C module: the same calls, every frame to the
    general path, so the endpoint never asks which one it has."""
    conn, _now = _established()
    pred = fastpath.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, "owner")
    pred.arm(*conn.prediction())
    assert not pred.armed and pred.owner == "owner"
    assert fastpath.rx(_data_frame(conn), {KEY: pred}) is None


def test_bad_arguments_are_refused(fast):
    with pytest.raises(ValueError, match="4 address bytes"):
        fast.Prediction(b"\x01\x02", 1, CIP, 2)
    with pytest.raises(ValueError, match="14-byte"):
        fast.frame(b"x", SIP, CIP, 0, 1, 2, 0, 0, ACK, 0, None, b"")
    with pytest.raises(TypeError, match="7 arguments"):
        fast.Prediction(SIP, 1, CIP, 2).arm(1, 2)
    assert fast.rx(b"short", {}) is None


def _established(**kw):
    """A client/server pair run to ESTABLISHED with nothing in flight: the server's connection and the time."""
    p = TcpPair(client=App(shutdown_when_sent=False), server=App(shutdown_when_sent=False), seed=11, **kw)
    p.run(until=1, stop=lambda p: p.server.conn is not None and p.server.conn.state is tcp.State.ESTABLISHED)
    p.run(until=p.now + 0.01)
    return p.server.conn, p.now


def _data_frame(conn, n=100):
    """The client's next in-order data segment for the server's connection, as a frame."""
    opts = Options(timestamps=((conn.ts_recent + 1) & M, 0)) if conn.ts_ok else NO_OPTIONS
    return frame_of(Segment(CLIENT_PORT, SERVER_PORT, conn.rcv_nxt & M, conn.sq.snd_max & M, ACK | PSH,
                            conn.snd_wnd >> conn.snd_wscale, opts, PAYLOAD[:n]))


def test_data_for_a_closed_application_aborts_and_clears_the_prediction(fast):
    """TcpSocket._events answers data for an application that closed with an abort (a RST): the prediction
    armed before must be cleared with it, or the next in-order segment is a HIT for a CLOSED connection."""
    from types import SimpleNamespace

    from kbypass.endpoint.tcp import TcpSocket

    conn, now = _established()
    host = SimpleNamespace(ip=SERVER_IP, touch=lambda s: None, woken=None)
    sock = TcpSocket(host, conn, (CLIENT_IP, CLIENT_PORT), SERVER_PORT)
    sock.prediction = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, sock)
    sock._app_closed = True
    conn.receive(parse_segment(CIP, SIP, _data_frame(conn)[34:]), now)  # data the application will never read
    sock.predict()
    assert sock.prediction.armed
    sock.take_events()
    assert conn.state is tcp.State.CLOSED
    assert not sock.prediction.armed
    assert fast.rx(_data_frame(conn), {KEY: sock.prediction}) is None


def test_receive_predicted_on_a_connection_no_longer_predictable_is_receive(fast):
    """A HIT from a stale prediction (the connection aborted since it was armed) changes the connection as
    receive() does (nothing, once CLOSED) and says the prediction must go."""
    conn, now = _established()
    pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, "owner")
    pred.arm(*conn.prediction())
    raw = _data_frame(conn)
    conn.abort()
    conn.segments_to_send(now)
    hit = fast.rx(raw, {KEY: pred})
    assert hit is not None  # armed before the abort: C cannot know
    _o, seq, ack, flags, window, tsval, tsecr, payload = hit
    ref = copy.deepcopy(conn)
    opts = NO_OPTIONS if tsval is None else Options(timestamps=(tsval, tsecr))
    assert conn.receive_predicted(Segment(CLIENT_PORT, SERVER_PORT, seq, ack, flags, window, opts, payload),
                                  now) is False
    ref.receive(parse_segment(CIP, SIP, raw[34:]), now)
    assert snap(conn) == snap(ref)
    assert tcp.Data not in {type(e) for e in iter(conn.next_event, None)}  # the payload went nowhere


def test_a_prediction_whose_owner_the_collector_cleared_reads_none(fast):
    """The owner (the socket) holds its Prediction and the Prediction its owner: a cycle, which the
    collector breaks with tp_clear, leaving owner NULL. Reading it or a HIT then gives None, not a crash or
    SystemError (tp_clear is called here directly, as the collector would)."""
    import ctypes

    conn, _now = _established()
    pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, object())
    get_slot = ctypes.pythonapi.PyType_GetSlot
    get_slot.restype, get_slot.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_int]
    tp_clear = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.py_object)(get_slot(type(pred), 51))  # Py_tp_clear
    assert tp_clear(pred) == 0
    assert pred.owner is None
    pred.arm(*conn.prediction())
    hit = fast.rx(_data_frame(conn), {KEY: pred})
    assert hit is not None and hit[0] is None


class _Wired:
    """The server's connection in the simulator, driven as TcpHost drives it: each frame through the C
    prediction (kbypass._fasttcp.rx) and, on a HIT, TcpHost._predicted, else TcpSocket.segment; timers
    through TcpSocket.timer, sending through TcpSocket.flush, shutdown through TcpSocket.shutdown: the
    endpoint's own arm and clear calls, not a copy of them. Every HIT is checked against a copy of the
    connection fed the same segment through receive()."""

    def __init__(self, fast, conn):
        from types import SimpleNamespace

        from kbypass.endpoint.tcp import TcpSocket
        from kbypass.endpoint.tcpio import TcpHost

        self.fast, self.conn, self.out = fast, conn, []
        self.host = SimpleNamespace(ip=SERVER_IP, woken=None, touch=lambda s: None, pump=lambda: None,
                                    schedule=lambda s, t: None, forget=lambda s: None, _dirty=set(),
                                    late=[], catch_up=lambda: None,
                                    counters={"rx_segments": 0, "rx_predicted": 0},
                                    send_segments=lambda ip, segs: self.out.extend(segs))
        self.sock = TcpSocket(self.host, conn, (CLIENT_IP, CLIENT_PORT), SERVER_PORT)
        self.sock.prediction = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, self.sock)
        self.table = {KEY: self.sock.prediction}
        self.predicted = TcpHost._predicted
        self.hits = self.slow = self.dup_hits = self.recovery_hits = 0

    def __getattr__(self, name):  # send, next_event, next_timer, finished, state: the connection's own
        return getattr(self.conn, name)

    def receive(self, seg, now):
        conn, raw = self.conn, frame_of(seg)
        hit = self.fast.rx(raw, self.table)
        if hit is None:
            self.slow += 1
            self.sock.segment(seg, now)
            return
        self.hits += 1
        self.recovery_hits += conn._in_recovery
        ref, dups = copy.deepcopy(conn), conn.stats.dup_acks
        ref.receive(parse_segment(CIP, SIP, raw[34:]), now)
        self.predicted(self.host, hit, now)
        assert snap(conn) == snap(ref)
        assert self.sock.prediction.armed == (conn.prediction() is not None)
        if self.sock.prediction.armed:
            assert self.sock.prediction.state() == conn.prediction()
        self.dup_hits += conn.stats.dup_acks > dups

    def on_timer(self, now):
        self.sock.timer(now)

    def shutdown(self):
        self.sock.shutdown()

    def segments_to_send(self, now):
        self.out = []
        self.sock.flush(now)
        return self.out


def test_every_hit_under_loss_through_the_endpoint_wiring_agrees_with_receive(fast):
    """Both directions lose 3% of their segments: recovery, duplicate ACKs, retransmissions and timers
    interleave with predicted segments, and every HIT leaves the connection as receive() would. With SACK,
    without it, and without timestamps across the 2**32 wrap."""
    counts = []
    for cfg, isns in ((None, None), (tcp.TcpConfig(sack=False), None),
                      (tcp.TcpConfig(sack=False, timestamps=False), (M - 150_000, M - 250_000))):
        data, back = random.Random(1).randbytes(400_000), random.Random(2).randbytes(800_000)
        p = TcpPair(FaultyLink(7, loss=0.03, delay=0.0005), FaultyLink(8, loss=0.03, delay=0.0005),
                    client=App(data=data), server=App(data=back), client_cfg=cfg, server_cfg=cfg, seed=4,
                    isns=isns)
        p.run(until=1, stop=lambda p: p.server.conn is not None)
        wired = p.server.conn = _Wired(fast, p.server.conn)
        p.run(until=120)
        assert p.server.received == data and p.client.received == back
        assert wired.conn.state is tcp.State.CLOSED and wired.conn.stats.fast_recoveries > 0
        counts.append({k: getattr(wired, k) for k in ("hits", "slow", "dup_hits", "recovery_hits")})
    assert all(c["hits"] >= 50 for c in counts), counts
    assert sum(c["dup_hits"] for c in counts) and sum(c["recovery_hits"] for c in counts), counts


# ---- the send side: TcpConnection.send_now, the endpoint's one-call answer, held to send + segments_to_send


def _rr_bases():
    """Server-side connections of a request/response exchange (where send_now is meant to take the answer):
    each config after k requests answered, caught with the next request just taken (its ACK owed), and
    with an answer still in flight (Nagle holds a small second one)."""
    out = []
    for cfg in (None, tcp.TcpConfig(timestamps=False), tcp.TcpConfig(nodelay=False), tcp.TcpConfig(sack=False),
                tcp.TcpConfig(recv_buffer=4096, send_buffer=4096)):
        p = TcpPair(client=App(shutdown_when_sent=False), server=App(shutdown_when_sent=False), client_cfg=cfg,
                    server_cfg=cfg, seed=41)
        p.run(until=0.01)
        c, s, now = p.client.conn, p.server.conn, 0.02
        for k in range(6):
            c.send(PAYLOAD[:64 + 300 * k])
            for seg in c.segments_to_send(now):
                s.receive(seg, now)
            while s.next_event() is not None:
                pass
            out.append((copy.deepcopy(s), now))  # the request taken, its ACK owed
            ans = s.segments_to_send(now) if k % 2 else []
            s.send(PAYLOAD[:100 + 200 * k])
            ans += s.segments_to_send(now)
            out.append((copy.deepcopy(s), now))  # the answer in flight
            for seg in ans:
                c.receive(seg, now + 0.0001)
            for seg in c.segments_to_send(now + 0.0001):
                s.receive(seg, now + 0.0001)
            while c.next_event() is not None:
                pass
            now += 0.001 * k
    return out


RR = _rr_bases()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(segments(RR))
def test_the_request_response_states_are_predicted_as_receive_takes_them(fast, case):
    """The fuzz above in the states of a request/response exchange (the ones receive_hit's shortcuts are for:
    nothing in flight, an answer in flight, an ACK owed)."""
    base, raw, now = case
    _agree(fast, base, raw, now)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(base=st.sampled_from(RR + BASES), n=st.integers(0, 3000), dt=st.sampled_from([0.0, 0.0003, 0.4, 30.0]))
def test_send_now_is_send_then_segments_to_send(base, n, dt):
    """send_now either declines, changing nothing, or changes the connection exactly as send() then
    segments_to_send() do, its fields being the one segment they send."""
    conn, now = base
    now += dt
    a, b = copy.deepcopy(conn), copy.deepcopy(conn)
    fields = a.send_now(memoryview(PAYLOAD[:n]), now)
    if fields is None:
        assert snap(a) == snap(conn)
        return
    b.send(PAYLOAD[:n])
    (seg,) = b.segments_to_send(now)
    assert fields == (seg.seq, seg.ack, seg.flags, seg.window, seg.options.timestamps)
    assert seg.payload == PAYLOAD[:n] and not seg.options.sack
    assert snap(a) == snap(b)
    assert a.segments_to_send(now) == b.segments_to_send(now) == []


def test_send_now_takes_the_answers_of_a_request_response():
    """The case it is for: in each config an answer after a request is taken by send_now (the test above
    would pass with a send_now that always declines); Nagle declines a second small answer in flight."""
    taken = {}
    for conn, now in RR:
        c = copy.deepcopy(conn)
        key = (conn.ts_ok, conn.config.nodelay, conn.sq.snd_una < conn.sq.snd_max)
        taken.setdefault(key, []).append(c.send_now(b"x" * 64, now) is not None)
    assert all(taken[(True, True, False)]) and all(taken[(False, True, False)]) and all(taken[(True, False, False)])
    assert not any(taken[(True, False, True)])
