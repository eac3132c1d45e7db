"""Scripted edge cases with scapy-built segments as the peer (packetdrill style): out-of-window segments,
RST/SYN injection (RFC 5961), overlapping and duplicate data, PAWS, SYN cookies, a SYN flood."""

import random
import struct
import tracemalloc

import pytest
from scapy.layers.inet import IP, TCP

from kbypass.proto import tcp
from kbypass.proto.faults import FaultyLink
from kbypass.proto.tcp.sim import App, TcpPair

SRV, CLI = "10.2.0.2", "10.2.0.1"
CPORT, SPORT = 33333, 80
PEER_ISN = 1000


def seg(flags, seq, ack=0, data=b"", options=(), window=65535, sport=CPORT):
    pkt = IP(src=CLI, dst=SRV) / TCP(sport=sport, dport=SPORT, flags=flags, seq=seq % 2**32, ack=ack % 2**32,
                                     window=window, options=list(options)) / data
    return tcp.parse_segment(CLI, SRV, bytes(pkt)[20:])


def established(cfg=None, timestamps=False):
    """A server connection after a scapy client's handshake. Returns (conn, server's next seq)."""
    lst = tcp.TcpListener(SRV, SPORT, cfg or tcp.TcpConfig(delayed_ack=0))
    opts = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)] + ([("Timestamp", (500, 0))] if timestamps else [])
    out, conn = lst.receive(seg("S", PEER_ISN, options=opts), CLI, 0.0)
    synack = out[0]
    assert synack.flags == tcp.SYN | tcp.ACK and synack.ack == PEER_ISN + 1 and conn is None
    ts = [("Timestamp", (501, synack.options.timestamps[0]))] if timestamps else []
    out, conn = lst.receive(seg("A", PEER_ISN + 1, synack.seq + 1, options=ts), CLI, 0.01)
    assert conn is not None and conn.state is tcp.State.ESTABLISHED and out == []
    assert isinstance(conn.next_event(), tcp.Connected)
    return conn, synack.seq + 1


def data_of(conn):
    out = b""
    while (e := conn.next_event()) is not None:
        assert type(e) is tcp.Data
        out += e.data
    return out


def test_rst_with_wrong_seq_in_window_gets_a_challenge_ack_and_no_teardown():
    conn, snd = established()
    conn.receive(seg("R", PEER_ISN + 1 + 100, 0), 1.0)
    out = conn.segments_to_send(1.0)
    assert [s.flags for s in out] == [tcp.ACK] and out[0].ack == PEER_ISN + 1 and out[0].seq == snd
    assert conn.state is tcp.State.ESTABLISHED and conn.next_event() is None
    conn.receive(seg("R", PEER_ISN + 1 + 10**8, 0), 1.1)  # out of window: silently dropped
    assert conn.segments_to_send(1.1) == [] and conn.state is tcp.State.ESTABLISHED
    conn.receive(seg("R", PEER_ISN + 1, 0), 1.2)  # exactly rcv_nxt: reset
    assert conn.next_event() == tcp.Reset(tcp.PEER_RESET) and conn.state is tcp.State.CLOSED
    assert conn.segments_to_send(1.2) == []


@pytest.mark.parametrize("seq_off", [0, 1, -1, 5000, 2**31])
def test_syn_on_an_established_connection_gets_a_challenge_ack(seq_off):
    conn, snd = established()
    conn.receive(seg("S", PEER_ISN + 1 + seq_off), 1.0)
    out = conn.segments_to_send(1.0)
    assert len(out) == 1 and out[0].flags == tcp.ACK and out[0].ack == PEER_ISN + 1
    assert conn.state is tcp.State.ESTABLISHED and conn.next_event() is None
    conn.receive(seg("PA", PEER_ISN + 1, snd, b"still here"), 1.1)
    assert data_of(conn) == b"still here"


def test_challenge_acks_are_rate_limited():
    conn, _ = established(tcp.TcpConfig(challenge_ack_limit=10))
    acks = 0
    for i in range(1000):
        conn.receive(seg("R", PEER_ISN + 2 + i), 1.0 + i / 10000)
        acks += len(conn.segments_to_send(1.0 + i / 10000))
    assert acks == 10 and conn.stats.challenge_acks == 10 and conn.state is tcp.State.ESTABLISHED


def test_out_of_window_data_is_acked_not_taken():
    conn, snd = established(tcp.TcpConfig(recv_buffer=65536, delayed_ack=0))
    for off in (-5000, 65536 + 10, 2**31 - 1):
        conn.receive(seg("PA", PEER_ISN + 1 + off, snd, b"z" * 100), 1.0)
        out = conn.segments_to_send(1.0)
        assert len(out) == 1 and out[0].ack == PEER_ISN + 1 and data_of(conn) == b""
    assert conn.stats.out_of_window == 3


