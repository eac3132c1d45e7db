"""Bounds against hostile or broken peers: the SACK scoreboard and the out-of-order queue cost bounded work
per segment whatever the peer sends, SYN cookies are only taken when we sent some, and our timestamps do not
give away the ISN clock."""

import random
import tracemalloc

from kbypass.proto import tcp
from kbypass.proto.tcp import recvq
from kbypass.proto.tcp.connection import TcpConnection
from kbypass.proto.tcp.isn import IsnGenerator
from kbypass.proto.tcp.recvq import Reassembly
from kbypass.proto.tcp.sendq import MAX_SACK_RANGES, SendQueue
from tests.unit.test_tcp_edges import CLI, PEER_ISN, SPORT, SRV, established, seg

# ---------------------------------------------------------------------------------------- SACK scoreboard


def test_a_stream_of_tiny_sack_blocks_keeps_the_scoreboard_bounded():
    """The reviewer's attack: four 1-byte blocks per ACK, every other byte of a large flight. Unbounded, the
    scoreboard grew to thousands of ranges and every ACK walked them all."""
    conn, snd = established(tcp.TcpConfig(delayed_ack=0, send_buffer=4 << 20))
    conn.receive(seg("A", PEER_ISN + 1, snd, window=65535), 0.02)
    conn.send(b"x" * (4 << 20))
    for _ in range(200):
        if not conn.segments_to_send(0.03):
            break
    sq = conn.sq
    una, top, off, most = sq.snd_una, sq.snd_max, 2, 0
    assert top - una > 10_000
    for _ in range(3000):
        blocks = []
        for _ in range(4):
            left = una + off
            blocks += [left % 2**32, (left + 1) % 2**32]
            off = off + 2 if una + off + 3 < top else 2
        conn.receive(seg("A", PEER_ISN + 1, una, window=65535, options=[("SAck", tuple(blocks))]), 0.03)
        conn.segments_to_send(0.03)
        most = max(most, len(sq.sacked))
        assert sq.sacked_bytes == sum(b - a for a, b in sq.sacked)
        assert sq.relost_bytes == sum(b - a for a, b in sq.relost) and all(a >= sq.snd_una for a, _ in sq.relost)
    assert most <= MAX_SACK_RANGES and sq.sack_ranges_dropped > 0
    assert all(a < b < c for (a, b), (c, _) in zip(sq.sacked, sq.sacked[1:]))


def test_forgetting_a_range_never_takes_a_hole_for_delivered():
    sq = SendQueue(0)
    sq.append(bytes(100_000))
    sq.snd_max = 100_001
    for k in range(MAX_SACK_RANGES + 10):
        sq.sack(1 + 10 * k + 5, 1 + 10 * k + 10)
    assert len(sq.sacked) == MAX_SACK_RANGES and sq.sacked[0][0] == 1 + 10 * 10 + 5  # the lowest went
    assert sq.sacked_between(1, 101) == 0  # their bytes now count as not SACKed: resent if lost, never skipped
    sq.acked(1 + 10 * 20 + 7)  # a cumulative ACK into a range trims it
    assert sq.sacked[0] == (208, 211) and sq.sacked_bytes == sum(b - a for a, b in sq.sacked)


def test_sacked_between_agrees_with_counting_byte_by_byte():
    rng = random.Random(3)
    sq = SendQueue(0)
    sq.append(bytes(3000))
    sq.snd_max = 3001
    for step in range(3000):
        if step % 97 == 96:
            sq.acked(min(sq.snd_una + rng.randrange(60), 3001))
        a = rng.randrange(1, 3000)
        sq.sack(a, a + rng.randrange(1, 40))
        marked = {x for s, e in sq.sacked for x in range(s, e)}
        lo = rng.randrange(0, 3001)
        hi = lo + rng.randrange(0, 300)
        assert sq.sacked_between(lo, hi) == sum(lo <= x < hi for x in marked)


def test_finding_lost_retransmissions_looks_at_each_logged_one_once():
    """find_lost_rexmits used to test every logged retransmission (up to 4096) on every SACK in recovery."""
    sq = SendQueue(0)
    sq.append(bytes(10_000_000))
    sq.snd_max = 1_000_001
    for k in range(1000):  # retransmissions of holes at the bottom, each logged with snd_max when it left
        sq.note_rexmit(1 + 10 * k, 1 + 10 * k + 5)
        sq.snd_max += 1000
    calls = 0
    between = sq.sacked_between

    def counted(a, b):
        nonlocal calls
        calls += 1
        return between(a, b)

    sq.sacked_between = counted
    for k in range(300):  # SACKs below every mark: they prove none of them lost yet (newer data is still out)
        sq.sack(500_000 + 1448 * k, 500_000 + 1448 * (k + 1))
        sq.find_lost_rexmits()
    assert calls == 0 and len(sq.rexmits) == 1000
    sq.sack(sq.snd_max - 1448, sq.snd_max)  # data sent after every one of them arrived: all are lost
    sq.find_lost_rexmits()
    assert calls <= 1000
    assert sq.relost[:2] == [(1, 6), (11, 16)] and len(sq.relost) == 1000 and not sq.rexmits


# ---------------------------------------------------------------------------------------- out-of-order queue


