"""The model-based congestion controller (bbr.py): its state machine fed by hand, then in the simulator:
random loss (1%, 5%) does not slow it, a bottleneck's queue stays bounded where the loss-rate controller
fills it, two flows sharing a bottleneck converge to equal shares, and so do four or eight behind a queue
shallower than two BDPs, with the drops bounded. Simulated time only, seeded."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbypass.proto.transport import ConnConfig
from kbypass.proto.transport.bbr import (
    DRAIN,
    MIN_SEGMENTS,
    PROBE_BW,
    PROBE_RTT,
    RTT_FLOOR,
    RTT_WINDOW,
    STARTUP,
    Bbr,
)
from kbypass.proto.transport.errors import LocalProtocolError
from kbypass.proto.transport.sim import measure_goodput
from kbypass.proto.transport.sim_flows import run_flows
from kbypass.xfer.endpoint import default_config

MSS = 1000
RTT = 0.01


def _feed(cc, rate, seconds, t=0.0, delivered=0, rtt=RTT, inflight=None, step=0.001):
    """ACKs every `step` at `rate` bytes/s for `seconds`; returns (t, delivered)."""
    end = t + seconds
    while t < end:
        t += step
        delivered += int(rate * step)
        cc.on_delivery(t, delivered, cc.cwnd if inflight is None else inflight, rtt, rtt, RTT)
    return t, delivered


def test_startup_finds_the_rate_then_drains_and_probes_at_it():
    cc = Bbr(MSS, max_window=1 << 30)
    t, d = _feed(cc, 1e6, 0.3)  # 1 MB/s, whatever STARTUP paces at
    assert cc.filled_pipe and cc.mode in (DRAIN, PROBE_BW)
    t, d = _feed(cc, 1e6, 0.3, t, d, inflight=5000)  # the queue drained: below one BDP (10 kB)
    assert cc.mode is PROBE_BW
    assert cc.btl_bw == pytest.approx(1e6, rel=0.02)
    assert cc.min_rtt == RTT
    assert cc.cwnd <= 2 * cc.bdp + cc.extra_acked + 3 * cc._quantum() + MSS
    gains = set()
    for _ in range(400):
        t, d = _feed(cc, 1e6, 0.001, t, d, inflight=5000)
        gains.add(cc.pacing_gain)
    assert gains == {1.25, 0.75, 1.0}  # the gain cycle: probe, drain, cruise


def test_the_rate_estimate_follows_a_drop_after_ten_rounds_and_app_limited_samples_do_not_lower_it():
    cc = Bbr(MSS)
    t, d = _feed(cc, 2e6, 0.5)
    assert cc.btl_bw == pytest.approx(2e6, rel=0.02)
    cc.app_limited(cc.cwnd)
    t, d = _feed(cc, 0.5e6, 0.05, t, d)  # the application sent little: the path is as fast as before
    assert cc.btl_bw == pytest.approx(2e6, rel=0.02)
    t, d = _feed(cc, 1e6, 0.3, t, d)  # the path halved: after the filter's ten rounds the model follows
    assert cc.btl_bw == pytest.approx(1e6, rel=0.05)


def test_random_loss_changes_nothing_but_loss_over_a_standing_queue_caps_the_flight():
    cc = Bbr(MSS)
    t, d = _feed(cc, 1e6, 0.5, inflight=5000)  # the queue STARTUP made drained: PROBE_BW
    assert cc.mode is PROBE_BW
    cwnd, rate = cc.cwnd, cc.pacing_rate
    for _ in range(50):  # 5% lost, RTT at its minimum: random loss
        assert not cc.on_loss(cwnd, 0, cwnd, lost=MSS)
    assert cc.pacing_rate == rate and cc.cwnd == cwnd and cc.lost_bytes == 50 * MSS
    t, d = _feed(cc, 1e6, 0.012, t, d, rtt=3 * RTT)  # a queue stands: the RTT tripled; a new round
    flight = cc.cwnd
    assert any(cc.on_loss(flight, 0, flight, lost=MSS) for _ in range(10))  # PROBE_BW too (BBRv2)
    assert cc.congestion_cuts == 1 and cc.inflight_hi == pytest.approx(0.7 * flight) and cc.cwnd <= cc.inflight_hi
    assert not any(cc.on_loss(flight, 0, flight, lost=MSS) for _ in range(10))  # once a round
    # while the queue stands, the cap grows back by one segment a round (additive: flows converge)
    hi = cc.inflight_hi
    t, d = _feed(cc, 1e6, 0.1, t, d, rtt=3 * RTT, step=0.002)
    assert cc.inflight_hi == pytest.approx(hi + (cc.round - 2 - cc._hi_cut_round) * MSS, abs=MSS)
    assert cc.cwnd <= cc.inflight_hi and cc.pacing_rate >= 1.25 * cc.cwnd / (3 * RTT) * 0.99  # the window rules
    # once no queue stands (the RTT back at its minimum), it grows fast and lets go within rounds
    t, d = _feed(cc, 1e6, 0.2, t, d)
    assert cc.inflight_hi == float("inf")

    cc = Bbr(MSS)
    t, d = _feed(cc, 1e6, 0.03)  # STARTUP, ramping up
    assert cc.mode is STARTUP
    for _ in range(5):
        assert not cc.on_loss(cc.cwnd, 0, cc.cwnd, lost=MSS)  # loss at the minimum RTT: random
    assert cc.mode is STARTUP
    t, d = _feed(cc, 1e6, 0.002, t, d, rtt=3 * RTT)
    cwnd = cc.cwnd
    assert any(cc.on_loss(cc.cwnd, 0, cc.cwnd, lost=MSS) for _ in range(10))
    assert cc.filled_pipe and cc.cwnd < cwnd and cc.congestion_cuts == 1


def test_a_path_shorter_than_the_rtt_floor_reads_loss_as_congestion_only_in_startup():
    """On a LAN (the veth testbed) the RTT is the endpoints' wake-ups and batches: it rises under any
    load, so in PROBE_BW it cannot tell random loss from a queue's."""
    short = RTT_FLOOR / 4
    cc = Bbr(MSS)
    t, d = _feed(cc, 20e6, 0.3, rtt=short, step=short / 2, inflight=10_000)
    assert cc.mode is PROBE_BW
    t, d = _feed(cc, 20e6, 0.01, t, d, rtt=10 * short, step=short / 2)
    assert not any(cc.on_loss(cc.cwnd, 0, cc.cwnd, lost=MSS) for _ in range(20))
    assert cc.inflight_hi == float("inf")