def test_ack_of_unsent_data_is_answered_and_its_data_dropped():
    conn, snd = established()
    conn.receive(seg("PA", PEER_ISN + 1, snd + 5000, b"abc"), 1.0)
    assert data_of(conn) == b"" and conn.segments_to_send(1.0)[0].ack == PEER_ISN + 1
    conn.receive(seg("PA", PEER_ISN + 1, snd - 2**30, b"abc"), 1.0)  # RFC 5961 5.2: older than any window
    assert data_of(conn) == b"" and conn.stats.bad_acks == 2


def test_overlapping_duplicate_and_reordered_data_arrive_once_in_order():
    conn, snd = established(tcp.TcpConfig(delayed_ack=0, max_ooo_ranges=1000))
    rng = random.Random(7)
    body = rng.randbytes(20_000)
    pieces = []
    for _ in range(400):
        a = rng.randrange(len(body))
        b = min(len(body), a + rng.randint(1, 1400))
        pieces.append((a, b))
    pieces += [(i, min(i + 1400, len(body))) for i in range(0, len(body), 1400)]  # everything at least once
    rng.shuffle(pieces)
    got = b""
    for a, b in pieces:
        conn.receive(seg("A", PEER_ISN + 1 + a, snd, body[a:b]), 1.0)
        got += data_of(conn)
        out = conn.segments_to_send(1.0)
        if out and out[-1].options.sack:  # SACK blocks name held data above rcv_nxt, most recent first
            left, right = out[-1].options.sack[0]
            assert PEER_ISN + 1 + len(got) < left < right <= PEER_ISN + 1 + len(body)
    assert got == body and conn.rq.ooo_bytes == 0


def test_out_of_order_memory_is_bounded_by_the_range_limit():
    conn, snd = established(tcp.TcpConfig(max_ooo_ranges=8))
    for i in range(1, 200):
        conn.receive(seg("A", PEER_ISN + 1 + 10 * i, snd, b"x"), 1.0)
    assert len(conn.rq.sack_blocks(100)) == 8 and conn.stats.ooo_drops == 199 - 8
    assert conn.rq.ooo_bytes == 8


def test_paws_drops_an_old_timestamp():
    conn, snd = established(timestamps=True)
    conn.receive(seg("PA", PEER_ISN + 1, snd, b"new", options=[("Timestamp", (600, 0))]), 1.0)
    assert data_of(conn) == b"new"
    conn.segments_to_send(1.0)
    conn.receive(seg("PA", PEER_ISN + 4, snd, b"old", options=[("Timestamp", (550, 0))]), 1.1)
    assert data_of(conn) == b"" and conn.stats.paws_drops == 1
    assert conn.segments_to_send(1.1)[0].ack == PEER_ISN + 4
    conn.receive(seg("R", PEER_ISN + 4, options=[("Timestamp", (1, 0))]), 1.2)  # RST is exempt from PAWS
    assert conn.state is tcp.State.CLOSED


def test_syn_cookie_handshake_and_forged_acks():
    cfg = tcp.TcpConfig(syn_backlog=1)
    lst = tcp.TcpListener(SRV, SPORT, cfg)
    lst.receive(seg("S", 1, sport=1), CLI, 0.0)  # fills the backlog
    out, _ = lst.receive(seg("S", 5000, sport=2, options=[("MSS", 1400), ("WScale", 7), ("SAckOK", b"")]), CLI, 0.0)
    synack = out[0]
    assert synack.options == tcp.Options(mss=1460) and lst.stats.cookies_sent == 1 and len(lst.half_open) == 1
    out, conn = lst.receive(seg("A", 5001, synack.ack - 5001 + synack.seq + 1 - synack.ack + 5001, sport=2), CLI,
                            1.0)
    assert conn is not None and conn.state is tcp.State.ESTABLISHED
    assert conn.next_event() == tcp.Connected(mss=1400, wscale=False, sack=False, timestamps=False)
    out, conn = lst.receive(seg("A", 5001, synack.seq + 2, sport=2), CLI, 1.0)  # forged cookie
    assert conn is None and out[0].flags == tcp.RST and lst.stats.cookies_rejected == 1
    out, conn = lst.receive(seg("A", 5001, synack.seq + 1, sport=2), CLI, 1000.0)  # expired cookie
    assert conn is None and out[0].flags == tcp.RST


def test_syn_flood_of_100k_keeps_memory_bounded_and_the_established_connection_serving():
    cfg = tcp.TcpConfig(syn_backlog=128, delayed_ack=0)
    conn, snd = established(cfg)
    lst = tcp.TcpListener(SRV, SPORT, cfg)
    template = bytearray(bytes(IP(src="10.9.0.1", dst=SRV) / TCP(sport=1, dport=SPORT, flags="S",
                                                                 options=[("MSS", 1460)]))[20:])
    got, replies = b"", 0

    def flood(start, n):
        nonlocal got, replies
        for i in range(start, start + n):
            struct.pack_into("!HHI", template, 0, 1024 + i % 60000, SPORT, i * 7919)
            src = f"10.9.{i // 60000}.1"
            out, new = lst.receive(tcp.parse_segment(src, SRV, template, verify_checksum=False), src, i / 1e5)
            replies += len(out)
            assert new is None
            if i % 1000 == 0:  # the established connection keeps working through the flood
                k = i // 1000
                conn.receive(seg("PA", PEER_ISN + 1 + k, snd, bytes([k % 256])), i / 1e5)
                got += data_of(conn)
                conn.segments_to_send(i / 1e5)

    flood(0, 95_000)
    tracemalloc.start()  # once the backlog is full, more SYNs cost no memory at all (cookies keep no state)
    before = tracemalloc.get_traced_memory()[0]
    flood(95_000, 5_000)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(lst.half_open) == 128 and lst.stats.cookies_sent == 100_000 - 128 and replies == 100_000
    assert got == bytes(k % 256 for k in range(100)) and grown < 64 * 1024


