"""The sans-IO TCP against the Linux stack as the independent judge (issue 18, item 1): our TCP answers
behind a TUN device in a namespace of its own; curl, python's http.server, nginx and socat in that namespace
are the peers. Bodies are checked by SHA-256; loss is injected on our side, both directions."""

import os
import random
import shutil
import subprocess
import time

import pytest

from kbypass.proto import tcp
from kbypass.testing.plugin import needs_root

from .tcp_tun import KERNEL_IP, OUR_IP, Fetch, HttpFile, TunHost, sha256

NS = (os.environ.get("KBYPASS_TESTBED") or "kp") + "-tun"
MB = 1 << 20


@pytest.fixture
def ns():
    needs_root()
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    yield NS
    subprocess.run(["ip", "netns", "del", NS], check=True)


def in_ns(*cmd, **kw):
    return subprocess.run(["ip", "netns", "exec", NS, *cmd], capture_output=True, timeout=kw.pop("timeout", 120),
                          **kw)


def curl_download(ns, tmp_path, loss, size):
    body = random.randbytes(size)
    host = TunHost(ns, loss=loss, seed=int(loss * 1000) + 1)
    try:
        host.listen(8080, lambda: HttpFile(body))
        out = tmp_path / "got"
        r = in_ns("curl", "-sS", "--max-time", "600", "-o", str(out), f"http://{OUR_IP}:8080/file", timeout=700)
        assert r.returncode == 0, r.stderr.decode()
        assert sha256(out.read_bytes()) == sha256(body)
        for _ in range(50):
            if host.finished:
                break
            time.sleep(0.1)
        conn = host.finished[0]
        assert (conn.sack_ok, conn.ts_ok, conn.wscale_ok) == (True, True, True)  # negotiated with Linux
        if loss:
            assert host.stats["dropped"] > 0 and conn.stats.retransmits > 0 and conn.stats.fast_recoveries > 0
        return conn
    finally:
        host.close()


@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05])
def test_curl_downloads_a_body_intact_from_our_server(ns, tmp_path, loss):
    curl_download(ns, tmp_path, loss, 8 * MB if loss < 0.05 else 3 * MB)


@pytest.mark.slow
@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05])
def test_curl_downloads_100mb_intact_from_our_server(ns, tmp_path, loss):
    curl_download(ns, tmp_path, loss, 100 * MB)


def fetch_from_kernel_server(ns, server_cmd, port, request, body, loss, seed):
    """Start `server_cmd` in the namespace, download with our client over the TUN, compare the body."""
    host = TunHost(ns, loss=loss, seed=seed)  # first: the server binds to the TUN's address
    srv = subprocess.Popen(["ip", "netns", "exec", NS, *server_cmd], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until it listens
            if f"{KERNEL_IP}:{port}" in in_ns("ss", "-ltnH").stdout.decode():
                break
            time.sleep(0.05)
        app = Fetch(request)
        host.connect(port, app)
        assert app.finished.wait(60), app.events
        assert sha256(app.body()) == sha256(body)
        return app
    finally:
        host.close()
        srv.terminate()
        srv.wait(5)


@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_our_client_downloads_intact_from_python_http_server(ns, tmp_path, loss):
    body = random.randbytes(4 * MB)
    (tmp_path / "f").write_bytes(body)
    app = fetch_from_kernel_server(ns, ["python3", "-m", "http.server", "8000", "--bind", KERNEL_IP, "-d",
                                        str(tmp_path)], 8000,
                                   f"GET /f HTTP/1.0\r\nHost: {KERNEL_IP}\r\n\r\n".encode(), body, loss, 7)
    assert isinstance(app.events[0], tcp.Connected) and app.events[0].sack and app.events[0].timestamps


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_our_client_downloads_intact_from_nginx(ns, tmp_path):
    body = random.randbytes(6 * MB)
    (tmp_path / "f").write_bytes(body)
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""daemon off; user root; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;
events {{}}
http {{ access_log off; server {{ listen {KERNEL_IP}:8081; root {tmp_path}; }}
        client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path}; fastcgi_temp_path {tmp_path};
        uwsgi_temp_path {tmp_path}; scgi_temp_path {tmp_path}; }}
