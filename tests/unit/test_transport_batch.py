"""The batch paths of the transport: receive_datagrams (Connection, Listener) does exactly what feeding the
same datagrams one at a time does, byte for byte on the wire, under loss, reordering, duplication and
corruption; the reassembly and codec fast paths agree with their general paths; an xfer endpoint delivers
a batch of frames in one call."""

from __future__ import annotations

import hashlib
import random
import time

import pytest

from kbypass import backend
from kbypass.proto.faults import FaultyLink
from kbypass.proto.transport import ConnConfig, Connection, Listener, Role, wire
from kbypass.proto.transport.recvbuf import ReceiveBuffer
from kbypass.proto.transport.sendbuf import SendBuffer
from kbypass.proto.transport.sim import PairSim
from tests.kb import needs_c

CFG = ConnConfig(max_datagram_size=1000, send_buffer=32 * 1024, recv_buffer=24 * 1024, min_rto=0.05,
                 initial_rto=0.3, max_rto=3.0, max_retransmits=30, idle_timeout=60.0,
                 keepalive_interval=2.0, time_wait=15.0)
MSG_CFG = ConnConfig(message_mode=True, max_datagram_size=600, send_buffer=32 * 1024, recv_buffer=32 * 1024,
                     max_message_size=8 * 1024, min_rto=0.05, initial_rto=0.2, max_rto=2.0, idle_timeout=5.0,
                     keepalive_interval=1.0, time_wait=4.0)


class LoggedLink(FaultyLink):
    """A FaultyLink that records every datagram offered to it, with its time."""

    def __init__(self, seed, log, **kw):
        super().__init__(seed, **kw)
        self.log = log

    def send(self, datagram, now):
        self.log.append((now, bytes(datagram)))
        return super().send(datagram, now)


def hostile_pair(seed, log, loss=0.15):
    kw = dict(loss=loss, reorder=0.1, reorder_delay=0.03, duplicate=0.05, corrupt=0.01, delay=0.01, jitter=0.002)
    return LoggedLink(seed, log, **kw), LoggedLink(seed + 10_000, log, **kw)


def one_at_a_time(sim):
    """Make `sim` feed every datagram through receive_datagram, one call each (the reference)."""
    def singly(machine):
        def receive_datagrams(datagrams, now):
            for d in datagrams:
                machine.receive_datagram(d, now)
        return receive_datagrams

    for machine in (sim.listener, sim.client.conn):
        machine.receive_datagrams = singly(machine)


def run(seed, batched, cfg=CFG, messages=False):
    log = []
    sim = PairSim(*hostile_pair(seed, log), cfg, seed=seed)
    if not batched:
        one_at_a_time(sim)
    rng = random.Random(seed)
    if messages:
        sim.client.messages = [rng.randbytes(rng.randrange(1, 3000)) for _ in range(40)]
    else:
        sim.client.stream = rng.randbytes(50_000)
        sim.server.stream = rng.randbytes(20_000)  # both ways: data and ACKs share datagrams
    sim.start()
    assert sim.run(lambda s: s.both_finished(), max_time=3000), "deadlock: simulated time ran out"
    return sim, log


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_is_handled_exactly_as_the_same_datagrams_one_by_one(seed):
    ref, ref_log = run(seed, batched=False)
    got, got_log = run(seed, batched=True)
    assert bytes(got.server.received) == got.client.stream  # the exact stream, both ways
    assert bytes(got.client.received) == got.server.stream
    assert got.client.closed and got.server.closed
    assert got.client.conn.stats.retransmits > 0  # the faults bit
    assert got.listener.drops["bad_crc"] + got.client.conn.stats.drops["bad_crc"] > 0
    # same decisions at the same times: the same datagrams on the wire, the same counters
    assert len(got_log) == len(ref_log)
    assert hashlib.sha256(repr(got_log).encode()).digest() == hashlib.sha256(repr(ref_log).encode()).digest()
    for a, b in ((got.client.conn, ref.client.conn), (got.server.conn, ref.server.conn)):
        assert a.stats == b.stats
    assert got.listener.drops == ref.listener.drops


def test_message_mode_batches_keep_message_boundaries():
    ref, ref_log = run(5, batched=False, cfg=MSG_CFG, messages=True)
    got, got_log = run(5, batched=True, cfg=MSG_CFG, messages=True)
    assert got.server.received_messages == got.client.messages
    assert got_log == ref_log


