"""NewReno AIMD: slow start, congestion avoidance, one cut per loss event, timeout to one segment."""

from kbypass.proto.transport.congestion import NewReno

MSS = 1000


def test_slow_start_doubles_per_window_then_linear():
    cc = NewReno(MSS, initial_window=4 * MSS)
    cc.on_ack(4 * MSS, 4 * MSS)
    assert cc.cwnd == 8 * MSS
    cc.ssthresh = 8 * MSS
    cc.on_ack(8 * MSS, 12 * MSS)  # one whole window acked in avoidance: +1 MSS
    assert cc.cwnd == 9 * MSS
    cc.on_ack(4 * MSS, 16 * MSS)
    assert cc.cwnd == 9 * MSS  # half a window: not yet


def test_loss_halves_flight_once_per_event():
    cc = NewReno(MSS, initial_window=20 * MSS)
    assert cc.on_loss(flight=20 * MSS, snd_una=0, snd_nxt=20 * MSS)
    assert cc.cwnd == cc.ssthresh == 10 * MSS and cc.in_recovery
    assert not cc.on_loss(flight=15 * MSS, snd_una=5 * MSS, snd_nxt=25 * MSS)  # same window: no 2nd cut
    assert cc.cwnd == 10 * MSS
    cc.on_ack(5 * MSS, 10 * MSS)  # partial ack: still recovering, cwnd held
    assert cc.in_recovery and cc.cwnd == 10 * MSS
    cc.on_ack(10 * MSS, 20 * MSS)  # full ack
    assert not cc.in_recovery
    assert cc.on_loss(flight=10 * MSS, snd_una=20 * MSS, snd_nxt=30 * MSS)  # a new event cuts again
    assert cc.cwnd == 5 * MSS
    assert cc.loss_events == 2


def test_floor_is_two_segments():
    cc = NewReno(MSS, initial_window=2 * MSS)
    cc.on_loss(flight=MSS, snd_una=0, snd_nxt=MSS)
    assert cc.cwnd == 2 * MSS


def test_timeout_collapses_to_one_segment_and_slow_starts():
    cc = NewReno(MSS, initial_window=16 * MSS)
    cc.on_timeout(flight=16 * MSS, snd_nxt=16 * MSS)
    assert cc.cwnd == MSS and cc.ssthresh == 8 * MSS and not cc.in_recovery
    cc.on_ack(MSS, MSS)
    assert cc.cwnd == 2 * MSS  # slow start resumes at once
    assert not cc.on_loss(flight=2 * MSS, snd_una=MSS, snd_nxt=16 * MSS)  # same window as the timeout


def test_max_window_caps_growth():
    cc = NewReno(MSS, initial_window=4 * MSS, max_window=6 * MSS)
    for i in range(10):
        cc.on_ack(4 * MSS, (i + 1) * 4 * MSS)
    assert cc.cwnd == 6 * MSS


# ---------------------------------------------------------------- LossTolerantReno (what connections use)
from kbypass.proto.transport.congestion import LossTolerantReno  # noqa: E402


def _deliver(cc, segments, una):
    for _ in range(segments):
        una += MSS
        cc.on_ack(MSS, una)
    return una


def test_isolated_random_losses_do_not_cut_and_growth_goes_on():
    cc = LossTolerantReno(MSS, initial_window=4 * MSS, max_window=200 * MSS)
    una = 0
    for _ in range(30):  # 1% loss: one segment in a hundred
        una = _deliver(cc, 99, una)
        before = cc.cwnd
        assert not cc.on_loss(flight=cc.cwnd, snd_una=una, snd_nxt=una + cc.cwnd, lost=MSS)
        assert cc.cwnd == before and not cc.in_recovery
    assert cc.cwnd == 200 * MSS and cc.loss_events == 0 and cc.tolerated == 30
    assert 0.005 < cc.loss_rate < 0.02


def test_a_burst_of_losses_cuts_by_beta_0_7_once_per_episode():
    cc = LossTolerantReno(MSS, initial_window=100 * MSS, max_window=200 * MSS)
    una = _deliver(cc, 300, 0)
    cwnd = cc.cwnd
    cuts = [cc.on_loss(flight=cwnd, snd_una=una, snd_nxt=una + cwnd, lost=MSS) for _ in range(20)]
    assert cuts.count(True) == 1  # one episode, one cut, however many losses it has
    assert cc.cwnd == cc.ssthresh == int(cwnd * 0.7) and cc.in_recovery
    una = _deliver(cc, cwnd // MSS, una)  # the full ack ends the episode
    assert not cc.in_recovery
    assert cc.on_loss(flight=cc.cwnd, snd_una=una, snd_nxt=una + cc.cwnd, lost=MSS)  # still lossy: cut again


def test_a_cut_never_raises_the_window_when_flight_exceeds_cwnd():
    """Behind a standing hole FlightSize (SACKed bytes included) can be far above cwnd."""
    cc = LossTolerantReno(MSS, initial_window=10 * MSS, max_window=500 * MSS)
    assert cc.on_loss(flight=10 * MSS, snd_una=0, snd_nxt=10 * MSS, lost=20 * MSS)  # a burst: cut
    assert cc.cwnd == 7 * MSS
    cc.on_ack(10 * MSS, 10 * MSS)  # episode over
    assert cc.on_loss(flight=300 * MSS, snd_una=10 * MSS, snd_nxt=310 * MSS, lost=MSS)
    assert cc.cwnd == int(7 * MSS * 0.7)  # 0.7 of cwnd, not of the 300-segment flight


def test_floor_and_timeout_as_newreno():
    cc = LossTolerantReno(MSS, initial_window=2 * MSS)
    for _ in range(5):
        cc.on_loss(flight=2 * MSS, snd_una=0, snd_nxt=2 * MSS, lost=2 * MSS)
    assert cc.cwnd == 2 * MSS
    cc.on_timeout(flight=16 * MSS, snd_nxt=16 * MSS)
    assert cc.cwnd == MSS
