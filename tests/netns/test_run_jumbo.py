"""The UDP paths on a jumbo testbed (MTU 9000 and 65535, multi-buffer AF_XDP merged after `kbypass run`):
100-byte and 8,000-byte datagrams from a kernel peer, every byte checked, all off the rings, for an
unmodified program under `kbypass run` (the shim binds its sockets with XDP_USE_SG when the MTU does not fit
a frame and takes a chain of frames as one datagram, kbp_iface.c), for kbypass.socket, and for the UDP
endpoint (kbypass.endpoint.XdpEndpoint) it is built on. A chain never reaches the app truncated or garbled."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from kbypass.cp import paths
from kbypass.cp.lock import terminate
from kbypass.host import testbed
from kbypass.tools.run import SHIM
from tests.netns.test_run import in_ns, run_app, sockets_of, stop, wait_for

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(not os.path.exists(SHIM), reason="the preload shim is not built: make setup")]

PORT = 7060
SIZES = (100, 8000) * 10

# the app: receives len(SIZES) datagrams, checks every byte of each against the pattern of its number
RECEIVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(10)
sizes = [int(x) for x in sys.argv[3].split(",")]
print("ready", getattr(s, "accelerated", ""), flush=True)
for i, n in enumerate(sizes):
    d = s.recv(65536)
    want = bytes((i * 31 + k * 7) & 0xFF for k in range(n))
    assert d == want, (i, n, len(d))
print("ok", len(sizes), s.endpoint.stats["rx_datagrams"] if getattr(s, "endpoint", None) else "", flush=True)
if len(sys.argv) > 4:  # one jumbo datagram back to a kernel socket of the peer's host
    s.sendto(bytes(k & 0xFF for k in range(8000)), (sys.argv[4], int(sys.argv[2])))
import time; time.sleep(60)  # until stopped: the test reads the shim's counters first
"""

KERNEL_RX = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(20)
d = s.recv(65536)
print(len(d), "whole" if d == bytes(k & 0xFF for k in range(8000)) else "garbled", flush=True)
"""

SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i, n in enumerate(int(x) for x in sys.argv[3].split(",")):
    s.sendto(bytes((i * 31 + k * 7) & 0xFF for k in range(n)), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.01)
"""


@pytest.fixture(scope="module", params=[9000, testbed.FRAGS_MAX_MTU], ids=lambda m: f"mtu{m}")
def jumbo_hosts(request, testbed_hosts):
    """The testbed at the MTU, once for every test of the module at that MTU (pytest runs them together),
    with no control plane left from before the change nor after it."""
    a, b = testbed_hosts
    prefix = testbed.default_prefix()
    for h in (a, b):
        terminate(paths.namespace_name(h.netns))
    hosts = testbed.up(testbed.TestbedConfig(prefix=prefix, queues=a.queues, mtu=request.param))
    try:
        yield hosts
    finally:
        for h in (a, b):
            terminate(paths.namespace_name(h.netns))
        testbed.up(testbed.TestbedConfig(prefix=prefix, queues=a.queues, mtu=a.mtu))


def test_run_receives_small_and_jumbo_datagrams_whole(jumbo_hosts):
    a, b = jumbo_hosts
    sizes = ",".join(map(str, SIZES))
    back = subprocess.Popen(in_ns(a, sys.executable, "-c", KERNEL_RX, a.ipv4, str(PORT)), stdout=subprocess.PIPE,
                            text=True)
    app = run_app(b, sys.executable, "-c", RECEIVER, b.ipv4, str(PORT), sizes, a.ipv4)
    try:
        wait_for(lambda: sockets_of(b, PORT), what="the app's socket to be accelerated")
        subprocess.run(in_ns(a, sys.executable, "-c", SENDER, b.ipv4, str(PORT), sizes), check=True, timeout=60)
        lines = read_until(app, "ok")
        assert f"ok {len(SIZES)} \n" in lines, "".join(lines) + stop(app)
        assert back.communicate(timeout=10)[0].strip() == "8000 whole"  # sent through the kernel socket
        (s,) = sockets_of(b, PORT)
        assert s["rx"] == len(SIZES) and s["rx_kernel"] == 0 and s["rx_dropped"] == 0, s  # all off the rings
        assert s["tx_kernel"] == 1 and s["tx"] == 0, s
        assert "datagrams larger than 2006 bytes are sent through the kernel socket" in stop(app)  # --log
    finally:
        back.kill()
        if app.returncode is None:
            stop(app)


def read_until(proc: subprocess.Popen, word: str, timeout: float = 15) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(ln.startswith(word) for ln in lines):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    return lines


def test_kbypass_socket_receives_small_and_jumbo_datagrams_whole(jumbo_hosts):
    """The same receiver with `from kbypass import socket` (no preload): its endpoint counts every datagram."""
    a, b = jumbo_hosts
    sizes = ",".join(map(str, SIZES))
    code = RECEIVER.replace("import socket, sys", "import sys\nfrom kbypass import socket")
    app = subprocess.Popen(in_ns(b, sys.executable, "-c", code, b.ipv4, str(PORT), sizes), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        assert read_until(app, "ready")[-1:] == ["ready True\n"]
        subprocess.run(in_ns(a, sys.executable, "-c", SENDER, b.ipv4, str(PORT), sizes), check=True, timeout=60)
        lines = read_until(app, "ok")
        assert f"ok {len(SIZES)} {len(SIZES)}\n" in lines, "".join(lines) + stop(app)
    finally:
        stop(app)


ENDPOINT = r"""
import sys
from kbypass.endpoint.xdp import XdpEndpoint
ep = XdpEndpoint(sys.argv[4], sys.argv[1], int(sys.argv[2]))
sizes = [int(x) for x in sys.argv[3].split(",")]
print("ready", ep.multi_buffer, flush=True)
for i, n in enumerate(sizes):
    d, _ = ep.recvfrom(timeout=10)
    assert d == bytes((i * 31 + k * 7) & 0xFF for k in range(n)), (i, n, len(d))
print("ok", len(sizes), ep.stats["rx_datagrams"], flush=True)
ep.close()
"""


def test_the_udp_endpoint_receives_small_and_jumbo_datagrams_whole(jumbo_hosts):
    a, b = jumbo_hosts
    sizes = ",".join(map(str, SIZES))
    app = subprocess.Popen(in_ns(b, sys.executable, "-c", ENDPOINT, b.ipv4, str(PORT), sizes, b.iface),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert read_until(app, "ready")[-1:] == ["ready True\n"]
        subprocess.run(in_ns(a, sys.executable, "-c", SENDER, b.ipv4, str(PORT), sizes), check=True, timeout=60)
        lines = read_until(app, "ok")
        assert f"ok {len(SIZES)} {len(SIZES)}\n" in lines, "".join(lines) + stop(app)
    finally:
        stop(app)
