"""`kbypass http serve`'s loop (kbypass.apps.httpserve.serve) looks only at the connections that had news
(TcpHost.take_woken) and at those still writing, plus every connection 4 times a second for the request
timeouts: idle keep-alive connections cost nothing per request of the busy ones. Kernel clients in netns."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

import pytest

from kbypass import backend, netns
from kbypass.apps import httpserve
from kbypass.endpoint.tcpio import TcpHost
from kbypass.proto import http

pytestmark = pytest.mark.netns
PORT = 8495
IDLE = 40
REQUESTS = 300


def test_idle_connections_are_not_looked_at_per_request(testbed_hosts, monkeypatch):
    a, b = testbed_hosts
    looks: Counter = Counter()
    busy = httpserve._Client.busy

    def counted(c):
        looks[c.sock.peer[1] if c.sock is not None else None] += 1
        return busy(c)

    monkeypatch.setattr(httpserve._Client, "busy", counted)
    done = threading.Event()
    with TcpHost(b.iface, b.ipv4, netns=b.netns) as host:
        lst = host.listen(PORT)
        result = {}
        server = threading.Thread(target=lambda: result.update(
            res=httpserve.serve(host, lst, http.Site(body_size=100), stop=done.is_set)))
        server.start()
        try:
            with netns.entered(a.netns):
                idle = [socket.create_connection((b.ipv4, PORT), timeout=5) for _ in range(IDLE)]
                busy_client = socket.create_connection((b.ipv4, PORT), timeout=5)
            start = time.monotonic()
            for _ in range(REQUESTS):
                busy_client.sendall(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
                r = http.ResponseReader()
                body = b""
                while not r.done:
                    data = busy_client.recv(65536)
                    assert data, "the server closed"
                    body += r.feed(data)
                assert r.status == 200 and body == http.generated(0, 100)
            seconds = time.monotonic() - start
        finally:
            done.set()
            server.join(30)
        me = busy_client.getsockname()[1]
        scans = 4 * seconds + 8  # the timeout scans (4 a second) and the passes of the connects
        idle_looks = [looks[s.getsockname()[1]] for s in idle]
        # each request looked at by the loop, or answered by the TCP fast path from the canned answers (the loop
        # then only counts it: TcpHost.take_canned)
        assert looks[me] + host.counters["rx_canned"] >= REQUESTS
        if host.native and backend.built("tcp"):
            assert host.counters["rx_canned"] >= REQUESTS // 2  # the repeated keep-alive GET: answered in C
        assert max(idle_looks) <= 2 * scans, (max(idle_looks), scans)  # not once per request
        assert result["res"].requests == REQUESTS and result["res"].connections == IDLE + 1
        for s in idle + [busy_client]:
            s.close()


def test_pipelined_requests_past_max_queued_never_wait_in_hand(testbed_hosts, monkeypatch):
    """2000 small pipelined GETs from one kernel client: the server reads MAX_QUEUED at a time, and the
    requests already in the socket past them are read in the next pass, never left for the timeout scan or a
    wait() (they were taken as events once: nothing marks the connection woken again)."""
    a, b = testbed_hosts
    n = 2000
    stalls = []
    done = threading.Event()
    with TcpHost(b.iface, b.ipv4, netns=b.netns) as host:
        wait = host.wait

        def watched(deadline):
            # a socket with requests unread and room to answer them (a blocked writer waits for its window)
            stalls.extend(s for s in list(host._conns.values()) if s._rx and s.conn.send_room > 0)
            wait(deadline)

        monkeypatch.setattr(host, "wait", watched)
        lst = host.listen(PORT)
        result = {}
        server = threading.Thread(target=lambda: result.update(
            res=httpserve.serve(host, lst, http.Site(body_size=10), stop=done.is_set, duration=60)))
        server.start()
        try:
            with netns.entered(a.netns):
                c = socket.create_connection((b.ipv4, PORT), timeout=10)
            c.sendall(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n" * n)
            got, data = 0, b""
            while got < n:
                piece = c.recv(1 << 20)
                assert piece, f"the server closed after {got} answers"
                data += piece
                while True:
                    r = http.ResponseReader()
                    body = r.feed(data)
                    if not r.done:
                        break
                    assert r.status == 200 and body == http.generated(0, 10)
                    data, got = r.rest, got + 1
            c.close()
        finally:
            done.set()
            server.join(30)
        assert result["res"].responses == n
        assert not stalls  # never slept with requests in hand (each such wait: up to 1 s)
