"""The HTTP/1.1 responder's loop (`kbypass http serve`): one thread, every connection of one listener.

serve(host, listener, site, ...) drives a TcpHost (kbypass.endpoint.tcpio: pump, wait) and its TcpListener:
accept what is established, read and parse requests (kbypass.proto.http: keep-alive, pipelining; answers go
out in request order), and write responses as the connections' send buffers take them, a body never whole
in memory. A connection that sent "Connection: close", a bad request, or that the peer half-closed is closed
once its answers are out. The loop is the program's (the host has no thread), so it waits in the host's own
wait() when nothing moved.

A pass works in batches (TcpHost.batched): take a receive burst (host.receive), answer every request it
brought, then send once (host.transmit): each connection's answers leave as one segment carrying the ACK
of its requests, and the TX ring is kicked once for all of them. The pass looks only at the connections
with news (host.take_woken), answers still to write (not one whose send would block: its WindowOpened
wakes it), or requests waiting unread in its socket (past MAX_QUEUED); all of them 4 times a second for the
timeouts. A small generated answer is one pre-encoded piece (kbypass.proto.http.respond_whole).

One client cannot take the server: a connection is not read while MAX_QUEUED answers wait for it (its TCP
window then closes: pipelining is paced by what the client reads), a file is opened only when its answer's
turn to be written comes (never one descriptor per queued request), and an OSError while answering (EMFILE,
a file that went away) is a 500 for that request. A request head must arrive within `head_timeout` seconds
(408, then close) and a keep-alive connection waiting for its next request is closed after
`keepalive_timeout` seconds (nginx's client_header_timeout 60 s and keepalive_timeout 75 s are the defaults).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from kbypass.proto.http import (
    HttpError,
    Request,
    RequestParser,
    error_response,
    http_date,
    learn_canned,
    respond,
    respond_whole,
)

WRITE_CHUNK = 256 * 1024  # bytes gathered for one send() call
MAX_QUEUED = 16  # answers waiting on one connection before it is no longer read
READ_SIZE = 16384  # bytes read at once: bounds the requests parsed past MAX_QUEUED
HEAD_TIMEOUT = 60.0
KEEPALIVE_TIMEOUT = 75.0


@dataclass
class ServeResult:
    connections: int = 0
    requests: int = 0
    responses: int = 0
    bad_requests: int = 0
    body_bytes: int = 0
    resets: int = 0
    timeouts: int = 0
    seconds: float = 0.0
    statuses: dict = field(default_factory=dict)


class _Client:
    __slots__ = ("sock", "parser", "queue", "out", "off", "closing", "eof", "idle_at", "head_at", "served",
                 "blocked")

    def __init__(self, sock, now: float) -> None:
        self.sock = sock
        self.parser = RequestParser()
        # in request order: a Request still to answer, or (head, body) being written
        self.queue: deque = deque()
        self.out = b""
        self.off = 0
        self.closing = False  # close once the queue is written
        self.eof = False
        self.idle_at = now  # since when it has had nothing to answer
        self.head_at: float | None = None  # since when part of a request head waits
        self.served = False  # a request answered: waiting now is keep-alive
        self.blocked = False  # the last send would block: its WindowOpened wakes it (take_woken), not each pass

    def busy(self) -> bool:
        return bool(self.queue) or self.off < len(self.out)


def serve(host, listener, site, *, duration: float | None = None, requests: int | None = None,
          idle_timeout: float | None = None, stop=lambda: False, head_timeout: float = HEAD_TIMEOUT,
          keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> ServeResult:
    """Serve until `duration` seconds, `requests` answered (then the connections are drained and closed),
    `idle_timeout` seconds without a connection open, or stop() is true."""
    res = ServeResult()
    clients: dict = {}  # TcpSocket -> _Client, in the order they came
    active: dict = {}  # the clients to look at next pass (an ordered set): news came, or answers still go out
    start = time.monotonic()
    deadline = None if duration is None else start + duration
    idle_since = start
    timers_at = start
    date_at, date = 0, ""
    # whole requests -> their pre-encoded answers for this Date, answered in C while a connection has nothing
    # else pending (TcpSocket.canned; learnt from requests answered here, learn_canned); not with a request
    # limit (each must be counted before the next is taken)
    canned: dict | None = {} if requests is None else None
    listener.setblocking(False)
    with host.batched():  # a pass takes a receive burst, answers all of it, then sends once (transmit)
        while not stop():
            second = int(time.monotonic())
            if second != date_at:  # before the receive: C answers in it from the canned table
                date_at, date = second, http_date(time.time())
                if canned is not None:
                    canned.clear()  # the last second's Date must not go out
            host.receive()
            now = time.monotonic()
            moved = False
            tally = host.take_canned()  # requests answered in C: counted (their sockets' canned_at is the clock)
            if tally:
                _count_canned(tally, res)
                moved = True
            while listener.pending and (requests is None or res.requests < requests):
                sock, _ = listener.accept(0)
                sock.setblocking(False)
                clients[sock] = active[sock] = _Client(sock, now)
                res.connections += 1
                moved = True
            for sock in host.take_woken():  # only these had news: thousands of idle connections cost nothing
                c = clients.get(sock)
                if c is not None:
                    active[sock] = c
            timers_due = now >= timers_at  # the request timeouts are looked at 4 times a second, not every pass
            if timers_due:
                timers_at = now + 0.25
            todo, active = (clients if timers_due else active).copy(), {}
            for key, c in todo.items():
                if c.sock.readable and len(c.queue) < MAX_QUEUED:
                    moved |= _read(c, date, res, requests, now, site, canned)
                if c.busy():
                    moved |= _write(c, site, date, res)
                    if not c.busy():  # the timeouts count from here
                        c.idle_at, c.head_at = now, (now if c.parser.pending else None)
                elif timers_due and not c.closing and not c.eof:
                    moved |= _timed_out(c, now, date, res, head_timeout, keepalive_timeout)
                if (c.closing or c.eof) and _done(c, res):
                    del clients[key]
                    continue
                if (c.sock.readable and len(c.queue) < MAX_QUEUED and not c.closing and not c.eof) or (
                        c.busy() and not c.blocked):
                    # requests unread past MAX_QUEUED (taken as events already: nothing wakes this connection for
                    # them again), or answers still to write while the send buffer takes them
                    active[key] = c
                c.sock.canned = canned if (canned is not None and not c.busy() and c.parser.idle and not c.closing
                                           and not c.eof) else None
            host.transmit()  # the pass's answers, each connection's in one go (and due timers)
            if clients:
                idle_since = now
            if deadline is not None and now >= deadline:
                break
            if requests is not None and res.requests >= requests and not clients:
                break
            if idle_timeout is not None and not clients and now - idle_since >= idle_timeout:
                break
            if not moved:  # wake at least each second: the request timeouts are checked then
                host.wait(now + 1.0 if deadline is None else min(deadline, now + 1.0))
    for c in clients.values():
        _drop(c)
        c.sock.close()
    host.pump()
    res.seconds = time.monotonic() - start
    return res


def _timed_out(c: _Client, now: float, date: str, res: ServeResult, head_timeout: float,
               keepalive_timeout: float) -> bool:
    """Close a connection whose request head is late (408 first) or that waited too long for its next
    request (keep-alive: closed without an answer, as nginx does); True when it timed out."""
    canned_at = c.sock.canned_at  # the requests the TCP fast path answered restart the keep-alive clock
    if canned_at > c.idle_at:
        c.served, c.idle_at = True, canned_at
    if c.parser.pending:
        if c.head_at is None:
            c.head_at = now
        if now - c.head_at < head_timeout:
            return False
        c.queue.append(error_response(408, date))
        res.statuses[408] = res.statuses.get(408, 0) + 1
    elif now - c.idle_at < (keepalive_timeout if c.served else head_timeout):
        return False
    res.timeouts += 1
    c.closing = True
    return True


def _count_canned(tally: dict, res: ServeResult) -> None:
    """Requests the TCP fast path answered from the canned table ({respond_whole's tuple: times sent}),
    counted as _gather counts what it answers."""
    statuses = res.statuses
    for (_data, status, body_len), n in tally.items():
        res.requests += n
        res.responses += n
        res.body_bytes += body_len * n
        statuses[status] = statuses.get(status, 0) + n


def _read(c: _Client, date: str, res: ServeResult, limit: int | None, now: float, site=None,
          canned: dict | None = None) -> bool:
    sock = c.sock
    moved = False
    while sock.readable and not c.closing and not c.eof and len(c.queue) < MAX_QUEUED:
        try:
            data = sock.recv(READ_SIZE)
        except (ConnectionError, TimeoutError):
            res.resets += 1
            c.closing, c.eof = True, True
            _drop(c)
            return True
        moved = True
        if not data:
            c.eof = True  # the peer sends no more: answer what it asked, then close
            break
        try:
            idle = c.parser.idle
            reqs = c.parser.feed(data)
            if canned is not None and idle and reqs and c.parser.idle:
                learn_canned(canned, data, reqs, site, date)
        except HttpError as e:
            reqs = []
            res.bad_requests += 1
            c.queue.append(error_response(e.status, date))
            res.statuses[e.status] = res.statuses.get(e.status, 0) + 1
            c.closing = True
        for req in reqs:
            c.queue.append(req)  # answered (a file opened) when its turn to be written comes
            res.requests += 1
            c.served = True
            if not req.keep_alive or (limit is not None and res.requests >= limit):
                c.closing = True
                break
        if not c.parser.pending:
            c.head_at = None
        elif c.head_at is None:
            c.head_at = now  # a head begun: it has head_timeout to complete, however slowly it trickles
    return moved


def _answer(req, site, date: str, res: ServeResult) -> tuple[bytes, object]:
    try:
        head, body, _ = respond(req, site, date)
    except OSError:  # out of descriptors, a file unreadable or gone: this request fails, not the server
        head, body = error_response(500, date, req.keep_alive)
    status = int(head[9:12])
    res.statuses[status] = res.statuses.get(status, 0) + 1
    return head, body


def _write(c: _Client, site, date: str, res: ServeResult) -> bool:
    sock = c.sock
    moved = c.blocked = False
    while True:
        if c.off >= len(c.out):
            c.out, c.off = (_gather(c, site, date, res) if c.queue else b""), 0
            if not c.out:
                return moved
        try:
            n = sock.send(memoryview(c.out)[c.off:] if c.off else c.out)
        except BlockingIOError:
            c.blocked = True
            return moved
        except (ConnectionError, TimeoutError, OSError):
            res.resets += 1
            _drop(c)
            c.out, c.off, c.closing = b"", 0, True
            return True
        c.off += n
        moved = True


def _drop(c: _Client) -> None:
    """Forget the answers still queued (the connection is gone), closing a file being sent."""
    for item in c.queue:
        if isinstance(item, tuple):
            item[1].close()
    c.queue.clear()


def _gather(c: _Client, site, date: str, res: ServeResult) -> bytes:
    """Up to WRITE_CHUNK bytes of the queued responses (a head with the start of its body, several small
    pipelined responses in one piece). A small generated answer is one pre-encoded piece (respond_whole)."""
    parts: list[bytes] = []
    size = 0
    q = c.queue
    statuses = res.statuses
    while q and size < WRITE_CHUNK:
        item = q[0]
        if type(item) is Request:
            whole = respond_whole(item, site, date)
            if whole is not None:
                data, status, body_len = whole
                parts.append(data)
                size += len(data)
                res.body_bytes += body_len
                statuses[status] = statuses.get(status, 0) + 1
                res.responses += 1
                q.popleft()
                continue
            q[0] = item = _answer(item, site, date, res)
        head, body = item
        if head:
            parts.append(head)
            size += len(head)
            q[0] = (b"", body)
        piece = body.next(WRITE_CHUNK - size)
        if piece:
            parts.append(piece)
            size += len(piece)
            res.body_bytes += len(piece)
        if not body.left:
            q.popleft()
            res.responses += 1
    return b"".join(parts)


def _done(c: _Client, res: ServeResult) -> bool:
    """Close a client that has nothing more to do; True when it was closed."""
    if c.queue or c.off < len(c.out):
        return False
    if c.closing or c.eof:
        c.sock.close()
        c.sock = None
        return True
    return False
