"""The state machine end to end: simultaneous open and close, TIME_WAIT, zero window held, keepalive on a
vanished peer, loss recovery paths (SACK, dupacks, RTO), congestion control, ISNs."""

import random

import pytest

from kbypass.proto import tcp
from kbypass.proto.faults import FaultyLink
from kbypass.proto.tcp.congestion import Cubic, NewReno
from kbypass.proto.tcp.sim import App, TcpPair

S = tcp.State


def watch(pair):
    """Run recording every state each end passes through."""
    seen = {"c": [], "s": []}

    def stop(p):
        for tag, app in (("c", p.client), ("s", p.server)):
            if app.conn is not None and (not seen[tag] or seen[tag][-1] is not app.conn.state):
                seen[tag].append(app.conn.state)
        return False

    pair.run(stop=stop)
    stop(pair)
    return seen


def test_simultaneous_open():
    p = TcpPair(client=App(data=b"hello", shutdown_when_sent=False), server=App(data=b"world", shutdown_when_sent=False),
                simultaneous=True)
    seen = watch(p)
    for tag in "cs":
        assert seen[tag] == [S.SYN_SENT, S.SYN_RCVD, S.ESTABLISHED]
    assert p.server.received == b"hello" and p.client.received == b"world"
    assert isinstance(p.client.events[0], tcp.Connected) and isinstance(p.server.events[0], tcp.Connected)


def test_simultaneous_close_goes_through_closing_to_time_wait():
    p = TcpPair(client=App(shutdown_when_sent=False), server=App(shutdown_when_sent=False))
    p.run(until=1.0)
    assert p.client.conn.state is S.ESTABLISHED and p.server.conn.state is S.ESTABLISHED
    p.client.conn.shutdown()
    p.server.conn.shutdown()
    seen = watch(p)
    for tag in "cs":
        assert seen[tag] == [S.FIN_WAIT_1, S.CLOSING, S.TIME_WAIT, S.CLOSED]
    assert p.client.events[1:] == [tcp.EndOfStream(), tcp.Closed()]


def test_passive_close_goes_close_wait_last_ack():
    p = TcpPair(client=App(data=b"bye"), server=App(data=b"", shutdown_when_sent=False))
    p.run(until=1.0)
    assert p.server.conn.state is S.CLOSE_WAIT and p.client.conn.state is S.FIN_WAIT_2
    p.server.conn.send(b"late reply")  # half close: the server may still send
    p.server.conn.shutdown()
    seen = watch(p)
    assert seen["s"][-2:] == [S.LAST_ACK, S.CLOSED] and seen["c"][-2:] == [S.TIME_WAIT, S.CLOSED]
    assert p.client.received == b"late reply"


@pytest.mark.parametrize("closed", [True, False])
def test_fin_wait_2_of_a_closed_socket_times_out_quietly_a_half_close_waits(closed):
    """The client's app closes (orphan) and the peer never sends its FIN: FIN_WAIT_2 ends after fin_timeout
    (Linux tcp_fin_timeout, 60 s) with nothing sent. A half close (shutdown only) waits for the peer as long as
    it takes, as Linux's."""
    p = TcpPair(client=App(data=b"bye"), server=App(data=b"", shutdown_when_sent=False))
    p.run(until=1.0)
    conn = p.client.conn
    assert conn.state is S.FIN_WAIT_2
    if closed:
        conn.orphan(p.now)
        assert conn.next_timer() == pytest.approx(p.now + 60)
        t = p.now + 60
        conn.on_timer(t)
        assert conn.finished and conn.segments_to_send(t) == []  # no RST: the peer learns at its next segment
    else:
        t = p.now + 3600
        assert conn.next_timer() is None or conn.next_timer() > t - 3000  # keepalive off: no timer at all
        conn.on_timer(t)
        assert conn.state is S.FIN_WAIT_2


