"""A connection's state for the kernel's TCP_REPAIR (kbypass.proto.tcp.handoff) and the shim host's side of a
handoff (ShimTcp.handoff/handed/release/half_open), without a network: the test_shimtcp Pair, two hosts back to
back. tests/netns/test_run_tcp_fork.py puts the state into real kernel sockets."""

from __future__ import annotations

import errno
import socket

from kbypass.proto import tcp
from kbypass.proto.tcp import handoff
from kbypass.proto.tcp.handoff import HEADER
from tests.unit.test_shimtcp import IA, IB, A, B, Pair, _syn_packet


def _state(p: Pair, sid: int = 2):
    got = p.srv_call("handoff", sid)
    assert isinstance(got, bytes), got
    fields = HEADER.unpack_from(got)
    names = ("snd_una", "snd_nxt", "rcv_seq", "rcv_nxt", "snd_wnd", "max_snd_wnd", "rcv_wnd", "tsval", "mss",
             "snd_wscale", "rcv_wscale", "flags", "unacked", "unsent", "unread")
    st = dict(zip(names, fields))
    body = got[HEADER.size:]
    assert len(body) == st["unacked"] + st["unsent"] + st["unread"]
    return st, body


def test_an_established_connections_sequence_numbers_windows_options_and_bytes():
    p = Pair()
    p.established()
    assert p.cli_call("send", 7, b"a" * 5000) == 5000  # unread at the server
    p.drop_to_cli = True  # the server's bytes go out and are never acknowledged
    assert p.srv_call("send", 2, b"b" * 3000) == 3000
    conn = p.srv.by_sid[2].conn
    st, body = _state(p)
    assert (st["snd_una"], st["snd_nxt"]) == (conn.sq.snd_una, conn.sq.snd_max)
    assert st["snd_nxt"] - st["snd_una"] == st["unacked"] + 0 and st["unacked"] + st["unsent"] == 3000
    assert st["rcv_nxt"] == conn.rcv_nxt and st["rcv_seq"] == (conn.rcv_nxt - 5000) & 0xFFFFFFFF
    assert body == b"b" * 3000 + b"a" * 5000  # sent, then unsent, then what the app has not read
    assert st["flags"] == handoff.SACK | handoff.TIMESTAMPS | handoff.WSCALE  # Linux's negotiation, kept
    assert st["mss"] == conn.snd_mss and (st["snd_wscale"], st["rcv_wscale"]) == (conn.snd_wscale, conn.rcv_wscale)
    assert st["rcv_wnd"] > 0 and st["max_snd_wnd"] >= st["snd_wnd"] > 0
    assert p.srv_call("recv", 2, 100, 0) == b"a" * 100  # handoff() changed nothing: the app may go on


def test_the_peers_fin_is_handed_as_eof_and_our_own_fin_is_not_handed():
    p = Pair()
    p.established()
    assert p.cli_call("send", 7, b"last") == 4
    assert p.cli_call("shutdown", 7, socket.SHUT_WR) == 0
    st, body = _state(p)
    assert st["flags"] & handoff.EOF and body == b"last"
    # rcv_nxt past the FIN (the kernel's ACKs acknowledge it); the unread bytes end there (their sequence numbers
    # are the kernel socket's own business: the peer sends nothing more)
    assert st["rcv_nxt"] == p.srv.by_sid[2].conn.rcv_nxt and st["rcv_nxt"] - st["rcv_seq"] == 4
    assert p.srv_call("shutdown", 2, socket.SHUT_WR) == 0
    assert p.srv_call("handoff", 2) == -errno.EINVAL  # its FIN's sequence number is not the kernel's to send


def test_handed_is_forgotten_without_a_segment_and_its_late_segments_are_dropped_not_reset():
    p = Pair()
    p.established()
    _, packets, _, _ = p.srv.handed(2, p.now)
    assert packets == [] and p.srv.conns == {}
    _, packets, _, _ = p.cli.send(7, b"late", p.now)  # the rule still steers it here a moment
    assert packets and p.srv.frame(packets[0], p.now)[1] == []  # no RST: the kernel's socket answers it
    assert p.srv.counters["rx_no_socket"] == 0
    assert p.srv_call("recv", 2, 10, 0) == -errno.ENOTCONN


def test_a_new_syn_of_a_handed_4_tuple_is_a_new_connection():
    """After a posix_spawn the listener stays ours: once the kernel is done with the handed connection (its pass
    rule gone), the same peer port connecting again must reach the listener, not be dropped as a stray."""
    p = Pair()
    p.established()
    p.srv.handed(2, p.now)
    out = p.srv.frame(_syn_packet(A, B, 40000, 8080), p.now + 5)
    (pkt,) = out[1]
    seg = tcp.parse_segment(socket.inet_aton(B), socket.inet_aton(A), pkt[20:])
    assert seg.has(tcp.SYN) and seg.has(tcp.ACK), seg  # the listener's SYN-ACK


def test_a_released_listener_drops_stray_syns_and_a_new_listen_answers_them():
    p = Pair()
    p.srv_call("listen", 1, IB, 8080, 16)
    p.drop_to_cli = True
    p.cli_call("connect", 7, IA, 40000, IB, 8080)  # the SYN-ACK is lost: half open at the server
    assert p.srv_call("half_open", 1) == 1
    assert p.srv_call("release", 1) == 0  # nothing of ours uses the port: its rule may go at once
    syn = _syn_packet("10.9.0.1", "10.9.0.2", 40002, 8080)
    assert p.srv.frame(syn, p.now)[1] == []  # the kernel's listener takes the SYN sent again
    p.srv_call("listen", 3, IB, 8080, 16)
    assert len(p.srv.frame(syn, p.now)[1]) == 1  # a SYN-ACK
