"""End to end under faults: exact delivery, bounded memory, no deadlock, acked bytes never lost, goodput.

Long runs are opt-in: KBYPASS_SLOW=1 multiplies seeds and hypothesis examples.
"""

import hashlib
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbypass.proto.faults import FaultyLink, GilbertElliott
from kbypass.proto.transport import ConnConfig
from kbypass.proto.transport.sim import PairSim

SLOW = os.environ.get("KBYPASS_SLOW") == "1"
# fixed examples by default (reproducible CI); fresh random ones in the opt-in soak
COMMON = dict(derandomize=not SLOW, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = range(200 if SLOW else 30)
EXAMPLES = 300 if SLOW else 60

CFG = ConnConfig(max_datagram_size=1000, send_buffer=32 * 1024, recv_buffer=24 * 1024, min_rto=0.05,
                 initial_rto=0.3, max_rto=3.0, max_retransmits=30, idle_timeout=60.0,
                 keepalive_interval=2.0, time_wait=15.0)


def hostile(seed, loss=0.2, **kw):
    base = dict(loss=loss, reorder=0.1, reorder_delay=0.03, duplicate=0.05, corrupt=0.01, delay=0.01,
                jitter=0.002)
    base.update(kw)
    return FaultyLink(seed, **base)


def transfer(sim, data, max_time=3000.0, check=None):
    sim.client.stream = data
    sim.start()

    def done(s):
        if check:
            check(s)
        return s.both_finished()

    ok = sim.run(done, max_time=max_time)
    return ok


def assert_delivered(sim, data, cfg=CFG):
    assert sim.client.lost is None and sim.server.lost is None, (sim.client.lost, sim.server.lost)
    assert sim.client.closed and sim.server.closed
    got = bytes(sim.server.received)
    assert len(got) == len(data) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    for side in (sim.client, sim.server):
        assert side.peak_send_buffer <= cfg.send_buffer
        assert side.peak_recv_buffer <= cfg.recv_buffer


def acked_never_lost(s):
    """Invariant: what the sender was told is acknowledged already reached the peer's application."""
    c, srv = s.client.conn, s.server.conn
    if srv is None:
        return
    assert c.stats.bytes_acked <= len(s.server.received) + srv.rbuf.unread


@pytest.mark.parametrize("seed", SEEDS)
def test_exact_stream_under_20pct_loss_reorder_dup_corruption(seed):
    data = random.Random(seed).randbytes(60_000)
    sim = PairSim(hostile(seed), hostile(seed + 10_000), CFG, seed=seed)
    assert transfer(sim, data, check=acked_never_lost), "deadlock: simulated time ran out"
    assert_delivered(sim, data)
    assert sim.client.conn.stats.retransmits > 0  # the faults did bite


def test_corruption_is_caught_and_counted():
    data = random.Random(1).randbytes(200_000)
    # no duplication here: a duplicated corrupt datagram would be counted twice
    kw = dict(loss=0.0, corrupt=0.05, duplicate=0.0)
    sim = PairSim(hostile(1, **kw), hostile(2, **kw), CFG, seed=1)
    assert transfer(sim, data)
    assert_delivered(sim, data)
    caught = sim.listener.drops["bad_crc"] + sim.server.conn.stats.drops["bad_crc"]
    caught_back = sim.client.conn.stats.drops["bad_crc"]
    assert caught == sim.ab.stats.corrupted > 5
    assert caught_back == sim.ba.stats.corrupted


def test_burst_loss_and_a_blackhole_period_are_survived():
    data = random.Random(2).randbytes(150_000)
    ge = GilbertElliott(p_bad=0.02, p_good=0.2)
    # (the blackholes begin while the transfer runs: 0.1 s in, before either controller is through)
    sim = PairSim(FaultyLink(3, burst=ge, delay=0.01, blackholes=((0.1, 6.0),)),
                  FaultyLink(4, burst=ge, delay=0.01, blackholes=((0.15, 9.0),)), CFG, seed=3)
    assert transfer(sim, data, check=acked_never_lost)
    assert_delivered(sim, data)
    assert sim.ab.stats.blackholed > 0 and sim.ab.stats.burst_lost > 0
    assert sim.client.conn.stats.timeouts > 0


def test_acknowledged_bytes_survive_a_connection_that_dies():
    """The link dies for good mid-transfer: the sender reports ConnectionLost, and every byte it saw
    acknowledged is in the receiver application's hands, exactly."""
    cfg = ConnConfig(max_datagram_size=1000, send_buffer=32 * 1024, recv_buffer=24 * 1024, min_rto=0.05,
                     initial_rto=0.3, max_rto=1.0, max_retransmits=6, idle_timeout=10.0,
                     keepalive_interval=1.0)
    for seed in range(5):
        data = random.Random(seed).randbytes(3_000_000)
        t_die = 0.2 + seed * 0.1
        bh = ((t_die, 1e9),)
        sim = PairSim(hostile(seed, loss=0.05, blackholes=bh), hostile(seed + 1, loss=0.05, blackholes=bh),
                      cfg, seed=seed)
        sim.client.stream = data
        sim.start()
        sim.run(lambda s: s.both_finished(), max_time=600)
        assert sim.client.lost is not None and sim.server.lost is not None
        acked = sim.client.conn.stats.bytes_acked
        got = bytes(sim.server.received)
        assert 0 < acked <= len(got) < len(data)
        assert got == data[: len(got)]


@settings(max_examples=EXAMPLES, **COMMON)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.25),
    reorder=st.floats(0.0, 0.3),
    duplicate=st.floats(0.0, 0.2),
    corrupt=st.floats(0.0, 0.05),
    delay=st.floats(0.0, 0.05),
    jitter=st.floats(0.0, 0.02),
    burst=st.one_of(st.none(), st.tuples(st.floats(0.001, 0.05), st.floats(0.2, 0.9))),
    size=st.integers(0, 40_000),
    message_mode=st.booleans(),
)
def test_property_any_fault_schedule_delivers_exactly(seed, loss, reorder, duplicate, corrupt, delay, jitter,
                                                     burst, size, message_mode):
    ge = GilbertElliott(*burst) if burst else None
    kw = dict(loss=loss, reorder=reorder, duplicate=duplicate, corrupt=corrupt, delay=delay, jitter=jitter,
              burst=ge)
    cfg = ConnConfig(message_mode=message_mode, max_datagram_size=700, send_buffer=16 * 1024,
                     recv_buffer=16 * 1024, max_message_size=4096, min_rto=0.05, initial_rto=0.3, max_rto=3.0,
                     max_retransmits=40, max_syn_retransmits=30, idle_timeout=120.0, keepalive_interval=2.0)
    rng = random.Random(seed)
    sim = PairSim(FaultyLink(seed, **kw), FaultyLink(seed ^ 0x5A5A, **kw), cfg, seed=seed)
    if message_mode:
        msgs, left = [], size
        while left > 0:
            n = min(left, rng.randint(1, 4096))
            msgs.append(rng.randbytes(n))
            left -= n
        sim.client.messages = msgs
        sim.start()
        assert sim.run(lambda s: s.both_finished(), max_time=5000)
        assert sim.server.received_messages == msgs
        assert sim.client.closed and sim.server.closed
    else:
        data = rng.randbytes(size)
        assert transfer(sim, data, max_time=5000, check=acked_never_lost)
        assert_delivered(sim, data, cfg)


def goodput(loss, seed):
    cfg = ConnConfig(max_datagram_size=1472, send_buffer=128 * 1024, recv_buffer=128 * 1024, time_wait=0.001)
    mk = lambda s: FaultyLink(s, loss=loss, delay=0.005, rate_bps=20e6, queue_limit=50)  # noqa: E731
    sim = PairSim(mk(seed), mk(seed + 99), cfg, seed=seed)
    data = random.Random(seed).randbytes(1_500_000)
    sim.client.stream = data
    sim.start()
    assert sim.run(lambda s: len(s.server.received) == len(data), max_time=600)
    assert bytes(sim.server.received) == data
    return len(data) / sim.now


def test_goodput_at_1pct_loss_is_at_least_half_of_loss_free():
    """20 Mbit/s bottleneck, 10 ms RTT, 50-datagram queue (simulated time, so the ratio is exact)."""
    for seed in (1, 2, 3):
        clean, lossy = goodput(0.0, seed), goodput(0.01, seed)
        assert clean > 0.8 * 20e6 / 8  # near the bottleneck rate when nothing is lost
        assert lossy >= 0.5 * clean, (seed, lossy / clean)
