"""Ctrl-C during `kbypass http get` (a kernel server in netns that sends part of a body, then stalls): the
summary says interrupted, the exit status is 130 as for xfer, and the partial -o file is removed (a partial
body under the asked name would pass for the file)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from kbypass import netns

pytestmark = pytest.mark.netns
PORT = 8493


def test_ctrl_c_mid_body_is_interrupted_130_and_the_partial_file_removed(testbed_hosts, tmp_path):
    a, b = testbed_hosts
    with netns.entered(b.netns):
        srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((b.ipv4, PORT))
    srv.listen()
    out = tmp_path / "got.bin"
    p = subprocess.Popen([sys.executable, "-m", "kbypass", "http", "get", "--host", "a", "--json", "-o", str(out),
                          f"http://{b.ipv4}:{PORT}/big"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        srv.settimeout(30)
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 5000)  # then nothing
        time.sleep(1.5)  # the 5000 bytes are in (the file's writes are buffered: its size says little)
        assert out.exists()
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=20)
        conn.close()
    finally:
        srv.close()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stderr
    res = json.loads(stdout)
    assert res["interrupted"] is True and res["complete"] is False and res["bytes"] == 5000
    assert not out.exists() and "removed" in res["output"]
    assert "error" not in stderr