def test_probe_rtt_after_ten_seconds_without_a_lower_rtt():
    cc = Bbr(MSS)
    t, d = _feed(cc, 1e6, 0.5, inflight=5000)
    t, d = _feed(cc, 1e6, RTT_WINDOW, t, d, rtt=2 * RTT, inflight=5000, step=0.005)
    assert cc.mode is PROBE_RTT and cc.cwnd == MIN_SEGMENTS * MSS
    t, d = _feed(cc, 1e6, 0.3, t, d, rtt=RTT * 0.9, inflight=MIN_SEGMENTS * MSS)
    assert cc.mode is PROBE_BW and cc.min_rtt == pytest.approx(RTT * 0.9)


def test_timeout_restarts_from_one_segment_and_pacing_allowance_is_a_bounded_burst():
    cc = Bbr(MSS)
    t, d = _feed(cc, 1e6, 0.5)
    cc.on_timeout(cc.cwnd, 0)
    assert cc.cwnd == MSS
    t, d = _feed(cc, 1e6, 0.05, t, d)
    assert cc.cwnd > 10 * MSS  # back to the model within rounds
    assert cc.budget(t + 10.0) == cc._burst() <= 0.005 * cc.pacing_rate + 2 * MSS
    cc.spend(cc._burst())
    assert cc.budget(t + 10.0) == 0 and cc.next_send_time(t + 10.0) == pytest.approx(
        t + 10.0 + max(MSS, cc._burst() / 2) / cc.pacing_rate)  # half a burst: a batch, not a datagram


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-5, 0.05), st.integers(0, 200_000), st.floats(1e-5, 0.2),
                          st.integers(0, 3)), min_size=1, max_size=80))
def test_any_ack_sequence_keeps_window_cap_and_pacer_sane(events):
    """The window stays within its bounds and under a congestion cap; the pacer, spent whenever it
    allows, never lets out more than one burst plus what its rates allowed over the time that passed."""
    cc = Bbr(MSS, max_window=400_000)
    t, d = 0.0, 0
    cc.start_pacing(t, RTT)
    allowed, spent, rate = cc._burst(), 0.0, cc.pacing_rate
    for dt, newly, rtt, loss in events:
        t += dt
        d += newly
        cc.on_delivery(t, d, cc.cwnd, rtt, rtt, None)
        for _ in range(loss):
            cc.on_loss(cc.cwnd, 0, cc.cwnd, lost=MSS)
        assert MIN_SEGMENTS * MSS <= cc.cwnd <= 400_000
        assert cc.mode is PROBE_RTT or cc.cwnd <= max(cc.inflight_hi, MIN_SEGMENTS * MSS)
        assert cc.pacing_rate >= 0 and cc.btl_bw >= 0
        allowed += dt * max(rate, cc.pacing_rate)  # (the refill may use the rate set during the interval)
        rate = cc.pacing_rate
        b = cc.budget(t)
        if b > 0:
            cc.spend(int(b))
            spent += int(b)
        assert spent <= allowed + 1e-6


