"""The HTTP/1.1 responder's loop (`kbypass http serve`): one thread, every connection of one listener.

serve(host, listener, site, ...) drives a TcpHost (kbypass.endpoint.tcpio: pump, wait) and its TcpListener:
accept what is established, read and parse requests (kbypass.proto.http: keep-alive, pipelining; answers go
out in request order), and write responses as the connections' send buffers take them, a body never whole
in memory. A connection that sent "Connection: close", a bad request, or that the peer half-closed is closed
once its answers are out. The loop is the program's (the host has no thread), so it waits in the host's own
wait() when nothing moved.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from kbypass.proto.http import (
    HttpError,
    RequestParser,
    error_response,
    http_date,
    respond,
)

WRITE_CHUNK = 256 * 1024  # bytes gathered for one send() call


@dataclass
class ServeResult:
    connections: int = 0
    requests: int = 0
    responses: int = 0
    bad_requests: int = 0
    body_bytes: int = 0
    resets: int = 0
    seconds: float = 0.0
    statuses: dict = field(default_factory=dict)


class _Client:
    __slots__ = ("sock", "parser", "queue", "out", "off", "closing", "eof")

    def __init__(self, sock) -> None:
        self.sock = sock
        self.parser = RequestParser()
        self.queue: deque = deque()  # (head, body) still to write, in request order
        self.out = b""
        self.off = 0
        self.closing = False  # close once the queue is written
        self.eof = False


def serve(host, listener, site, *, duration: float | None = None, requests: int | None = None,
          idle_timeout: float | None = None, stop=lambda: False) -> ServeResult:
    """Serve until `duration` seconds, `requests` answered (then the connections are drained and closed),
    `idle_timeout` seconds without a connection open, or stop() is true."""
    res = ServeResult()
    clients: list[_Client] = []
    start = time.monotonic()
    deadline = None if duration is None else start + duration
    idle_since = start
    date_at, date = 0, ""
    listener.setblocking(False)
    while not stop():
        host.pump()
        now = time.monotonic()
        if int(now) != date_at:
            date_at, date = int(now), http_date(time.time())
        moved = False
        while listener.pending and (requests is None or res.requests < requests):
            sock, _ = listener.accept(0)
            sock.setblocking(False)
            clients.append(_Client(sock))
            res.connections += 1
            moved = True
        finished = False
        for c in clients:
            if c.sock.readable:
                moved |= _read(c, site, date, res, requests)
            if c.queue or c.off < len(c.out):
                moved |= _write(c, res)
            if (c.closing or c.eof) and _done(c, res):
                finished = True
        if finished:
            clients = [c for c in clients if c.sock is not None]
        if clients:
            idle_since = now
        if deadline is not None and now >= deadline:
            break
        if requests is not None and res.requests >= requests and not clients:
            break
        if idle_timeout is not None and not clients and now - idle_since >= idle_timeout:
            break
        if not moved:
            host.wait(deadline)
    for c in clients:
        c.sock.close()
    host.pump()
    res.seconds = time.monotonic() - start
    return res


def _read(c: _Client, site, date: str, res: ServeResult, limit: int | None) -> bool:
    sock = c.sock
    moved = False
    while sock.readable and not c.closing and not c.eof:
        try:
            data = sock.recv(65536)
        except (ConnectionError, TimeoutError):
            res.resets += 1
            c.closing, c.eof = True, True
            c.queue.clear()
            return True
        moved = True
        if not data:
            c.eof = True  # the peer sends no more: answer what it asked, then close
            break
        try:
            reqs = c.parser.feed(data)
        except HttpError as e:
            reqs = []
            res.bad_requests += 1
            c.queue.append(error_response(e.status, date))
            res.statuses[e.status] = res.statuses.get(e.status, 0) + 1
            c.closing = True
        for req in reqs:
            head, body, keep = respond(req, site, date)
            c.queue.append((head, body))
            res.requests += 1
            status = int(head[9:12])
            res.statuses[status] = res.statuses.get(status, 0) + 1
            if not keep or (limit is not None and res.requests >= limit):
                c.closing = True
                break
    return moved


def _write(c: _Client, res: ServeResult) -> bool:
    sock = c.sock
    moved = False
    while True:
        if c.off >= len(c.out):
            c.out, c.off = _gather(c, res), 0
            if not c.out:
                return moved
        try:
            n = sock.send(memoryview(c.out)[c.off:])
        except BlockingIOError:
            return moved
        except (ConnectionError, TimeoutError, OSError):
            res.resets += 1
            c.queue.clear()
            c.out, c.off, c.closing = b"", 0, True
            return True
        c.off += n
        moved = True


def _gather(c: _Client, res: ServeResult) -> bytes:
    """Up to WRITE_CHUNK bytes of the queued responses (a head with the start of its body, several small
    pipelined responses in one piece)."""
    parts: list[bytes] = []
    size = 0
    q = c.queue
    while q and size < WRITE_CHUNK:
        head, body = q[0]
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
