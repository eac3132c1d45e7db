"""`kbypass run` TCP at the app's exit: what an app wrote reaches its peer, then the FIN, as on Linux (where the
kernel finishes an exited process's connections: orphan sockets). An unmodified sender (tests/netns/progs/
tcp_exit_sender.c: stdin to a connection, as `nc -q0 PEER PORT < file`, or a server writing its response) exits
at once after close(), after shutdown(SHUT_WR) or with the connection open, as root (its connections are handed
to the kernel's TCP: TCP_REPAIR) and as uid 65534 (no CAP_NET_ADMIN: the shim's exit waits until they are done,
KBYPASS_EXIT_LINGER_S); a kernel peer in the other namespace checks the SHA-256 of every byte and that the
stream ended with a FIN, also when it reads slowly (a small receive buffer: much is unsent at the exit)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.netns import test_run
from tests.netns.test_run import in_ns, run_app
from tests.netns.test_run_tcp_fork import NO_NET_ADMIN

_run_hosts, hosts = test_run._run_hosts, test_run.hosts  # test_run's fixtures: one control plane for the module
PROG = os.path.join(os.path.dirname(__file__), "progs", "tcp_exit_sender.c")

# the kernel peer: listens (or connects to the app's listener), reads to the end (slowly: a 16 KiB receive buffer
# and a pause per read), says how many bytes, their SHA-256 and how the stream ended (fin, reset, timeout)
PEER = r"""
import hashlib, socket, sys, time
role, ip, port, pace = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = socket.socket()
if pace != "fast":  # slow: 16 KiB at a time with a pause; stall: nothing read for 5 s first
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
if role == "listen":
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind((ip, port)); c.listen(1)
    print("ready", flush=True)
    c.settimeout(30); c = c.accept()[0]
else:
    c.connect((ip, port))
slow = pace != "fast"
if pace == "stall":
    time.sleep(5)
c.settimeout(15)
h, n, end = hashlib.sha256(), 0, "fin"
try:
    while b := c.recv(8192 if slow else 1 << 20):
        h.update(b); n += len(b)
        if slow:
            time.sleep(0.004)
except ConnectionResetError:
    end = "reset"
except socket.timeout:
    end = "timeout"
