"""ConnConfig.ack_delay: an ACK for in-order data alone waits (a timer in next_timer) until ack_bytes arrived or
the delay passed; anything else the ACK tells (a hole, a filled hole, a duplicate, a ping, a window the peer
may need) goes at once; 0 keeps one ACK per batch; the sender's tail loss probe allows for the delay."""

from __future__ import annotations

import dataclasses

import pytest

from kbypass.proto.transport import LocalProtocolError, wire
from kbypass.proto.transport.sim import measure_goodput
from tests.unit.test_transport_ack_early import MSS_CFG, connected, data_datagrams

DELAY = 0.002
CFG = dataclasses.replace(MSS_CFG, ack_delay=DELAY, ack_bytes=8 * MSS_CFG.mss, initial_window=64 * 1024)


def acks(conn, now: float) -> list:
    return [wire.decode(d) for d in conn.datagrams_to_send(now)]


def test_in_order_data_waits_for_the_timer_then_goes():
    client, server = connected(CFG)
    first, second = data_datagrams(client, 2)
    server.receive_datagram(first, 0.010)
    assert acks(server, 0.010) == []  # in-order data alone: the ACK waits
    assert server.next_timer() == pytest.approx(0.010 + DELAY)
    server.receive_datagram(second, 0.011)
    assert acks(server, 0.011) == []  # the deadline is the first arrival's, not moved by the second
    assert server.next_timer() == pytest.approx(0.010 + DELAY)
    server.handle_timer(0.010 + DELAY)
    (ack,) = acks(server, 0.010 + DELAY)
    assert ack.ack == 2 * CFG.mss
    assert server.next_timer() != pytest.approx(0.010 + DELAY)  # the timer went with the ACK


def test_ack_bytes_sends_at_once():
    client, server = connected(CFG)
    for d in data_datagrams(client, 8):
        server.receive_datagram(d, 0.010)
    (ack,) = acks(server, 0.010)
    assert ack.ack == 8 * CFG.mss


def test_a_hole_and_its_repair_are_acknowledged_at_once():
    client, server = connected(CFG)
    first, second, third = data_datagrams(client, 3)
    server.receive_datagram(first, 0.010)
    assert acks(server, 0.010) == []
    server.receive_datagram(third, 0.011)  # out of order: the SACK goes now
    (ack,) = acks(server, 0.011)
    assert ack.ack == CFG.mss and ack.sacks
    server.receive_datagram(second, 0.012)  # fills the hole: the sender's recovery waits on this
    (ack,) = acks(server, 0.012)
    assert ack.ack == 3 * CFG.mss and not ack.sacks


def test_a_duplicate_is_acknowledged_at_once():
    client, server = connected(CFG)
    (first,) = data_datagrams(client, 1)
    server.receive_datagram(first, 0.010)
    assert acks(server, 0.010) == []
    server.handle_timer(0.010 + DELAY)
    assert len(acks(server, 0.010 + DELAY)) == 1
    server.receive_datagram(first, 0.020)  # our ACK may have been lost: say so again, now
    assert len(acks(server, 0.020)) == 1


def test_a_ping_is_answered_at_once():
    client, server = connected(CFG)
    (first,) = data_datagrams(client, 1)
    server.receive_datagram(first, 0.010)
    client._ping_due = True
    (ping,) = [d for d in client.datagrams_to_send(0.010) if wire.decode(d).flags & wire.PING]
    server.receive_datagram(ping, 0.010)
    assert len(acks(server, 0.010)) == 1


def test_a_window_update_waits_only_while_the_peer_sees_half_the_buffer():
    cfg = dataclasses.replace(CFG, ack_bytes=0)
    client, server = connected(cfg)
    for d in data_datagrams(client, 4):
        server.receive_datagram(d, 0.010)
    server.next_event()  # Connected
    server.next_event()  # the data: the window opens by 4 segments, the peer still sees most of the buffer
    assert acks(server, 0.010) == []
    client.send(bytes(40 * cfg.mss), 0.010)
    client.cc.cwnd = 1 << 20
    out = [d for d in client.datagrams_to_send(0.010) if wire.decode(d).payload]
    assert sum(len(wire.decode(d).payload) for d in out) > cfg.recv_buffer // 2
    for d in out:
        server.receive_datagram(d, 0.011)
    while server.next_event() is not None:  # read: more than half the buffer was closed, the update goes now
        pass
    assert len(acks(server, 0.011)) == 1


def test_no_delay_acknowledges_each_batch():
    client, server = connected(dataclasses.replace(CFG, ack_delay=0.0))
    (first,) = data_datagrams(client, 1)
    server.receive_datagram(first, 0.010)
    assert len(acks(server, 0.010)) == 1


def test_the_tail_probe_allows_for_the_peers_delay():
    client, _ = connected(CFG)
    plain, _ = connected(dataclasses.replace(CFG, ack_delay=0.0))
    for c in (client, plain):
        c.rtt.sample(0.004)
    assert client._pto() == pytest.approx(plain._pto() + DELAY)


def test_bad_delay_is_refused():
    with pytest.raises(LocalProtocolError, match="ack_delay"):
        dataclasses.replace(MSS_CFG, ack_delay=-1.0)
    with pytest.raises(LocalProtocolError, match="below min_rto"):
        dataclasses.replace(MSS_CFG, ack_delay=MSS_CFG.min_rto)


@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_a_transfer_with_delayed_acks_completes_without_timeouts(loss):
    """In the simulator (the real timers, a lossy link): every byte arrives, no RTO."""
    cfg = dataclasses.replace(CFG, ack_delay=0.001, ack_bytes=16 * MSS_CFG.mss)
    report = measure_goodput(loss, seed=3, size=400_000, config=cfg)
    assert report.completed and report.timeouts == 0