def test_config_names_the_controller():
    assert ConnConfig(congestion="bbr").congestion == "bbr"
    with pytest.raises(LocalProtocolError, match="bbr, reno"):
        ConnConfig(congestion="cubic")


# ---------------------------------------------------------------- in the simulator
BASE = ConnConfig(max_datagram_size=1472, send_buffer=1 << 20, recv_buffer=1 << 20, max_window=1 << 19,
                  initial_rto=0.25, min_rto=0.02, max_rto=2.0)
BBR, RENO = (dataclasses.replace(BASE, congestion=c) for c in ("bbr", "reno"))
LINK = 20e6  # bit/s; 10 ms RTT: a BDP of 25 kB, 17 datagrams
BDP_DGRAMS = LINK / 8 * 0.01 / 1472


@pytest.mark.parametrize("loss", [0.01, 0.05])
def test_random_loss_on_a_bottleneck_path_does_not_slow_it(loss):
    r = run_flows(1, loss=loss, config=BBR, seconds=4.0, seed=1)
    assert r.random_lost > loss * r.sent * 0.7  # the loss did bite
    assert r.total_bps > 0.9 * (1 - loss) * LINK, r
    if loss == 0.05:
        reno = run_flows(1, loss=loss, config=RENO, seconds=4.0, seed=1)
        assert r.total_bps > 1.5 * reno.total_bps  # the loss-rate controller reads 5% as congestion


def test_a_bottleneck_queue_stays_bounded_where_the_loss_rate_controller_fills_it(monkeypatch):
    """A 100-datagram drop-tail queue, six BDPs. Pacing at the measured rate keeps the queue under half a
    BDP by itself. The flight cap (two BDPs, plus the ACK aggregation allowance and three quanta) is what
    bounds it for a bursty sender, here one whose pacer lets a whole window go at once once in PROBE_BW:
    then about 1.5 BDPs stand queued, never a drop (with CWND_GAIN 50: 83 datagrams, drops). The
    loss-based controller grows until the queue overflows, so it stands nearly full."""
    bbr_run = run_flows(1, config=BBR, seconds=4.0, seed=2)
    reno = run_flows(1, config=RENO, seconds=4.0, seed=2)
    assert bbr_run.total_bps > 0.9 * LINK
    assert bbr_run.queue_mean < 0.5 * BDP_DGRAMS and bbr_run.queue_drops < 0.005 * bbr_run.sent, bbr_run
    assert reno.queue_mean > 3 * BDP_DGRAMS  # what backing off by loss alone leaves standing
    paced = Bbr.budget
    monkeypatch.setattr(Bbr, "budget", lambda self, now: float(self.max_window) if self.mode is PROBE_BW
                        else paced(self, now))  # (DRAIN needs its pacer: it ends when the queue is gone)
    bursty = run_flows(1, config=BBR, seconds=4.0, seed=2)
    assert bursty.total_bps > 0.9 * LINK
    assert bursty.queue_mean < 2 * BDP_DGRAMS and bursty.queue_drops == 0, bursty


def _jain(shares):
    return sum(shares) ** 2 / (len(shares) * sum(x * x for x in shares))


@pytest.mark.parametrize("n,queue,max_drops", [(4, 10, 0.08), (4, 40, 0.04), (8, 20, 0.2)])
def test_flows_behind_a_shallow_queue_share_it_fairly_with_bounded_drops(n, queue, max_drops):
    """Several flows behind a drop-tail queue shallower than two BDPs (10 datagrams: 0.6 BDP; 40: 2.35):
    the model's windows add up to more than the path holds, so the queue overflows. Loss over a standing
    queue caps each flow's flight (x0.7, one segment a round back): the caps converge as AIMD's do. Before
    that, the first flow kept 0.97 of a 10-datagram queue, 10% of the datagrams were dropped, and flows
    timed out up to 113 times in 6 s. reno: 7.3% dropped at (4, 10), 3.5% at (4, 40), 72% at (8, 20)."""
    r = run_flows(n, config=BBR, queue_limit=queue, seconds=6.0, seed=5)
    shares = r.shares(since=2.0)
    assert _jain(shares) >= 0.9 and min(shares) >= 0.5 / n, shares
    assert r.total_bps > 0.85 * LINK
    assert r.queue_drops < max_drops * r.sent, r


@pytest.mark.parametrize("loss", [0.01, 0.05])
def test_cpu_bound_lan_path_keeps_its_rate_under_random_loss(loss):
    """sim.measure_goodput: the endpoints' CPU is the bottleneck (the veth path's model)."""
    cfg = default_config(1472, time_wait=0.001, congestion="bbr")
    clean = measure_goodput(0.0, 1, size=3_000_000, config=cfg)
    lossy = measure_goodput(loss, 1, size=3_000_000, config=cfg)
    assert clean.completed and lossy.completed
    assert lossy.goodput_bps >= 0.9 * clean.goodput_bps, (lossy, clean)