def test_listener_batch_routes_handshake_data_and_garbage_like_single_calls():
    """SYN, data for a known connection, garbage, a datagram for an unknown connection: one batch."""
    def world(batched):
        rng = random.Random(3)
        client = Connection(Role.CLIENT, CFG, 0.0, rng=rng)
        listener = Listener(CFG, rng=rng)
        client.connect(0.0)
        feed = (listener.receive_datagrams if batched
                else lambda ds, now: [listener.receive_datagram(d, now) for d in ds])
        syn = client.datagrams_to_send(0.0)
        feed(syn + [b"junk" * 20] + syn, 0.001)  # the SYN twice: answered, not a second connection
        client.receive_datagrams(listener.datagrams_to_send(0.001), 0.002)
        client.send(bytes(range(256)) * 20, 0.002)
        data = client.datagrams_to_send(0.002)
        stray = wire.encode(wire.Packet(wire.ACK, 77, 12345))
        feed([data[0], stray] + data[1:] + [b""], 0.003)
        server = listener.accept()
        got = bytearray()
        while (ev := server.next_event()) is not None:
            got += getattr(ev, "data", b"")
        return bytes(got), listener.drops, server.stats, listener.datagrams_to_send(0.003)

    ref, got = world(False), world(True)
    assert len(got[0]) >= 2 * CFG.mss and got[0] == (bytes(range(256)) * 20)[: len(got[0])]  # the first flight
    assert got[1] == ref[1] and got[1]["unknown_connection"] == 1 and got[1]["too_short"] == 1
    assert got[1]["bad_crc"] == 1
    assert got[2] == ref[2] and got[3] == ref[3]
    assert len(got[3]) == 1  # the whole batch answered by one ACK


def test_listener_hands_a_run_of_packets_for_one_connection_over_in_one_call():
    """Consecutive data packets for one connection go over in one receive_packets call; a SYN retransmit
    in the middle of the batch ends the run first, so the connection sees everything in arrival order."""
    rng = random.Random(6)
    client = Connection(Role.CLIENT, CFG, 0.0, rng=rng)
    listener = Listener(CFG, rng=rng)
    client.connect(0.0)
    syn = client.datagrams_to_send(0.0)
    listener.receive_datagrams(syn, 0.001)
    client.receive_datagrams(listener.datagrams_to_send(0.001), 0.002)
    server = listener.accept()
    runs = []
    orig = server.receive_packets
    server.receive_packets = lambda pkts, now: (runs.append(len(pkts)), orig(pkts, now))[1]
    client.send(bytes(range(256)) * 40, 0.002)
    data = client.datagrams_to_send(0.002)
    assert len(data) >= 4
    listener.receive_datagrams(data[:2] + syn + data[2:], 0.003)
    assert runs == [2, len(data) - 2]  # the SYN went through _route between the two runs
    got = b"".join(ev.data for ev in iter(server.next_event, None) if hasattr(ev, "data"))
    assert got == (bytes(range(256)) * 40)[:len(got)] and len(got) == sum(len(wire.decode(d).payload) for d in data)


def test_stream_data_coalesces_into_one_event_across_a_peek():
    rng = random.Random(4)
    client = Connection(Role.CLIENT, CFG, 0.0, rng=rng)
    listener = Listener(CFG, rng=rng)
    client.connect(0.0)
    listener.receive_datagrams(client.datagrams_to_send(0.0), 0.001)
    client.receive_datagrams(listener.datagrams_to_send(0.001), 0.002)
    server = listener.accept()
    data = rng.randbytes(3 * CFG.mss)
    client.send(data, 0.002)
    first = client.datagrams_to_send(0.002)
    assert len(first) == 3
    listener.receive_datagrams(first[:2], 0.003)
    assert server.next_event() is not None  # Connected
    window = server.rbuf.window
    peeked = server.peek_event()
    assert peeked.data == data[: 2 * CFG.mss] and server.rbuf.window == window  # a peek opens nothing
    listener.receive_datagrams(first[2:], 0.004)  # arrives behind the peeked data: the same event grows
    ev = server.next_event()
    assert ev.data == data and server.next_event() is None
    assert server.rbuf.window == window + 2 * CFG.mss  # taking it opened the window by all of it