""")
    fetch_from_kernel_server(ns, ["nginx", "-c", str(conf), "-e", str(tmp_path / "e.log")], 8081,
                             f"GET /f HTTP/1.1\r\nHost: {KERNEL_IP}\r\nConnection: close\r\n\r\n".encode(),
                             body, 0.01, 3)


def test_connect_to_a_closed_kernel_port_is_refused(ns):
    host = TunHost(ns)
    try:
        app = Fetch(b"x")
        host.connect(9, app)
        assert app.finished.wait(10)
        assert app.events == [tcp.Reset(tcp.REFUSED)]
    finally:
        host.close()


def test_half_close_both_ways_with_socat(ns):
    """socat sends its stdin then half-closes; we answer after its FIN, then close: both sides see it all."""
    host = TunHost(ns)

    class Echo(HttpFile):
        def __init__(self):
            super().__init__(b"")
            self.got = b""

        def event(self, conn, ev):
            if isinstance(ev, tcp.Data):
                self.got += ev.data
            elif isinstance(ev, tcp.EndOfStream):  # the kernel's FIN came: reply, then close
                self.out = memoryview(self.got[::-1])

    try:
        host.listen(7000, Echo)
        msg = random.randbytes(300_000)
        r = in_ns("socat", "-t", "10", "-", f"TCP:{OUR_IP}:7000", input=msg)
        assert r.returncode == 0, r.stderr.decode()
        assert sha256(r.stdout) == sha256(msg[::-1])
    finally:
        host.close()


def test_linux_answers_our_keepalive_probes_and_a_vanished_peer_is_reset(ns):
    cfg = tcp.TcpConfig(keepalive=True, keepalive_idle=0.5, keepalive_interval=0.3, keepalive_count=3)
    host = TunHost(ns, config=cfg)
    srv = subprocess.Popen(["ip", "netns", "exec", NS, "socat", f"TCP-LISTEN:7100,bind={KERNEL_IP},reuseaddr",
                            "EXEC:sleep 30"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if f"{KERNEL_IP}:7100" in in_ns("ss", "-ltnH").stdout.decode():
                break
            time.sleep(0.05)
        app = Fetch(b"")
        host.connect(7100, app)
        time.sleep(3)  # six idle periods: Linux must have answered every probe
        assert [type(e) for e in app.events] == [tcp.Connected] and host.stats["out"] >= 6
        host.loss = 1.0  # the peer vanishes
        assert app.finished.wait(5)
        assert app.events[-1] == tcp.Reset(tcp.KEEPALIVE)
    finally:
        host.close()
        srv.terminate()
        srv.wait(5)


class Slow(HttpFile):
    """Sends `body` as soon as the connection is up (no request needed)."""

    def event(self, conn, ev):
        if isinstance(ev, tcp.Connected):
            self.out = memoryview(self.body)


@pytest.mark.parametrize("hold", [3, pytest.param(10, marks=pytest.mark.slow)])
def test_a_kernel_reader_that_stalls_sees_our_zero_window_probes_then_everything(ns, hold):
    body = random.randbytes(8 * MB)
    host = TunHost(ns)
    reader = ("import socket,sys,time,hashlib\n"
              "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,65536)\n"
              f"s.connect(('{OUR_IP}',7200))\n"
              f"time.sleep({hold}); h=hashlib.sha256(); n=0\n"
              "while (b:=s.recv(1<<20)): h.update(b); n+=len(b)\n"
              "print(n, h.hexdigest())\n")
    try:
        host.listen(7200, lambda: Slow(body))
        r = in_ns("python3", "-c", reader, timeout=hold + 60)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().split() == [str(len(body)), sha256(body)]
        conn = host.finished[0]
        assert conn.reset_reason is None and conn.stats.window_probes >= 2  # probed, backing off, answered
    finally:
        host.close()


def test_curl_through_a_syn_cookie_keeps_sack_timestamps_and_window_scaling(ns, tmp_path):
    body = random.randbytes(2 * MB)
    host = TunHost(ns, config=tcp.TcpConfig(syn_backlog=1), loss=0.01)
    try:
        host.listen(8080, lambda: HttpFile(body))
        filler = tcp.Segment(1, 8080, 1, 0, tcp.SYN, 1000)  # a half-open entry from elsewhere fills the backlog
        host._call(lambda: host.listeners[8080][0].receive(filler, "10.77.0.99", time.monotonic()))
        out = tmp_path / "got"
        r = in_ns("curl", "-sS", "--max-time", "60", "-o", str(out), f"http://{OUR_IP}:8080/file")
        assert r.returncode == 0, r.stderr.decode()
        assert sha256(out.read_bytes()) == sha256(body)
        assert host.listeners[8080][0].stats.cookies_accepted == 1
        for _ in range(50):
            if host.finished:
                break
            time.sleep(0.1)
        conn = host.finished[0]
        assert (conn.sack_ok, conn.ts_ok, conn.wscale_ok) == (True, True, True)
    finally:
        host.close()


def test_forty_parallel_curl_downloads_at_one_percent_loss(ns, tmp_path):
    body = random.randbytes(300_000)
    host = TunHost(ns, loss=0.01, seed=11)
    try:
        host.listen(8080, lambda: HttpFile(body))
        r = in_ns("curl", "-sS", "-Z", "--parallel-max", "40", "--max-time", "60", "-o", str(tmp_path / "got_#1"),
                  f"http://{OUR_IP}:8080/[1-40]")
        assert r.returncode == 0, r.stderr.decode()
        got = sorted(tmp_path.glob("got_*"))
        assert len(got) == 40 and all(sha256(f.read_bytes()) == sha256(body) for f in got)
        lst = host.listeners[8080][0]
        assert lst.stats.accepted == 40 and len(lst.half_open) == 0, lst.stats
    finally:
        host.close()
