"""Connection behaviour over simulated links: handshake, close, liveness, flow control, modes, API errors."""

import random

import pytest

from kbypass.proto.faults import FaultyLink
from kbypass.proto.transport import (
    Closed, ConnConfig, Connected, Connection, ConnectionLost, DataReceived, Listener, LocalProtocolError,
    MessageReceived, PeerClosed, Role, State,
)
from kbypass.proto.transport.sim import PairSim

CFG = ConnConfig(max_datagram_size=600, send_buffer=16 * 1024, recv_buffer=16 * 1024, min_rto=0.05,
                 initial_rto=0.2, max_rto=2.0, idle_timeout=5.0, keepalive_interval=1.0, time_wait=4.0)
MSG_CFG = ConnConfig(message_mode=True, max_datagram_size=600, send_buffer=32 * 1024, recv_buffer=32 * 1024,
                     max_message_size=8 * 1024, min_rto=0.05, initial_rto=0.2, max_rto=2.0, idle_timeout=5.0,
                     keepalive_interval=1.0, time_wait=4.0)


class NumberedDrops:
    """Drops the datagrams whose global send index (both directions share the count) is in `drop`."""

    def __init__(self, drop):
        self.drop = set(drop)
        self.count = 0

    def link(self, seed, **kw):
        outer = self
        base = FaultyLink(seed, **kw)
        orig = base.send

        def send(datagram, now):
            i = outer.count
            outer.count += 1
            if i in outer.drop:
                return False
            return orig(datagram, now)

        base.send = send
        return base


def pair(cfg=CFG, seed=1, ab=None, ba=None, **kw):
    ab = FaultyLink(seed, delay=0.01, **kw) if ab is None else ab
    ba = FaultyLink(seed + 1, delay=0.01, **kw) if ba is None else ba
    return PairSim(ab, ba, cfg, seed=seed)


def established(sim):
    """Handshake done, nobody closing: tests set close_when_done when they want the close."""
    sim.client.close_when_done = sim.server.close_when_done = False
    sim.client.close_on_peer_close = sim.server.close_on_peer_close = True
    sim.start()
    assert sim.run(lambda s: s.client.connected and s.server.connected, max_time=30)
    return sim


def test_clean_transfer_closes_both_ends_and_counts():
    sim = pair()
    data = random.Random(1).randbytes(100_000)
    sim.client.stream = data
    sim.start()
    assert sim.run(lambda s: s.both_finished(), max_time=60)
    assert bytes(sim.server.received) == data
    assert sim.client.closed and sim.server.closed and sim.client.lost is None
    assert [type(e) for e in sim.server.events] == [Connected, PeerClosed, Closed]
    st = sim.client.conn.stats
    assert st.bytes_acked == len(data) and st.retransmits == 0
    assert st.rtt_ms == pytest.approx(20.0, abs=1.0)
    assert sim.client.conn.local_id != 0 and sim.client.conn.peer_id == sim.server.conn.local_id
    sim.run(lambda s: s.client.conn.is_closed and s.server.conn.is_closed, max_time=120)
    assert sim.client.conn.next_timer() is None  # TIME_WAIT ended, nothing left to do
    assert sim.listener.reap() == [sim.server.conn]


def test_bidirectional_exchange():
    sim = pair()
    a, b = random.Random(2).randbytes(30_000), random.Random(3).randbytes(40_000)
    sim.client.stream, sim.server.stream = a, b
    sim.start()
    sim.server.close_when_done = True
    assert sim.run(lambda s: s.both_finished(), max_time=60)
    assert bytes(sim.server.received) == a and bytes(sim.client.received) == b


def exchange_with_drops(drop):
    nd = NumberedDrops(drop)
    sim = PairSim(nd.link(1, delay=0.01), nd.link(2, delay=0.01), CFG, seed=3)
    a, b = random.Random(4).randbytes(1500), random.Random(5).randbytes(700)
    sim.client.stream, sim.server.stream = a, b
    sim.start()
    ok = sim.run(lambda s: s.both_finished(), max_time=60)
    return sim, nd, ok, a, b


