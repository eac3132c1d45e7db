"""`kbypass http serve` with canned answers on the TCP fast path (csrc/core/kb_http.c): a kernel client gets the
same bytes, in request order, whichever side answered. Keep-alive repeats, pipelined GET/HEAD, an unknown
size, Connection: close, and the Date moving on; kernel clients in netns."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from kbypass import backend, netns
from kbypass.apps import httpserve
from kbypass.cp.client import SteeringLease
from kbypass.endpoint.tcpio import TcpHost
from kbypass.proto import http

pytestmark = pytest.mark.netns
PORT = 8496
GET = b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n"
HEAD = b"HEAD /x HTTP/1.1\r\nHost: b\r\n\r\n"
BIG = b"GET /40000 HTTP/1.1\r\nHost: b\r\n\r\n"
CLOSE = b"GET /x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"


def responses(sock, n: int, heads: list[bool]) -> list[tuple[int, dict, bytes]]:
    """n responses read off sock in order (heads[i]: the i-th answers a HEAD)."""
    out, rest = [], b""
    for i in range(n):
        r = http.ResponseReader(head_request=heads[i])
        body = r.feed(rest) if rest else b""
        while not r.done:
            data = sock.recv(65536)
            assert data, "the server closed early"
            body += r.feed(data)
        rest = r.rest
        out.append((r.status, r.headers, body))
    assert not rest
    return out


def test_canned_answers_keep_http_semantics(testbed_hosts):
    a, b = testbed_hosts
    done = threading.Event()
    with TcpHost(b.iface, b.ipv4, netns=b.netns) as host:
        lst = host.listen(PORT)
        result = {}
        server = threading.Thread(target=lambda: result.update(
            res=httpserve.serve(host, lst, http.Site(body_size=100), stop=done.is_set)))
        server.start()
        try:
            with netns.entered(a.netns):
                c = socket.create_connection((b.ipv4, PORT), timeout=5)
            for _ in range(200):  # keep-alive repeats: the first learnt, the rest answered in C
                c.sendall(GET)
                (status, headers, body), = responses(c, 1, [False])
                assert status == 200 and body == http.generated(0, 100) and "connection" not in headers
            c.sendall(GET + HEAD + GET + HEAD)  # pipelined, in one segment
            got = responses(c, 4, [False, True, False, True])
            assert [(s, len(bd)) for s, _, bd in got] == [(200, 100), (200, 0), (200, 100), (200, 0)]
            assert all(h["content-length"] == "100" for _, h, _ in got)
            c.sendall(BIG + GET)  # one answer past a segment (the Python way), one canned: still in order
            got = responses(c, 2, [False, False])
            assert got[0][2] == http.generated(0, 40000) and got[1][2] == http.generated(0, 100)
            before = got[1][1]["date"]
            time.sleep(2.05)  # a later second: the canned answers of the old Date are gone
            c.sendall(GET)
            (_, headers, _), = responses(c, 1, [False])
            assert headers["date"] != before
            assert headers["date"] in (http.http_date(time.time()), http.http_date(time.time() - 1))
            c.sendall(CLOSE)
            (status, headers, body), = responses(c, 1, [False])
            assert status == 200 and headers["connection"] == "close" and body == http.generated(0, 100)
            assert c.recv(100) == b""  # closed after the answer
            c.close()
        finally:
            done.set()
            server.join(30)
        res = result["res"]
        assert res.requests == res.responses == 200 + 4 + 2 + 1 + 1
        assert res.statuses == {200: res.requests}
        assert res.body_bytes == 200 * 100 + 2 * 100 + 40000 + 100 + 100 + 100
        if host.native and backend.built("tcp"):
            assert host.counters["rx_canned"] >= 150


def _serve(b, port: int, loss: float = 0.0, native: bool | None = None):
    """`http serve`'s loop on b in a thread: (host, stop event, result dict, thread)."""
    done = threading.Event()
    host = TcpHost(b.iface, b.ipv4, netns=b.netns, loss=loss, native=native)
    lst = host.listen(port)
    result: dict = {}

    def run() -> None:
        try:
            result["res"] = httpserve.serve(host, lst, http.Site(body_size=100), stop=done.is_set)
        except BaseException as e:  # noqa: BLE001  the test reports what ended the server
            result["error"] = repr(e)

    server = threading.Thread(target=run)
    server.start()
    return host, done, result, server


