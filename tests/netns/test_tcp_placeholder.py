"""The kernel side of a userspace TCP port (kbypass.net.bind_tcp + a `tcp dst IP dport P` steering rule):
the bound, never-listening placeholder holds the port, and because the steering program takes every
segment of the port first, the kernel never answers a SYN with a RST. The control case (placeholder
without steering) shows the kernel would: the steering is what keeps it quiet."""

import errno
import socket
import time

import pytest

from kbypass import netns
from kbypass.errors import UsageError
from kbypass.net import bind_tcp
from kbypass.port.steered import SteeredPort

pytestmark = pytest.mark.netns
PORT = 4480


def out_rsts(ns: str) -> int:
    """The namespace's Tcp OutRsts (/proc/net/snmp shows the reading thread's namespace)."""
    with netns.entered(ns):
        with open("/proc/thread-self/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith("Tcp:")]
    names, values = lines
    return int(values[names.index("OutRsts")])


def connect_nb(ns: str, dst) -> socket.socket:
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    assert s.connect_ex(dst) == errno.EINPROGRESS
    return s


def outcome(s: socket.socket, wait: float) -> int:
    """0 (connected), the errno of a refusal, or -1 when still trying after `wait` seconds."""
    end = time.monotonic() + wait
    while time.monotonic() < end:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return err
        try:
            s.getpeername()
            return 0
        except OSError:
            time.sleep(0.02)
    return -1


def test_placeholder_plus_steering_takes_the_syn_and_the_kernel_stays_quiet(testbed_hosts):
    a, b = testbed_hosts
    holder = bind_tcp(b.netns, b.ipv4, PORT)
    try:
        # control: the placeholder alone is refused by the kernel with a RST
        before = out_rsts(b.netns)
        s = connect_nb(a.netns, (b.ipv4, PORT))
        assert outcome(s, 2.0) == errno.ECONNREFUSED
        s.close()
        assert out_rsts(b.netns) > before
        with SteeredPort(b.iface, None, [f"tcp dst {b.ipv4} dport {PORT}"], netns=b.netns) as sp:
            before = out_rsts(b.netns)
            s = connect_nb(a.netns, (b.ipv4, PORT))
            got = []
            end = time.monotonic() + 3.0
            while not got and time.monotonic() < end:
                batch = sp.receive(16)
                got = [batch.tobytes(i) for i in range(len(batch))]
                sp.free(batch)
                time.sleep(0.01)
            assert got, "the SYN did not reach the AF_XDP socket"
            syn = got[0]
            assert syn[23] == 6 and syn[34 + 13] & 0x02  # TCP, SYN flag
            assert outcome(s, 1.0) == -1  # nobody answered: no RST from the kernel
            s.close()
            assert out_rsts(b.netns) == before
    finally:
        holder.close()


def test_a_port_a_kernel_server_listens_on_is_refused_clearly(testbed_hosts):
    a, b = testbed_hosts
    with netns.entered(b.netns):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((b.ipv4, PORT + 1))
    srv.listen()
    try:
        with pytest.raises(UsageError, match="listens on it"):
            bind_tcp(b.netns, b.ipv4, PORT + 1)
    finally:
        srv.close()
    bind_tcp(b.netns, b.ipv4, PORT + 1).close()  # free again once the server is gone
    held = bind_tcp(b.netns, b.ipv4, 0)
    assert held.getsockname()[1] > 0
    with pytest.raises(UsageError, match="already bound"):
        bind_tcp(b.netns, b.ipv4, held.getsockname()[1])
    held.close()