def test_handshake_and_close_survive_the_loss_of_any_single_datagram():
    sim, nd, ok, a, b = exchange_with_drops(())
    assert ok
    total = nd.count
    assert total >= 8  # SYN, SYN|ACK, ACK/data..., FINs and their ACKs
    for k in range(total):
        sim, _, ok, a, b = exchange_with_drops({k})
        assert ok, f"dropping datagram #{k} stalled the exchange"
        assert sim.client.closed and sim.server.closed, f"drop #{k}: {sim.client.lost} / {sim.server.lost}"
        assert bytes(sim.server.received) == a and bytes(sim.client.received) == b, k


def test_handshake_survives_several_losses_of_the_same_flight():
    for drop in ({0, 1, 2}, {1, 2, 3}, {0, 2, 4, 6}):
        sim, _, ok, a, b = exchange_with_drops(drop)
        assert ok and sim.client.closed and bytes(sim.server.received) == a, drop


def test_unanswered_handshake_is_lost_after_backed_off_retries():
    cfg = ConnConfig(max_datagram_size=600, min_rto=0.05, initial_rto=0.2, max_rto=2.0, idle_timeout=100.0)
    sim = pair(cfg, ba=FaultyLink(9, blackholes=((0, 1e9),)))
    sim.start()
    assert sim.run(lambda s: s.client.lost is not None, max_time=600)
    st = sim.client.conn.stats
    assert "handshake" in sim.client.lost
    assert st.timeouts == cfg.max_syn_retransmits + 1
    assert sim.now == pytest.approx(0.2 + 0.4 + 0.8 + 1.6 + 2.0 * 5, abs=1e-6)  # backed off, capped at max_rto
    assert sim.client.conn.state is State.CLOSED


def test_idle_dead_peer_is_detected_by_keepalive_timeout():
    sim = established(pair())
    t0 = sim.now
    sim.ab.blackholes = sim.ba.blackholes = ((t0, 1e9),)
    assert sim.run(lambda s: s.client.lost is not None and s.server.lost is not None, max_time=t0 + 60)
    assert "idle" in sim.client.lost
    assert CFG.idle_timeout <= sim.now - t0 <= CFG.idle_timeout + CFG.keepalive_interval + 0.1
    assert sim.client.conn.stats.pings_sent >= 3
    assert isinstance(sim.client.events[-1], ConnectionLost)


def test_dead_peer_with_data_in_flight_is_detected():
    cfg = ConnConfig(max_datagram_size=600, min_rto=0.05, initial_rto=0.2, max_rto=0.4, max_retransmits=4,
                     idle_timeout=100.0, keepalive_interval=1.0)
    sim = established(pair(cfg))
    sim.ab.blackholes = ((sim.now, 1e9),)
    sim.client.stream = random.Random(6).randbytes(20_000)
    assert sim.run(lambda s: s.client.lost is not None, max_time=sim.now + 60)
    assert "retransmission timeouts" in sim.client.lost
    assert sim.client.conn.stats.timeouts == 5


def test_keepalive_keeps_a_quiet_connection_alive():
    sim = established(pair())
    t_end = sim.now + 10 * CFG.idle_timeout
    sim.run(lambda s: s.now >= t_end, max_time=t_end + 1)
    assert sim.client.lost is None and sim.server.lost is None
    assert sim.client.conn.state is State.ESTABLISHED
    assert sim.client.conn.stats.pings_sent >= 10


def test_rto_backs_off_while_the_path_is_dead():
    cfg = ConnConfig(max_datagram_size=600, min_rto=0.05, initial_rto=0.2, max_rto=8.0, idle_timeout=200.0,
                     keepalive_interval=10.0)
    sim = established(pair(cfg))
    sim.client.stream = random.Random(7).randbytes(5000)
    sim.run(lambda s: s.client.conn.stats.bytes_acked == 5000, max_time=30)
    base = sim.client.conn.rtt.rto
    sim.ab.blackholes = ((sim.now, 1e9),)
    sim.client.stream += random.Random(8).randbytes(5000)
    rtos, seen = [], 0
    while len(rtos) < 5:
        assert sim.step() and sim.now < 100, "connection stopped retransmitting"
        t = sim.client.conn.stats.timeouts
        if t > seen:
            seen = t
            rtos.append(sim.client.conn.rtt.rto)
    assert rtos == [pytest.approx(base * 2 ** (i + 1)) for i in range(5)]
    assert sim.client.conn.stats.retransmits >= 4  # one per expiry (the 5th goes out on the next step)


