"""Regressions of the transport review: each test names the defect it pins down.

  * sendall() after the connection died says why (TransferError), not "cannot send in state CLOSED".
  * The echoed timestamp follows RFC 7323 4.3: a late duplicate or data above a hole never sets it.
  * Message mode: a message larger than the peer's receive buffer fails both ends instead of hanging.
  * A reset in TIME_WAIT is ignored (RFC 1337): no ConnectionLost after Closed.
  * ConnConfig refuses values that stall or misbehave.
  * A server learns its peer only from a SYN its listener took.
  * recv(max_bytes < 1) is a usage error, not an empty read that looks like the end of the stream.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from kbypass.errors import UsageError
from kbypass.proto.faults import FaultyLink
from kbypass.port.batch import DESC, Batch
from kbypass.proto.transport import (
    Closed, ConnConfig, Connected, Connection, ConnectionLost, Listener, LocalProtocolError, PeerClosed, Role,
    State, wire,
)
from kbypass.proto.transport.sim import PairSim
from kbypass.xfer import UdpEncap
from kbypass.xfer.endpoint import TransferError, TransportEndpoint
from tests.kb import needs_c

CFG = ConnConfig(max_datagram_size=600, send_buffer=16 * 1024, recv_buffer=16 * 1024, min_rto=0.05,
                 initial_rto=0.2, max_rto=2.0, idle_timeout=5.0, keepalive_interval=1.0, time_wait=4.0)
MAC_C, MAC_S, MAC_X = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:09"
IP_C, IP_S, IP_X = "10.9.0.1", "10.9.0.2", "10.9.0.9"
PORT_C, PORT_S = 5000, 7000


def handshake(c: Connection, s: Connection, t: float = 0.0, rtt: float = 0.02) -> float:
    """Connect c to s by hand, each hop taking rtt/2; returns the time it ends."""
    if c.state is State.IDLE:
        c.connect(t)
    for _ in range(3):
        for d in c.datagrams_to_send(t):
            s.receive_datagram(d, t + rtt / 2)
        t += rtt / 2
        for d in s.datagrams_to_send(t):
            c.receive_datagram(d, t + rtt / 2)
        t += rtt / 2
    assert c.state is State.ESTABLISHED and s.state is State.ESTABLISHED
    return t


def pair(ccfg=CFG, scfg=None, seed=1) -> tuple[Connection, Connection]:
    return (Connection(Role.CLIENT, ccfg, 0.0, rng=random.Random(seed)),
            Connection(Role.SERVER, scfg or ccfg, 0.0, rng=random.Random(seed + 1)))


class FakePort:
    """A port that hands out prepared batches of frames and records what is transmitted."""

    mode = "test"

    def __init__(self) -> None:
        self.incoming: list[list[bytes]] = []
        self.sent: list[bytes] = []

    def receive(self, n: int) -> Batch:
        frames = self.incoming.pop(0) if self.incoming else []
        mem = np.zeros(2048 * max(1, len(frames)), np.uint8)
        descs = np.zeros(len(frames), DESC)
        for i, f in enumerate(frames):
            mem[i * 2048:i * 2048 + len(f)] = np.frombuffer(f, np.uint8)
            descs[i] = (i * 2048, len(f), 0)
        return Batch(descs, mem, frame_size=2048)

    def free(self, batch) -> None:
        pass

    def wait(self, timeout: float) -> None:
        pass

    def alloc(self, n: int) -> Batch:
        descs = np.zeros(n, DESC)
        descs["addr"] = np.arange(n) * 2048
        return Batch(descs, np.zeros(2048 * n, np.uint8), frame_size=2048)

    def transmit(self, batch: Batch) -> int:
        self.sent += [batch.tobytes(i) for i in range(len(batch))]
        return len(batch)

    def close(self) -> None:
        pass


def client_endpoint(conn: Connection, port=None) -> TransportEndpoint:
    enc = UdpEncap(MAC_C, IP_C, PORT_C)
    enc.set_peer(IP_S, PORT_S, MAC_S)
    ep = TransportEndpoint(port or FakePort(), enc, config=conn.config, own_port=False)
    ep.conn = conn
    ep.connected_at = 0.0
    return ep


# ---------------------------------------------------------------------------- 1. sendall hides the reason
@pytest.mark.parametrize("collected", [False, True], ids=["event_unread", "event_collected"])
@pytest.mark.parametrize("message_mode", [False, True], ids=["stream", "messages"])
def test_sendall_after_a_reset_raises_transfer_error_naming_the_reason(message_mode, collected):
    cfg = ConnConfig(message_mode=message_mode, max_datagram_size=600, send_buffer=16 * 1024,
                     recv_buffer=16 * 1024, max_message_size=4096) if message_mode else CFG
    c, s = pair(cfg)
    t = handshake(c, s)
    s.abort(t)
    for d in s.datagrams_to_send(t):
        c.receive_datagram(d, t + 0.01)
    assert c.is_closed and c.lost_reason == "reset by peer"
    ep = client_endpoint(c)
    if collected:
        ep._collect()  # the endpoint saw ConnectionLost already
        assert ep.lost == "reset by peer"
    with pytest.raises(TransferError, match="reset by peer"):
        ep.sendall(bytes(1000))


# ---------------------------------------------------------------------------- 2. the echoed timestamp
def test_a_late_duplicate_of_an_old_segment_does_not_inflate_the_rtt_sample():
    """The reviewer's case: a network duplicate of a segment sent 4 s earlier arrives in the same batch as
    new data. Echoing its tsval gave the sender an RTT sample of 4 s and an RTO to match."""
    c, s = pair()
    handshake(c, s)
    c.send(b"a" * 100, 1.0)
    old = c.datagrams_to_send(1.0)
    s.receive_datagrams(old, 1.01)
    for d in s.datagrams_to_send(1.01):
        c.receive_datagram(d, 1.02)
    rto = c.rtt.rto
    c.send(b"b" * 100, 5.0)
    new = c.datagrams_to_send(5.0)
    s.receive_datagrams(new + old, 5.01)  # the duplicate comes last: it must not set the echo
    assert s.stats.duplicates == 1
    acks = s.datagrams_to_send(5.01)
    assert wire.decode(acks[-1]).tsecr == wire.decode(new[0]).tsval
    for d in acks:
        c.receive_datagram(d, 5.02)
    assert c.rtt.latest == pytest.approx(0.02, abs=1e-4)
    assert c.rtt.rto <= rto + 1e-5  # (SRTT moved by microseconds: the RTO, SRTT + min_rto, with it)


def test_data_above_a_hole_does_not_set_the_echo_and_its_repair_does():
    c, s = pair()
    handshake(c, s)
    before = s._ts_recent
    c.send(bytes(3 * c.mss), 1.0)
    first, *rest = c.datagrams_to_send(1.0)
    s.receive_datagrams(rest, 1.01)  # the first segment is lost: the others are above a hole
    assert s._ts_recent == before
    assert wire.decode(s.datagrams_to_send(1.01)[-1]).tsecr == before
    s.receive_datagrams([first], 2.0)  # its retransmission (here: late original) fills the hole
    assert s._ts_recent == wire.decode(first).tsval


@needs_c
def test_the_c_path_sets_the_echo_as_python_does_above_a_hole_and_in_order():
    """rx_run's runs above a hole (RUN_OUT_OF_ORDER) leave the echo alone, in-order runs set it: the state
    both paths leave is the same, echo included."""
    from tests.unit.test_transport_fastpath import CFG as FCFG, encaps, established, state_of, take

    for lost in (0, None):  # the first segment lost (the rest lies above a hole), or none
        c, s = established(FCFG)
        before = s._ts_recent
        c.send(random.Random(4).randbytes(20 * c.mss), 0.5)
        data = c.datagrams_to_send(0.5)
        enc_c, enc_s = encaps("udp")
        frames = [enc_c.frame(d) for i, d in enumerate(data) if i != lost]
        results = []
        for conn, native_path in zip((copy.deepcopy(s), copy.deepcopy(s)), (False, True)):
            take(conn, frames[:1], enc_s, native_path)  # (above a hole: the general path, in both)
            ep = take(conn, frames[1:], enc_s, native_path)
            if native_path:
                assert ep.counters["rx_c"] == len(frames) - 1
            assert conn._ts_recent == (before if lost == 0 else wire.decode(data[-1]).tsval)
            results.append(state_of(conn, ep))
        assert results[0] == results[1]


def test_the_echo_compares_timestamps_modulo_2_to_the_32():
    c, _ = pair()
    c._ts_recent = 0xFFFFFF00
    assert c._ts_newer(0x10)  # just after the wrap: newer
    assert not c._ts_newer(0xFFFFF000)  # older
    c._ts_recent = 0
    assert c._ts_newer(0xFFFFFFFF)  # nothing echoed yet: any tsval


# ---------------------------------------------------------------------------- 3. message larger than the peer's buffer
BIG = ConnConfig(message_mode=True, max_datagram_size=1472, send_buffer=32 * 1024, recv_buffer=32 * 1024,
                 max_message_size=16 * 1024, min_rto=0.05, initial_rto=0.2, max_rto=1.0, idle_timeout=5.0,
                 keepalive_interval=1.0, time_wait=1.0)
SMALL = ConnConfig(message_mode=True, max_datagram_size=1472, send_buffer=8 * 1024, recv_buffer=8 * 1024,
                   max_message_size=4 * 1024, min_rto=0.05, initial_rto=0.2, max_rto=1.0, idle_timeout=5.0,
                   keepalive_interval=1.0, time_wait=1.0)


def sim_big_to_small(seed=1, ba=None) -> PairSim:
    ab = FaultyLink(seed, delay=0.01)
    ba = ba or FaultyLink(seed + 1, delay=0.01)
    sim = PairSim(ab, ba, BIG, SMALL, seed=seed)
    sim.client.close_when_done = sim.server.close_when_done = False
    return sim


def test_a_message_larger_than_the_peers_receive_buffer_is_refused_by_send_message():
    sim = sim_big_to_small()
    sim.start()
    assert sim.run(lambda s: s.client.connected and s.server.connected, max_time=10)
    with pytest.raises(LocalProtocolError, match="larger than the peer's receive buffer \\(8192 bytes\\)"):
        sim.client.conn.send_message(bytes(16 * 1024), sim.now)
    assert sim.client.conn.send_message(bytes(8 * 1024), sim.now)  # a whole buffer's worth still fits


@pytest.mark.parametrize("rst_lost", [False, True], ids=["rst_arrives", "rst_lost"])
def test_a_message_queued_before_the_handshake_fails_both_ends_instead_of_hanging(rst_lost):
    """Queued in SYN_SENT, before the peer's buffer size is known: the receiver fills its whole buffer with
    the unfinished message, fails, and resets the sender; if the RST is lost, the sender's unanswered
    probes end it. Before the fix both ends kept each other alive with pings for ever."""
    ba = None
    if rst_lost:
        ba = FaultyLink(2, delay=0.01)
        orig = ba.send
        ba.send = lambda d, now: False if wire.decode(d).has(wire.RST) else orig(d, now)
    sim = sim_big_to_small(ba=ba)
    sim.start()
    assert sim.client.conn.send_message(bytes(16 * 1024), sim.now)
    assert sim.run(lambda s: s.both_finished(), max_time=60)
    assert "larger than the receive buffer (8192 bytes)" in sim.server.lost
    assert sim.client.lost == ("peer silent for 5 s (idle_timeout)" if rst_lost else "reset by peer")
    assert sim.server.received_messages == []


@needs_c
def test_the_c_path_fails_a_too_large_message_as_python_does():
    """The frames of a too-large message (a first flight, then the segment that fills the window) in one
    batch: rx_run takes them all, and the connection ends as the Python path leaves it, RST due."""
    from tests.unit.test_transport_fastpath import encaps, state_of, take

    c, s = pair(BIG, SMALL)
    t = handshake(c, s)
    c._peer_buffer = None  # a sender that does not check the message against the peer's buffer
    assert c.send_message(random.Random(3).randbytes(16 * 1024), t)
    receivers = copy.deepcopy(s), copy.deepcopy(s)  # as the handshake left it, before any data
    data = []
    while not s.is_closed and t < 0.9:  # the oracle receiver: what it answers drives the sender on
        out = c.datagrams_to_send(t)
        if not out:  # blocked by the window: on to the persist timer
            t = c.next_timer()
            c.handle_timer(t)
            continue
        data += [d for d in out if wire.decode(d).payload]
        s.receive_datagrams(out, t + 0.01)
        c.receive_datagrams(s.datagrams_to_send(t + 0.01), t + 0.02)
        t += 0.02
    assert s.is_closed and sum(len(wire.decode(d).payload) for d in data) == SMALL.recv_buffer
    enc_c, enc_s = encaps("udp")
    frames = [enc_c.frame(d) for d in data]
    results = []
    for conn, native_path in zip(receivers, (False, True)):
        ep = take(conn, frames, enc_s, native_path)
        assert ep.counters["rx_c"] == (len(frames) if native_path else 0)
        assert conn.is_closed and "larger than the receive buffer (8192 bytes)" in conn.lost_reason
        results.append(state_of(conn, ep))
    assert results[0] == results[1]
    assert [wire.decode(d).flags & wire.RST for d in results[0][-1]] == [wire.RST]


# ---------------------------------------------------------------------------- 4. reset in TIME_WAIT
def test_a_reset_in_time_wait_is_ignored_and_never_follows_closed():
    """We close first; the peer's FIN puts us in TIME_WAIT (Closed reported); our final ACK is lost and
    the peer aborts in LAST_ACK. Its RST must not turn the clean close into ConnectionLost."""
    c, s = pair()
    t = handshake(c, s)
    c.close(t)
    for d in c.datagrams_to_send(t):
        s.receive_datagram(d, t + 0.01)
    for d in s.datagrams_to_send(t + 0.01):  # the ACK of our FIN
        c.receive_datagram(d, t + 0.02)
    s.close(t + 0.03)
    assert s.state is State.LAST_ACK
    for d in s.datagrams_to_send(t + 0.03):
        c.receive_datagram(d, t + 0.04)
    assert c.state is State.TIME_WAIT
    assert c.datagrams_to_send(t + 0.04)  # our final ACK: lost
    s.abort(t + 0.5)
    for d in s.datagrams_to_send(t + 0.5):
        c.receive_datagram(d, t + 0.51)
    events = list(iter(c.next_event, None))
    assert [type(e) for e in events] == [Connected, PeerClosed, Closed]
    assert c.state is State.TIME_WAIT and c.stats.drops["reset_in_time_wait"] == 1
    c.handle_timer(t + 0.04 + CFG.time_wait)
    assert c.is_closed and c.next_event() is None and c.lost_reason is None


def test_lose_after_closed_reports_nothing():
    c, s = pair()
    t = handshake(c, s)
    c.close(t)
    for _ in range(3):
        for d in c.datagrams_to_send(t):
            s.receive_datagram(d, t)
        s.close(t) if s.state is State.CLOSE_WAIT else None
        for d in s.datagrams_to_send(t):
            c.receive_datagram(d, t)
    assert c.state is State.TIME_WAIT
    c._lose("any late cause")
    assert not any(isinstance(e, ConnectionLost) for e in iter(c.next_event, None))


# ---------------------------------------------------------------------------- 9. config ranges
@pytest.mark.parametrize("kw, match", [
    (dict(initial_window=0), "initial_window 0 is below one segment"),
    (dict(initial_window=100), "at least"),
    (dict(dupack_threshold=0), "dupack_threshold 0: need at least 1"),
    (dict(max_retransmits=-1), "max_retransmits -1: need 0 or more"),
    (dict(max_syn_retransmits=-2), "max_syn_retransmits -2: need 0 or more"),
    (dict(time_wait=-1.0), "time_wait -1.0: need 0 or more"),
])
def test_config_values_that_stall_or_misbehave_are_refused(kw, match):
    with pytest.raises(LocalProtocolError, match=match):
        ConnConfig(**kw)


def test_config_edge_values_that_work_are_accepted():
    cfg = ConnConfig(initial_window=ConnConfig().mss, dupack_threshold=1, max_retransmits=0,
                     max_syn_retransmits=0, time_wait=0.0)
    assert cfg.initial_window == cfg.mss


# ---------------------------------------------------------------------------- 10. learning the peer
def syn_from(cfg: ConnConfig, src_ip: str, src_port: int, src_mac: str, seed: int) -> tuple[bytes, Connection]:
    conn = Connection(Role.CLIENT, cfg, 0.0, rng=random.Random(seed))
    conn.connect(0.0)
    enc = UdpEncap(src_mac, src_ip, src_port)
    enc.set_peer(IP_S, PORT_S, MAC_S)
    return enc.frame(conn.datagrams_to_send(0.0)[0]), conn


def server_endpoint(faults_rx=None) -> tuple[TransportEndpoint, FakePort]:
    port = FakePort()
    ep = TransportEndpoint(port, UdpEncap(MAC_S, IP_S, PORT_S), config=CFG, own_port=False, faults_rx=faults_rx)
    ep._listener = Listener(CFG, rng=random.Random(5), backlog=1, max_connections=1)  # what accept() makes
    return ep, port


@pytest.mark.parametrize("faults", [None, {"loss": 0.0}], ids=["direct", "through_fault_link"])
def test_a_refused_syn_does_not_make_its_sender_the_peer(faults):
    msg_cfg = ConnConfig(message_mode=True, max_datagram_size=600, send_buffer=16 * 1024, recv_buffer=16 * 1024,
                         max_message_size=4096)
    refused, _ = syn_from(msg_cfg, IP_X, 6000, MAC_X, seed=11)  # message mode: the listener refuses it
    real, client = syn_from(CFG, IP_C, PORT_C, MAC_C, seed=12)
    ep, port = server_endpoint(faults)
    port.incoming = [[refused], [real]]
    ep.pump(0.0)
    assert ep.encap.peer is None and ep.drops["mode_mismatch"] + ep._listener.drops["mode_mismatch"] == 1
    assert ep.conn is None
    ep.pump(0.0)
    assert ep.encap.peer == (IP_C, PORT_C)
    assert ep.conn is not None and ep.conn.peer_id == client.local_id
    assert ep.drops["other_peer"] == 0
    assert port.sent  # the SYN|ACK went to the real client
    # from now on the refused sender is the stranger
    port.incoming = [[refused]]
    ep.pump(0.0)
    assert ep.drops["other_peer"] == 1


def test_in_one_batch_the_frames_after_the_taken_syn_are_checked_against_its_sender():
    refused_cfg = ConnConfig(message_mode=True, max_datagram_size=600, send_buffer=16 * 1024,
                             recv_buffer=16 * 1024, max_message_size=4096)
    refused, _ = syn_from(refused_cfg, IP_X, 6000, MAC_X, seed=11)
    real, _ = syn_from(CFG, IP_C, PORT_C, MAC_C, seed=12)
    ep, port = server_endpoint()
    port.incoming = [[refused, real, refused]]
    ep.pump(0.0)
    assert ep.encap.peer == (IP_C, PORT_C) and ep.conn is not None
    assert ep._listener.drops["mode_mismatch"] == 1 and ep.drops["other_peer"] == 1


# ---------------------------------------------------------------------------- 12. recv(max_bytes < 1)
@pytest.mark.parametrize("max_bytes", [0, -1])
def test_recv_of_less_than_one_byte_is_a_usage_error(max_bytes):
    c, s = pair()
    handshake(c, s)
    ep = client_endpoint(c)
    with pytest.raises(UsageError, match="at least 1 byte"):
        ep.recv(max_bytes, timeout=0)


# ---------------------------------------------------------------------------- found on the way
def test_data_buffered_beyond_a_fin_is_dropped_when_the_fin_completes_the_stream():
    """A broken peer's segment above the data its FIN ends (found by the C-path fuzz test: frames swapped,
    FIN set on the lower one). Kept above the FIN, it lay below rcv_nxt once the FIN was delivered, and the
    next ACK's SACK block below the ack made the encoder raise struct.error."""
    c, s = pair()
    t = handshake(c, s)
    c.send(bytes(2 * c.mss), t)
    low, high = (wire.decode(d) for d in c.datagrams_to_send(t))
    s.receive_datagram(wire.encode(high), t + 0.01)
    s.receive_datagram(wire.encode(low._replace(flags=low.flags | wire.FIN)), t + 0.01)
    assert s.state is State.CLOSE_WAIT and not s.rbuf.ooo and s.rbuf.ooo_bytes == 0
    ack = wire.decode(s.datagrams_to_send(t + 0.01)[-1])
    assert ack.ack == low.seq + len(low.payload) + 1 and ack.sacks == ()
