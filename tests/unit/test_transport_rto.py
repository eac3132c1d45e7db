"""Random loss is repaired by SACK/RACK, not by retransmission timeouts, on a path whose RTT is steady and
near the RTO floor (the testbed in wakeup mode: RTTs of 5-20 ms against min_rto 20 ms). Before: the RTO
was max(SRTT + 4 RTTVAR, min_rto) with RTTVAR decayed to nothing, and timed from the last ack that moved,
so a hole whose repair takes two round trips (one to detect the loss, one for the retransmission, queued
behind the flight) timed out: 14-29 RTOs in 4 s at 1% loss, each restarting the window from one segment.
Simulated time only, seeded."""

import pytest

from kbypass.proto.transport import ConnConfig, wire
from kbypass.proto.transport.sim_flows import run_flows
from tests.unit.test_transport_sack import _established_pair

PATH = ConnConfig(max_datagram_size=1472, send_buffer=1 << 20, recv_buffer=1 << 20, max_window=1 << 19,
                  initial_rto=0.25, min_rto=0.02, max_rto=2.0, congestion="bbr")


@pytest.mark.parametrize("delay,loss", [(0.005, 0.01), (0.008, 0.01)])
def test_random_loss_on_a_steady_rtt_near_min_rto_causes_no_timeouts(delay, loss):
    r = run_flows(1, loss=loss, config=PATH, seconds=4.0, seed=1, delay=delay)
    assert r.random_lost > 50  # the loss did bite
    assert r.timeouts == [0], r  # before: [14] and [29]


def test_a_retransmission_of_the_first_unacked_segment_gets_a_whole_rto():
    """Timed from the last ack that moved, the RTO would fire before the retransmission's answer could
    come back (Linux re-arms it the same way)."""
    cfg = ConnConfig(max_datagram_size=1472, min_rto=0.02, initial_rto=0.25, congestion="reno")
    client, lst = _established_pair(cfg)
    client.send(bytes(1426 * 8), 0.010)
    data = client.datagrams_to_send(0.010)
    head = wire.decode(data[0]).seq
    lst.receive_datagrams(data[1:], 0.015)  # the first is lost: SACKs of the rest say so
    client.receive_datagrams(lst.datagrams_to_send(0.015), 0.020)
    resent = [wire.decode(d).seq for d in client.datagrams_to_send(0.020)]
    assert resent[:1] == [head]
    assert client._rto_deadline == pytest.approx(0.020 + client.rtt.rto)


def test_an_overdue_rto_does_not_fire_after_the_acks_that_found_the_loss():
    """The sender's process slept past the RTO (a busy machine); when it wakes, the ACKs waiting for it say
    the first segment was lost and the rest arrived. SACK recovery retransmits it: no timeout, no window
    cut. Before, the endpoint's turn (receive, then timers, then send) fired the RTO in between."""
    cfg = ConnConfig(max_datagram_size=1472, min_rto=0.02, initial_rto=0.25, congestion="reno")
    client, lst = _established_pair(cfg)
    client.send(bytes(1426 * 8), 0.010)
    data = client.datagrams_to_send(0.010)
    head = wire.decode(data[0]).seq
    assert client.next_timer() < 0.040  # the RTO (or the probe before it) is due while we sleep
    lst.receive_datagrams(data[1:], 0.012)
    acks = lst.datagrams_to_send(0.012)
    client.receive_datagrams(acks, 0.060)  # woken at last: the ACKs first, as the endpoint does
    client.handle_timer(0.060)
    assert client.stats.timeouts == 0
    assert [wire.decode(d).seq for d in client.datagrams_to_send(0.060)][:1] == [head]