def test_receive_datagrams_of_an_empty_batch_does_nothing():
    c = Connection(Role.CLIENT, CFG, 0.0)
    c.connect(0.0)
    c.receive_datagrams([], 1.0)
    assert c.stats.datagrams_received == 0 and not c.stats.drops


# ---------------------------------------------------------------------------- reassembly
def reference_ranges(received: set[int], rcv_nxt: int) -> list[tuple[int, int]]:
    """Maximal runs of received byte offsets above rcv_nxt, ascending (the naive way)."""
    out: list[tuple[int, int]] = []
    for b in sorted(x for x in received if x >= rcv_nxt):
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + 1)
        else:
            out.append((b, b + 1))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_reassembly_of_shuffled_overlapping_duplicated_segments_is_exact(seed):
    rng = random.Random(seed)
    stream = rng.randbytes(6000)
    segs = []
    pos = 0
    while pos < len(stream):  # two cuttings of the same stream, so some segments overlap others
        n = rng.randrange(1, 300)
        segs.append((pos, stream[pos:pos + n]))
        pos += n
    for _ in range(30):
        a = rng.randrange(len(stream))
        segs.append((a, stream[a:a + rng.randrange(1, 400)]))
    segs += rng.sample(segs, 20)  # duplicates
    rng.shuffle(segs)
    rb = ReceiveBuffer(1 << 20, False)
    got = bytearray()
    received: set[int] = set()
    for seq, data in segs:
        out, fin_now, reason = rb.accept(seq, data, False, False)
        assert not fin_now and reason in (None, "duplicate")
        for chunk in out:
            got += chunk
        received.update(range(seq, seq + len(data)))
        assert bytes(got) == stream[:rb.rcv_nxt]
        assert rb._ooo_seqs == sorted(rb.ooo)
        assert rb.ooo_bytes == sum(len(d) for d, _, _ in rb.ooo.values())
        assert sorted(rb.sack_blocks(1000)) == reference_ranges(received, rb.rcv_nxt)
    assert bytes(got) == stream and not rb.ooo and rb.sack_blocks(4) == []


def test_in_order_fast_path_respects_the_window():
    rb = ReceiveBuffer(1000, False)
    assert rb.accept(0, bytes(600), False, False) == ([bytes(600)], False, None)
    assert rb.accept(600, bytes(600), False, False) == ([], False, "out_of_window")  # 400 left
    assert rb.accept(600, bytes(400), False, False)[0] == [bytes(400)]
    rb.consumed(1000)
    assert rb.window == 1000 and rb.rcv_nxt == 1000


def test_send_buffer_ack_drops_whole_segments_only():
    sb = SendBuffer(10_000)
    sb.write(bytes(1000))
    segs = [sb.cut(300), sb.cut(300), sb.cut(400)]
    assert sb.inflight_bytes == 1000 and list(sb.inflight) == segs
    assert sb.ack(450) == 450  # the second segment is only half acknowledged: it stays
    assert list(sb.inflight) == segs[1:] and sb.inflight_bytes == 700
    sb.queue_fin()
    fin = sb.cut_fin()
    assert sb.ack(1001) == 550 and not sb.inflight and sb.inflight_bytes == 0 and fin.end == 1001


