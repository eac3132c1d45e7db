"""TcpHost's errors are the stdlib socket's types (code written for `socket` catches them), each also a
KbypassError the CLI says on one line: an address nobody answers ARP for is OSError EHOSTUNREACH, a name is a
socket.gaierror, a port past 65535 OverflowError, a non-pair TypeError, a negative timeout ValueError, and
port 0 goes out as the kernel sends it (the peer's RST: ConnectionRefusedError). The kernel in netns says
what the stdlib raises for the same calls, as the judge."""

from __future__ import annotations

import errno
import socket

import pytest

from kbypass import netns
from kbypass.endpoint.tcpio import TcpHost
from kbypass.errors import KbypassError

pytestmark = pytest.mark.netns


@pytest.fixture
def host_a(testbed_hosts):
    a, _ = testbed_hosts
    with TcpHost(a.iface, a.ipv4, netns=a.netns) as host:
        yield host


def kernel_error(ns: str, call) -> type:
    with netns.entered(ns):
        s = socket.socket()
    s.settimeout(4)
    try:
        call(s)
    except Exception as e:  # noqa: BLE001 - the judge's type is the point
        return type(e)
    finally:
        s.close()
    raise AssertionError("the kernel socket raised nothing")


def test_no_arp_answer_is_ehostunreach(testbed_hosts, host_a):
    a, _ = testbed_hosts
    silent = a.ipv4.rsplit(".", 1)[0] + ".99"
    assert kernel_error(a.netns, lambda s: s.connect((silent, 80))) is OSError
    with pytest.raises(OSError) as e:
        host_a.connect((silent, 80), timeout=1)
    assert e.value.errno == errno.EHOSTUNREACH and isinstance(e.value, KbypassError)
    assert str(e.value).startswith(f"{silent} did not answer ARP")


@pytest.mark.parametrize("addr, stdlib", [(("nohost.invalid", 80), socket.gaierror), (("{ip}", 70000), OverflowError),
                                          ("{ip}", TypeError), (("{ip}", "80"), TypeError)])
def test_bad_addresses_raise_the_stdlib_types(testbed_hosts, host_a, addr, stdlib):
    a, b = testbed_hosts
    addr = tuple(x.format(ip=b.ipv4) if isinstance(x, str) else x for x in addr) if isinstance(addr, tuple) \
        else addr.format(ip=b.ipv4)
    assert issubclass(kernel_error(a.netns, lambda s: s.connect(addr)), stdlib)
    with pytest.raises(stdlib) as e:
        host_a.connect(addr, timeout=1)
    assert isinstance(e.value, KbypassError)


def test_port_0_is_refused_by_the_peer_as_for_the_kernel(testbed_hosts, host_a):
    a, b = testbed_hosts
    assert kernel_error(a.netns, lambda s: s.connect((b.ipv4, 0))) is ConnectionRefusedError
    with pytest.raises(ConnectionRefusedError):
        host_a.connect((b.ipv4, 0), timeout=3)


def test_a_negative_listener_timeout_is_a_value_error(host_a):
    with pytest.raises(ValueError):
        socket.socket().settimeout(-1)  # the judge
    lst = host_a.listen(0)
    with pytest.raises(ValueError):
        lst.settimeout(-1)
    lst.settimeout(0.5)
    assert lst.timeout == 0.5
    lst.close()