def test_closing_in_fin_wait_1_starts_the_fin_timeout_at_fin_wait_2():
    p = TcpPair(client=App(shutdown_when_sent=False), server=App(data=b"", shutdown_when_sent=False))
    p.run(until=1.0)
    conn = p.client.conn
    conn.shutdown()
    conn.orphan(p.now)  # the app closed while the FIN is still unacknowledged
    assert conn.state is S.FIN_WAIT_1
    p.run(until=p.now + 1.0)
    assert conn.state is S.FIN_WAIT_2
    entered = p.now
    assert entered < conn.next_timer() <= entered + 61


def test_time_wait_reacknowledges_a_retransmitted_fin_and_restarts():
    p = TcpPair(client=App(data=b"x"), server=App(data=b"y"))
    p.trace = []
    p.run(stop=lambda p: p.client.conn.state is S.TIME_WAIT and p.server.conn.finished)
    fin = [s for _t, tag, s in p.trace if tag == "s" and s.flags & tcp.FIN][-1]
    conn, t0 = p.client.conn, p.now + 30
    conn.receive(fin, t0)
    out = conn.segments_to_send(t0)
    assert len(out) == 1 and out[0].flags == tcp.ACK and out[0].ack == (fin.seq + 2) % 2**32  # 'y' + FIN
    assert conn.next_timer() == pytest.approx(t0 + 60)
    conn.on_timer(t0 + 60)
    assert conn.state is S.CLOSED and conn.finished


def test_zero_window_held_for_ten_seconds_then_everything_arrives():
    data = random.randbytes(500_000)
    cfg = tcp.TcpConfig(recv_buffer=32768)
    p = TcpPair(client=App(data=data), server=App(read_from=10.0), server_cfg=cfg)
    p.trace = []
    p.run(until=100)
    assert p.server.received == data and p.client.events[-1] == tcp.Closed()
    zero = [t for t, tag, s in p.trace if tag == "s" and s.window == 0]
    reopened = [t for t, tag, s in p.trace if tag == "s" and s.window and t > min(zero)]
    assert min(zero) < 1 and 10 <= min(reopened) < 10.01  # shut from then until the reader came back
    assert len(zero) >= 4  # the probes were answered all along
    assert p.client.conn.stats.rtos == 0 and p.client.conn.reset_reason is None


def test_zero_window_probes_go_out_with_backoff():
    cfg = tcp.TcpConfig(recv_buffer=16384)
    p = TcpPair(client=App(data=random.randbytes(100_000), shutdown_when_sent=False),
                server=App(read_from=30.0, shutdown_when_sent=False), server_cfg=cfg)
    p.trace = []
    p.run(until=29.0)
    client = p.client.conn
    una = client.sq.snd_una
    probes = [t for t, tag, s in p.trace if tag == "c" and not s.payload and s.seq == (una - 1) % 2**32]
    assert 3 <= len(probes) <= 12
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]
    assert client.state is S.ESTABLISHED


def test_keepalive_resets_a_vanished_peer_and_keeps_a_live_one():
    cfg = tcp.TcpConfig(keepalive=True, keepalive_idle=10, keepalive_interval=1, keepalive_count=3)
    gone = ((1.0, 1e9),)
    p = TcpPair(FaultyLink(1, delay=0.001, blackholes=gone), FaultyLink(2, delay=0.001, blackholes=gone),
                client_cfg=cfg, client=App(data=b"hi", shutdown_when_sent=False),
                server=App(shutdown_when_sent=False))
    p.trace = []
    p.run(until=100)
    assert p.client.events[-1] == tcp.Reset(tcp.KEEPALIVE)
    assert 12.9 < p.now < 13.1  # idle 10 s, then 3 probes a second apart, then give up
    assert p.trace[-1][2].flags & tcp.RST
    live = TcpPair(client_cfg=cfg, client=App(data=b"hi", shutdown_when_sent=False),
                   server=App(shutdown_when_sent=False))
    live.trace = []
    live.run(until=100)
    assert live.client.conn.state is S.ESTABLISHED and live.client.conn.reset_reason is None
    assert sum(1 for _t, tag, s in live.trace if tag == "c" and not s.payload and s.flags == tcp.ACK) >= 9


