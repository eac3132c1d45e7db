"""The sockets of `kbypass run`'s TCP host (kbypass.sockapi.shimtcp) as it keeps them, and what the host and
the shim's C (csrc/preload/kbp_tcp.c, kbp_tcpfast.c) say to each other about them.

_Conn is one connection: the protocol's TcpConnection, the bytes the app has not read that the host holds
(rx), what the shim's C queue holds of them (c_owned, c_held), its error and its readiness as poll bits;
_Listener is one listening socket and the connections it completed for accept(). The formats: a change's mask
(poll bits, NEWS, GONE, PYRX, PYTX, the connection's state in bits 16-19), the hit log's records (HIT for a
segment C predicted and queued for the app, CONSUMED for the app's reads of that queue), accept()'s ACCEPTED
and the status page's TALLY. kbp.h has their C twins.
"""

from __future__ import annotations

import socket
import struct
from collections import deque

from kbypass.proto import tcp

POLLIN, POLLOUT, POLLERR, POLLHUP, POLLRDHUP = 0x1, 0x4, 0x8, 0x10, 0x2000
NEWS = 0x10000000  # new data or a new connection since the last report (the shim's EPOLLET edge)
GONE = 0x20000000  # finished: the shim may forget the sid
PYRX = 0x40000000  # bytes wait here for the app: the shim queues no predicted segment in C before they are read
PYTX = 0x08000000  # bytes (or a FIN) wait here for the ACK clock: the shim hands a predicted pure ACK over at once
# one segment the shim's C predicted (kb_tcp_predict on the connection's Prediction) and queued for the app
# itself: sid, seq, ack, tsval, tsecr, window, flags, has timestamps, payload length, arrival; the payload follows.
# flags 0 (a predicted segment has ACK): no segment, the app read `length` bytes of that queue (CONSUMED)
HIT = struct.Struct("=IIIIIHBBId")
CONSUMED = 0
# the shim's C reports the app's reads of its queue in steps of this many bytes, and when the queue empties with
# less window left than that (kbp.h KBP_TCP_READ_REPORT): the window it advertises is short by less than this
READ_REPORT = 64 << 10
ACCEPTED = struct.Struct("!4sH4sH")
# a connection's state in its changes' bits 16-19 (for `kbypass run --status`: the shim puts it in the socket's
# page slot): 1 + its index in tcp.State (kbypass.cp.shimpage names them back)
STATE_SHIFT = 16
_STATE_BITS = {st: (i + 1) << STATE_SHIFT for i, st in enumerate(tcp.State)}
# ShimTcp.tally: the host's counters the shim copies to the status page (kbp.h KBP_PAGE_TCP, shimpage.TCP_COUNTERS)
TALLY = ("rx_segments", "rx_predicted", "tx_segments", "retransmits", "connections", "rx_no_socket")


# a closed connection in these states still owes the peer bytes or its FIN (not yet acknowledged)
_OWING = frozenset((tcp.State.ESTABLISHED, tcp.State.CLOSE_WAIT, tcp.State.FIN_WAIT_1, tcp.State.CLOSING,
                    tcp.State.LAST_ACK))


def unfinished(conns) -> list[_Conn]:
    """The connections the app closed whose bytes or FIN the peer has not acknowledged yet: the shim's exit
    waits for them (csrc/preload/kbp_tcpexit.c, ShimTcp.exit_pending)."""
    return [c for c in conns if c.app_closed and not c.dead and c.conn.state in _OWING]


def _pkey(key: tuple[bytes, int, int]) -> int:
    """A connection's key in the prediction table (kbypass._fasttcp.rx builds the same from a frame)."""
    return (int.from_bytes(key[0], "big") << 32) | (key[1] << 16) | key[2]


def _rearm(c: _Conn) -> None:
    """c's C prediction armed from its connection as it is now (or disarmed where it predicts nothing)."""
    state = c.conn.prediction()
    if state is None:
        c.prediction.disarm()
    else:
        c.prediction.arm(*state)


class _Conn:
    """One connection: the protocol's, the bytes the application has not read, its error and readiness."""

    __slots__ = ("sid", "conn", "local", "local_ip", "peer", "peer_ip", "key", "rx", "rx_len", "eof", "error", "dead",
                 "app_closed", "shut_wr", "shut_rd", "connected", "mask", "news", "listener", "prediction", "c_owned",
                 "c_held")

    def __init__(self, conn, local: tuple[str, int], peer: tuple[str, int], listener=None) -> None:
        self.sid: int | None = None
        self.conn = conn
        self.local, self.peer = local, peer
        self.peer_ip = socket.inet_aton(peer[0])
        self.local_ip = socket.inet_aton(local[0])
        self.key = (self.peer_ip, peer[1], local[1])
        self.rx: deque[bytes] = deque()
        self.rx_len = 0
        self.eof = self.dead = self.app_closed = self.shut_wr = self.shut_rd = self.connected = False
        self.error = 0
        self.mask = -1  # never reported
        self.news = False
        self.listener = listener  # until accepted
        self.prediction = None  # the C fast path's (ShimTcp._register)
        self.c_owned = 0  # bytes of hits() the shim's C queue holds for the app: not queued here again
        self.c_held = 0  # bytes of hits() the app has not read from the C queue, as far as the shim reported

    def readiness(self) -> int:
        m = 0
        if self.rx:
            m |= POLLIN | PYRX
        if self.eof or self.dead or self.shut_rd or self.error:
            m |= POLLIN
        if self.eof:
            m |= POLLRDHUP
        if self.error:
            m |= POLLERR
        if self.shut_rd:
            m |= POLLRDHUP  # Linux's tcp_poll: RCV_SHUTDOWN, by the peer's FIN or shutdown(SHUT_RD)
        if self.dead or ((self.eof or self.shut_rd) and self.shut_wr):
            m |= POLLHUP
        if self.dead or (self.connected and not self.shut_wr and self.conn.send_room > 0):
            m |= POLLOUT
        sq = self.conn.sq
        if sq.snd_max != sq.data_end:
            m |= PYTX
        return m | _STATE_BITS[self.conn.state]


class _Listener:
    __slots__ = ("sid", "tcp", "ip", "ip_bytes", "port", "backlog", "ready", "mask", "news")

    def __init__(self, sid: int, ip: str, port: int, backlog: int, config) -> None:
        self.sid, self.ip, self.port, self.backlog = sid, ip, port, max(1, backlog)
        self.ip_bytes = socket.inet_aton(ip)
        self.tcp = tcp.TcpListener(ip, port, config=config)
        self.ready: deque[_Conn] = deque()
        self.mask = -1
        self.news = False

    def readiness(self) -> int:
        return POLLIN if self.ready else 0
