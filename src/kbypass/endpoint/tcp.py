"""TCP sockets over the bypass: TcpSocket (a connection) and TcpListener, with the socket module's manners.

    from kbypass.endpoint import TcpHost

    with TcpHost("kb-b", "10.77.0.2", netns="kb-b") as host:
        lst = host.listen(8080)
        conn, (ip, port) = lst.accept(timeout=5)
        data = conn.recv(65536)
        conn.sendall(data)
        conn.close()

    with TcpHost("kb-a", "10.77.0.1", netns="kb-a") as host:
        s = host.connect(("10.77.0.2", 80), timeout=2)   # ConnectionRefusedError if nothing listens

The protocol is kbypass.proto.tcp's (sans-IO); the wire, the steering and the clocks are TcpHost's
(kbypass.endpoint.tcpio). Calls block by default and take `timeout` as socket.settimeout does (None: for
ever; 0: non-blocking, BlockingIOError when nothing can be done now). Errors are the stdlib's, with the
kernel's errno: a RST answering our SYN is ConnectionRefusedError; a RST on a connection is
ConnectionResetError for the next call (reported once, as the kernel reports sk_err once), then send is
BrokenPipeError (EPIPE) and recv returns b"" ; exhausted retransmissions or keepalive probes are
TimeoutError (ETIMEDOUT). send after our own shutdown(SHUT_WR) or close is BrokenPipeError.

close() is the kernel's: a graceful FIN, the connection finishing in the host (FIN_WAIT, TIME_WAIT) while the
application moves on, except that unread received data makes it a RST (as Linux does, RFC 2525 2.17).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections import deque

from kbypass.errors import UsageError
from kbypass.proto import tcp
from kbypass.proto.tcp import fastpath as tcp_fastpath
from kbypass.proto.tcp.config import MAX_UNREAD

from .tcperrors import AddressError, AddressTypeError, PortRangeError, check_timeout

_IN_FLIGHT = frozenset({tcp.State.SYN_RCVD, tcp.State.ESTABLISHED, tcp.State.CLOSE_WAIT, tcp.State.FIN_WAIT_1,
                        tcp.State.CLOSING, tcp.State.LAST_ACK})


def _addr(addr) -> tuple[str, int]:
    """(ip, port) as socket.connect takes it, refused with the stdlib's error types (kbypass.endpoint.tcperrors);
    port 0 goes out as the kernel sends it (the peer's RST: ConnectionRefusedError)."""
    if not isinstance(addr, tuple) or len(addr) != 2:
        raise AddressTypeError(f"bad peer address {addr!r}: give a tuple (ip, port) like ('10.77.0.1', 80)")
    ip, port = addr
    if not isinstance(ip, str) or not isinstance(port, int) or isinstance(port, bool):
        raise AddressTypeError(f"bad peer address {addr!r}: give (ip, port), a str and an int, like ('10.77.0.1', 80)")
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise AddressError(f"{ip!r} is not an IPv4 address (kbypass's TCP looks no name up): give one like "
                           "10.77.0.1") from None
    if not 0 <= port <= 0xFFFF:
        raise PortRangeError(f"connect(): port must be 0-65535, not {port}")
    return ip, port


_NOTHING_PREDICTED = tcp_fastpath.Prediction(b"", 0, b"", 0)  # until TcpHost.register gives the host's
_NOTHING_CANNED = tcp_fastpath.Canned()

def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


class TcpSocket:
    """One TCP connection of a TcpHost. Made by TcpHost.connect or TcpListener.accept, not directly."""

    def __init__(self, host, conn, peer: tuple[str, int], local_port: int, listener=None) -> None:
        self.host, self._conn, self.peer = host, conn, peer
        self.local = (host.ip, local_port)
        self._peer_ip = socket.inet_aton(peer[0])
        self.key = (self._peer_ip, peer[1], local_port)
        self.listener = listener
        self._rx: deque[bytes] = deque()
        self._rx_len = 0
        self._rx_off = 0  # bytes of _rx[0] already read
        self._want_room = False  # a send() would block: batched() wakes this socket when room returns
        self.connected = False
        self.eof = False
        self._error: OSError | None = None  # reported once, then _dead says what later calls get
        self._dead: str | None = None  # "reset", "timeout", "refused": the connection is gone
        self._shut_wr = False
        self._app_closed = False
        self.timeout: float | None = None
        self.mss: int | None = None
        # the C fast path's copy of what the next segment looks like (TcpHost.register gives the host's)
        self.prediction = _NOTHING_PREDICTED
        self.canned_prediction = _NOTHING_CANNED  # the C fast path's arming for canned answers (the host's)
        self._canned: dict | None = None

    @classmethod
    def open(cls, host, addr, *, timeout: float | None, blocking: bool, local_port: int) -> TcpSocket:
        ip, port = _addr(addr)
        deadline = _deadline(timeout)
        host.resolve(socket.inet_aton(ip), deadline if deadline is not None else time.monotonic() + 3.0)
        if not host.room():
            raise UsageError(f"{host.max_connections} connections are open on {host.ip} (max_connections): close "
                             "some or open the host with a larger max_connections")
        lport = host.claim_port(local_port)
        try:
            conn = tcp.TcpConnection.connect(local=(host.ip, lport), remote=(ip, port), now=time.monotonic(),
                                             config=host.config)
            sock = cls(host, conn, (ip, port), lport)
            host.register(sock, sock.key)
        except BaseException:
            host.release_port(lport)
            raise
        host.pump()
        if not blocking:
            return sock
        if not host.run_until(lambda: sock.connected or sock._dead is not None, deadline):
            sock.abort()
            raise TimeoutError(errno.ETIMEDOUT, f"connect to {ip}:{port} timed out after {timeout} s")
        if not sock.connected:
            err = sock._take_error()
            raise err if err is not None else ConnectionRefusedError(errno.ECONNREFUSED, f"{ip}:{port} refused")
        host.counters["connected"] += 1
        return sock

    @property
    def conn(self):
        """The connection, up to date: exchanges the C fast path answered and kept (a run: csrc/core/kb_http.h)
        are taken into it first, in one call however many they are (TcpConnection.canned_run_taken). Every
        look at the connection goes through here, so none sees it behind what C sent."""
        if self.canned_prediction.owed:
            conn = self._conn
            conn.canned_run_taken(self.canned_prediction.take_run())
            # the run's timers: an RTT sample that shrank the tail probe's may bring it before the entry the host
            # has (schedule keeps the earlier of the two)
            self.host.schedule(self, conn.next_timer())
        return self._conn

    @property
    def canned_at(self) -> float:
        """When the C fast path last answered a request of this connection from the canned table (0.0: never):
        the application's idle clock, as those requests never reach it."""
        return self.canned_prediction.answered_at

    # ---- driven by the host -----------------------------------------------------------------------------
    def segment(self, seg, now: float) -> None:
        self.unpredict()
        self.conn.receive(seg, now)  # what it answers goes out in flush(), after the events are taken
        self.predict()  # the rest of this burst may be predicted again (a window update, one loss...)

    def timer(self, now: float) -> None:
        t = self.conn.next_timer()
        if t is not None and t <= now:
            self.unpredict()
            self.conn.on_timer(now)

    def predict(self) -> None:
        """Arm the C fast path's prediction from the connection as it is now (or clear it)."""
        state = self.conn.prediction()
        if state is None:
            self.prediction.disarm()
        else:
            self.prediction.arm(*state)
            if self._canned is not None:
                self._arm_canned()

    @property
    def canned(self) -> dict | None:
        """The application's canned answers for this connection (None: none): a dict from a whole request
        (bytes; an HTTP head, up to its empty line) to a tuple whose first item is the answer's bytes, or
        kbypass.proto.tcp.fastpath.SOCKPERF, a rule instead of a table (whole sockperf messages that ask for
        an answer, answered as kbypass.apps.pingpong.answer does; the values one (answer,) per message), or
        NEXT_SEND (a client's: a predicted segment's payload is readable at once, the connection told after,
        and the application's next send leaves from C as its answer: TcpHost.answer_late). While
        set, a predicted segment whose payload is such requests, arriving while nothing else is pending on the
        connection (the application has read everything and has nothing queued), is answered by the C fast
        path (csrc/core/kb_http.h) without the application seeing it: the host reports it in take_canned().
        The application sets it only while it would answer those requests with exactly those bytes."""
        return self._canned

    @canned.setter
    def canned(self, answers: dict | None) -> None:
        if answers is self._canned:
            return
        self._canned = answers
        if answers is None:
            self.canned_prediction.disarm()
        else:
            self.host.touch(self)  # armed at the next flush

    def answered(self, still: bool) -> None:
        """After the C fast path answered a segment from the canned answers and reported it, and the connection
        took the exchange (TcpHost._answered; `still`: answer_hit's result): nothing is left to send and no
        event came (tests/unit/test_http_canned.py holds both), and the prediction C advanced is the
        connection's, so of flush() only this remains: arm the canned answers again (the run too: C may keep
        the next exchanges) and the timers the answer set."""
        if not still:
            self.unpredict()
            self.host.touch(self)
            return
        self._arm_canned()
        if not self.canned_prediction.armed:  # the exchange left more to do than C may: Python's turn
            self.host.touch(self)
            return
        self.host.schedule(self, self._conn.next_timer())

    def take_early(self, payload: bytes) -> bool:
        """At a HIT the NEXT_SEND arming was kept over (TcpHost): make payload readable now, unless something
        could be overtaken (an event waiting in the connection, the unread limit) or nobody reads; True when
        taken (the host tells the connection later: TcpHost.catch_up or answer_late)."""
        if self._app_closed or self._rx_len >= MAX_UNREAD or not self.conn.takes_early:
            return False
        self._rx.append(payload)
        self._rx_len += len(payload)
        return True

    def _arm_canned(self) -> None:
        state = None
        conn = self.conn
        if not self._rx and not self._app_closed and not self._shut_wr and self._dead is None:
            state = conn.canned_state()
        eth = None if state is None else self.host.eth_head(self._peer_ip)
        if eth is None:
            self.canned_prediction.disarm()
            return
        self.canned_prediction.arm(eth, self._canned, *state)
        run = conn.canned_run()
        if run is not None:
            self.canned_prediction.arm_run(*run)

    def unpredict(self) -> None:
        """The connection is about to change outside the fast path (a segment, a timer, shutdown, close,
        abort): predict nothing until flush() re-arms (TcpConnection.prediction says why the connection is
        the one source of truth). send() and recv() need not: queueing data and taking it from our own
        buffer change nothing a prediction holds (the window moves only as flush takes Data events)."""
        self.prediction.disarm()
        self.canned_prediction.disarm()

    def flush(self, now: float) -> None:
        """Take the connection's events, send what it has (after the events: taking Data may reopen the
        window), set its next timer, forget it once CLOSED."""
        self._events()
        segs = self.conn.segments_to_send(now)
        if segs:
            self.host.send_segments(self._peer_ip, segs)
        self.predict()  # settled until the next segment, timer or call: predict it
        self.host.schedule(self, self.conn.next_timer())
        if self._finished():
            self.host.forget(self)

    def take_events(self) -> None:
        """What the connection has for the application (data, EOF, reset) into this socket, without sending:
        the host calls it after a receive burst so a loop sees what came before it answers."""
        self._events()
        if self._want_room and not self.conn.send_blocked:  # its WindowOpened may wait behind unread Data
            self._want_room = False
            if self.host.woken is not None:
                self.host.woken.add(self)

    def _finished(self) -> bool:
        return self.conn.finished

    def _events(self) -> None:
        conn = self.conn
        woke = False
        while self._rx_len < MAX_UNREAD or self._app_closed:
            ev = conn.next_event()
            if ev is None:
                break
            woke = True
            kind = type(ev)
            if kind is tcp.Data:
                if self._app_closed:
                    # data for an application that closed: the kernel answers it with a RST
                    self.unpredict()  # like every change outside the fast path: CLOSED predicts nothing
                    conn.abort()
                    self.host.touch(self)
                    continue
                self._rx.append(ev.data)
                self._rx_len += len(ev.data)
            elif kind is tcp.Connected:
                self.connected = True
                self.mss = ev.mss
                if self.listener is not None:
                    self.listener.ready(self)
            elif kind is tcp.EndOfStream:
                self.eof = True
            elif kind is tcp.Reset:
                self._died(ev.reason)
            # Closed: the state says it; WindowOpened: send() looks at the room itself
        if woke and self.host.woken is not None:
            self.host.woken.add(self)  # the loop of TcpHost.batched looks at this socket (take_woken)

    def _died(self, reason: str) -> None:
        where = f"{self.peer[0]}:{self.peer[1]}"
        if reason == tcp.REFUSED:
            self._dead, self._error = "refused", ConnectionRefusedError(errno.ECONNREFUSED, f"{where} refused the "
                                                                                            "connection (RST)")
        elif reason in (tcp.TIMED_OUT, tcp.KEEPALIVE):
            self._dead, self._error = "timeout", TimeoutError(errno.ETIMEDOUT, f"{where}: {reason}")
        elif reason == tcp.ABORTED:
            self._dead = "reset"
        else:
            self._dead, self._error = "reset", ConnectionResetError(errno.ECONNRESET, f"{where} reset the "
                                                                                     "connection (RST)")
        if self.listener is not None and not self.connected:
            self.listener.lost(self)

    def _take_error(self) -> OSError | None:
        err, self._error = self._error, None
        return err

    # ---- the socket API -----------------------------------------------------------------------------------
    def settimeout(self, timeout: float | None) -> None:
        self.timeout = check_timeout(timeout)

    def gettimeout(self) -> float | None:
        return self.timeout

    def setblocking(self, flag: bool) -> None:
        self.timeout = None if flag else 0.0

    def getpeername(self) -> tuple[str, int]:
        return self.peer

    def getsockname(self) -> tuple[str, int]:
        return self.local

    def _wait(self, ready, what: str, pump: bool = True) -> None:
        """Pump until ready(); BlockingIOError (non-blocking) or TimeoutError (after the timeout) if not.
        pump=False (non-blocking): no pump first, BlockingIOError at once."""
        if ready():
            return
        if self.timeout == 0:
            if not pump:
                raise BlockingIOError(errno.EAGAIN, f"{what} would block")
            self.host.pump()
            if ready():
                return
            raise BlockingIOError(errno.EAGAIN, f"{what} would block")
        if not self.host.run_until(ready, _deadline(self.timeout)):
            raise TimeoutError(f"{what} timed out after {self.timeout} s")

    def recv(self, bufsize: int = 65536) -> bytes:
        """Up to bufsize bytes; b"" at the end of the stream (the peer's FIN) or after a reported reset."""
        if self._app_closed:
            raise OSError(errno.EBADF, "the socket is closed")
        if not self._rx:
            self._wait(lambda: self._rx or self.eof or self._dead is not None, "recv")
        if self._rx:
            return self._take(bufsize)
        err = self._take_error()
        if err is not None:
            raise err
        return b""

    def _take(self, n: int) -> bytes:
        head = self._rx[0]
        off = self._rx_off
        if len(head) - off <= n and off == 0:
            self._rx.popleft()
            out = head
        elif len(head) - off <= n:
            self._rx.popleft()
            out = head[off:]
            self._rx_off = 0
        else:
            out = head[off:off + n]
            self._rx_off = off + n
            self._rx_len -= len(out)
            return out
        self._rx_off = 0
        self._rx_len -= len(out)
        if self._rx_len < MAX_UNREAD:
            self.host.touch(self)  # take more events (the window opens as we do)
        return out

    def recv_into(self, buf, nbytes: int = 0) -> int:
        data = self.recv(nbytes or len(buf))
        buf[:len(data)] = data
        return len(data)

    def _check_send(self) -> None:
        if self._app_closed:
            raise OSError(errno.EBADF, "the socket is closed")
        if self._shut_wr:
            raise BrokenPipeError(errno.EPIPE, "send after shutdown(SHUT_WR)")
        if self._dead is not None:
            err = self._take_error()
            raise err if err is not None else BrokenPipeError(errno.EPIPE, f"the connection to {self.peer[0]}:"
                                                                           f"{self.peer[1]} is gone")

    def send(self, data) -> int:
        """Queue what the send buffer takes of data (at least one byte, blocking); returns how much."""
        self._check_send()
        view = memoryview(data).cast("B")
        if not view:
            return 0
        host = self.host
        if host.late and host.answer_late(self, view):  # the answer to what we took early, from C
            return len(view)
        if not host.defer_tx:  # a request/response's answer: one segment straight out (TcpConnection.send_now)
            head = host.eth_head(self._peer_ip)
            if head is not None:
                self._events()  # as flush() takes them before sending: they may reopen the window
                fields = self.conn.send_now(view, time.monotonic())
                if fields is not None:
                    host.send_fields(head, self._peer_ip, self.local[1], self.peer[1], fields, view)
                    self.predict()
                    host.schedule(self, self.conn.next_timer())
                    return len(view)
        sent = [self.conn.send(view)]
        if sent[0] == 0:
            def room() -> bool:  # the send buffer took some (WindowOpened may sit behind unread Data events)
                if self._dead is None and not sent[0]:
                    sent[0] = self.conn.send(view)
                return self._dead is not None or sent[0] > 0
            try:  # inside batched() no pump: it would send the batch's other answers mid-batch (when room
                # returns, take_events puts this socket in take_woken, even with WindowOpened behind unread Data)
                self._wait(room, "send", pump=not self.host.defer_tx)
            except BlockingIOError:
                self._want_room = True
                raise
            finally:
                if sent[0]:
                    self.host.touch(self)
            self._check_send()
        if self.host.defer_tx:  # the loop sends what its batch queued at once (TcpHost.batched)
            self.host.touch(self)
        else:
            self.host.flush_one(self)  # out now, as a kernel send() would (nothing else may call into the host soon)
        return sent[0]

    def sendall(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = self.send(view)
            view = view[n:]

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        self.host.catch_up()  # segments taken early are the connection's before anything else
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and not self._shut_wr and self._dead is None:
            self._shut_wr = True
            self.unpredict()
            self.conn.shutdown()
            self.host.touch(self)
            self.host.pump()

    def close(self) -> None:
        """FIN (RST when received data went unread); the host finishes the connection on its own."""
        if self._app_closed:
            return
        self.host.catch_up()
        self.unpredict()
        if self._dead is None and not self._finished():
            if self._rx_len:
                self.conn.abort()
            elif not self._shut_wr:
                self._shut_wr = True
                self.conn.shutdown()
            self.conn.orphan(time.monotonic())  # FIN_WAIT_2 ends after fin_timeout (Linux tcp_fin_timeout)
        self._app_closed = True
        self._rx.clear()
        self._rx_len = 0
        self.host.touch(self)
        self.host.pump()

    def abort(self) -> None:
        """RST now (SO_LINGER 0 then close)."""
        self.host.catch_up()
        self.unpredict()
        if self._dead is None and not self._finished():
            self.conn.abort()
        self._app_closed = True
        self.host.touch(self)
        self.flush(time.monotonic())

    @property
    def closing(self) -> bool:
        """Closed by the application, and our data or FIN not yet acknowledged."""
        return self._app_closed and self.conn.state in _IN_FLIGHT

    @property
    def readable(self) -> bool:
        return bool(self._rx) or self.eof or self._dead is not None

    def __enter__(self) -> TcpSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TcpSocket {self.local[0]}:{self.local[1]} -> {self.peer[0]}:{self.peer[1]} {self.conn.state.name}>"


class TcpListener:
    """A listening port of a TcpHost: accept() hands out established connections (a TcpSocket each).

    backlog: established connections waiting for accept(); past it a new one is reset (counted in
    `refused_backlog`). The host's max_connections bounds all connections: a SYN past it is answered with a
    RST and counted in the host's `refused_limit`, so a client fails at once (ECONNREFUSED) instead of
    retrying SYNs for a minute."""

    def __init__(self, host, port: int, backlog: int = 128) -> None:
        if backlog < 1:
            raise UsageError(f"backlog {backlog}: give at least 1")
        self.host = host
        self.port = host.claim_port(port)
        self.backlog = backlog
        try:
            self._tcp = tcp.TcpListener(host.ip, self.port, config=host.config)
        except BaseException:
            host.release_port(self.port)
            raise
        self._ready: deque[TcpSocket] = deque()
        self.refused_backlog = 0
        self.timeout: float | None = None
        self._closed = False
        host._listeners[self.port] = self

    # ---- driven by the host -----------------------------------------------------------------------------
    def segment(self, seg, src: bytes, now: float) -> None:
        host = self.host
        if (seg.has(tcp.SYN) and not seg.has(tcp.ACK) and not host.room()
                and (socket.inet_ntoa(src), seg.src_port) not in self._tcp.half_open):  # not a retransmitted SYN
            host.counters["refused_limit"] += 1
            host.send_segments(src, host.reset_for(seg))
            return
        out, conn = self._tcp.receive(seg, socket.inet_ntoa(src), now)
        if out:
            host.send_segments(src, out)
        host.schedule(self, self._tcp.next_timer())
        if conn is None:
            return
        if host.connections >= host.max_connections:  # cannot happen while half-open ones count; kept safe
            host.counters["refused_limit"] += 1
            conn.abort()
            host.send_segments(src, conn.segments_to_send(now))
            return
        sock = TcpSocket(host, conn, (socket.inet_ntoa(src), seg.src_port), self.port, listener=self)
        host.register(sock, sock.key)

    def timer(self, now: float) -> None:
        """SYN-ACK retransmissions of the half-open connections (the listener keeps those itself)."""
        t = self._tcp.next_timer()
        if t is not None and t <= now:
            for ip, seg in self._tcp.on_timer(now):
                self.host.send_segments(socket.inet_aton(ip), [seg])

    def flush(self, now: float) -> None:
        self.host.schedule(self, self._tcp.next_timer())

    def take_events(self) -> None:
        """A listener's events are its handshakes' (segment() hands them over at once)."""

    def ready(self, sock: TcpSocket) -> None:
        """sock finished its handshake: queue it for accept(), or reset it when the queue is full."""
        if self._closed or len(self._ready) >= self.backlog:
            self.refused_backlog += 1
            sock.listener = None
            sock.abort()
            return
        self._ready.append(sock)
        self.host.counters["accepted"] += 1

    @property
    def half_open(self) -> dict:
        """Connections between SYN and the handshake's last ACK (the protocol's listener holds them)."""
        return self._tcp.half_open

    def lost(self, sock: TcpSocket) -> None:
        if sock in self._ready:
            self._ready.remove(sock)

    # ---- the socket API -----------------------------------------------------------------------------------
    def settimeout(self, timeout: float | None) -> None:
        self.timeout = check_timeout(timeout)

    def setblocking(self, flag: bool) -> None:
        self.timeout = None if flag else 0.0

    def getsockname(self) -> tuple[str, int]:
        return (self.host.ip, self.port)

    def accept(self, timeout: float | None = -1.0) -> tuple[TcpSocket, tuple[str, int]]:
        """The next established connection and its peer (ip, port). timeout: as settimeout's (default: the
        listener's own)."""
        if self._closed:
            raise OSError(errno.EBADF, "the listener is closed")
        timeout = self.timeout if timeout == -1.0 else timeout
        if not self._ready:
            if timeout == 0:
                self.host.pump()
                if not self._ready:
                    raise BlockingIOError(errno.EAGAIN, "no connection to accept")
            elif not self.host.run_until(lambda: bool(self._ready), _deadline(timeout)):
                raise TimeoutError(f"no connection on {self.host.ip}:{self.port} within {timeout} s")
        sock = self._ready.popleft()
        sock.listener = None
        return sock, sock.peer

    @property
    def pending(self) -> int:
        return len(self._ready)

    def close(self) -> None:
        """Stop listening: queued connections nobody accepted are reset; accepted ones live on."""
        if self._closed:
            return
        self._closed = True
        while self._ready:
            self._ready.popleft().abort()
        self.host._listeners.pop(self.port, None)
        if not self.host.port_in_use(self.port):
            self.host.release_port(self.port)

    def __enter__(self) -> TcpListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
