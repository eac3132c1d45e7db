"""The model-based congestion controller (bbr.py): its state machine fed by hand, then in the simulator:
random loss (1%, 5%) does not slow it, a bottleneck's queue stays bounded where the loss-rate controller
fills it, two flows sharing a bottleneck converge to equal shares. Simulated time only, seeded."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbypass.proto.transport import ConnConfig
from kbypass.proto.transport.bbr import DRAIN, MIN_SEGMENTS, PROBE_BW, PROBE_RTT, RTT_WINDOW, STARTUP, Bbr
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


def test_random_loss_changes_nothing_but_loss_over_a_standing_queue_ends_startup_and_caps_the_flight():
    cc = Bbr(MSS)
    t, d = _feed(cc, 1e6, 0.5)
    cwnd, rate = cc.cwnd, cc.pacing_rate
    for _ in range(50):  # 5% lost, RTT at its minimum: random loss
        assert not cc.on_loss(cwnd, 0, cwnd, lost=MSS)
    t, d = _feed(cc, 1e6, 0.05, t, d, rtt=3 * RTT)
    assert not any(cc.on_loss(cc.cwnd, 0, cc.cwnd, lost=MSS) for _ in range(10))  # PROBE_BW: the rate rules
    assert cc.pacing_rate == pytest.approx(rate, rel=0.3) and cc.lost_bytes == 60 * MSS

    cc = Bbr(MSS)
    t, d = _feed(cc, 1e6, 0.03)  # STARTUP, ramping up
    assert cc.mode is STARTUP
    for _ in range(5):
        assert not cc.on_loss(cc.cwnd, 0, cc.cwnd, lost=MSS)  # loss at the minimum RTT: random
    assert cc.mode is STARTUP
    t, d = _feed(cc, 1e6, 0.002, t, d, rtt=3 * RTT)  # a queue stands: the RTT tripled
    cwnd = cc.cwnd
    assert any(cc.on_loss(cc.cwnd, 0, cc.cwnd, lost=MSS) for _ in range(10))
    assert cc.filled_pipe and cc.cwnd < cwnd and cc.cwnd >= cc.bdp and cc.congestion_cuts == 1


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
def test_any_ack_sequence_keeps_window_and_rate_sane(events):
    cc = Bbr(MSS, max_window=400_000)
    t, d = 0.0, 0
    for dt, newly, rtt, loss in events:
        t += dt
        d += newly
        cc.on_delivery(t, d, cc.cwnd, rtt, rtt, None)
        for _ in range(loss):
            cc.on_loss(cc.cwnd, 0, cc.cwnd, lost=MSS)
        assert MIN_SEGMENTS * MSS <= cc.cwnd <= 400_000
        assert cc.pacing_rate >= 0 and cc.btl_bw >= 0
        assert cc.budget(t) <= max(cc._burst(), 400_000)


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


def test_a_bottleneck_queue_stays_bounded_where_the_loss_rate_controller_fills_it():
    """A 100-datagram drop-tail queue, six BDPs: the flight cap (two BDPs) keeps at most about one BDP
    queued; the loss-based controller grows until the queue overflows, so it stands nearly full."""
    bbr = run_flows(1, config=BBR, seconds=4.0, seed=2)
    reno = run_flows(1, config=RENO, seconds=4.0, seed=2)
    assert bbr.total_bps > 0.9 * LINK
    assert bbr.queue_mean < 1.5 * BDP_DGRAMS and bbr.queue_drops < 0.005 * bbr.sent, bbr
    assert reno.queue_mean > 3 * BDP_DGRAMS  # what backing off by loss alone leaves standing


@pytest.mark.parametrize("starts", [[0.0, 0.0], [0.0, 2.0]])
def test_two_flows_sharing_a_bottleneck_converge_to_equal_shares(starts):
    r = run_flows(2, config=BBR, starts=starts, seconds=10.0, seed=3, bin_seconds=1.0)
    assert r.total_bps > 0.9 * LINK
    shares = r.shares(since=starts[1])  # from when both run
    assert all(0.4 <= s <= 0.6 for s in shares), (shares, r.bins)
    assert all(0.4 <= s <= 0.6 for s in r.shares(since=8.0))  # and stay there
    assert r.queue_mean < 3 * BDP_DGRAMS  # two flows, each capped at two of its BDPs


@pytest.mark.parametrize("loss", [0.01, 0.05])
def test_cpu_bound_lan_path_keeps_its_rate_under_random_loss(loss):
    """sim.measure_goodput: the endpoints' CPU is the bottleneck (the veth path's model)."""
    cfg = default_config(1472, time_wait=0.001, congestion="bbr")
    clean = measure_goodput(0.0, 1, size=3_000_000, config=cfg)
    lossy = measure_goodput(loss, 1, size=3_000_000, config=cfg)
    assert clean.completed and lossy.completed
    assert lossy.goodput_bps >= 0.9 * clean.goodput_bps, (lossy, clean)