def test_syn_cookie_keeps_window_scale_and_sack_in_the_timestamp():
    lst = tcp.TcpListener(SRV, SPORT, tcp.TcpConfig(syn_backlog=1))
    lst.receive(seg("S", 1, sport=1), CLI, 0.0)  # fills the backlog
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (777, 0)), ("WScale", 9)]
    out, _ = lst.receive(seg("S", 5000, sport=2, options=opts), CLI, 10.0)
    synack = out[0]
    assert synack.options.wscale == 4 and synack.options.sack_permitted and synack.options.timestamps[1] == 777
    tsval = synack.options.timestamps[0]
    out, conn = lst.receive(seg("A", 5001, synack.seq + 1, sport=2, options=[("Timestamp", (778, tsval))]),
                            CLI, 10.2)
    assert conn.next_event() == tcp.Connected(mss=1448, wscale=True, sack=True, timestamps=True)
    assert conn.snd_wscale == 9 and conn.rcv_wscale == 4
    conn.send(b"hello")  # the connection's TSvals continue the SYN-ACK's: never behind it (the peer's PAWS)
    data = conn.segments_to_send(10.3)[0]
    assert data.options.timestamps[0] >= tsval and data.options.timestamps[1] == 778


def test_a_whole_transfer_over_a_cookie_connection():
    body = random.randbytes(400_000)
    kw = dict(loss=0.03, delay=0.001)
    p = TcpPair(FaultyLink(5, **kw), FaultyLink(6, **kw), server_cfg=tcp.TcpConfig(syn_backlog=1),
                client=App(data=body), server=App(data=body[::-1]))
    p.listener.receive(seg("S", 1, sport=1), CLI, 0.0)  # the backlog is full: the client gets a cookie
    p.run()
    assert p.listener.stats.cookies_accepted == 1
    assert p.server.received == body and p.client.received == body[::-1]
    assert p.server.events[0] == tcp.Connected(mss=1448, wscale=True, sack=True, timestamps=True)


def test_syn_sent_ignores_resets_that_do_not_ack_our_syn_and_resets_bad_syn_acks():
    conn = tcp.TcpConnection.connect((CLI, CPORT), (SRV, SPORT), 0.0, iss=5000)
    conn.segments_to_send(0.0)
    for bad in (tcp.Segment(SPORT, CPORT, 0, 0, tcp.RST, 0),  # no ACK: RFC 9293 drops it
                tcp.Segment(SPORT, CPORT, 0, 4000, tcp.RST | tcp.ACK, 0)):  # ACK of something else
        conn.receive(bad, 0.1)
        assert conn.state is tcp.State.SYN_SENT and conn.next_event() is None
    conn.receive(tcp.Segment(SPORT, CPORT, 900, 7777, tcp.SYN | tcp.ACK, 1000), 0.2)  # SYN-ACK acking junk
    out = conn.segments_to_send(0.2)
    assert [(s.flags, s.seq) for s in out] == [(tcp.RST, 7777)] and conn.state is tcp.State.SYN_SENT
    conn.receive(tcp.Segment(SPORT, CPORT, 900, 5001, tcp.SYN | tcp.ACK, 1000, tcp.Options(mss=1200)), 0.3)
    assert conn.state is tcp.State.ESTABLISHED and conn.next_event() == tcp.Connected(1200, False, False, False)
    ack = conn.segments_to_send(0.3)[0]
    assert ack.flags == tcp.ACK and ack.seq == 5001 and ack.ack == 901


def test_empty_out_of_window_segments_get_at_most_two_acks_a_second_data_gets_each():
    conn, snd = established()
    acks = 0
    for i in range(100):  # an ACK war in the making: pure ACKs far outside the window
        conn.receive(seg("A", PEER_ISN + 1 + 10**7 + i, snd), 1.0 + i / 100)
        acks += len(conn.segments_to_send(1.0 + i / 100))
    assert acks == 2 and conn.stats.out_of_window == 100
    for i in range(5):  # a retransmission of data already taken is answered every time (a duplicate ACK)
        conn.receive(seg("PA", PEER_ISN + 1 - 100, snd, b"z" * 100), 3.0 + i / 100)
        assert len(conn.segments_to_send(3.0 + i / 100)) == 1
