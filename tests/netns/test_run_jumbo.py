"""`kbypass run` on a jumbo testbed (MTU 9000 and 65535, multi-buffer AF_XDP merged after the shim): an
unmodified program receives 100-byte and 8,000-byte datagrams from a kernel peer, every byte checked. The
shim binds its sockets with XDP_USE_SG when the MTU does not fit a frame and takes a chain of frames as one
datagram (kbp_iface.c); a chain must never reach the app truncated or garbled."""

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
print("ready", flush=True)
for i, n in enumerate(sizes):
    d = s.recv(65536)
    want = bytes((i * 31 + k * 7) & 0xFF for k in range(n))
    assert d == want, (i, n, len(d))
print("ok", len(sizes), flush=True)
import time; time.sleep(60)  # until stopped: the test reads the shim's counters first
"""

SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i, n in enumerate(int(x) for x in sys.argv[3].split(",")):
    s.sendto(bytes((i * 31 + k * 7) & 0xFF for k in range(n)), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.01)
"""


@pytest.fixture(params=[9000, testbed.FRAGS_MAX_MTU], ids=lambda m: f"mtu{m}")
def jumbo_hosts(request, testbed_hosts):
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
    app = run_app(b, sys.executable, "-c", RECEIVER, b.ipv4, str(PORT), sizes)
    try:
        wait_for(lambda: sockets_of(b, PORT), what="the app's socket to be accelerated")
        subprocess.run(in_ns(a, sys.executable, "-c", SENDER, b.ipv4, str(PORT), sizes), check=True, timeout=60)
        lines = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(ln.startswith("ok") for ln in lines):
            line = app.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert f"ok {len(SIZES)}\n" in lines, "".join(lines) + stop(app)
        (s,) = sockets_of(b, PORT)
        assert s["rx"] == len(SIZES) and s["rx_kernel"] == 0 and s["rx_dropped"] == 0, s  # all off the rings
    finally:
        stop(app)
