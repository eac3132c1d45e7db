"""SACK information enough for a flight with tens of holes: at 5% random loss a 1 MiB flight of 1426-byte
segments has ~37 holes, and an ACK that reported only 16 of them made the sender retransmit the received
ranges it was not told of (SACKed data above them: "lost"), 5-6 times what was dropped. Simulated time
only, seeded."""

from kbypass.proto.transport import Connection, ConnConfig, Role, wire
from kbypass.proto.transport.listener import Listener
from kbypass.proto.transport.sim import measure_goodput
from kbypass.xfer.endpoint import default_config


def _established_pair(cfg: ConnConfig):
    """A client Connection and a Listener with the handshake done by hand (no link: nothing is lost)."""
    client, lst = Connection(Role.CLIENT, cfg), Listener(cfg)
    client.connect(0.0)
    for _ in range(3):
        lst.receive_datagrams(client.datagrams_to_send(0.0), 0.0)
        client.receive_datagrams(lst.datagrams_to_send(0.0), 0.0)
    assert lst.accept() is not None
    return client, lst


def test_a_pure_ack_reports_every_received_range_of_a_flight_with_forty_holes():
    cfg = default_config(1472, time_wait=0.001, congestion="reno", initial_window=1426 * 200)  # one burst
    client, lst = _established_pair(cfg)
    client.send(bytes(1426 * 200), 0.001)
    data = client.datagrams_to_send(0.001)
    assert len(data) >= 120
    flight_end = max(wire.decode(d).seq for d in data)
    dropped = {wire.decode(d).seq for i, d in enumerate(data) if i % 3 == 1}  # one in three: 40 holes and more
    lst.receive_datagrams([d for i, d in enumerate(data) if i % 3 != 1], 0.002)
    acks = lst.datagrams_to_send(0.002)
    ranges = sum(1 for i in range(len(data)) if i % 3 == 1 and i + 1 < len(data))
    assert ranges >= 40 and len(wire.decode(acks[-1]).sacks) == ranges
    client.receive_datagrams(acks, 0.003)
    resent = {p.seq for p in map(wire.decode, client.datagrams_to_send(0.003)) if p.payload and p.seq <= flight_end}
    assert resent and resent <= dropped  # holes repaired, nothing the receiver holds sent again


def test_5pct_loss_on_a_fast_lan_path_retransmits_what_was_lost_not_more():
    """The C data path's cost per datagram (3 us), batches of 256: the flight is the 1 MiB window."""
    cfg = default_config(1472, time_wait=0.001, congestion="bbr")
    r = measure_goodput(0.05, 1, size=12_000_000, config=cfg, cost=3e-6, batch=256)
    assert r.completed and r.data_lost > 300
    # with 16 blocks an ACK: 3,746 retransmissions for 643 drops, 3,103 of them of data the peer had
    assert r.retransmits <= r.data_lost + r.acks_lost + r.tail_probes, r
    assert r.duplicates <= 0.02 * r.data_lost, r
    assert r.timeouts == 0, r


def test_a_full_rx_ring_drops_what_arrives_beyond_it_and_each_drop_is_resent_once():
    """measure_goodput's `ring`: the receiver's RX ring holds 32 datagrams; a flight of hundreds overflows
    it in bursts (tail drop, not random loss), and SACK repairs each hole with one retransmission."""
    cfg = default_config(1472, time_wait=0.001)
    r = measure_goodput(0.0, 1, size=2_000_000, config=cfg, ring=32)
    assert r.completed and r.ring_drops > 100 and r.data_lost == 0
    assert r.retransmits == r.ring_drops and r.duplicates == 0 and r.timeouts == 0, r