def test_srtt_converges_on_a_fixed_delay_link():
    sim = pair(ab=FaultyLink(1, delay=0.02), ba=FaultyLink(2, delay=0.02))
    sim.client.stream = random.Random(9).randbytes(300_000)
    sim.start()
    assert sim.run(lambda s: s.both_finished(), max_time=60)
    rtt = sim.client.conn.rtt
    assert rtt.samples > 15  # one ACK per window here: the whole window arrives at once
    assert rtt.srtt == pytest.approx(0.040, abs=0.001)
    assert rtt.rto == pytest.approx(rtt.srtt + max(CFG.min_rto, 4 * rtt.rttvar))  # (min_rto floors the margin)


def test_message_mode_preserves_boundaries_under_loss():
    rng = random.Random(5)
    msgs = [rng.randbytes(rng.choice([1, 2, 100, 573, 574, 575, 1200, 5000, 8192])) for _ in range(120)]
    sim = pair(MSG_CFG, loss=0.1, reorder=0.1, duplicate=0.05)
    sim.client.messages = msgs
    sim.start()
    assert sim.run(lambda s: s.both_finished(), max_time=300)
    assert sim.server.received_messages == msgs
    assert sim.server.peak_recv_buffer <= MSG_CFG.recv_buffer


def test_message_mode_mismatch_is_refused_and_counted():
    sim = PairSim(FaultyLink(1, delay=0.01), FaultyLink(2, delay=0.01), MSG_CFG, CFG, seed=1)
    sim.start()
    sim.run(lambda s: s.client.lost is not None, max_time=600)
    assert sim.listener.drops["mode_mismatch"] >= 1 and sim.server.conn is None
    assert not sim.client.connected


def test_flow_control_stops_a_fast_sender_until_the_receiver_reads():
    sim = pair()
    data = random.Random(10).randbytes(200_000)
    sim.client.stream = data
    sim.server.reads = False
    sim.start()
    sim.run(lambda s: s.now > 30, max_time=31)
    c, s = sim.client.conn, sim.server.conn
    # the receiver never read: at most its buffer was accepted and acknowledged
    assert c.stats.bytes_acked <= CFG.recv_buffer
    assert c.stats.bytes_acked >= CFG.recv_buffer - CFG.mss
    assert s.rbuf.unread <= CFG.recv_buffer and s.rbuf.window < CFG.mss
    assert sim.server.peak_recv_buffer <= CFG.recv_buffer
    assert sim.client.peak_send_buffer <= CFG.send_buffer
    assert sim.client.lost is None  # zero-window probes keep it alive
    assert c.stats.pings_sent > 0
    sim.server.reads = True
    assert sim.run(lambda s: s.both_finished(), max_time=200)
    assert bytes(sim.server.received) == data


def test_abort_resets_the_peer():
    sim = established(pair())
    sim.client.conn.abort(sim.now)
    sim.run(lambda s: s.server.lost is not None, max_time=sim.now + 2)
    assert sim.server.lost == "reset by peer"
    assert sim.client.conn.state is State.CLOSED