def lose(nths):
    """A drop hook losing the client's n-th data segments (first transmissions only)."""
    count, seen = [0], set()

    def drop(tag, seg):
        if tag != "c" or not seg.payload or seg.seq in seen:
            return False
        seen.add(seg.seq)
        count[0] += 1
        return count[0] in nths
    return drop


@pytest.mark.parametrize("sack", [True, False])
def test_one_loss_is_repaired_by_fast_retransmit_not_rto(sack):
    cfg = tcp.TcpConfig(sack=sack)
    data = random.randbytes(200_000)
    p = TcpPair(client_cfg=cfg, client=App(data=data), server=App())
    p.drop = lose({20})
    p.run()
    st = p.client.conn.stats
    assert p.server.received == data
    assert st.rtos == 0 and st.fast_recoveries == 1 and st.retransmits == 1


def test_several_losses_in_one_window_are_repaired_by_sack_recovery():
    data = random.randbytes(300_000)
    p = TcpPair(client=App(data=data), server=App())
    p.drop = lose({30, 33, 36, 40})
    p.run()
    st = p.client.conn.stats
    assert p.server.received == data and st.rtos == 0 and st.fast_recoveries == 1 and st.retransmits == 4


def test_tail_loss_is_repaired_by_a_tail_loss_probe_not_the_rto():
    data = random.randbytes(14_480)  # 10 segments: the last one lost, no dupacks can follow it
    p = TcpPair(client=App(data=data, shutdown_when_sent=False), server=App(shutdown_when_sent=False))
    p.drop = lose({10})
    p.run(until=5.0, stop=lambda p: len(p.server.received) == len(data))
    st = p.client.conn.stats
    assert p.server.received == data and st.rtos == 0 and st.tail_probes == 1 and p.now < 0.1


def test_tail_of_several_segments_lost_probe_then_sack_recovery():
    data = random.randbytes(1448 * 30)
    p = TcpPair(client=App(data=data, shutdown_when_sent=False), server=App(shutdown_when_sent=False))
    p.drop = lose({26, 27, 28, 29, 30})
    p.run(until=5.0, stop=lambda p: len(p.server.received) == len(data))
    st = p.client.conn.stats
    assert p.server.received == data and st.rtos == 0 and st.tail_probes == 1 and st.fast_recoveries == 1


def test_a_lost_retransmission_is_sent_again_without_waiting_for_the_rto():
    data = random.randbytes(300_000)
    p = TcpPair(client=App(data=data), server=App())
    count, seen = [0], {}

    def drop(tag, seg):  # lose segment 30, and its first retransmission too
        if tag != "c" or not seg.payload:
            return False
        seen[seg.seq] = seen.get(seg.seq, 0) + 1
        if seen[seg.seq] == 1:
            count[0] += 1
            return count[0] == 30
        return seen[seg.seq] == 2 and count[0] >= 30 and seg.seq == first[0]
    first = [None]
    orig = drop

    def drop_first(tag, seg):
        if first[0] is None and tag == "c" and seg.payload and count[0] == 29 and seg.seq not in seen:
            first[0] = seg.seq
        return orig(tag, seg)
    p.drop = drop_first
    p.run()
    st = p.client.conn.stats
    assert p.server.received == data and st.rtos == 0 and st.retransmits == 2