# ---------------------------------------------------------------------------- codec
def test_encode_fields_is_encode_of_the_packet():
    rng = random.Random(1)
    for _ in range(200):
        ack = rng.randrange(1 << 40)
        sacks = tuple((ack + 1 + 3000 * i, ack + 1000 + 3000 * i) for i in range(rng.randrange(0, 20)))
        fields = (rng.choice([wire.ACK, wire.ACK | wire.MSG_END, wire.SYN, wire.FIN | wire.ACK]),
                  rng.randrange(1, 1 << 32), rng.randrange(1 << 32), rng.randrange(1 << 40), ack,
                  rng.randrange(1 << 32), rng.randrange(1 << 32), rng.randrange(1 << 32), sacks,
                  rng.randbytes(rng.randrange(0, 1400)))
        size = rng.choice([None, 1472])
        data = wire.encode_fields(*fields, size)
        assert data == wire.encode(wire.Packet(*fields), size)
        kept = fields[8][: (wire.MAX_SACK_BLOCKS if size is None else
                            min(wire.MAX_SACK_BLOCKS, (size - wire.OVERHEAD - len(fields[9])) // wire.SACK_SIZE))]
        assert wire.decode(data) == wire.Packet(*fields[:8], kept, fields[9])


def test_decoded_packets_are_immutable_values():
    pkt = wire.decode(wire.encode(wire.Packet(wire.ACK, 1, 2, seq=5, payload=b"abc")))
    assert pkt == wire.Packet(wire.ACK, 1, 2, seq=5, payload=b"abc") and type(pkt.payload) is bytes
    with pytest.raises(AttributeError):
        pkt.seq = 6
    assert pkt.has(wire.ACK) and not pkt.has(wire.FIN) and pkt.seq_len == 3


# ---------------------------------------------------------------------------- xfer endpoint
@pytest.mark.parametrize("lane", ["python", pytest.param("c", marks=needs_c)])
def test_endpoint_hands_a_batch_of_frames_to_the_connection_in_one_call(lane):
    """Two endpoints over SocketPorts on loopback, pumped in turn in this thread: the stream arrives
    exactly, and the server's listener and connection get whole batches. With the C path, the in-order
    data segments skip the listener (rx_run takes them) and the rest still come in batches."""
    from kbypass.port.socket_port import SocketPort
    from kbypass.xfer import UdpEncap
    from kbypass.xfer.endpoint import TransportEndpoint, default_config

    lo = "127.0.0.1"
    cfg = default_config(1472)
    calls = []
    with SocketPort(lo, 0, batch=64) as sp, SocketPort(lo, 0, batch=64) as cp:
        server = TransportEndpoint(sp, UdpEncap(bytes(6), lo, sp.port), config=cfg, own_port=False,
                                   codec=backend.codec(lane))
        enc = UdpEncap(bytes(6), lo, cp.port)
        enc.set_peer(lo, sp.port, bytes(6))
        client = TransportEndpoint(cp, enc, config=cfg, own_port=False, codec=backend.codec(lane))
        server._listener = Listener(cfg, backlog=1, max_connections=1, codec=server.codec)
        orig = server._listener.receive_datagrams
        server._listener.receive_datagrams = lambda ds, now: (calls.append(len(ds)), orig(ds, now))[1]
        client.conn = Connection(Role.CLIENT, cfg, client.clock(), codec=client.codec)
        client.conn.connect(client.clock())
        data = random.Random(2).randbytes(400_000)
        sent = 0
        got = bytearray()
        deadline = time.monotonic() + 20
        while len(got) < len(data):
            assert time.monotonic() < deadline, f"stalled at {len(got)} of {len(data)} bytes"
            if client.connected_at is not None and sent < len(data) and client.conn.send_space:
                sent += client.conn.send(data[sent:sent + 65536], client.clock())
            client.pump(0.0)
            server.pump(0.0)
            if server._rxbuf:
                got += server.recv(1 << 30, timeout=0)  # buffered already: recv returns it without pumping
        assert bytes(got) == data
        in_c = server.counters["rx_c"]
        assert server.counters["rx_datagrams"] == sum(calls) + in_c > 0
        assert server.stats["datagrams_received"] == server.counters["rx_datagrams"]
        if lane == "c":
            assert in_c > len(data) // cfg.mss // 2  # the bulk of the stream went through C
        else:
            assert in_c == 0
            assert max(calls) > 1  # frames of one receive went in together


def test_send_buffer_cuts_across_writes_of_any_bytes_like_type_and_keeps_its_own_copy():
    """Segments are cut from the chunks the application wrote, across chunk boundaries, and hold the
    bytes as they were when written (a bytearray changed afterwards does not change what is sent)."""
    sb = SendBuffer(10_000)
    mutable = bytearray(b"B" * 500)
    parts = [b"A" * 700, mutable, memoryview(b"C" * 300), b"D" * 2000]
    assert [sb.write(p) for p in parts] == [700, 500, 300, 2000] and sb.unsent == 3500
    mutable[:] = b"x" * 500
    segs = [sb.cut(n) for n in (600, 650, 1000, 1250)]
    assert b"".join(s.data for s in segs) == b"A" * 700 + b"B" * 500 + b"C" * 300 + b"D" * 2000
    assert all(type(s.data) is bytes for s in segs) and [s.seq for s in segs] == [0, 600, 1250, 2250]
    assert sb.unsent == 0 and sb.used == 3500 and sb.snd_nxt == 3500
    assert sb.write(bytes(8000)) == 6500 and sb.space == 0  # only what fits, copied
    whole = b"E" * 100
    sb2 = SendBuffer(1000)
    sb2.write(whole)
    assert sb2.cut(100).data is whole  # an immutable chunk taken whole is not copied at all


def test_endpoint_recv_hands_out_chunks_whole_or_split_at_max_bytes():
    from collections import deque

    from kbypass.xfer.endpoint import _take

    chunks = deque([b"a" * 10, b"b" * 5, b"c" * 7])
    first = chunks[0]
    assert _take(deque([first]), 100) is first  # the usual case: one chunk, returned without a copy
    assert _take(chunks, 12) == b"a" * 10 + b"bb"
    assert _take(chunks, 100) == b"bbb" + b"c" * 7 and not chunks


def test_endpoint_recv_reads_a_large_chunk_in_pieces_copying_each_byte_once():
    from collections import deque

    from kbypass.xfer.endpoint import _take

    big = bytes(range(256)) * 40  # 10,240 bytes, read 3,000 at a time
    chunks = deque([big, b"tail"])
    got = []
    while chunks:
        piece = _take(chunks, 3000)
        assert type(piece) is bytes and 0 < len(piece) <= 3000
        got.append(piece)
    assert b"".join(got) == big + b"tail"
    assert [len(p) for p in got] == [3000, 3000, 3000, 1244]
    # the rest of a chunk is held as a view of it, not a copy
    chunks = deque([big])
    _take(chunks, 100)
    assert type(chunks[0]) is memoryview and chunks[0].obj is big


def test_send_buffer_cut_run_segments_are_views_of_its_chunks_and_keep_a_mutable_writes_old_bytes():
    """cut_run hands segments inside a chunk as views of it (no copy); the chunks are the buffer's own
    immutable bytes, so a bytearray the application changes afterwards still does not change them."""
    from kbypass.proto.transport.sendbuf import VIEW_FROM

    sb = SendBuffer(1 << 20)
    whole = bytes(range(256)) * (VIEW_FROM * 10 // 256)  # ten segments, kept as it is
    mutable = bytearray(b"M" * (VIEW_FROM * 3))
    sb.write(whole)
    sb.write(mutable)
    mutable[:] = b"x" * len(mutable)
    segs = sb.cut_run(VIEW_FROM, 1 << 30, 1 << 40, 0.0)
    assert b"".join(bytes(s.data) for s in segs) == whole + b"M" * (VIEW_FROM * 3)
    inside = [s for s in segs if type(s.data) is memoryview]
    assert len(inside) >= 9 and all(s.data.obj is whole for s in inside[:9]) and all(s.data.readonly for s in inside)
    small = SendBuffer(100_000)  # segments under VIEW_FROM: copied (cheaper than a view)
    small.write(whole)
    assert all(type(s.data) is bytes for s in small.cut_run(1448, 1 << 30, 1 << 40, 0.0))


def test_endpoint_send_gives_the_send_buffer_a_bytes_object_whole():
    """TransportEndpoint.send waits for room for all of a bytes object and hands it over as it is (the send
    buffer keeps it uncopied and cut_run makes views of it), where a piece of it would be copied."""
    conn = _FakeConn(space=100_000)
    ep = _endpoint_on(None)
    assert not ep.takes_whole(1)  # no connection yet
    ep.conn = conn
    assert ep.takes_whole(1 << 18) and not ep.takes_whole((1 << 18) + 1)  # a quarter of the send buffer at most
    pumps = []

    def pump(timeout=0.0):
        pumps.append(timeout)
        conn.space = 1 << 20  # the peer acknowledged: room again

    ep.pump = pump
    data = b"z" * 150_000  # more than the room at first, less than a quarter of the buffer
    assert ep.send(data) == len(data)
    sent = [d for d in conn.given if len(d)]
    assert sent == [data] and sent[0] is data and pumps  # waited for room, then all of it, not copied
    conn.given.clear()
    view = memoryview(b"y" * 150_000)
    conn.space = 100_000
    assert ep.send(view) == 150_000
    assert [len(d) for d in conn.given if len(d)] == [100_000, 50_000]  # other buffers: as much as fits
    conn.given.clear()
    lent = bytearray(b"w" * 150_000)  # the generated stream's blocks: lent, taken whole like bytes
    conn.space = 100_000
    assert ep.send(lent, lent=True) == 150_000
    sent = [d for d in conn.given if len(d)]
    assert sent == [lent] and sent[0] is lent


class _FakeConn:
    """The part of a Connection TransportEndpoint.send uses: send_space and send()."""

    def __init__(self, space: int, send_buffer: int = 1 << 20) -> None:
        from types import SimpleNamespace

        self.config = SimpleNamespace(message_mode=False, send_buffer=send_buffer)
        self.sbuf = SimpleNamespace(inflight_bytes=0)  # nothing in flight: send() pumps before it returns
        self.lost_reason = None
        self.space = space
        self.given: list = []  # per connection: a class-level list was shared by every instance

    @property
    def send_space(self):
        return self.space

    def send(self, data, now, lent=False):
        self.given.append(data)
        n = min(len(data), self.space)
        self.space -= n
        return n


def _endpoint_on(conn):
    from kbypass.xfer.endpoint import TransportEndpoint

    ep = TransportEndpoint.__new__(TransportEndpoint)
    ep.conn, ep._closed, ep.connected_at, ep.lost, ep.clock = conn, False, 1.0, None, lambda: 0.0
    ep._chain_frames = 0
    return ep


def test_endpoint_send_corks_while_data_is_in_flight_and_the_buffer_has_room():
    """Autocorking: with data in flight and room left, send() returns without a pump (a bulk sender queues
    until its buffer is full, then pumps once per ACK's worth of room: half the pumps per GB at MTU 65535,
    not one per 1 MiB block); a send that fills the buffer, or one on an idle connection, pumps at once."""
    conn = _FakeConn(space=3 << 20)
    ep = _endpoint_on(conn)
    ep._chain_frames = 17  # jumbo datagrams, sent as chains of frames (one frame a datagram: never corked)
    pumps = []
    ep.pump = lambda timeout=0.0: pumps.append(timeout)
    block = b"b" * (1 << 20)
    assert ep.send(block) == len(block) and pumps == [0.0]  # idle: out at once
    conn.sbuf.inflight_bytes = 1 << 20  # now the first block is out
    pumps.clear()
    assert ep.send(block) == len(block) and pumps == []  # room for the next: corked
    assert ep.send(block) == len(block) and pumps == [0.0]  # the buffer is full: pushed
    assert conn.space == 0 and [len(d) for d in conn.given] == [1 << 20] * 3
    ep._chain_frames, conn.space = 0, 3 << 20  # one frame a datagram: pumped each time
    assert ep.send(block) == len(block) and pumps == [0.0, 0.0]


def test_endpoint_send_with_a_timeout_queues_what_fits_before_it_times_out():
    """With a timeout, send() does not wait for room for all of a bytes object (it could time out having
    queued nothing where part would have fit): it queues what fits, as for any other buffer."""
    from kbypass.xfer import TransferTimeout

    conn = _FakeConn(space=100_000)
    ep = _endpoint_on(conn)
    ep.pump = lambda timeout=0.0: None  # the peer acknowledges nothing: no more room
    data = b"t" * 150_000
    assert ep.takes_whole(len(data))  # without a timeout it would go whole
    with pytest.raises(TransferTimeout, match="100000 of 150000 bytes queued"):
        ep.send(data, timeout=0.0)
    assert [len(d) for d in conn.given if len(d)] == [100_000]


def test_fake_connections_do_not_share_what_they_were_given():
    a, b = _FakeConn(1), _FakeConn(1)
    a.send(b"x", 0.0)
    assert b.given == []


def test_endpoint_recv_chunk_hands_out_each_piece_as_it_arrived_without_joining():
    """`xfer recv` reads the stream with recv_chunk: each queued run as it is (no copy to join runs shorter
    than recv()'s max_bytes), a view recv() left as that view, b"" at the end."""
    from collections import deque
    from types import SimpleNamespace

    from kbypass.xfer import TransportEndpoint

    run1, rest = b"a" * 10, memoryview(b"x" * 9)[4:]
    ep = TransportEndpoint.__new__(TransportEndpoint)
    ep._rxbuf, ep._buffered, ep.lost = deque([run1, rest]), 15, None
    ep._need_conn = lambda what: SimpleNamespace(config=SimpleNamespace(message_mode=False))
    ep._run_until = lambda *a: None  # the frames already arrived
    assert ep.recv_chunk() is run1 and ep._buffered == 5
    assert ep.recv_chunk() is rest and ep._buffered == 0
    assert ep.recv_chunk() == b""
