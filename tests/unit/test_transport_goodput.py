"""Goodput under random loss on a short, CPU-bound path (sim.measure_goodput), and the mechanisms it needs:
tail loss probes, SACK blocks that survive a lost ACK, a congestion response that tolerates random loss
but still backs off from a full queue. Simulated time only; each test well under 2 s."""

import random

import pytest

from kbypass.proto.faults import FaultyLink
from kbypass.proto.transport import ConnConfig, wire
from kbypass.proto.transport.sim import PairSim, measure_goodput
from kbypass.xfer.endpoint import default_config

CFG = default_config(1472, time_wait=0.001)  # what kbypass xfer ships, UDP on a 1500-byte MTU
SIZE = 3_000_000  # ~2100 datagrams: ~21 random losses at 1%


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_goodput_at_1pct_loss_is_at_least_0_6_of_loss_free_on_a_cpu_bound_lan_path(seed):
    clean = measure_goodput(0.0, seed, size=SIZE, config=CFG)
    lossy = measure_goodput(0.01, seed, size=SIZE, config=CFG)
    assert clean.completed and lossy.completed
    # endpoint-bound: ~one datagram per 28 us (0.82 of it with the 512 KiB flight xfer ships since the C
    # receive path; 0.86 with 256 KiB: in this model, where the receiver costs as much as the sender, the
    # deeper flight only queues)
    assert clean.goodput_bps > 0.8 * 1426 * 8 / 28e-6
    assert lossy.data_lost > 5  # the loss did bite
    assert lossy.goodput_bps >= 0.6 * clean.goodput_bps, (lossy, clean)
    assert lossy.timeouts == 0  # every loss repaired by SACK/RACK or a tail probe
    # no retransmission storms: about one retransmission per lost datagram, spurious ones are rare
    assert lossy.retransmits <= lossy.data_lost + lossy.acks_lost + lossy.tail_probes
    assert lossy.duplicates <= 3


def test_measure_goodput_is_deterministic():
    a = measure_goodput(0.01, 7, size=500_000, config=CFG)
    b = measure_goodput(0.01, 7, size=500_000, config=CFG)
    assert a == b and a.completed


def test_idle_time_is_what_a_too_small_window_wastes():
    small = ConnConfig(max_datagram_size=1472, send_buffer=64 * 1024, recv_buffer=64 * 1024,
                       max_window=2 * 1426, initial_rto=0.25, min_rto=0.02, max_rto=2.0, time_wait=0.001)
    stalled = measure_goodput(0.0, 1, size=1_000_000, config=small)
    full = measure_goodput(0.0, 1, size=1_000_000, config=CFG)
    assert stalled.completed and full.completed
    assert stalled.idle_seconds > 0.3 * stalled.seconds  # waiting for ACKs with nothing in flight
    assert full.idle_seconds < 0.06 * full.seconds  # (slow start, mostly)
    assert stalled.goodput_bps < 0.5 * full.goodput_bps


def _drop_first(link, pred):
    """Make `link` drop the first datagram for which pred(decoded packet) is true; returns a list that gets
    the dropped packet."""
    dropped = []
    send = link.send

    def wrapped(d, now):
        if not dropped:
            p = wire.decode(d)
            if pred(p):
                dropped.append(p)
                return False
        return send(d, now)

    link.send = wrapped
    return dropped


SMALL = ConnConfig(max_datagram_size=600, send_buffer=32 * 1024, recv_buffer=32 * 1024, min_rto=0.2,
                   initial_rto=0.5, max_rto=2.0, idle_timeout=10.0, keepalive_interval=2.0, time_wait=0.5)


def _tail_sim():
    sim = PairSim(FaultyLink(1, delay=0.005), FaultyLink(2, delay=0.005), SMALL, seed=1)
    sim.client.close_when_done = sim.server.close_when_done = False
    data = random.Random(1).randbytes(12 * SMALL.mss)
    sim.client.stream = data
    sim.start()
    return sim, data


def test_a_lost_last_segment_is_repaired_by_a_tail_probe_not_the_rto():
    sim, data = _tail_sim()
    dropped = _drop_first(sim.ab, lambda p: p.payload and p.seq + len(p.payload) == len(data))
    assert sim.run(lambda s: len(s.server.received) == len(data), max_time=5)
    c = sim.client.conn
    assert dropped and bytes(sim.server.received) == data
    assert c.stats.timeouts == 0 and c.stats.tail_probes == 1 and c.stats.retransmits == 1
    assert sim.now < 0.2  # well before the 200 ms RTO floor: 2 SRTT (~20 ms) after the last ACK