def test_extending_a_large_held_range_byte_by_byte_copies_only_the_new_bytes():
    rq = Reassembly(0)
    big = random.randbytes(900_000)
    rq.add(1, big)
    tracemalloc.start()
    for i in range(2000):
        rq.add(900_001 + i, b"x")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100_000  # it was a 900 KB rebuild per segment
    first = b"!"
    assert rq.add(0, first) == first + big + b"x" * 2000
    assert rq.ooo_bytes == 0 and rq.range_count == 0


def test_in_order_fill_after_a_hole_moves_each_byte_a_bounded_number_of_times():
    rq = Reassembly(0)
    segs = [random.randbytes(1448) for _ in range(700)]  # a 1 MB window behind one lost segment
    tracemalloc.start()
    for i in range(1, len(segs)):
        rq.add(i * 1448, segs[i])
        if i == 100:
            tracemalloc.reset_peak()
    peak = tracemalloc.get_traced_memory()[1] - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert peak < 20_000  # no whole-range copy per segment (it was up to 1 MB each)
    assert rq.add(0, segs[0]) == b"".join(segs)


def test_held_chunks_stay_few_whatever_the_segment_sizes():
    rng = random.Random(7)
    stream = rng.randbytes(200_000)
    rq, got = Reassembly(0, max_ranges=8), b""
    pieces = []
    for _ in range(6000):  # 1..3000-byte pieces, overlapping, out of order, duplicated
        a = rng.randrange(0, len(stream))
        pieces.append((a, stream[a:a + rng.choice((1, 2, 7, 100, 1448, 3000))]))
    pieces.append((0, stream))
    for a, data in pieces:
        got += rq.add(a, data)
        for chunks, n in zip(rq._chunks, rq._lens):
            assert sum(map(len, chunks)) == n
            assert len(chunks) <= 2 * n // recvq.SMALL + 1
    assert got == stream


# ---------------------------------------------------------------------------------------- SYN cookies


def _cookie_ack(gen, peer_isn, sport, now):
    cookie, _ = gen.make_cookie(SRV, SPORT, CLI, sport, peer_isn, 1460, now)
    return seg("A", peer_isn + 1, cookie + 1, sport=sport)


def test_a_listener_that_sent_no_cookie_refuses_a_valid_looking_one():
    gen = IsnGenerator(b"k" * 32)
    lst = tcp.TcpListener(SRV, SPORT, tcp.TcpConfig(), gen)
    out, conn = lst.receive(_cookie_ack(gen, 5000, 2, 100.0), CLI, 100.0)  # the hash is right, but no cookie out
    assert conn is None and out[0].flags == tcp.RST and lst.stats.cookies_rejected == 1


def test_cookies_are_taken_only_within_two_periods_of_the_last_one_sent():
    gen = IsnGenerator(b"k" * 32)
    lst = tcp.TcpListener(SRV, SPORT, tcp.TcpConfig(syn_backlog=1), gen)
    lst.receive(seg("S", 1, sport=1), CLI, 100.0)  # fills the backlog
    out, _ = lst.receive(seg("S", 5000, sport=2), CLI, 100.0)  # answered with a cookie
    out, conn = lst.receive(seg("A", 5001, out[0].seq + 1, sport=2), CLI, 100.5)
    assert conn is not None and conn.state is tcp.State.ESTABLISHED and lst.stats.cookies_accepted == 1
    out, conn = lst.receive(_cookie_ack(gen, 7000, 3, 120.0), CLI, 120.0)  # still recent: taken
    assert conn is not None
    later = 100.0 + 2 * 64 + 1  # the hash would still check (fresh), but no cookie went out lately
    out, conn = lst.receive(_cookie_ack(gen, 8000, 4, later), CLI, later)
    assert conn is None and out[0].flags == tcp.RST


def test_a_connection_from_a_cookie_has_sent_its_syn_ack_and_waits_for_the_ack():
    syn = seg("S", 5000, sport=2)
    conn = TcpConnection.from_cookie((SRV, SPORT), (CLI, 2), syn, 1.0, 0xABCDEF, tcp.TcpConfig())
    assert conn.state is tcp.State.SYN_RCVD and conn.sq.snd_max == conn.iss + 1
    assert conn.segments_to_send(1.0) == [] and conn.next_timer() is None
    conn.receive(seg("A", 5001, 0xABCDEF + 1, sport=2), 1.1)
    assert conn.state is tcp.State.ESTABLISHED


# ---------------------------------------------------------------------------------------- timestamps


def _syn_tsval(iss, rport, gen=None):
    conn = TcpConnection(("10.0.0.1", 40000), ("10.0.0.2", rport), 5.0, iss, tcp.TcpConfig(), gen)
    return conn._tsval(5.0)


def test_the_timestamp_offset_comes_from_the_four_tuple_not_the_isn():
    gen = IsnGenerator(b"s" * 32)
    assert _syn_tsval(1, 80, gen) == _syn_tsval(0x7654321, 80, gen)  # the ISN does not show through
    assert _syn_tsval(1, 80, gen) != _syn_tsval(1, 81, gen)  # another 4-tuple, another offset
    assert _syn_tsval(1, 80, gen) != _syn_tsval(1, 80, IsnGenerator(b"t" * 32))  # keyed
    conn = TcpConnection.connect(("10.0.0.1", 40000), ("10.0.0.2", 80), 5.0, tcp.TcpConfig())
    syn = conn.segments_to_send(5.0)[0]
    assert syn.options.timestamps[0] == _syn_tsval(conn.iss ^ 0xFFFF, 80)