def test_local_misuse_raises_local_protocol_error():
    sim = established(pair())
    c = sim.client.conn
    with pytest.raises(LocalProtocolError, match="byte-stream mode"):
        c.send_message(b"x", sim.now)
    assert c.send(random.Random(11).randbytes(100_000), sim.now) == CFG.send_buffer  # partial accept, documented
    assert c.send(b"more", sim.now) == 0 and c.send_space == 0
    c.close(sim.now)
    with pytest.raises(LocalProtocolError, match="closing or closed"):
        c.send(b"late", sim.now)
    with pytest.raises(LocalProtocolError):
        c.close(sim.now)
    m = established(pair(MSG_CFG))
    mc = m.client.conn
    with pytest.raises(LocalProtocolError, match="max_message_size"):
        mc.send_message(bytes(MSG_CFG.max_message_size + 1), m.now)
    with pytest.raises(LocalProtocolError, match="1\\.\\."):
        mc.send_message(b"", m.now)
    with pytest.raises(LocalProtocolError, match="use send_message"):
        mc.send(b"x", m.now)
    n = 0
    while mc.send_message(bytes(MSG_CFG.max_message_size), m.now):
        n += 1
    assert n == MSG_CFG.send_buffer // MSG_CFG.max_message_size  # then False: all or nothing


def test_bad_config_is_refused_with_the_fix():
    with pytest.raises(LocalProtocolError, match="max_datagram_size"):
        ConnConfig(max_datagram_size=20)
    with pytest.raises(LocalProtocolError, match="two segments"):
        ConnConfig(recv_buffer=100)
    with pytest.raises(LocalProtocolError, match="idle_timeout"):
        ConnConfig(idle_timeout=1, keepalive_interval=2)
    with pytest.raises(LocalProtocolError, match="max_window"):
        ConnConfig(send_buffer=64 * 1024, max_window=128 * 1024)
    with pytest.raises(LocalProtocolError, match="max_window"):
        ConnConfig(max_window=100)
    assert ConnConfig(send_buffer=64 * 1024).window_limit == 32 * 1024  # half: room to send past a hole
    assert ConnConfig(send_buffer=64 * 1024, max_window=48 * 1024).window_limit == 48 * 1024


def test_garbage_from_the_wire_is_counted_never_raised():
    sim = established(pair())
    s = sim.server.conn
    rng = random.Random(1)
    for _ in range(300):
        s.receive_datagram(rng.randbytes(rng.randrange(0, 200)), sim.now)
    # well-formed datagrams for other connections
    stranger = Connection(Role.CLIENT, CFG, sim.now, rng=random.Random(99))
    stranger.connect(sim.now)
    for d in stranger.datagrams_to_send(sim.now):
        s.receive_datagram(d, sim.now)
    drops = s.stats.drops
    assert drops["too_short"] + drops["bad_crc"] == 300
    assert drops["wrong_connection"] == 1
    data = random.Random(12).randbytes(50_000)
    sim.client.stream = data
    sim.client.close_when_done = True
    assert sim.run(lambda s: s.both_finished(), max_time=60)
    assert bytes(sim.server.received) == data


def test_listener_routes_retransmitted_syn_to_the_same_connection_and_counts_strays():
    lst = Listener(CFG, rng=random.Random(1), backlog=2)
    c = Connection(Role.CLIENT, CFG, 0.0, rng=random.Random(2))
    c.connect(0.0)
    (syn,) = c.datagrams_to_send(0.0)
    s1 = lst.receive_datagram(syn, 0.0)
    s2 = lst.receive_datagram(syn, 0.5)  # the SYN again: our SYN|ACK was lost
    assert s1 is s2 and lst.accept() is s1 and lst.accept() is None
    assert len(s1.datagrams_to_send(0.5)) == 1  # answered again
    assert lst.receive_datagram(b"junk" * 20, 0.0) is None and lst.drops["bad_crc"] == 1
    other = Connection(Role.SERVER, CFG, 0.0)
    stray = Connection(Role.CLIENT, CFG, 0.0, rng=random.Random(3))
    stray.connect(0.0)
    other.receive_datagram(stray.datagrams_to_send(0.0)[0], 0.0)
    assert lst.receive_datagram(other.datagrams_to_send(0.0)[0], 0.0) is None
    assert lst.drops["unknown_connection"] == 1
    # backlog: two un-accepted connections fill it
    for seed in (4, 5, 6):
        k = Connection(Role.CLIENT, CFG, 0.0, rng=random.Random(seed))
        k.connect(0.0)
        lst.receive_datagram(k.datagrams_to_send(0.0)[0], 0.0)
    assert lst.drops["listener_full"] == 1


