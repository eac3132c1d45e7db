"""kbypass.apps.httpserve.serve's pass loop over a fake TcpHost (the interface of TcpHost.batched: receive,
take_woken, transmit, wait; sockets with readable/recv/send): which connections a pass looks at, and that it
never sleeps in wait() while a connection has requests it already holds unread."""

from __future__ import annotations

import errno
from collections import deque
from contextlib import contextmanager

from kbypass.apps import httpserve
from kbypass.proto import http

REQUEST = b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n"


class FakeSock:
    """A connection whose peer's bytes are all in `_rx` already (taken as events: nothing wakes it again)."""

    canned = None  # TcpSocket.canned: what the loop would let the C fast path answer
    canned_at = 0.0  # TcpSocket.canned_at: nothing answered in C

    def __init__(self, host, data: bytes, room: int | None = None) -> None:
        self.host = host
        self.peer = ("10.0.0.1", 40000 + len(host.socks))
        self._rx = deque([data[i:i + 1460] for i in range(0, len(data), 1460)])
        self.sent = bytearray()
        self.room = room  # bytes send() takes before BlockingIOError (None: all)
        self.closed = False

    @property
    def readable(self) -> bool:
        return bool(self._rx)

    def setblocking(self, flag: bool) -> None:
        pass

    def recv(self, n: int) -> bytes:
        head = self._rx.popleft()
        if len(head) > n:
            self._rx.appendleft(head[n:])
            head = head[:n]
        return head

    def send(self, data) -> int:
        self.host.sends += 1
        n = len(data) if self.room is None else min(len(data), self.room)
        if n == 0:
            raise BlockingIOError(errno.EAGAIN, "send would block")
        if self.room is not None:
            self.room -= n
        self.sent += bytes(data[:n])
        return n

    def open_window(self, room: int | None) -> None:
        self.room = room
        self.host.woken.add(self)  # what TcpSocket._events does on WindowOpened

    def close(self) -> None:
        self.closed = True


class FakeListener:
    def __init__(self, socks) -> None:
        self.ready = list(socks)

    def setblocking(self, flag: bool) -> None:
        pass

    @property
    def pending(self) -> bool:
        return bool(self.ready)

    def accept(self, timeout):
        return self.ready.pop(0), None


class FakeHost:
    def __init__(self) -> None:
        self.socks: list = []
        self.woken: set = set()
        self.waits_with_unread = 0  # wait() calls while a socket held bytes the server had not read
        self.waits = 0
        self.sends = 0
        self.on_wait = None

    @contextmanager
    def batched(self):
        yield self

    def receive(self) -> bool:
        return False

    def take_canned(self) -> dict:  # no C fast path here: nothing is answered from the canned table
        return {}

    def take_woken(self) -> set:
        w, self.woken = self.woken, set()
        return w

    def transmit(self) -> None:
        pass

    def pump(self) -> bool:
        return False

    def wait(self, deadline) -> None:
        self.waits += 1
        if any(s._rx for s in self.socks if not s.closed):
            self.waits_with_unread += 1
        if self.on_wait is not None:
            self.on_wait()


def test_pipelined_requests_past_max_queued_are_read_in_the_next_pass_not_after_a_wait():
    host = FakeHost()
    n = 2000
    sock = FakeSock(host, REQUEST * n)
    host.socks.append(sock)
    res = httpserve.serve(host, FakeListener([sock]), http.Site(body_size=10), requests=n, duration=30)
    assert res.requests == n and res.responses == n
    assert sock.sent.count(b"HTTP/1.1 200 OK\r\n") == n
    assert host.waits_with_unread == 0  # never slept with requests in hand (the stall: up to 1 s a time)


class FakeClock:
    """httpserve's `time`: monotonic moves only when the loop waits, so the 4-a-second timeout scan (which
    looks at every connection) comes at known passes."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return 1.8e9 + self.t


def test_a_blocked_writer_is_left_alone_until_its_window_opens(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(httpserve, "time", clock)
    host = FakeHost()
    size = 200_000
    sock = FakeSock(host, b"GET /%d HTTP/1.1\r\nHost: b\r\n\r\n" % size, room=1000)
    host.socks.append(sock)
    tries_blocked = []

    def waited():
        clock.t += 0.01  # 20 waits: 0.2 s, inside one timeout scan period (0.25 s)
        if host.waits == 20:
            tries_blocked.append(host.sends)
            sock.open_window(None)

    host.on_wait = waited
    res = httpserve.serve(host, FakeListener([sock]), http.Site(), requests=1, duration=30)
    assert res.responses == 1 and len(sock.sent) > size and sock.closed
    # two send() calls before the window opened: 1000 bytes taken, then BlockingIOError; not one per pass
    assert tries_blocked == [2], tries_blocked