def test_a_lost_final_ack_is_answered_by_a_probe_not_the_rto():
    sim, data = _tail_sim()
    dropped = _drop_first(sim.ba, lambda p: p.has(wire.ACK) and p.ack == len(data) and not p.payload)
    assert sim.run(lambda s: s.client.conn.stats.bytes_acked == len(data), max_time=5)
    c = sim.client.conn
    assert dropped and c.stats.timeouts == 0 and c.stats.tail_probes == 1
    assert sim.now < 0.2
    assert sim.server.conn.stats.duplicates == 1  # the probe was a copy of the last segment


def test_no_probe_while_acks_keep_coming():
    sim = PairSim(FaultyLink(1, delay=0.005), FaultyLink(2, delay=0.005), SMALL, seed=2)
    sim.client.stream = random.Random(2).randbytes(400_000)
    sim.start()
    assert sim.run(lambda s: s.both_finished(), max_time=60)
    c = sim.client.conn.stats
    assert c.retransmits == 0 and c.timeouts == 0 and c.tail_probes <= 2  # at most at start, as RTT settles


def _shallow_queue_transfer(congestion: str) -> PairSim:
    """2 MB over 20 Mbit/s, 10 ms RTT (a BDP of 17 datagrams) behind a 10-datagram drop-tail queue."""
    cfg = ConnConfig(max_datagram_size=1472, send_buffer=512 * 1024, recv_buffer=512 * 1024, min_rto=0.05,
                     time_wait=0.001, congestion=congestion)
    mk = lambda s: FaultyLink(s, delay=0.005, rate_bps=20e6, queue_limit=10)  # noqa: E731
    sim = PairSim(mk(1), mk(2), cfg, seed=1)
    data = random.Random(3).randbytes(2_000_000)
    sim.client.stream = data
    sim.start()
    assert sim.run(lambda s: len(s.server.received) == len(data), max_time=60)
    assert bytes(sim.server.received) == data
    return sim


def test_bbr_does_not_keep_a_shallow_queue_overflowing():
    """The same path for the model-based controller: a round that loses over 2% with the RTT up (a standing
    queue) caps the flight, in STARTUP (its overshoot ends there) and after, so the transfer loses 1.5% of
    its datagrams (10% with no rule, 2.5% with it in STARTUP only) and keeps the link busy."""
    sim = _shallow_queue_transfer("bbr")
    st = sim.ab.stats
    assert st.queue_drops / st.sent < 0.02
    assert 2_000_000 * 8 / sim.now > 0.85 * 20e6
    assert sim.client.conn.cc.congestion_cuts >= 1


def test_random_loss_does_not_shrink_the_window_but_a_full_queue_does():
    """20 Mbit/s, 10 ms RTT, a 10-datagram drop-tail queue: the flight (up to 256 KiB) is far more than
    the path holds, so loss here is congestion. The sender must back off: the queue's drop rate stays
    near the 2% threshold and goodput near the link rate (a controller that cut by FlightSize behind a
    standing hole raised its window instead, and lost three quarters of its datagrams)."""
    sim = _shallow_queue_transfer("reno")  # the loss-rate controller
    st = sim.ab.stats
    assert st.queue_drops / st.sent < 0.06
    assert 2_000_000 * 8 / sim.now > 0.85 * 20e6
    assert sim.client.conn.stats.loss_events >= 3  # it did cut
    assert sim.client.conn.cc.cwnd < 60 * 1426  # near BDP + queue (27 datagrams), not the 180 allowed


def test_a_spurious_rto_is_undone_when_the_delayed_acks_arrive():
    """The peer's ACKs stall for 0.5 s (its loop was descheduled): our RTO fires although nothing was
    lost. The first ACK after it answers an original transmission (its echoed timestamp predates the
    RTO), so the window comes back and the flight is not sent again."""
    sim = PairSim(FaultyLink(1, delay=0.005), FaultyLink(2, delay=0.005), SMALL, seed=3)
    data = random.Random(3).randbytes(1_000_000)
    sim.client.stream = data
    send = sim.ba.send
    seen = {}

    def stalled(d, now):
        if 0.1 <= now < 0.4:  # everything the peer sends in this period lands at 0.6 s
            return send(d, 0.6 - 0.005)
        return send(d, now)

    sim.ba.send = stalled
    sim.start()

    def watch(s):
        c = s.client.conn
        if c.stats.timeouts and "cwnd" not in seen:
            seen["cwnd"] = c.cc.cwnd
        if s.now < 0.1:
            seen["before"] = c.cc.cwnd
        return s.both_finished()

    assert sim.run(watch, max_time=30)
    c = sim.client.conn
    assert bytes(sim.server.received) == data
    assert c.stats.timeouts == 1 and c.stats.spurious_timeouts == 1
    assert c.cc.cwnd >= seen["before"]  # restored (and grown since), not slow-starting from one segment
    assert c.stats.retransmits <= 3  # the probe and the RTO's first segment, not the whole flight
