"""kbypass.socket's semantics without a network: the stdlib names pass through, unaccelerated sockets are
plain kernel ones, and an accelerated socket (here over a fake endpoint on loopback) keeps the stdlib's
timeouts, errors, flags and readiness. The real bypass is tests/netns/test_sockapi.py's."""

from __future__ import annotations

import collections
import errno
import os
import select
import selectors
import socket as std
import struct
import time

import pytest

from kbypass import socket as kbsocket
from kbypass.errors import KbypassError, UsageError
from kbypass.sockapi import plan as planmod
from kbypass.sockapi import udp as udpmod


def test_every_stdlib_name_passes_through():
    for name in std.__all__:
        if name != "socket":
            assert getattr(kbsocket, name) is getattr(std, name), name
    assert kbsocket.SO_REUSEPORT == std.SO_REUSEPORT and kbsocket.getaddrinfo is std.getaddrinfo
    assert kbsocket.socket is udpmod.socket and issubclass(kbsocket.socket, std.socket)


def test_tcp_and_unix_sockets_are_plain_stdlib_ones():
    with kbsocket.socket(kbsocket.AF_INET, kbsocket.SOCK_STREAM) as t, kbsocket.socket() as d:
        assert type(t) is std.socket and type(d) is std.socket
    with kbsocket.socket(kbsocket.AF_UNIX, kbsocket.SOCK_DGRAM) as u:
        assert type(u) is std.socket


def test_loopback_stays_on_the_kernel_with_its_reason(capsys, monkeypatch):
    monkeypatch.setenv("KBYPASS_LOG", "1")
    with kbsocket.socket(kbsocket.AF_INET, kbsocket.SOCK_DGRAM) as s, std.socket(std.AF_INET, std.SOCK_DGRAM) as peer:
        assert isinstance(s, std.socket) and s.kbypass_reason == "not bound yet" and not s.accelerated
        s.bind(("127.0.0.1", 0))
        assert not s.accelerated and "loopback" in s.kbypass_reason
        assert s.fileno() == s.kernel_fileno()
        peer.bind(("127.0.0.1", 0))
        peer.sendto(b"hi", s.getsockname())
        s.settimeout(2)
        assert s.recvfrom(10) == (b"hi", peer.getsockname())
        s.settimeout(0.0)
        with pytest.raises(BlockingIOError):
            s.recv(10)
    assert "not accelerated" in capsys.readouterr().err