print("got", n, h.hexdigest(), end, flush=True)
"""


@pytest.fixture(scope="module")
def sender():
    """The sender built where uid 65534 can run it."""
    d = tempfile.mkdtemp(prefix="kbp-exit-")
    os.chmod(d, 0o755)
    exe = os.path.join(d, "tcp_exit_sender")
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-pthread", "-o", exe, PROG], check=True)
    yield exe
    shutil.rmtree(d)


def _exchange(hosts, sender, tmp_path, port: int, role: str, end: str, size: int, pace: str, user=(), env=None):
    """The app in b (role connect: to a's peer; accept: a's peer connects to it) sends `size` random bytes and
    ends `end`-wise; returns (the peer's verdict line, the app's output, the app's run time in seconds, the
    data's SHA-256)."""
    a, b = hosts
    port = str(port)
    data = os.urandom(size)
    src = tmp_path / "data"
    src.write_bytes(data)
    peer_argv = ("listen", a.ipv4, port) if role == "connect" else ("connect", b.ipv4, port)
    peer = app = None
    try:
        if role == "connect":
            peer = subprocess.Popen(in_ns(a, sys.executable, "-c", PEER, *peer_argv, pace),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert peer.stdout.readline().strip() == "ready"
        with open(src, "rb") as f:
            t0 = time.monotonic()
            app = run_app(b, *user, sender, role, b.ipv4 if role == "accept" else a.ipv4, port, end, stdin=f,
                          env={**os.environ, **(env or {})})
        head, until = "", "ready" if role == "accept" else "wrote" if end == "handler" else None
        while until and (line := app.stdout.readline()) and not line.startswith(until):
            head += line  # the peer connects once the app listens (and its rule steers the port)
        if end == "handler":  # it waits in recv now: SIGTERM, whose handler exits
            head += line
            time.sleep(0.2)
            app.send_signal(signal.SIGTERM)
        if role == "accept":
            peer = subprocess.Popen(in_ns(a, sys.executable, "-c", PEER, *peer_argv, pace),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out = head + app.communicate(timeout=90)[0]
        except subprocess.TimeoutExpired:
            app.kill()
            peer.kill()
            raise AssertionError(f"the app did not exit: {app.communicate()[0][-3000:]}\n"
                                 f"the peer: {peer.communicate()[0][-3000:]}") from None
        took = time.monotonic() - t0
        verdict = peer.communicate(timeout=60)[0]
    finally:
        for p in (peer, app):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert f"wrote {size}" in out, out[-3000:]
    assert "accelerated on" in out, out[-3000:]  # the connection was the shim's
    return verdict.strip(), out, took, hashlib.sha256(data).hexdigest()


CASES = [
    ("connect", "close", False, ()),
    ("connect", "shutdown", False, ()),
    ("connect", "exit", False, ()),
    ("accept", "exit", False, ()),
    ("accept", "close", False, ()),
    ("connect", "close", True, ()),
    ("connect", "exit", True, ()),
    ("connect", "close", False, NO_NET_ADMIN),
    ("connect", "exit", False, NO_NET_ADMIN),
    ("accept", "exit", True, NO_NET_ADMIN),
    ("connect", "shutdown", True, NO_NET_ADMIN),
    ("connect", "reader", True, ()),  # exit() while another thread of the app waits in recv on the connection
    ("connect", "reader", True, NO_NET_ADMIN),
    ("connect", "handler", True, NO_NET_ADMIN),  # exit() from a SIGTERM handler that interrupted recv on it
]


@pytest.mark.parametrize("role, end, slow, user", CASES,
                         ids=[f"{r}-{e}{'-slow' if s else ''}{'-no-net-admin' if u else ''}" for r, e, s, u in CASES])
def test_what_an_exiting_app_wrote_reaches_the_peer_then_its_fin(hosts, sender, tmp_path, role, end, slow, user):
    """20 MB (4 MB to a slow reader) written, then close()/shutdown()/nothing and exit() at once: the peer gets
    every byte and the FIN (not a reset, not silence), as from a kernel socket. Root's open connections are
    handed to the kernel's TCP at the exit; uid 65534's (and every one whose FIN is out) are finished by the
    shim's exit before the process goes."""
    size = (4 if slow else 20) << 20
    port = 8940 + CASES.index((role, end, slow, user))  # a port per case: a handed one may linger in the kernel
    verdict, out, _, sha = _exchange(hosts, sender, tmp_path, port, role, end, size, "slow" if slow else "fast", user)
    assert verdict == f"got {size} {sha} fin", f"{verdict}\n{out[-3000:]}"


@pytest.mark.parametrize("limit", ["", "1", "0"], ids=["default", "1s", "0s"])
def test_the_exit_waits_for_a_stalled_peer_at_most_the_linger_limit(hosts, sender, tmp_path, limit):
    """The peer reads nothing for 5 s (its window closes with the app's bytes unsent) while the app closes and
    exits: by default the exit waits until the peer took everything and the FIN; with KBYPASS_EXIT_LINGER_S=1
    it waits 1 s, says so on stderr and resets the connection (the peer sees the reset, not a hang); 0 waits
    for nothing and says nothing (the connection dies with the process)."""
    size = 512 << 10
    verdict, out, took, sha = _exchange(hosts, sender, tmp_path, 8960 + ["", "1", "0"].index(limit), "connect",
                                        "close", size, "stall",
                                        env={"KBYPASS_EXIT_LINGER_S": limit} if limit else None)
    if limit == "0":
        assert verdict != f"got {size} {sha} fin" and "KBYPASS_EXIT_LINGER_S" not in out, f"{verdict}\n{out}"
        assert took < 3, took
    elif limit:
        assert verdict.endswith(" reset"), f"{verdict}\n{out[-3000:]}"
        assert "after 1 s (KBYPASS_EXIT_LINGER_S): reset" in out, out[-3000:]
        assert 1 <= took < 4.5, took
    else:
        assert verdict == f"got {size} {sha} fin", f"{verdict}\n{out[-3000:]}"
        assert "closed connection(s) to deliver their bytes and FIN" in out, out[-3000:]  # --log says so
        assert took >= 4.5, took


@pytest.mark.parametrize("user", [(), NO_NET_ADMIN], ids=["root", "no-net-admin"])
def test_socat_sending_a_file_to_a_slow_reader_delivers_all_of_it(hosts, tmp_path, user):
    """`socat -u - TCP:PEER:PORT < file` (as `nc -q0`): at the file's end socat shuts the connection down, closes it
    and exits while much is still unsent (the peer reads slowly); the peer gets every byte and the FIN."""
    a, b = hosts
    size, port = 4 << 20, 8970 + bool(user)
    data = os.urandom(size)
    (tmp_path / "data").write_bytes(data)
    peer = subprocess.Popen(in_ns(a, sys.executable, "-c", PEER, "listen", a.ipv4, str(port), "slow"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert peer.stdout.readline().strip() == "ready"
        with open(tmp_path / "data", "rb") as f:
            out = run_app(b, *user, "socat", "-u", "-", f"TCP:{a.ipv4}:{port}", stdin=f).communicate(timeout=90)[0]
        verdict = peer.communicate(timeout=60)[0].strip()
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    assert "connecting) accelerated on" in out, out[-3000:]
    assert verdict == f"got {size} {hashlib.sha256(data).hexdigest()} fin", f"{verdict}\n{out[-3000:]}"
