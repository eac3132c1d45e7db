"""TCP connections paired over simulated links: handshake and negotiation, exact delivery both ways under
seeded loss / reordering / duplication / delay (hash-checked), close, reset, RTO."""

import hashlib
import random

import pytest

from kbypass.proto import tcp
from kbypass.proto.faults import FaultyLink
from kbypass.proto.tcp.sim import App, TcpPair


def sha(b):
    return hashlib.sha256(bytes(b)).hexdigest()


def test_handshake_negotiates_options_and_data_flows_both_ways():
    data, back = random.randbytes(300_000), random.randbytes(70_000)
    p = TcpPair(client=App(data=data), server=App(data=back))
    p.run()
    for app in (p.client, p.server):
        assert app.events[0] == tcp.Connected(mss=1448, wscale=True, sack=True, timestamps=True)
        assert app.events[1:] == [tcp.EndOfStream(), tcp.Closed()]
    assert sha(p.server.received) == sha(data) and sha(p.client.received) == sha(back)
    assert p.client.conn.state is tcp.State.CLOSED and p.server.conn.state is tcp.State.CLOSED
    assert p.client.conn.stats.retransmits == 0


def test_options_off_on_one_side_are_off_for_both():
    cfg = tcp.TcpConfig(window_scaling=False, sack=False, timestamps=False, mss=1000)
    p = TcpPair(client_cfg=cfg, client=App(data=b"x" * 5000), server=App(data=b"y"))
    p.run()
    assert p.client.events[0] == tcp.Connected(mss=1000, wscale=False, sack=False, timestamps=False)
    assert p.server.events[0] == tcp.Connected(mss=1000, wscale=False, sack=False, timestamps=False)
    assert p.server.received == b"x" * 5000


@pytest.mark.parametrize("seed", range(12))
def test_exact_delivery_under_faults(seed):
    exact_delivery(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12, 400))
def test_exact_delivery_under_faults_soak(seed):
    exact_delivery(seed)


def exact_delivery(seed):
    rng = random.Random(seed)
    cfg = tcp.TcpConfig(congestion=rng.choice(["cubic", "newreno"]), sack=rng.random() < 0.7,
                        timestamps=rng.random() < 0.7, window_scaling=rng.random() < 0.7,
                        recv_buffer=rng.choice([8192, 65536, 1 << 20]), send_buffer=rng.choice([16384, 1 << 20]))
    kw = dict(loss=rng.choice([0.01, 0.05, 0.15]), reorder=0.05, duplicate=0.03, delay=0.002, jitter=0.0005,
              rate_bps=5e7, blackholes=((0.05, 0.3),) if seed % 3 == 0 else ())
    # no corruption here: the Internet checksum misses some multi-bit flips (TCP's own weakness: a soak of
    # 300 runs at 2% corruption delivered one wrong byte); test_tcp_segment refuses every single-bit flip
    data, back = rng.randbytes(rng.randint(1, 400_000)), rng.randbytes(rng.randint(0, 100_000))
    p = TcpPair(FaultyLink(seed, **kw), FaultyLink(seed + 100, **kw), client_cfg=cfg, server_cfg=cfg,
                client=App(data=data), server=App(data=back), seed=seed)
    p.run(until=5000)
    assert sha(p.server.received) == sha(data) and sha(p.client.received) == sha(back)
    assert p.client.events[-1] == tcp.Closed() and p.server.events[-1] == tcp.Closed()


def test_rto_retransmits_with_backoff_and_gives_up():
    conn = tcp.TcpConnection.connect(("10.0.0.1", 1), ("10.0.0.2", 2), 0.0, tcp.TcpConfig(syn_retries=3), iss=5)
    sent = [(0.0, conn.segments_to_send(0.0))]
    while (t := conn.next_timer()) is not None:
        conn.on_timer(t)
        sent.append((t, conn.segments_to_send(t)))
    times = [t for t, segs in sent if segs]
    assert times == [0.0, 1.0, 3.0, 7.0]  # RFC 6298: 1 s, doubled each time
    assert all(s[0].flags == tcp.SYN for _t, s in sent if s)
    assert conn.next_event() == tcp.Reset(tcp.TIMED_OUT) and conn.state is tcp.State.CLOSED
    with pytest.raises(TimeoutError):
        conn.send(b"x")


def test_connect_to_closed_port_is_refused():
    conn = tcp.TcpConnection.connect(("10.0.0.1", 1), ("10.0.0.2", 2), 0.0, iss=5)
    syn = conn.segments_to_send(0.0)[0]
    conn.receive(tcp.reset_for(syn), 0.001)
    assert conn.next_event() == tcp.Reset(tcp.REFUSED)
    with pytest.raises(ConnectionRefusedError):
        conn.send(b"x")


def test_abort_resets_the_peer_and_send_after_reset_raises():
    p = TcpPair(client=App(data=b"a" * 1000, shutdown_when_sent=False), server=App(shutdown_when_sent=False))
    p.run(until=1.0, stop=lambda p: len(p.server.received) == 1000)
    p.server.conn.abort()
    p.run(until=2.0)
    assert p.server.events[-1] == tcp.Reset(tcp.ABORTED)
    assert p.client.events[-1] == tcp.Reset(tcp.PEER_RESET)
    with pytest.raises(ConnectionResetError):
        p.client.conn.send(b"more")


def test_send_after_shutdown_is_broken_pipe():
    p = TcpPair(client=App(data=b"a"), server=App(shutdown_when_sent=False))
    p.run(until=0.5, stop=lambda p: p.client.shut)
    with pytest.raises(BrokenPipeError):
        p.client.conn.send(b"b")


def test_half_close_keeps_the_other_direction_open():
    back = random.randbytes(200_000)
    p = TcpPair(client=App(data=b"request"), server=App(data=back))
    p.server.read_from = 0.0
    p.run()
    assert p.server.received == b"request" and p.client.received == back
    assert p.client.events == [p.client.events[0], tcp.EndOfStream(), tcp.Closed()]


@pytest.mark.parametrize("simultaneous", [False, True])
def test_sequence_numbers_wrap_around(simultaneous):
    """Both ISNs a few segments below 2**32: every comparison crosses the wrap while data flows both ways."""
    kw = dict(loss=0.03, reorder=0.05, delay=0.001)
    data, back = random.randbytes(600_000), random.randbytes(200_000)
    p = TcpPair(FaultyLink(1, **kw), FaultyLink(2, **kw), client=App(data=data), server=App(data=back),
                isns=(2**32 - 5000, 2**32 - 3000), simultaneous=simultaneous)
    p.run(until=1000)
    assert sha(p.server.received) == sha(data) and sha(p.client.received) == sha(back)
    assert p.client.events[-1] == tcp.Closed() and p.server.events[-1] == tcp.Closed()
    assert p.client.conn.sq.snd_una > 2**32  # absolute numbers went past the wrap