def test_events_are_frozen_and_data_is_coalesced():
    sim = established(pair())
    sim.server.reads = False
    sim.client.stream = random.Random(13).randbytes(5000)
    sim.client.close_when_done = False
    sim.run(lambda s: s.client.conn.stats.bytes_acked == 5000, max_time=30)
    ev = sim.server.conn.next_event()
    assert isinstance(ev, DataReceived) and len(ev.data) == 5000  # ten segments, one event
    with pytest.raises(Exception):
        ev.data = b""
    assert sim.server.conn.next_event() is None
    assert not isinstance(ev, MessageReceived)


def test_listener_serves_two_clients_at_once():
    """Two clients share one listener (one 'address'); every datagram reaches the right connection."""
    from kbypass.proto.transport import wire

    lst = Listener(CFG, rng=random.Random(10))
    clients = [Connection(Role.CLIENT, CFG, 0.0, rng=random.Random(20 + i)) for i in range(2)]
    payload = [random.Random(30 + i).randbytes(40_000) for i in range(2)]
    sent = [0, 0]
    got: dict[int, bytearray] = {}
    servers = []
    link_up = FaultyLink(1, delay=0.005, loss=0.05, reorder=0.1)
    link_down = FaultyLink(2, delay=0.005, loss=0.05, reorder=0.1)
    now = 0.0
    for c in clients:
        c.connect(now)
    for _ in range(100_000):
        for i, c in enumerate(clients):
            while (ev := c.next_event()) is not None:
                pass
            if c.state is State.ESTABLISHED and sent[i] < len(payload[i]):
                sent[i] += c.send(payload[i][sent[i]:], now)
            for d in c.datagrams_to_send(now):
                link_up.send(d, now)
        while (s := lst.accept()) is not None:
            servers.append(s)
        for s in servers:
            while (ev := s.next_event()) is not None:
                if isinstance(ev, DataReceived):
                    got.setdefault(s.peer_id, bytearray()).extend(ev.data)
        for d in lst.datagrams_to_send(now):
            link_down.send(d, now)
        if all(len(got.get(c.local_id, b"")) == len(p) for c, p in zip(clients, payload)):
            break
        ts = [t for t in [c.next_timer() for c in clients] + [lst.next_timer(), link_up.next_time(),
              link_down.next_time()] if t is not None]
        now = max(now, min(ts))
        for d in link_up.deliver(now):
            lst.receive_datagram(d, now)
        for d in link_down.deliver(now):
            dst = wire.decode(d).dst_id
            for c in clients:
                if c.local_id == dst:
                    c.receive_datagram(d, now)
        for c in clients:
            c.handle_timer(now)
        lst.handle_timer(now)
    assert len(servers) == 2 and len(lst.connections) == 2
    for c, p in zip(clients, payload):
        assert bytes(got[c.local_id]) == p


def test_sack_blocks_repeat_recent_runs_so_a_lost_ack_hides_nothing():
    """RFC 2018: the latest arrival's block first, then the blocks of the arrivals before it."""
    from kbypass.proto.transport.recvbuf import ReceiveBuffer

    rb = ReceiveBuffer(1 << 20, False)
    seg = 100
    for start in (1, 2, 3, 5, 6, 8, 9, 10, 12, 13, 15, 16):  # holes at 0, 4, 7, 11, 14
        rb.accept(start * seg, bytes(seg), False, False)
    runs = [(1, 4), (5, 7), (8, 11), (12, 14), (15, 17)]
    assert rb.sack_blocks(4) == [(a * seg, b * seg) for a, b in (runs[4], runs[3], runs[2], runs[1])]
    assert rb.sack_blocks(16) == [(a * seg, b * seg) for a, b in (runs[4], runs[3], runs[2], runs[1], runs[0])]
    rb.accept(4 * seg, bytes(seg), False, False)  # fills a hole, merging two runs: it is now the latest
    assert rb.sack_blocks(2) == [(1 * seg, 7 * seg), (15 * seg, 17 * seg)]
