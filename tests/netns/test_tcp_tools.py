"""The TCP tools with kernel programs as the independent peer, in netns: `sockperf ping-pong --tcp` against
`kbypass pingpong server --tcp` and `kbypass pingpong client --tcp` against `sockperf server --tcp`;
`iperf3 -c` into `kbypass xfer recv --proto tcp --iperf3`; socat (the installed nc) both ways with
`kbypass xfer send|recv --proto tcp`; `kbypass http get` from `python3 -m http.server` and nginx, each byte
checked by SHA-256; and the iperf3 server protocol itself against the real iperf3 client over kernel sockets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from kbypass import netns
from kbypass.apps.iperf3 import serve_one

pytestmark = pytest.mark.netns
KB = [sys.executable, "-m", "kbypass"]


def ns(host, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", host.netns, *cmd]


def start(cmd: list[str], ready: str, *, timeout: float = 30.0) -> subprocess.Popen:
    """A server that says `ready` on stderr once it listens."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = p.stderr.readline()
        if ready in line:
            return p
        if not line and p.poll() is not None:
            break
    p.kill()
    raise AssertionError(f"{cmd[3:6]} did not start: {p.stderr.read()}")


def stop(p: subprocess.Popen) -> tuple[str, str]:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.communicate()


def wait_port(host, port: int, timeout: float = 10.0) -> None:
    """Until a kernel server in host listens on port (ss), for programs that print nothing when ready."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run(ns(host, "ss", "-Hltn", f"sport = :{port}"), capture_output=True, text=True).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} in {host.netns}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sockperf_tcp_client_against_kbypass_server(testbed_hosts):
    a, b = testbed_hosts
    srv = start([*KB, "pingpong", "server", "--tcp", "--host", "b", "--port", "11500", "--duration", "30", "--json"],
                "kbypass pingpong server on")
    try:
        out = subprocess.run(ns(a, "sockperf", "ping-pong", "--tcp", "-i", b.ipv4, "-p", "11500", "-t", "2",
                                "-m", "200"), capture_output=True, text=True, timeout=60).stdout
    finally:
        summary = json.loads(stop(srv)[0])
    assert "ERROR" not in out, out
    m = re.search(r"Total (\d+) observations", out)
    assert m and int(m.group(1)) > 100, out
    assert re.search(r"percentile 50\.000 =\s+[\d.]+", out)
    # every message answered once; with the C fast path most in C (csrc/core/kb_sockperf.h: TcpMessages pongs)
    assert summary["received"] == summary["answered"] >= int(m.group(1)), summary
    if summary["lane"] == "c":
        assert summary["answered_in_c"] > summary["received"] // 2, summary


def test_kbypass_tcp_client_against_sockperf_server(testbed_hosts):
    a, b = testbed_hosts
    srv = subprocess.Popen(ns(b, "sockperf", "server", "--tcp", "-i", b.ipv4, "-p", "11501"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(b, 11501)
        p = subprocess.run([*KB, "pingpong", "client", "--tcp", "--host", "a", "--dst", f"{b.ipv4}:11501",
                            "--count", "2000", "--size", "300", "--json"], capture_output=True, text=True, timeout=60)
    finally:
        srv.terminate()
        srv.wait()
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["proto"] == "tcp" and res["samples"] == 2000 and res["lost"] == 0 and res["p50_us"] > 0


def test_iperf3_client_into_kbypass_receiver(testbed_hosts):
    a, b = testbed_hosts
    srv = start([*KB, "xfer", "recv", "--proto", "tcp", "--iperf3", "--host", "b", "--port", "5202", "--json",
                 "--idle-timeout", "60"], "for one iperf3 test")
    try:
        cli = subprocess.run(ns(a, "iperf3", "-c", b.ipv4, "-p", "5202", "-t", "2", "--json"), capture_output=True,
                             text=True, timeout=90)
        out, err = srv.communicate(timeout=60)
    finally:
        if srv.poll() is None:
            srv.kill()
    d = json.loads(cli.stdout)
    assert "error" not in d, d.get("error")
    assert srv.returncode == 0, err
    got = json.loads(out)
    sent = d["end"]["sum_sent"]["bytes"]
    assert sent > 0 and got["bytes"] == sent == d["end"]["sum_received"]["bytes"]


def send_to_socat(b, port: int, sink, *xfer: str):
    """`kbypass xfer send --proto tcp` from host a to socat (kernel TCP) in b, which writes what arrives to
    `sink`: the finished send."""
    rx = subprocess.Popen(ns(b, "socat", "-u", f"TCP-LISTEN:{port},bind={b.ipv4}", f"CREATE:{sink}"))
    try:
        wait_port(b, port)
        p = subprocess.run([*KB, "xfer", "send", "--proto", "tcp", "--host", "a", "--dst", f"{b.ipv4}:{port}",
                            *xfer, "--json"], capture_output=True, text=True, timeout=120)
        rx.wait(30)
    finally:
        if rx.poll() is None:
            rx.kill()
    return p


def test_xfer_tcp_to_and_from_socat(testbed_hosts, tmp_path):
    a, b = testbed_hosts
    # kbypass sends a generated stream; socat (kernel TCP) in b writes it to a file
    sink = tmp_path / "got.bin"
    p = send_to_socat(b, 5203, sink, "--size", "8M")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["bytes"] == 8 << 20 == sink.stat().st_size and res["sha256"] == sha(sink.read_bytes())
    # socat sends a file from host a; kbypass receives it in b (listening) and writes it
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20) + b"end")
    out = tmp_path / "out.bin"
    srv = start([*KB, "xfer", "recv", "--proto", "tcp", "--host", "b", "--port", "5204", "--write", str(out),
                 "--json"], "listening on")
    try:
        tx = subprocess.run(ns(a, "socat", "-u", f"FILE:{src}", f"TCP:{b.ipv4}:5204"), capture_output=True,
                            timeout=60)
        o, e = srv.communicate(timeout=60)
    finally:
        if srv.poll() is None:
            srv.kill()
    assert tx.returncode == 0 and srv.returncode == 0, e
    assert out.read_bytes() == src.read_bytes() and json.loads(o)["sha256"] == sha(src.read_bytes())


@pytest.mark.parametrize("server", ["python-http.server", "nginx"])
def test_http_get_from_kernel_servers(testbed_hosts, tmp_path, server):
    a, b = testbed_hosts
    www = tmp_path / "www"
    www.mkdir()
    body = os.urandom(6 << 20) + b"tail"
    (www / "blob.bin").write_bytes(body)
    port = 8081 if server == "nginx" else 8082
    if server == "nginx":
        conf = tmp_path / "nginx.conf"
        d = tmp_path
        conf.write_text(f"user root; worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n"
                        "events { worker_connections 64; }\n"
                        f"http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; "
                        f"fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n"
                        f"  server {{ listen {b.ipv4}:{port}; root {www}; }} }}\n")
        srv = subprocess.Popen(ns(b, "nginx", "-c", str(conf)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    else:
        srv = subprocess.Popen(ns(b, sys.executable, "-m", "http.server", "-b", b.ipv4, "-d", str(www), str(port)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(b, port)
        out = tmp_path / "got.bin"
        p = subprocess.run([*KB, "http", "get", "--host", "a", f"http://{b.ipv4}:{port}/blob.bin", "-o", str(out),
                            "--json"], capture_output=True, text=True, timeout=120)
    finally:
        srv.terminate()
        srv.wait()
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["status"] == 200 and res["complete"] and res["bytes"] == len(body)
    assert res["sha256"] == sha(body) and out.read_bytes() == body


def test_iperf3_server_protocol_against_the_real_client(testbed_hosts):
    """apps.iperf3 over kernel sockets: the protocol alone, whatever carries it."""
    a, b = testbed_hosts
    with netns.entered(b.netns):
        ls = socket.socket()
    ls.bind((b.ipv4, 5205))
    ls.listen()
    ls.setblocking(False)
    cli = subprocess.Popen(ns(a, "iperf3", "-c", b.ipv4, "-p", "5205", "-t", "1", "-P", "2", "--json"),
                           stdout=subprocess.PIPE, text=True)
    try:
        s = serve_one(ls, lambda deadline: select.select([ls], [], [], 0.001), time.monotonic, timeout=30)
        d = json.loads(cli.communicate(timeout=30)[0])
    finally:
        ls.close()
        if cli.poll() is None:
            cli.kill()
    assert "error" not in d and s.error is None
    assert s.received == d["end"]["sum_sent"]["bytes"] == d["end"]["sum_received"]["bytes"] > 0
    assert s.expected_streams == 2
