"""RFC 6298 estimator arithmetic, clamps and backoff."""

import pytest

from kbypass.proto.transport.rtt import RttEstimator


def test_first_sample_sets_srtt_and_half_rttvar():
    e = RttEstimator(initial_rto=1.0, min_rto=0.01, max_rto=60)
    assert e.rto == 1.0 and e.srtt is None
    e.sample(0.1)
    assert e.srtt == pytest.approx(0.1)
    assert e.rttvar == pytest.approx(0.05)
    assert e.rto == pytest.approx(0.1 + 4 * 0.05)


def test_second_sample_uses_alpha_and_beta():
    e = RttEstimator(min_rto=0.01)
    e.sample(0.1)
    e.sample(0.2)
    assert e.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)  # RTTVAR updated with the old SRTT
    assert e.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)
    assert e.rto == pytest.approx(e.srtt + 4 * e.rttvar)


def test_converges_on_a_constant_rtt_and_min_rto_floors_the_variance_term():
    e = RttEstimator(min_rto=0.2)
    for _ in range(200):
        e.sample(0.03)
    assert e.srtt == pytest.approx(0.03, abs=1e-6)
    assert e.rttvar < 1e-6
    # SRTT + max(G, ~0) would be 0.031: min_rto is the least margin above SRTT a retransmission gets (Linux's
    # rule), not just a floor of the sum, so a steady RTT near min_rto does not make every repair an RTO
    assert e.rto == pytest.approx(0.23, abs=1e-6)


def test_backoff_doubles_up_to_max_and_a_sample_cancels_it():
    e = RttEstimator(initial_rto=1.0, min_rto=0.2, max_rto=5.0)
    seen = []
    for _ in range(5):
        e.backoff()
        seen.append(e.rto)
    assert seen == [2.0, 4.0, 5.0, 5.0, 5.0]
    e.sample(0.05)
    assert e.rto == pytest.approx(0.05 + 0.2)


def test_bad_bounds_refused_and_negative_sample_ignored():
    with pytest.raises(ValueError):
        RttEstimator(initial_rto=0.1, min_rto=0.2)
    e = RttEstimator()
    e.sample(-1)
    assert e.srtt is None and e.samples == 0