def test_errors_of_bind_are_the_kernels():
    with kbsocket.socket(kbsocket.AF_INET, kbsocket.SOCK_DGRAM) as a, kbsocket.socket(kbsocket.AF_INET, kbsocket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as e:
            b.bind(a.getsockname())
        assert e.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as e:
            b.bind(("192.0.2.77", 0))  # not an address of this host
        assert e.value.errno == errno.EADDRNOTAVAIL


def test_plan_routes_each_destination():
    p = planmod.Plan("eth9", "10.1.0.2", 24, None, local=frozenset({"10.1.0.2", "10.9.9.9"}))
    assert p.via_ring("10.1.0.7")
    for dst in ("10.1.0.2", "10.9.9.9", "127.0.0.1", "10.1.0.255", "255.255.255.255", "224.0.0.5", "0.0.0.0",
                "8.8.8.8", "not-an-ip"):
        assert not p.via_ring(dst), dst
    assert planmod.Plan("eth9", "10.1.0.2", 24, "10.1.0.1").via_ring("8.8.8.8")  # off the subnet: the gateway
    assert planmod.served("eth9", "") is None and planmod.served("eth9", "eth1,eth9") is None
    assert "not served" in planmod.served("eth9", "eth1")


# ---- an accelerated socket over a fake endpoint -------------------------------------------------------


class FakeEndpoint:
    """What kbypass.socket uses of XdpEndpoint, over a pipe whose read end stands for the rings' fd."""

    instances: list = []

    def __init__(self, ifname, ip, port, *, poll, gateway, placeholder, queue=None) -> None:
        self.args = (ifname, ip, port, poll)
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.ring: collections.deque = collections.deque()
        self.queued: collections.deque = collections.deque()  # taken off the ring, not handed out
        self.sent: list = []
        self.fields: dict = {}
        self.full = False
        self.closed = False
        FakeEndpoint.instances.append(self)

    def arrive(self, data: bytes, src) -> None:
        self.ring.append((data, src))
        os.write(self.w, b"x")

    @property
    def readiness_fds(self):
        return [self.r]

    def receive_nowait(self):
        if not self.queued and self.ring:
            self.queued.append(self.ring.popleft())
            os.read(self.r, 1)
        return self.queued.popleft() if self.queued else None

    @property
    def pending(self):
        return len(self.queued)

    def spin(self):
        pass

    def before_sleep(self):
        return None

    def sendto(self, data, addr):
        if self.full:
            raise BlockingIOError(errno.EAGAIN, "TX ring full")
        if len(data) > 1472:
            raise UsageError(f"a {len(data)}-byte message exceeds the MTU (1500: at most 1472 bytes)")
        if addr[0] == "10.1.0.66":
            raise KbypassError("10.1.0.66 did not answer ARP")
        self.sent.append((bytes(data), addr))
        return len(data)

    def set_ip_fields(self, tos=None, ttl=None):
        self.fields.update({k: v for k, v in (("tos", tos), ("ttl", ttl)) if v is not None})

    def close(self):
        self.closed = True
        os.close(self.r)
        os.close(self.w)


def accelerated(monkeypatch):
    """A kbypass UDP socket bound on loopback and accelerated over a FakeEndpoint (plan: 10.1.0.2/24)."""
    import kbypass.endpoint.xdp as xdp

    FakeEndpoint.instances.clear()
    monkeypatch.setattr(xdp, "XdpEndpoint", FakeEndpoint)
    monkeypatch.setattr(planmod, "for_bind", lambda ip: planmod.Plan("fake0", "10.1.0.2", 24, None,
                                                                      local=frozenset({"127.0.0.1", "10.1.0.2"})))
    s = kbsocket.socket(kbsocket.AF_INET, kbsocket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    assert s.accelerated and s.kbypass_reason is None
    return s, FakeEndpoint.instances[-1]


@pytest.fixture
def fake(monkeypatch):
    s, ep = accelerated(monkeypatch)
    yield s, ep
    s.close()


def readable(s, timeout=0.0) -> bool:
    return bool(select.select([s], [], [], timeout)[0])


def test_timeouts_and_blocking_are_the_stdlibs(fake):
    s, ep = fake
    assert s.gettimeout() is None and s.getblocking()
    s.setblocking(False)
    with pytest.raises(BlockingIOError) as e:
        s.recvfrom(100)
    assert e.value.errno == errno.EAGAIN
    s.settimeout(0.05)
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        s.recv(100)
    assert time.monotonic() - t >= 0.04
    s.settimeout(None)
    with pytest.raises(BlockingIOError):
        s.recv(100, kbsocket.MSG_DONTWAIT)
    with pytest.raises(ValueError):
        s.settimeout(-1)
    # SO_RCVTIMEO on a blocking socket: the kernel's EAGAIN after the time
    s.setsockopt(kbsocket.SOL_SOCKET, kbsocket.SO_RCVTIMEO, struct.pack("@ll", 0, 30000))
    with pytest.raises(BlockingIOError):
        s.recv(100)


def test_receive_calls_truncate_and_peek_like_udp(fake):
    s, ep = fake
    src = ("10.1.0.7", 4000)
    for i in range(5):
        ep.arrive(b"0123456789" * (i + 1), src)
    assert s.recvfrom(4) == (b"0123", src)  # the rest of a datagram is gone, as UDP's
    buf = bytearray(8)
    assert s.recv_into(buf) == 8 and bytes(buf) == b"01234567"
    assert s.recvfrom_into(buf, 3) == (3, src) and bytes(buf[:3]) == b"012"
    data, anc, flags, addr = s.recvmsg(5)
    assert (data, anc, addr) == (b"01234", [], src) and flags & kbsocket.MSG_TRUNC
    ep.arrive(b"peeked", src)
    bufs = [bytearray(3), bytearray(100)]
    assert s.recvmsg_into(bufs) == (50, [], 0, src)
    assert s.recv(100, kbsocket.MSG_PEEK) == b"peeked"
    assert readable(s)  # what MSG_PEEK left is still there for select
    assert s.recv(100) == b"peeked"
    assert not readable(s)


def test_readiness_fd_works_with_select_poll_and_selectors(fake):
    s, ep = fake
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    assert sel.select(0) == [] and not readable(s)
    ep.arrive(b"one", ("10.1.0.7", 1))
    ep.arrive(b"two", ("10.1.0.7", 1))
    assert [k.fileobj for k, _ in sel.select(1)] == [s]
    p = select.poll()
    p.register(s, select.POLLIN)
    assert p.poll(1000)
    assert s.recv(10) == b"one" and s.recv(10) == b"two" and not readable(s)
    # datagrams taken off the rings inside kbypass (the stack's queue) show on no ring fd: the receive
    # that leaves them there raises the socket's eventfd, and the one that empties the queue lowers it
    ep.queued.extend([(b"three", ("10.1.0.7", 1)), (b"four", ("10.1.0.7", 1))])
    assert s.recv(10) == b"three" and readable(s) and sel.select(0)
    assert s.recv(10) == b"four" and not readable(s)
    sel.close()


def test_kernel_side_datagrams_reach_the_accelerated_socket(fake):
    s, ep = fake
    with std.socket(std.AF_INET, std.SOCK_DGRAM) as local:
        local.bind(("127.0.0.1", 0))
        local.sendto(b"via loopback", s.getsockname())
        assert readable(s, 2)
        assert s.recvfrom(100) == (b"via loopback", local.getsockname())
        # and a destination the rings cannot reach (this host) leaves through the kernel socket
        assert s.sendto(b"back", local.getsockname()) == 4 and ep.sent == []
        assert local.recv(10) == b"back"


def test_send_goes_to_the_rings_with_the_stdlibs_errors(fake):
    s, ep = fake
    assert s.sendto(b"hello", ("10.1.0.7", 7)) == 5 and ep.sent == [(b"hello", ("10.1.0.7", 7))]
    assert s.sendto(b"flags", 0, ("10.1.0.7", 7)) == 5
    with pytest.raises(OSError) as e:
        s.send(b"x")
    assert e.value.errno == errno.EDESTADDRREQ
    with pytest.raises(OSError) as e:
        s.sendto(b"x" * 2000, ("10.1.0.7", 7))
    assert e.value.errno == errno.EMSGSIZE
    with pytest.raises(OSError) as e:
        s.sendto(b"x", ("10.1.0.66", 7))
    assert e.value.errno == errno.EHOSTUNREACH
    with pytest.raises(TypeError):
        s.sendto(b"x", "10.1.0.7:7")
    with pytest.raises(OverflowError):
        s.sendto(b"x", ("10.1.0.7", 70000))
    ep.full = True
    s.setblocking(False)
    with pytest.raises(BlockingIOError):
        s.sendto(b"x", ("10.1.0.7", 7))
    s.settimeout(0.02)
    with pytest.raises(TimeoutError):
        s.sendto(b"x", ("10.1.0.7", 7))


def test_a_connected_socket_hears_only_its_peer(fake):
    s, ep = fake
    with std.socket(std.AF_INET, std.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        s.connect(peer.getsockname())
        assert s.getpeername() == peer.getsockname()
        ep.arrive(b"stranger", ("127.0.0.9", 5))
        ep.arrive(b"friend", peer.getsockname())
        s.settimeout(1)
        assert s.recv(100) == b"friend"
        s.send(b"to the peer")  # this host: through the kernel socket
        assert peer.recv(100) == b"to the peer"
        s.sendall(b"all")
        assert peer.recv(100) == b"all"


def test_options_honoured_on_the_bypass(fake):
    s, ep = fake
    s.setsockopt(kbsocket.IPPROTO_IP, kbsocket.IP_TOS, 0xB8)
    s.setsockopt(kbsocket.IPPROTO_IP, kbsocket.IP_TTL, 7)
    assert ep.fields == {"tos": 0xB8, "ttl": 7}
    assert s.getsockopt(kbsocket.IPPROTO_IP, kbsocket.IP_TOS) == 0xB8  # the kernel socket's, as set
    s.setsockopt(kbsocket.SOL_SOCKET, kbsocket.SO_RCVBUF, 1 << 20)  # accepted, the kernel socket's only
    assert s.getsockopt(kbsocket.SOL_SOCKET, kbsocket.SO_RCVBUF) >= 1 << 20
    s.setsockopt(kbsocket.SOL_SOCKET, udpmod.SO_TIMESTAMPNS, 1)
    before = time.time_ns()
    ep.arrive(b"stamped", ("10.1.0.7", 1))
    data, anc, flags, addr = s.recvmsg(100, 1024)
    (level, kind, value), = anc
    sec, nsec = struct.unpack("@ll", value)
    assert (level, kind) == (kbsocket.SOL_SOCKET, udpmod.SO_TIMESTAMPNS) and sec * 10**9 + nsec >= before
    ep.arrive(b"stamped", ("10.1.0.7", 1))
    assert s.recvmsg(100, 0)[2] & kbsocket.MSG_CTRUNC  # no room for it: truncated, as the kernel says


def test_close_and_detach_end_the_bypass(fake):
    s, ep = fake
    kfd = s.kernel_fileno()
    fd = s.detach()
    assert fd == kfd and ep.closed and not s.accelerated
    with std.socket(fileno=fd) as k:
        assert k.getsockname()[0] == "127.0.0.1"


def test_an_unusable_bypass_falls_back_with_one_warning(monkeypatch, capsys):
    import kbypass.endpoint.xdp as xdp

    def broken(*a, **k):
        raise KbypassError("no control plane and none can be started")

    monkeypatch.setattr(xdp, "XdpEndpoint", broken)
    monkeypatch.setattr(planmod, "for_bind", lambda ip: planmod.Plan("fake0", ip, 8, None))
    monkeypatch.delenv("KBYPASS_LOG", raising=False)
    with kbsocket.socket(kbsocket.AF_INET, kbsocket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        assert not s.accelerated and "no control plane" in s.kbypass_reason
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and "runs on the kernel" in err


def test_spin_us_from_the_environment(monkeypatch):
    monkeypatch.setenv("KBYPASS_SPIN_US", "50")
    assert udpmod.spin_us_default() == 50
    monkeypatch.setenv("KBYPASS_SPIN_US", "soon")
    with pytest.raises(UsageError, match="KBYPASS_SPIN_US"):
        udpmod.spin_us_default()


# ---- kbypass.aio over the same fake ---------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list = []

    def connection_made(self, transport):
        self.events.append(("made", transport))

    def datagram_received(self, data, addr):
        self.events.append(("data", data, addr))

    def error_received(self, exc):
        self.events.append(("error", exc.errno))

    def pause_writing(self):
        self.events.append(("pause",))

    def resume_writing(self):
        self.events.append(("resume",))

    def connection_lost(self, exc):
        self.events.append(("lost", exc))


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_datagram_transport_over_the_readiness_fd(fake, loop_kind):
    import asyncio

    from kbypass import aio

    s, ep = fake
    src = ("10.1.0.7", 4000)

    async def scenario():
        transport, rec = await aio.create_datagram_endpoint(Recorder, sock=s)
        assert rec.events[0] == ("made", transport) and transport.get_extra_info("socket") is s
        assert transport.get_extra_info("sockname") == s.getsockname() and transport.get_extra_info("peername") is None
        ep.arrive(b"one", src)
        ep.arrive(b"two", src)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(rec.events) >= 3:
                break
        assert rec.events[1:] == [("data", b"one", src), ("data", b"two", src)]
        transport.sendto(b"answer", src)
        assert ep.sent == [(b"answer", src)]
        transport.sendto(b"x" * 2000, src)  # too large: the protocol hears of it, as with asyncio's transport
        assert rec.events[-1] == ("error", errno.EMSGSIZE)
        ep.full = True  # TX ring full: queued, flushed on a timer once there is room again
        for i in range(60):  # past the 64 KiB high-water mark
            transport.sendto(b"q" * 1400 + bytes([i]), src)
        assert transport.get_write_buffer_size() == 60 * 1401 and ("pause",) in rec.events
        ep.full = False
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not transport.get_write_buffer_size():
                break
        assert transport.get_write_buffer_size() == 0 and ("resume",) in rec.events
        assert [d[-1] for d, _ in ep.sent[1:]] == list(range(60))  # in order
        with pytest.raises(ValueError):
            transport.sendto(b"no address")
        transport.close()
        await asyncio.sleep(0.01)
        assert rec.events[-1] == ("lost", None) and transport.is_closing()

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())
    assert s._closed


def test_closing_from_another_thread_wakes_a_blocked_receive(fake):
    import threading

    s, ep = fake
    errors = []

    def receive():
        try:
            s.recv(10)
        except OSError as e:
            errors.append(e.errno)

    t = threading.Thread(target=receive)
    t.start()
    time.sleep(0.2)
    s.close()
    t.join(5)
    assert not t.is_alive() and errors == [errno.EBADF] and ep.closed


def test_a_dropped_socket_releases_its_endpoint(monkeypatch):
    import gc
    import warnings

    s, ep = accelerated(monkeypatch)
    evfd = s._evfd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the stdlib's word on an unclosed socket
        del s
        gc.collect()
    assert ep.closed
    with pytest.raises(OSError):
        os.fstat(evfd)


def test_asyncios_own_datagram_endpoint_takes_an_accelerated_socket(fake):
    """asyncio's selector loop polls fileno(), the readiness fd, and reads with recvfrom: it works as is
    (uvloop gives the fd to libuv, which reads it itself: there kbypass.aio is the way)."""
    import asyncio

    s, ep = fake
    src = ("10.1.0.7", 4000)

    async def scenario():
        loop = asyncio.get_running_loop()
        transport, rec = await loop.create_datagram_endpoint(Recorder, sock=s)
        ep.arrive(b"hello", src)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(rec.events) >= 2:
                break
        assert rec.events[1] == ("data", b"hello", src)
        transport.sendto(b"back", src)
        assert ep.sent == [(b"back", src)]
        transport.close()
        await asyncio.sleep(0.01)

    asyncio.run(scenario())


def test_an_unbound_transport_follows_its_socket_to_the_readiness_fd(monkeypatch):
    """create_datagram_endpoint without addresses: the first sendto binds (and here accelerates) the
    socket, whose fileno() becomes the readiness fd; the transport's reader moves there."""
    import asyncio

    import kbypass.endpoint.xdp as xdp
    from kbypass import aio

    FakeEndpoint.instances.clear()
    monkeypatch.setattr(xdp, "XdpEndpoint", FakeEndpoint)
    monkeypatch.setattr(planmod, "for_destination", lambda dst: planmod.Plan("fake0", "127.0.0.1", 8, None))
    monkeypatch.setattr(planmod, "for_bind", lambda ip: planmod.Plan("fake0", "127.0.0.1", 8, None))

    async def scenario():
        transport, rec = await aio.create_datagram_endpoint(Recorder)
        sock = transport.get_extra_info("socket")
        assert not sock.accelerated
        transport.sendto(b"first", ("127.0.0.9", 9))
        assert sock.accelerated
        ep = FakeEndpoint.instances[-1]
        ep.arrive(b"answer", ("127.0.0.9", 9))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(rec.events) >= 2:
                break
        assert rec.events[1] == ("data", b"answer", ("127.0.0.9", 9))
        transport.close()
        await asyncio.sleep(0.01)

    asyncio.run(scenario())


def test_spinning_receive_finds_a_datagram_and_still_times_out(monkeypatch):
    import threading

    monkeypatch.setenv("KBYPASS_SPIN_US", "300000")
    s, ep = accelerated(monkeypatch)
    try:
        assert ep.args[3] == ("busy" if os.geteuid() == 0 else "wakeup")  # busy-poll options need root
        spins = []
        ep.spin = lambda: spins.append(1)
        threading.Timer(0.05, ep.arrive, (b"spun", ("10.1.0.7", 1))).start()
        s.settimeout(2)
        assert s.recv(10) == b"spun" and len(spins) > 10  # found while spinning, before any sleep
        s.settimeout(0.05)
        t = time.monotonic()
        with pytest.raises(TimeoutError):
            s.recv(10)
        assert 0.04 <= time.monotonic() - t < 1.0  # the timeout bounds the spin too
    finally:
        s.close()