def test_karn_no_rtt_sample_from_a_retransmitted_segment():
    cfg = tcp.TcpConfig(timestamps=False)
    p = TcpPair(client_cfg=cfg, server_cfg=cfg, client=App(data=b"q" * 1000, shutdown_when_sent=False),
                server=App(shutdown_when_sent=False))
    sent = [0]

    def drop(tag, seg):  # the segment and its tail loss probe are lost: the RTO resends it
        if tag == "c" and seg.payload:
            sent[0] += 1
            return sent[0] <= 2
        return False
    p.drop = drop
    p.run(until=0.1)
    samples = p.client.conn.rtt.samples  # the handshake's
    p.run(until=5.0)
    assert p.client.conn.stats.rtos == 1 and p.client.conn.rtt.samples == samples
    rtt = p.client.conn.rtt
    # backed off once from the handshake's RTO (SRTT + max(4 RTTVAR, min_rto), as Linux's), and no ambiguous
    # sample undid it
    assert rtt.rto == pytest.approx(2 * (rtt.srtt + max(4 * rtt.rttvar, rtt.min_rto))) and rtt.rto > 0.4


def test_newreno_and_cubic_cut_and_regrow():
    nr, cu = NewReno(1000, 10), Cubic(1000, 10)
    for cc in (nr, cu):
        cc.ssthresh = 0  # congestion avoidance from the start
        cc.cwnd = 100_000
        cc.on_loss(100_000, 0.0)
    assert nr.cwnd == 50_000 and cu.cwnd == 70_000
    t = 0.0
    while t < 10:  # a CUBIC epoch: concave up to W_max (at K ~ 4.2 s), then convex beyond it
        t += 0.01
        cu.on_ack(cu.cwnd // 100, t, 0.01)
        nr.on_ack(nr.cwnd // 100, t, 0.01)
    assert cu.cwnd > 100_000 > nr.cwnd > 50_000
    cu.on_timeout(cu.cwnd, t)
    assert cu.cwnd == 1000


def test_isns_grow_with_time_per_four_tuple_and_differ_between_them():
    gen = tcp.IsnGenerator(b"k" * 32)
    a = [gen.isn("10.0.0.1", 1, "10.0.0.2", 80, t) for t in (0.0, 0.001, 1.0)]
    assert (a[1] - a[0]) % 2**32 == 250 and (a[2] - a[0]) % 2**32 == 250_000
    assert gen.isn("10.0.0.1", 2, "10.0.0.2", 80, 0.0) != a[0]
    assert tcp.IsnGenerator(b"j" * 32).isn("10.0.0.1", 1, "10.0.0.2", 80, 0.0) != a[0]


def test_a_new_syn_ends_time_wait_and_an_old_one_is_only_acked():
    p = TcpPair(client=App(data=b"x"), server=App(data=b"y"))
    p.run(stop=lambda p: p.client.conn.state is S.TIME_WAIT and p.server.conn.finished)
    conn = p.client.conn
    old = tcp.Segment(80, 40000, (conn.rcv_nxt - 5) % 2**32, 0, tcp.SYN, 1000)
    conn.receive(old, p.now + 1)
    assert conn.state is S.TIME_WAIT and conn.segments_to_send(p.now + 1)[0].flags == tcp.ACK
    new = tcp.Segment(80, 40000, (conn.rcv_nxt + 100_000) % 2**32, 0, tcp.SYN, 1000)
    conn.receive(new, p.now + 2)
    assert conn.finished and conn.segments_to_send(p.now + 2) == []


@pytest.mark.parametrize("restart", [True, False])
def test_slow_start_restarts_after_idle(restart):
    cfg = tcp.TcpConfig(slow_start_after_idle=restart)
    p = TcpPair(client_cfg=cfg, client=App(data=random.randbytes(2_000_000), shutdown_when_sent=False),
                server=App(shutdown_when_sent=False))
    p.run(until=5.0)
    conn = p.client.conn
    grown = conn.cc.cwnd
    assert grown > 10 * conn.snd_mss
    conn.send(b"x" * 100_000)  # after 5 s of silence (RTO 0.2 s)
    conn.segments_to_send(p.now + 5)
    assert conn.cc.cwnd == (10 * conn.snd_mss if restart else grown)
