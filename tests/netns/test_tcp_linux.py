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


@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_our_client_downloads_intact_from_python_http_server(ns, tmp_path, loss):
    body = random.randbytes(4 * MB)
    (tmp_path / "f").write_bytes(body)
    srv = subprocess.Popen(["ip", "netns", "exec", NS, "python3", "-m", "http.server", "8000", "--bind", KERNEL_IP,
                            "-d", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = TunHost(ns, loss=loss, seed=7)
    try:
        time.sleep(0.5)
        app = Fetch(f"GET /f HTTP/1.0\r\nHost: {KERNEL_IP}\r\n\r\n".encode())
        host.connect(8000, app)
        assert app.finished.wait(60), app.events
        assert sha256(app.body()) == sha256(body)
        assert isinstance(app.events[0], tcp.Connected) and app.events[0].sack and app.events[0].timestamps
    finally:
        host.close()
        srv.terminate()
        srv.wait(5)


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
    srv = subprocess.Popen(["ip", "netns", "exec", NS, "nginx", "-c", str(conf), "-e", str(tmp_path / "e.log")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = TunHost(ns, loss=0.01, seed=3)
    try:
        time.sleep(0.5)
        app = Fetch(f"GET /f HTTP/1.1\r\nHost: {KERNEL_IP}\r\nConnection: close\r\n\r\n".encode())
        host.connect(8081, app)
        assert app.finished.wait(60), app.events
        assert sha256(app.body()) == sha256(body)
    finally:
        host.close()
        srv.terminate()
        srv.wait(5)


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
