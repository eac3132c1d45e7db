"""`kbypass http serve` against clients that would take it down, kernel sockets in netns as the clients: one
connection pipelining thousands of GETs for files under a descriptor limit (the server paces it through
its TCP window and opens a file only when its answer is written), and slow clients that send a partial
head or keep a connection idle (408 / closed after --head-timeout and --keepalive-timeout, so they do not
hold --max-connections), and a request with bare LF line ends answered at once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from kbypass import netns
from kbypass.proto import http

pytestmark = pytest.mark.netns
PORT = 8490


def serve(*extra: str, nofile: int | None = None) -> subprocess.Popen:
    limit = ["prlimit", f"--nofile={nofile}", "--"] if nofile else []
    p = subprocess.Popen([*limit, sys.executable, "-m", "kbypass", "http", "serve", "--host", "b", "--port", str(PORT),
                          "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    if "kbypass http serve on" not in line:
        p.kill()
        raise AssertionError(f"kbypass http serve did not start: {line}{p.stderr.read()}")
    return p


def summary(p: subprocess.Popen, timeout: float = 60) -> dict:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    assert p.returncode == 0, err
    return json.loads(out)


def client(a, b, timeout: float = 10.0) -> socket.socket:
    with netns.entered(a.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((b.ipv4, PORT))
    return s


def responses(s: socket.socket, n: int) -> list[tuple[int, bytes]]:
    got, rest = [], b""
    for _ in range(n):
        r = http.ResponseReader()
        body = r.feed(rest)
        while not r.done:
            data = s.recv(1 << 16)
            assert data, f"the server closed after {len(got)} responses"
            body += r.feed(data)
        got.append((r.status, body))
        rest = r.rest
    return got


def test_thousands_of_pipelined_file_gets_under_a_small_descriptor_limit(testbed_hosts, tmp_path):
    """Before: every parsed request opened its file at once (3000 GETs, 3009 descriptors): under a 128
    limit the server died with EMFILE, dropping every client. Now each answer opens its file in turn."""
    a, b = testbed_hosts
    blob = bytes(range(256)) * 8
    (tmp_path / "f.bin").write_bytes(blob)
    n = 1500
    srv = serve("--root", str(tmp_path), "--count", str(n), nofile=128)
    try:
        s = client(a, b, timeout=30)
        wire = b"GET /f.bin HTTP/1.1\r\nHost: b\r\n\r\n" * (n - 1) + b"GET /f.bin HTTP/1.1\r\nHost: b\r\n" \
            b"Connection: close\r\n\r\n"
        sender = threading.Thread(target=s.sendall, args=(wire,), daemon=True)
        sender.start()  # the server stops reading while its answers wait: this write may block meanwhile
        got = responses(s, n)
        assert s.recv(1) == b""
        sender.join(10)
        s.close()
        res = summary(srv)
    finally:
        if srv.poll() is None:
            srv.kill()
    assert len(got) == n and all(st == 200 and body == blob for st, body in got)
    assert res["statuses"] == {"200": n} and res["responses"] == n


def test_slow_heads_and_idle_keep_alive_connections_are_closed(testbed_hosts):
    """Before: 20 connections that sent only a request line held --max-connections 20 for good. Now a
    partial head gets 408 after --head-timeout, a connection that sends nothing or waits after its answer is
    closed after --head-timeout / --keepalive-timeout, and the freed slots serve new clients."""
    a, b = testbed_hosts
    srv = serve("--max-connections", "4", "--head-timeout", "1", "--keepalive-timeout", "1.5", "--duration", "20")
    try:
        t0 = time.monotonic()
        partial = [client(a, b) for _ in range(2)]
        for s in partial:
            s.sendall(b"GET / HTTP/1.1\r\n")
        silent = client(a, b)
        kept = client(a, b)
        kept.sendall(b"GET /10 HTTP/1.1\r\nHost: b\r\n\r\n")
        assert responses(kept, 1) == [(200, http.generated(0, 10))]
        for s in partial:
            (status, _), = responses(s, 1)
            assert status == 408 and s.recv(1) == b""
        assert silent.recv(1) == b"" and kept.recv(1) == b""  # closed, without an answer
        waited = time.monotonic() - t0
        for s in (*partial, silent, kept):
            s.close()
        time.sleep(0.5)
        fresh = [client(a, b) for _ in range(4)]  # every slot free again
        for i, s in enumerate(fresh):
            s.sendall(b"GET /%d HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n" % i)
            assert responses(s, 1) == [(200, http.generated(0, i))]
            s.close()
    finally:
        srv.terminate()
        res = summary(srv)
    assert 1.0 <= waited < 10, waited
    assert res["timeouts"] == 4 and res["statuses"]["408"] == 2


def test_a_request_with_bare_lf_line_ends_is_answered_at_once(testbed_hosts):
    a, b = testbed_hosts
    srv = serve("--count", "1")
    try:
        s = client(a, b, timeout=5)
        s.sendall(b"GET /5 HTTP/1.1\nHost: b\nConnection: close\n\n")
        assert responses(s, 1) == [(200, http.generated(0, 5))]
        s.close()
        res = summary(srv)
    finally:
        if srv.poll() is None:
            srv.kill()
    assert res["statuses"] == {"200": 1}


def test_a_second_server_on_the_interface_is_told_a_remedy_it_has(testbed_hosts):
    """Its queues are taken by the first: the one line names the owner, and no --queue/--share-queue (http
    serve has neither: kbypass's TCP takes every queue)."""
    first = serve("--duration", "30")
    try:
        second = subprocess.run([sys.executable, "-m", "kbypass", "http", "serve", "--host", "b", "--port",
                                 str(PORT + 1)], capture_output=True, text=True, timeout=60)
    finally:
        first.terminate()
        summary(first)
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(err) == 1, second.stderr
    assert "is taken by" in err[0] and "kbypass http serve" in err[0] and "stop that program" in err[0]
    assert "--queue" not in err[0] and "--share-queue" not in err[0]
