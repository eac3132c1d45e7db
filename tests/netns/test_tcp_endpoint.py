"""kbypass's TCP endpoint (kbypass.endpoint.tcpio/tcp over AF_XDP) with the Linux stack as the independent
judge, in netns: curl downloads from `kbypass http serve` intact (SHA-256), keep-alive and pipelining, the
socket errors the stdlib raises (refused, reset, broken pipe), a port the kernel already serves, the
connection limit, and the kernel never answering a segment of our port."""

from __future__ import annotations

import errno
import hashlib
import os
import select
import socket
import subprocess
import threading
import time

import pytest

from kbypass import netns
from kbypass.cp.client import SteeringLease
from kbypass.endpoint.tcpio import TcpHost
from kbypass.errors import UsageError
from kbypass.proto import http
from tests.kb import needs_c
from tests.netns.test_tcp_placeholder import out_rsts

pytestmark = pytest.mark.netns
PORT = 8480


def kernel_socket(ns: str) -> socket.socket:
    with netns.entered(ns):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def curl(a, url: str, timeout: float = 120.0) -> tuple[str, int]:
    """(SHA-256, bytes) of what curl in host a downloaded from url."""
    p = subprocess.Popen(["ip", "netns", "exec", a.netns, "curl", "-sS", "--fail", "--max-time", str(int(timeout)),
                          "-o", "-", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = p.stdout.read(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    err = p.stderr.read().decode()
    assert p.wait() == 0, f"curl failed: {err}"
    return h.hexdigest(), n


class Served:
    """`kbypass http serve` in host b as a subprocess, until its request count is reached."""

    def __init__(self, *extra: str) -> None:
        self.proc = subprocess.Popen([*kbypass_cmd(), "http", "serve", "--host", "b", "--port", str(PORT), "--json",
                                      *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "kbypass http serve on" not in line:
            self.kill()
            raise AssertionError(f"kbypass http serve did not start: {line}{self.proc.stderr.read()}")

    def summary(self) -> dict:
        import json

        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def kbypass_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "kbypass"]


def lossy_kernel_side(a, b, loss: float):
    """A sample rule on host a's interface: the kernel client loses `loss` of what kbypass sends it."""
    lease = SteeringLease(a.iface, a.netns)
    lease.add(f"tcp src {b.ipv4} sport {PORT} sample prob {loss}")
    return lease


def download(testbed_hosts, size: int, loss: float) -> None:
    a, b = testbed_hosts
    srv = Served("--body-size", str(size), "--count", "1", *(["--loss", str(loss)] if loss else []))
    lease = lossy_kernel_side(a, b, loss) if loss else None
    try:
        digest, n = curl(a, f"http://{b.ipv4}:{PORT}/", timeout=600)
        summary = srv.summary()
        dropped_at_a = sum(p for p, _ in lease.counters().values()) if lease is not None else 0
    finally:
        srv.kill()
        if lease is not None:
            lease.close()
    assert n == size and digest == http.generated_sha256(size)
    assert summary["requests"] == 1 and summary["body_bytes"] == size
    if loss:  # the loss was real on both hosts: each sample rule dropped segments
        assert dropped_at_a > 0 and summary["tcp"]["loss_dropped"] > 0, (dropped_at_a, summary["tcp"])


def test_curl_downloads_a_generated_body_intact(testbed_hosts):
    download(testbed_hosts, 10 << 20, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05])
def test_curl_downloads_100mb_intact_under_loss_on_both_hosts(testbed_hosts, loss):
    download(testbed_hosts, 100 << 20, loss)


def test_keep_alive_and_pipelining_with_a_kernel_client(testbed_hosts):
    a, b = testbed_hosts
    srv = Served("--count", "5")
    try:
        s = kernel_socket(a.netns)
        s.settimeout(10)
        s.connect((b.ipv4, PORT))
        # three pipelined requests in one write, then two more on the same connection
        s.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: b\r\n\r\n" % n for n in (100, 2000, 70000)))
        got, rest = [], b""
        for _ in range(3):
            status, body, rest = read_response(s, rest)
            got.append((status, body))
        assert rest == b""
        s.sendall(b"GET /5 HTTP/1.1\r\nHost: b\r\n\r\n")
        got.append(read_response(s)[:2])
        s.sendall(b"GET /7 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        got.append(read_response(s)[:2])
        assert s.recv(1) == b""  # closed after "Connection: close"
        s.close()
        summary = srv.summary()
    finally:
        srv.kill()
    assert [len(body) for _, body in got] == [100, 2000, 70000, 5, 7]
    assert all(status == 200 for status, _ in got)
    assert all(hashlib.sha256(body).hexdigest() == http.generated_sha256(len(body)) for _, body in got)
    assert summary["connections"] == 1 and summary["requests"] == 5


def read_response(s, rest: bytes = b"") -> tuple[int, bytes, bytes]:
    """(status, body, bytes of the next response already read)."""
    r = http.ResponseReader()
    body = r.feed(rest)
    while not r.done:
        data = s.recv(65536)
        assert data, "the server closed mid-response"
        body += r.feed(data)
    return r.status, body, r.rest


# ---- the socket API against kernel peers ---------------------------------------------------------------------
@pytest.fixture(params=[pytest.param(None, id="c-lane", marks=needs_c), pytest.param(False, id="python-lane")])
def host_a(testbed_hosts, request):
    """A TcpHost in host a, its frames moved by the C lane (the default) or the pure-Python one."""
    a, _ = testbed_hosts
    with TcpHost(a.iface, a.ipv4, netns=a.netns, native=request.param) as host:
        assert host.native is (request.param is None)
        yield host


def test_connect_to_a_closed_port_is_refused(testbed_hosts, host_a):
    _, b = testbed_hosts
    with pytest.raises(ConnectionRefusedError):
        host_a.connect((b.ipv4, 4999), timeout=5)
    assert host_a.connections == 0


PAYLOAD = bytes(range(256)) * 1172  # 300032 bytes: several windows


def test_echo_with_a_kernel_server_then_its_rst(testbed_hosts, host_a):
    _, b = testbed_hosts
    srv = kernel_socket(b.netns)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((b.ipv4, 5001))
    srv.listen()
    done = threading.Event()

    def serve():
        c, _ = srv.accept()
        data = b""
        while len(data) < len(PAYLOAD):
            data += c.recv(65536)
        c.sendall(data[::-1])
        done.wait(10)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()  # linger 0: a RST

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        s = host_a.connect((b.ipv4, 5001), timeout=5)
        s.sendall(PAYLOAD)
        s.settimeout(10)
        back = b""
        while len(back) < len(PAYLOAD):
            back += s.recv(65536)
        assert back == PAYLOAD[::-1]
        # with the C lane, the kernel's in-order segments and ACKs took the C fast path (kbypass._fasttcp)
        predicted = host_a.counters["rx_predicted"]
        assert predicted > host_a.counters["rx_segments"] // 2 if host_a.native else predicted == 0, host_a.counters
        done.set()
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                pass
        with pytest.raises(BrokenPipeError):  # reported once, then EPIPE, as the kernel does
            s.send(b"x")
    finally:
        done.set()
        t.join(5)
        srv.close()


def test_a_port_the_kernel_serves_is_refused(testbed_hosts):
    a, b = testbed_hosts
    srv = kernel_socket(b.netns)
    srv.bind((b.ipv4, 5002))
    srv.listen()
    try:
        with TcpHost(b.iface, b.ipv4, netns=b.netns) as host:
            with pytest.raises(UsageError, match="listens on it"):
                host.listen(5002)
    finally:
        srv.close()


def exchange(clients, errs, held) -> None:
    """A byte each way on every kernel client that connected (its SO_ERROR 0) and our socket for it."""
    for c, err in zip(clients, errs):
        if err == 0:
            c.setblocking(True)
            c.settimeout(5)
            c.sendall(b"?")
    for s in held:
        s.settimeout(5)
        assert s.recv(1) == b"?"
        s.sendall(b"!")
    for c, err in zip(clients, errs):
        if err == 0:
            assert c.recv(1) == b"!"


def test_connection_limit_refuses_cleanly_and_the_kernel_stays_quiet(testbed_hosts):
    a, b = testbed_hosts
    with TcpHost(b.iface, b.ipv4, netns=b.netns, max_connections=2) as host:
        lst = host.listen(5003)
        rsts = out_rsts(b.netns)
        clients = []
        for _ in range(3):
            c = kernel_socket(a.netns)
            c.setblocking(False)
            c.connect_ex((b.ipv4, 5003))
            clients.append(c)
        accepted = []
        end = time.monotonic() + 5
        while len(accepted) < 2 and time.monotonic() < end:
            try:
                accepted.append(lst.accept(0.1)[0])
            except TimeoutError:
                pass
        assert len(accepted) == 2
        host.run_until(lambda: host.counters["refused_limit"] >= 1, time.monotonic() + 3)
        errs = [c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for c in clients]  # (reading clears it)
        assert sorted(errs) == [0, 0, errno.ECONNREFUSED]
        exchange(clients, errs, accepted)  # the two held connections still work
        assert out_rsts(b.netns) == rsts  # the RST was ours, not the kernel's
        for c in clients:
            c.close()
        for s in accepted:
            s.close()


def test_non_blocking_calls_and_the_readiness_fd(testbed_hosts):
    """select() on host.fileno() wakes when segments arrive; accept/recv/send with timeout 0 raise
    BlockingIOError instead of waiting; a peer that does not read fills our send buffer."""
    a, b = testbed_hosts
    with TcpHost(b.iface, b.ipv4, netns=b.netns) as host:
        lst = host.listen(5004)
        lst.setblocking(False)
        with pytest.raises(BlockingIOError):
            lst.accept()
        c = kernel_socket(a.netns)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.setblocking(False)
        c.connect_ex((b.ipv4, 5004))
        conn = None
        end = time.monotonic() + 5
        while conn is None and time.monotonic() < end:
            r, _, _ = select.select([host], [], [], host.timeout() if host.timeout() is not None else 1.0)
            host.pump()
            try:
                conn, _ = lst.accept()
            except BlockingIOError:
                pass
        assert conn is not None, "select on the host's fd never led to the connection"
        conn.setblocking(False)
        with pytest.raises(BlockingIOError):
            conn.recv(100)
        c.setblocking(True)
        c.sendall(b"hello")
        got = b""
        end = time.monotonic() + 5
        while not got and time.monotonic() < end:
            select.select([host], [], [], 0.5)
            host.pump()
            try:
                got = conn.recv(100)
            except BlockingIOError:
                pass
        assert got == b"hello"
        # the kernel client reads nothing: our send buffer (1 MiB) and its window fill, then EAGAIN
        sent, blocked = 0, False
        end = time.monotonic() + 10
        while not blocked and time.monotonic() < end:
            try:
                sent += conn.send(b"x" * 65536)
            except BlockingIOError:
                blocked = True
            host.pump()
        assert blocked and sent >= 1 << 20
        conn.abort()
        c.close()


def epoll_targets() -> dict[int, set[int]]:
    """This process's epoll fds and the fds each watches (/proc/self/fdinfo's tfd lines)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            info = open(f"/proc/self/fdinfo/{fd}").read()
        except OSError:
            continue  # closed meanwhile (the listing's own fd)
        out[int(fd)] = {int(line.split()[1]) for line in info.splitlines() if line.startswith("tfd:")}
    return out


def test_the_readiness_epoll_is_made_when_asked_for_and_not_before(testbed_hosts):
    """A host nobody asked for fileno() keeps no epoll on its AF_XDP sockets (on their wait queues, every frame
    delivered and every TX completion would run its callback, in the sender's context on veth); fileno() makes
    it, watching every lane's socket, once."""
    a, b = testbed_hosts
    with TcpHost(b.iface, b.ipv4, netns=b.netns) as host:
        lane_fds = {lane.fd for lane in host._lanes}
        assert not any(targets & lane_fds for targets in epoll_targets().values())
        fd = host.fileno()
        assert host.fileno() == fd
        assert epoll_targets()[fd] >= lane_fds
    assert fd not in epoll_targets()  # closed with the host


def test_a_peer_that_vanishes_is_found_by_keepalive_and_reset(testbed_hosts):
    """Keepalive on: once the kernel peer stops answering (its host drops everything from us, in XDP), the
    probes go unanswered and the connection dies with ETIMEDOUT, a RST on the wire (counted)."""
    from kbypass.proto.tcp import TcpConfig

    a, b = testbed_hosts
    srv = kernel_socket(a.netns)
    srv.bind((a.ipv4, 5005))
    srv.listen()
    cfg = TcpConfig(keepalive=True, keepalive_idle=0.3, keepalive_interval=0.2, keepalive_count=3)
    with TcpHost(b.iface, b.ipv4, netns=b.netns, config=cfg) as host:
        s = host.connect((a.ipv4, 5005), timeout=5)
        peer, _ = srv.accept()
        host.run_until(lambda: False, time.monotonic() + 1.0)  # idle past keepalive_idle: probes answered
        assert s.conn.state.name == "ESTABLISHED"
        lease = SteeringLease(a.iface, a.netns)
        lease.add(f"tcp src {b.ipv4} sport {s.local[1]} drop")  # the peer vanishes
        try:
            s.settimeout(5)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError) as e:
                s.recv(10)
            assert e.value.errno == errno.ETIMEDOUT
            assert time.monotonic() - t0 < 3
            assert sum(p for p, _ in lease.counters().values()) >= 3  # the probes (and the RST) it dropped
        finally:
            lease.close()
            peer.close()
            srv.close()


def test_timer_heap_stays_bounded_with_keepalive_during_a_transfer(testbed_hosts):
    """Keepalive re-arms hours ahead on every segment: superseded entries must not pile up in the heap."""
    from kbypass.proto.tcp import TcpConfig

    a, b = testbed_hosts
    data = os.urandom(6 << 20)
    with TcpHost(b.iface, b.ipv4, netns=b.netns, config=TcpConfig(keepalive=True)) as host:
        lst = host.listen(5008)
        c = kernel_socket(a.netns)
        t = threading.Thread(target=lambda: (c.connect((b.ipv4, 5008)), c.sendall(data), c.close()), daemon=True)
        t.start()
        conn, _ = lst.accept(timeout=5)
        conn.settimeout(20)
        got, most = 0, 0
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
            most = max(most, host.timer_entries)
        t.join(5)
        assert got == len(data) and most <= 4 * 2 + 64, most
        conn.close()


def zero_window(testbed_hosts, hold: float) -> None:
    """Our application reads nothing for `hold` seconds while a kernel client sends 12 MiB: the window
    closes (the kernel's sender stalls, probing), nothing is lost or held without bound, and once we read
    everything arrives intact."""
    a, b = testbed_hosts
    data = os.urandom(12 << 20)
    with TcpHost(b.iface, b.ipv4, netns=b.netns) as host:
        lst = host.listen(5006)
        c = kernel_socket(a.netns)
        done = threading.Event()

        def send():
            c.connect((b.ipv4, 5006))
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            done.set()

        t = threading.Thread(target=send, daemon=True)
        t.start()
        conn, _ = lst.accept(timeout=5)
        host.run_until(lambda: False, time.monotonic() + hold)  # the host runs, the application does not read
        assert not done.is_set(), "the sender finished although nobody read: the window never closed"
        assert conn.conn.state.name == "ESTABLISHED"
        got = bytearray()
        conn.settimeout(20)
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        t.join(10)
        assert done.is_set() and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        conn.close()
        c.close()


def test_zero_window_held_then_drained(testbed_hosts):
    zero_window(testbed_hosts, 2.0)


@pytest.mark.slow
def test_zero_window_held_for_10_s(testbed_hosts):
    zero_window(testbed_hosts, 10.0)


def test_many_connection_attempts_past_the_limit_are_refused_and_the_held_ones_serve(testbed_hosts):
    a, b = testbed_hosts
    limit, tries = 40, 300
    with TcpHost(b.iface, b.ipv4, netns=b.netns, max_connections=limit) as host:
        lst = host.listen(5007, backlog=limit)
        clients = []
        for _ in range(tries):
            c = kernel_socket(a.netns)
            c.setblocking(False)
            c.connect_ex((b.ipv4, 5007))
            clients.append(c)
            host.pump()
        held = []
        end = time.monotonic() + 10
        while len(held) < limit and time.monotonic() < end:
            try:
                held.append(lst.accept(0.1)[0])
            except TimeoutError:
                pass
        host.run_until(lambda: host.counters["refused_limit"] >= tries - limit, time.monotonic() + 10)
        errs = [c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for c in clients]
        assert errs.count(0) == limit and errs.count(errno.ECONNREFUSED) == tries - limit
        assert len(held) == limit and host.connections == limit
        exchange(clients, errs, held)
        for c in clients:
            c.close()


def test_curl_gets_static_files_from_root(testbed_hosts, tmp_path):
    a, b = testbed_hosts
    (tmp_path / "sub").mkdir()
    blob = os.urandom(3 << 20)
    (tmp_path / "sub" / "blob.bin").write_bytes(blob)
    srv = Served("--root", str(tmp_path), "--count", "2")
    try:
        digest, n = curl(a, f"http://{b.ipv4}:{PORT}/sub/blob.bin")
        missing = subprocess.run(["ip", "netns", "exec", a.netns, "curl", "-s", "-o", "/dev/null", "-w",
                                  "%{http_code}", f"http://{b.ipv4}:{PORT}/../etc/passwd"], capture_output=True,
                                 text=True, timeout=30).stdout
        summary = srv.summary()
    finally:
        srv.kill()
    assert n == len(blob) and digest == hashlib.sha256(blob).hexdigest()
    assert missing == "404" and summary["statuses"] == {"200": 1, "404": 1}


def test_close_at_the_same_time_as_a_kernel_peer(testbed_hosts, host_a):
    """Both ends send FIN at once (a barrier): each sees the other's end of stream and the connection ends
    in TIME_WAIT on our side (CLOSING first when the FINs crossed), with nothing reset."""
    _, b = testbed_hosts
    srv = kernel_socket(b.netns)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the other lane's run left a TIME_WAIT
    srv.bind((b.ipv4, 5009))
    srv.listen()
    barrier = threading.Barrier(2)
    seen = {}

    def peer():
        c, _ = srv.accept()
        c.settimeout(10)
        assert c.recv(5) == b"hello"
        barrier.wait(5)
        c.shutdown(socket.SHUT_WR)
        seen["eof"] = c.recv(10)
        c.close()

    t = threading.Thread(target=peer, daemon=True)
    t.start()
    try:
        s = host_a.connect((b.ipv4, 5009), timeout=5)
        s.sendall(b"hello")
        barrier.wait(5)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        assert s.recv(10) == b""
        host_a.run_until(lambda: s.conn.state.name == "TIME_WAIT", time.monotonic() + 5)
        assert s.conn.state.name == "TIME_WAIT"
        t.join(5)
        assert seen["eof"] == b""
        s.close()
    finally:
        srv.close()
