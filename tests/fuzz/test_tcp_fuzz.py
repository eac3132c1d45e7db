"""Fuzz the TCP segment parser and the connection state machine (hypothesis): garbage never raises anything
but TcpParseError, a connection fed random segments, API calls and timer jumps never crashes, never breaks
its invariants and never takes a transition RFC 9293's diagram does not have.

A few hundred examples by default; KBYPASS_SLOW=1 (or the slow-marked soaks with --slow) runs thousands.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbypass.proto import tcp
from kbypass.proto.tcp.segment import MAX_SACK_BLOCKS
from kbypass.proto.tcp.sim import CLIENT_IP, SERVER_IP, App, TcpPair
from kbypass.proto.tcp.states import SYNCHRONIZED, TRANSITIONS

SLOW = os.environ.get("KBYPASS_SLOW") == "1"
COMMON = dict(derandomize=not SLOW, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
N = 3000 if SLOW else 300
M = 600 if SLOW else 60
u32 = st.integers(0, 2**32 - 1)

options = st.builds(
    tcp.Options,
    mss=st.none() | st.integers(0, 0xFFFF), wscale=st.none() | st.integers(0, 14), sack_permitted=st.booleans(),
    timestamps=st.none() | st.tuples(u32, u32), sack=st.lists(st.tuples(u32, u32), max_size=2).map(tuple))
segments = st.builds(tcp.Segment, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), u32, u32, st.integers(0, 255),
                     st.integers(0, 0xFFFF), options, st.binary(max_size=64), st.integers(0, 0xFFFF))


def _parse_any(data):
    for verify in (True, False):
        try:
            seg = tcp.parse_segment("10.0.0.1", "10.0.0.2", data, verify_checksum=verify)
        except tcp.TcpParseError:
            continue
        assert isinstance(seg, tcp.Segment) and len(seg.payload) <= len(data) - 20
        assert len(seg.options.sack) <= MAX_SACK_BLOCKS


@settings(max_examples=N, **COMMON)
@given(st.binary(max_size=120))
def test_random_bytes_parse_or_raise_tcp_parse_error(data):
    _parse_any(data)


@settings(max_examples=N, **COMMON)
@given(segments)
def test_encode_then_parse_is_the_identity(seg):
    if seg.flags & tcp.SYN == 0:
        seg = seg.with_(options=tcp.Options(seg.options.mss, seg.options.wscale, False, seg.options.timestamps,
                                            seg.options.sack))
    raw = seg.encode("10.0.0.1", "10.0.0.2")
    back = tcp.parse_segment("10.0.0.1", "10.0.0.2", raw)
    if back.options.sack != seg.options.sack:  # blocks that did not fit in 40 bytes are left out, in order
        assert seg.options.sack[:len(back.options.sack)] == back.options.sack
        back = back.with_(options=tcp.Options(back.options.mss, back.options.wscale, back.options.sack_permitted,
                                              back.options.timestamps, seg.options.sack))
    if back.options == tcp.Options():
        back = back.with_(options=seg.options)
    assert back == seg


# ----------------------------------------------------------------------------- the state machine
def _reachable():
    reach = {s: {s} for s in tcp.State}
    changed = True
    while changed:
        changed = False
        for (a, _inp), b in TRANSITIONS.items():
            for s in tcp.State:
                if a in reach[s] and b not in reach[s]:
                    reach[s].add(b)
                    changed = True
    return reach


REACH = _reachable()
actions = st.lists(st.one_of(
    st.tuples(st.just("seg"), st.integers(0, 255) | st.sampled_from([0x10, 0x11, 0x18, 0x19, 0x04, 0x14, 0x02]),
              st.sampled_from([0, 0, 1, -1]) | st.integers(-70000, 70000) | u32,
              st.sampled_from([0, 0, "max"]) | st.integers(-70000, 70000) | u32, st.integers(0, 0xFFFF),
              st.binary(max_size=40),
              st.lists(st.tuples(st.integers(-3000, 3000), st.integers(0, 3000)), max_size=3),
              st.none() | st.tuples(u32, u32)),
    st.tuples(st.just("send"), st.integers(0, 50_000)),
    st.tuples(st.sampled_from(["read", "read", "read", "shutdown", "peer_shutdown", "abort"])),
    st.tuples(st.just("time"), st.floats(0, 200)), st.tuples(st.just("peer"), st.floats(0, 0.5)),
), max_size=40)


def check(conn, history):
    sq = conn.sq
    assert conn.state in tcp.State
    if history[-1] is not conn.state:
        assert conn.state in REACH[history[-1]], f"{history[-1]} -> {conn.state}"
        history.append(conn.state)
    assert sq.snd_una <= sq.snd_max <= sq.data_end + 1 and sq.data_start <= max(sq.snd_una, conn.iss + 1)
    assert sq.queued() <= conn.config.send_buffer and conn._rcv_wnd() >= 0 and conn._unread >= 0
    prev = sq.snd_una
    for a, b in sq.sacked:
        assert prev <= a < b <= sq.snd_max
        prev = b
    assert sq.sacked_bytes == sum(b - a for a, b in sq.sacked)
    assert sq.relost_bytes == sum(b - a for a, b in sq.relost) and all(a >= sq.snd_una for a, _ in sq.relost)
    if conn.rq is not None:
        assert conn.rq.rcv_nxt in (conn.rcv_nxt, conn.rcv_nxt - 1) and conn.rq.ooo_bytes <= conn.config.recv_buffer
    if conn.state in SYNCHRONIZED and conn.state is not tcp.State.TIME_WAIT:
        assert conn.snd_mss >= 64
    if conn.reset_reason is not None:
        assert conn.state is tcp.State.CLOSED


def run_actions(acts, cfg):
    p = TcpPair(client=App(shutdown_when_sent=False), server=App(shutdown_when_sent=False), client_cfg=cfg,
                server_cfg=cfg, seed=3)
    p.run(until=1, stop=lambda p: p.server.conn is not None and p.client.conn.state is tcp.State.ESTABLISHED)
    conn = p.server.conn
    history = [conn.state]
    now = p.now
    for act in acts:
        kind = act[0]
        if kind == "seg":
            _, flags, seq_off, ack_off, window, payload, sacks, ts = act
            una = conn.sq.snd_una
            if ack_off == "max":
                ack_off = conn.sq.snd_max - una
            seg = tcp.Segment(p.client.conn.local[1], conn.local[1], (conn.rcv_nxt + seq_off) % 2**32,
                              (una + ack_off) % 2**32, flags, window,
                              tcp.Options(timestamps=ts, sack=tuple(((una + a) % 2**32, (una + a + n) % 2**32)
                                                                     for a, n in sacks)), payload)
            seg = tcp.parse_segment(CLIENT_IP, SERVER_IP, seg.encode(CLIENT_IP, SERVER_IP))
            conn.receive(seg, now)
        elif kind == "send":
            try:
                conn.send(b"s" * act[1])
            except tcp.TcpError:
                assert conn.state not in (tcp.State.ESTABLISHED, tcp.State.CLOSE_WAIT) or conn._fin_seq is not None
        elif kind == "read":
            while conn.next_event() is not None:
                pass
        elif kind == "shutdown":
            conn.shutdown()
        elif kind == "abort":
            conn.abort()
        elif kind == "time":
            now += act[1]
            t = conn.next_timer()
            if t is not None and t <= now:
                conn.on_timer(now)
        elif kind == "peer_shutdown":
            p.client.conn.shutdown()
        else:
            p.now = now = now + act[1]
            p.step()
        for seg in conn.segments_to_send(now):
            assert (seg.flags & tcp.SYN == 0) or conn.state is tcp.State.SYN_RCVD
            raw = seg.encode(SERVER_IP, CLIENT_IP)
            assert tcp.parse_segment(SERVER_IP, CLIENT_IP, raw) is not None
        check(conn, history)
        t = conn.next_timer()
        assert t is None or t >= 0


CFGS = [tcp.TcpConfig(recv_buffer=8192, send_buffer=8192, delayed_ack=0.01, keepalive=True, keepalive_idle=5,
                      keepalive_interval=1, keepalive_count=2, max_ooo_ranges=4),
        tcp.TcpConfig(sack=False, timestamps=False, window_scaling=False, congestion="newreno", nodelay=False)]


@pytest.mark.parametrize("cfg", CFGS, ids=["small-keepalive", "plain"])
@settings(max_examples=M * 3, **COMMON)
@given(acts=actions)
def test_state_machine_survives_random_segments_calls_and_time(cfg, acts):
    run_actions(acts, cfg)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(acts=actions, which=st.integers(0, 1))
def test_state_machine_soak(acts, which):
    run_actions(acts, CFGS[which])


@pytest.mark.slow
@settings(max_examples=50_000, deadline=None, database=None)
@given(st.binary(max_size=120))
def test_parser_soak(data):
    _parse_any(data)