def test_two_pipelined_segments_are_answered_in_order(testbed_hosts):
    """A big request (the Python way) then a canned one in a second segment of the same burst: the canned
    answer must not overtake the first (C disarms once a segment goes to Python)."""
    a, b = testbed_hosts
    host, done, result, server = _serve(b, PORT + 1)
    try:
        with netns.entered(a.netns):
            c = socket.create_connection((b.ipv4, PORT + 1), timeout=5)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(5):  # learnt
            c.sendall(GET)
            responses(c, 1, [False])
        for i in range(60):
            c.send(BIG)
            c.send(GET)
            got = [len(body) for _, _, body in responses(c, 2, [False, False])]
            assert got == [40000, 100], f"round {i}: answers out of order: {got}"
        c.close()
    finally:
        done.set()
        server.join(30)
        host.close()
    assert "error" not in result, result


def test_a_client_without_timestamps_is_answered_in_c_too(testbed_hosts):
    """A peer that does not use TCP timestamps (Windows' default, tcp_timestamps=0): the answered exchange
    goes into the connection without them (it once raised NameError there and ended the server)."""
    a, b = testbed_hosts
    sysctl = ["ip", "netns", "exec", a.netns, "sysctl", "-qw"]
    old = subprocess.run(["ip", "netns", "exec", a.netns, "sysctl", "-n", "net.ipv4.tcp_timestamps"],
                         capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([*sysctl, "net.ipv4.tcp_timestamps=0"], check=True)
    host = None
    try:
        host, done, result, server = _serve(b, PORT + 2)
        try:
            with netns.entered(a.netns):
                c = socket.create_connection((b.ipv4, PORT + 2), timeout=5)
            for _ in range(30):
                c.sendall(GET)
                (status, _, body), = responses(c, 1, [False])
                assert status == 200 and body == http.generated(0, 100)
            c.close()
        finally:
            done.set()
            server.join(30)
            host.close()
    finally:
        subprocess.run([*sysctl, f"net.ipv4.tcp_timestamps={old}"], check=True)
    assert "error" not in result, result
    assert result["res"].requests == 30
    if host.native and backend.built("tcp"):
        assert host.counters["rx_canned"] >= 20


def test_keep_alive_clients_under_loss_on_both_hosts_get_every_answer_in_order(testbed_hosts):
    """Exchanges C keeps (a run: kb_http_run_step) under 3% loss each way, four keep-alive clients at once: a
    lost request or answer is recovered by the connection that takes the run when its timer fires (the
    answer in flight is in its send queue), every answer arrives intact and in order, and the counts add up."""
    a, b = testbed_hosts
    port, rounds, clients = PORT + 3, 150, 4
    host, done, result, server = _serve(b, port, loss=0.03)
    lease = SteeringLease(a.iface, a.netns)
    lease.add(f"tcp src {b.ipv4} sport {port} sample prob 0.03")
    errors: list = []

    def client(k: int) -> None:
        try:
            with netns.entered(a.netns):
                c = socket.create_connection((b.ipv4, port), timeout=10)
            c.settimeout(20)
            for i in range(rounds):
                req = GET if i % 3 else GET + HEAD  # single requests and pipelined pairs
                c.sendall(req)
                heads = [False] if req == GET else [False, True]
                for status, _, body in responses(c, len(heads), heads):
                    assert status == 200 and body in (http.generated(0, 100), b"")
            c.close()
        except BaseException as e:  # noqa: BLE001  reported by the test
            errors.append(f"client {k}: {e!r}")

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        dropped_at_a = sum(p for p, _ in lease.counters().values())
    finally:
        lease.close()
        done.set()
        server.join(30)
        host.close()
    assert not errors, errors
    assert "error" not in result, result
    res = result["res"]
    assert res.requests == res.responses == clients * (rounds + rounds // 3)
    assert dropped_at_a > 0 and host.stats["loss_dropped"] > 0  # the loss was real both ways
    if host.native and backend.built("tcp"):
        assert host.counters["rx_canned_kept"] > 0  # runs were kept, and lost ones recovered from them


def test_the_python_lane_serves_the_same_without_c(testbed_hosts):
    """native=False: no C lane, no fast path (kbypass.proto.tcp.fastpath's stand-ins answer nothing), the
    frame-by-frame loop of TcpHost.receive: the same answers."""
    a, b = testbed_hosts
    host, done, result, server = _serve(b, PORT + 4, native=False)
    try:
        with netns.entered(a.netns):
            c = socket.create_connection((b.ipv4, PORT + 4), timeout=5)
        for _ in range(20):
            c.sendall(GET + HEAD)
            got = responses(c, 2, [False, True])
            assert [(s, len(bd)) for s, _, bd in got] == [(200, 100), (200, 0)]
        c.close()
    finally:
        done.set()
        server.join(30)
        host.close()
    assert "error" not in result, result
    assert not host.native and host.counters["rx_canned"] == 0 and result["res"].requests == 40
