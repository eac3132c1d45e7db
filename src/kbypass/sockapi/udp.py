"""`kbypass.socket.socket`: the stdlib `socket.socket` for UDP over the bypass; change one import.

    from kbypass import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("10.77.0.2", 9000))          # an address of a served interface: its datagrams come off AF_XDP rings
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)

It IS a `socket.socket` (a subclass) whose kernel fd is the placeholder UDP socket that holds the port, so
getsockname/getpeername/getsockopt, `isinstance` and the errors of bind and connect are the kernel's own.
Once bound to an address of an interface kbypass serves (kbypass.sockapi.plan: explicit bind, port 0,
the wildcard address on a namespace with one served address, connect, or a first sendto whose route
leaves through one), it is *accelerated*: a kbypass.endpoint.XdpEndpoint on the same port (the control
plane steers `udp dst IP dport PORT` to its AF_XDP sockets) carries its datagrams. Otherwise it stays a
plain kernel socket and `kbypass_reason` says why (one line on stderr with KBYPASS_LOG=1; always one
warning line when the socket qualified but the bypass could not be opened, e.g. no control plane).
Other families and types (TCP, unix) are plain stdlib sockets: `socket.socket(AF_INET, SOCK_STREAM)`
returns a `socket.socket`.

An accelerated socket receives from the rings and from the kernel socket (local senders reach it
through loopback); it sends through the rings to peers on the interface's subnet (or its default
gateway) and through the kernel socket to everything else (Plan.via_ring).

fileno() of an accelerated socket is its *readiness fd*: an epoll fd over the AF_XDP sockets, the kernel
socket and an eventfd raised while datagrams wait inside kbypass (a MSG_PEEK, the stack's queue). select,
poll, epoll, selectors and asyncio's add_reader see it readable exactly when recv would not block. It
never polls writable: a send does not block on the bypass (BlockingIOError only with the TX ring full).
`kernel_fileno()` is the placeholder's fd.

Blocking calls spin for `$KBYPASS_SPIN_US` microseconds (like Onload's EF_POLL_USEC; with busy-poll
socket options when root), then sleep on the readiness fd; 0 (the default) never spins. Timeouts
(settimeout, setblocking, socket.setdefaulttimeout, SO_RCVTIMEO) and errors are the stdlib's:
BlockingIOError (EAGAIN), TimeoutError ("timed out"), OSError EMSGSIZE for a datagram larger than the
MTU, EDESTADDRREQ for send() unconnected. A connected socket only receives from its peer.

Socket options (set on the kernel socket always, so getsockopt answers what was set):
  honoured on the bypass   IP_TOS, IP_TTL (the header of what the rings send), SO_RCVTIMEO (a blocking
                           recv gives up with EAGAIN), SO_TIMESTAMP/SO_TIMESTAMPNS (recvmsg ancillary
                           data: the time kbypass took the datagram off the ring; AF_XDP gives no wire
                           time), SO_REUSEADDR/SO_REUSEPORT (they rule the kernel bind, which comes first;
                           a second socket on a steered port stays on the kernel, said in its reason),
                           SO_BROADCAST (broadcasts leave through the kernel socket, which checks it)
  accepted, kernel only    SO_RCVBUF, SO_SNDBUF (the rings' sizes are fixed at open), SO_PRIORITY,
                           IP_MULTICAST_*, everything else: they act on the kernel socket's traffic only
Not thread-safe beyond one receiving and one sending thread (a lock serialises the ring work).
"""

from __future__ import annotations

import errno
import os
import select
import socket as _s
import struct
import sys
import threading
import time

from kbypass.errors import KbypassError, UsageError

from . import plan as _plan

SO_TIMESTAMP, SO_TIMESTAMPNS = 29, 35
# plain ints: the stdlib's are IntFlag members, whose arithmetic costs a microsecond a call on the hot path
MSG_PEEK, MSG_DONTWAIT, MSG_TRUNC, MSG_WAITALL = (int(f) for f in (_s.MSG_PEEK, _s.MSG_DONTWAIT, _s.MSG_TRUNC,
                                                                   _s.MSG_WAITALL))
RECV_FLAGS = ~(MSG_PEEK | MSG_DONTWAIT | MSG_WAITALL | MSG_TRUNC)  # the bits refused (MSG_WAITALL: UDP ignores it)
SEND_FLAGS = ~(MSG_DONTWAIT | int(getattr(_s, "MSG_NOSIGNAL", 0x4000)) | int(getattr(_s, "MSG_CONFIRM", 0x800)))
TIMEVAL = struct.Struct("@ll")
_FRESH, _KERNEL, _BYPASS = "unbound", "kernel", "bypass"
_MAX_CACHE = 4096


def _log(line: str) -> None:
    if os.environ.get("KBYPASS_LOG") == "1":
        print(f"kbypass: {line}", file=sys.stderr, flush=True)


def spin_us_default() -> int:
    v = os.environ.get("KBYPASS_SPIN_US", "0")
    try:
        return max(0, int(v))
    except ValueError:
        raise UsageError(f"KBYPASS_SPIN_US={v!r}: give microseconds as an integer (0: never spin)") from None


class socket(_s.socket):  # noqa: N801 - the stdlib's name, so existing code changes one import
    """See the module doc. Only AF_INET SOCK_DGRAM sockets are this class; others are stdlib sockets."""

    __slots__ = ("_kb_state", "_ep", "_plan", "_rx", "_kbto", "_rcvtimeo", "_lock", "_held", "_ready",
                 "_epoll", "_evfd", "_peer", "_stamp", "_routes", "_spin_us", "kbypass_reason")

    def __new__(cls, family=-1, type=-1, proto=-1, fileno=None, **kw):
        fam = _s.AF_INET if family == -1 and fileno is None else family
        kind = _s.SOCK_STREAM if type == -1 and fileno is None else type
        if cls is socket and (fam != _s.AF_INET or (int(kind) & 0xF) != _s.SOCK_DGRAM or fileno is not None):
            return _s.socket(family, type, proto, fileno)  # TCP, unix, adopted fds: the kernel's, untouched
        return super().__new__(cls, family, type, proto, fileno)

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None, *, spin_us: int | None = None) -> None:
        super().__init__(_s.AF_INET if family == -1 else family, type, 0 if proto == -1 else proto, fileno)
        self._kb_state = _FRESH
        self._ep = self._plan = self._epoll = self._peer = None
        self._evfd = -1
        self._kbto = None  # the timeout while accelerated; before, the stdlib keeps its own
        self._rcvtimeo = None
        self._lock = threading.Lock()
        self._held = None
        self._ready = self._stamp = False
        self._routes: dict = {}
        self._spin_us = spin_us_default() if spin_us is None else spin_us
        self.kbypass_reason: str | None = "not bound yet"

    # ---- what the socket is ------------------------------------------------------------------------
    @property
    def accelerated(self) -> bool:
        return self._kb_state == _BYPASS

    @property
    def endpoint(self):
        """The XdpEndpoint under an accelerated socket (its `stats`), or None."""
        return self._ep

    def kernel_fileno(self) -> int:
        """The placeholder kernel socket's fd (fileno() of an accelerated socket is its readiness fd)."""
        return _s.socket.fileno(self)

    def fileno(self) -> int:
        ep = self._epoll
        return ep.fileno() if ep is not None else _s.socket.fileno(self)

    def __repr__(self) -> str:
        return (f"<kbypass.socket fd={self.kernel_fileno()} {self._kb_state}"
                f"{' ' + str(self.getsockname()) if self._kb_state != _FRESH and not self._closed else ''}"
                f"{' (' + self.kbypass_reason + ')' if self.kbypass_reason and self._kb_state == _KERNEL else ''}>")

    # ---- deciding ----------------------------------------------------------------------------------
    def bind(self, address) -> None:
        super().bind(address)  # the kernel's checks and errors (EADDRINUSE, EADDRNOTAVAIL), port 0 chosen
        if self._kb_state == _FRESH:
            self._decide(_plan.for_bind(self.getsockname()[0]))

    def connect(self, address) -> None:
        dst = self._resolve(address)
        super().connect(dst)  # the kernel binds the routed source address and a port, as for any UDP socket
        if self._kb_state == _FRESH:
            self._decide(_plan.for_bind(self.getsockname()[0]))
        self._peer = dst
        self._routes.clear()

    def connect_ex(self, address) -> int:
        try:
            self.connect(address)
        except OSError as e:
            return e.errno or errno.EINVAL
        return 0

    def _autobind(self, dst: tuple[str, int]) -> None:
        """A first sendto on an unbound socket: bind where the kernel's route to dst leaves."""
        p = _plan.for_destination(dst[0])
        if p.ifname is None:
            self._decide(p)
            return
        super().bind((p.ip, 0))
        self._decide(_plan.for_bind(p.ip))

    def _decide(self, p: _plan.Plan) -> None:
        port = self.getsockname()[1]
        if p.ifname is None:
            self._kb_state, self.kbypass_reason = _KERNEL, p.reason
            _log(f"socket {p.ip}:{port} not accelerated: {p.reason}")
            return
        try:
            ep = self._open_endpoint(p, port)
        except (KbypassError, OSError) as e:
            self._kb_state, self.kbypass_reason = _KERNEL, f"the bypass could not be opened: {e}"
            print(f"kbypass: warning: socket {p.ip}:{port} runs on the kernel: {e}", file=sys.stderr, flush=True)
            return
        try:
            self._epoll = select.epoll()
            self._evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            for fd in [*ep.readiness_fds, _s.socket.fileno(self), self._evfd]:
                self._epoll.register(fd, select.EPOLLIN)
        except BaseException:
            ep.close()
            self._close_readiness()
            raise
        self._kbto = _s.socket.gettimeout(self)
        _s.socket.settimeout(self, 0.0)  # the kernel side is only ever read without waiting from now on
        self._ep, self._plan, self._kb_state, self.kbypass_reason = ep, p, _BYPASS, None
        _log(f"socket {p.ip}:{port} accelerated on {p.ifname}")

    def _open_endpoint(self, p: _plan.Plan, port: int):
        """The endpoint on every receive queue of the interface or, when other sockets hold some (an AF_XDP
        queue carries one message lane), on the first free one: the flow's datagrams that land on the other
        queues then reach the kernel socket, which this socket reads too."""
        from kbypass.endpoint.xdp import XdpEndpoint

        busy = self._spin_us > 0 and os.geteuid() == 0  # busy-poll socket options need root
        opts = {"poll": "busy" if busy else "wakeup", "gateway": p.gateway, "placeholder": self}
        try:
            return XdpEndpoint(p.ifname, p.ip, port, **opts)
        except KbypassError as e:
            if "is taken by" not in str(e) or p.queues < 2:
                raise
            last = e
        for q in range(p.queues):
            try:
                ep = XdpEndpoint(p.ifname, p.ip, port, queue=q, **opts)
            except KbypassError as e:
                if "is taken by" not in str(e):
                    raise
                last = e
                continue
            _log(f"socket {p.ip}:{port} holds queue {q} of {p.ifname} only: its datagrams on the other queues "
                 "come through the kernel")
            return ep
        raise last

    # ---- timeouts ----------------------------------------------------------------------------------
    def settimeout(self, value) -> None:
        if self._kb_state != _BYPASS:
            return super().settimeout(value)
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._kbto = value

    def gettimeout(self):
        return self._kbto if self._kb_state == _BYPASS else super().gettimeout()

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    def getblocking(self) -> bool:
        return self.gettimeout() != 0.0 if self._kb_state == _BYPASS else super().getblocking()

    # ---- options -----------------------------------------------------------------------------------
    def setsockopt(self, level, optname, value, optlen=None) -> None:
        if optlen is None:
            super().setsockopt(level, optname, value)
        else:
            super().setsockopt(level, optname, value, optlen)
        if level == _s.SOL_SOCKET and optname in (SO_TIMESTAMP, SO_TIMESTAMPNS):
            self._stamp = bool(value if isinstance(value, int) else int.from_bytes(value[:4], sys.byteorder))
        elif level == _s.SOL_SOCKET and optname == _s.SO_RCVTIMEO:
            sec, usec = TIMEVAL.unpack(bytes(value)[:TIMEVAL.size])
            self._rcvtimeo = (sec + usec / 1e6) or None
        elif level == _s.IPPROTO_IP and optname in (_s.IP_TOS, _s.IP_TTL) and self._ep is not None:
            v = super().getsockopt(level, optname)  # what the kernel made of it (it masks and checks)
            with self._lock:
                self._ep.set_ip_fields(**({"tos": v} if optname == _s.IP_TOS else {"ttl": v}))

    # ---- receive -----------------------------------------------------------------------------------
    def _take(self, peek: int, kernel: bool, spin: bool = False):
        """(data, addr, ns) of the next datagram, None if there is none now; `kernel`: look at the kernel
        socket too (a syscall); `spin`: first a turn of the endpoint's busy wait."""
        with self._lock:
            ep = self._ep
            if ep is None:  # closed by another thread
                raise OSError(errno.EBADF, "Bad file descriptor")
            if spin:
                ep.spin()
            r = self._held
            if r is not None:
                if not peek:
                    self._held = None
            else:
                peer = self._peer
                while True:
                    got = ep.receive_nowait()
                    if got is None or peer is None or got[1] == peer:
                        break  # a connected socket hears its peer only, as the kernel's
                if got is None and kernel:
                    try:
                        got = _s.socket.recvfrom(self, 65535)
                    except (BlockingIOError, InterruptedError):
                        pass
                if got is not None:
                    r = (got[0], got[1], time.time_ns() if self._stamp else 0)
                    if peek:
                        self._held = r
            want = self._held is not None or ep.pending > 0
            if want != self._ready:  # the readiness fd must show what waits inside kbypass
                if want:
                    os.eventfd_write(self._evfd, 1)
                else:
                    try:
                        os.eventfd_read(self._evfd)
                    except BlockingIOError:
                        pass
                self._ready = want
        return r

    def _receive(self, flags: int):
        if self._kb_state != _BYPASS:
            raise AssertionError("only for accelerated sockets")
        if flags & RECV_FLAGS:
            raise OSError(errno.EOPNOTSUPP, f"recv flags {flags:#x} are not supported on an accelerated socket")
        peek = flags & MSG_PEEK
        r = self._take(peek, True)
        if r is not None:
            return r
        timeout = self._kbto
        if timeout == 0.0 or flags & MSG_DONTWAIT:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        by_rcvtimeo = timeout is None and self._rcvtimeo is not None
        if by_rcvtimeo:
            timeout = self._rcvtimeo
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        if self._spin_us:
            end = now + self._spin_us / 1e6
            if deadline is not None:
                end = min(end, deadline)
            n = 0
            while True:
                n += 1
                r = self._take(peek, n & 63 == 0, True)
                if r is not None:
                    return r
                if n & 15 == 0 and time.monotonic() >= end:
                    break
        while True:
            with self._lock:
                if self._ep is None:
                    raise OSError(errno.EBADF, "Bad file descriptor")
                due = self._ep.before_sleep()
            r = self._take(peek, True)
            if r is not None:
                return r
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if by_rcvtimeo:
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                raise TimeoutError("timed out")
            until = min(x for x in (deadline, due, now + 1.0) if x is not None)
            try:
                self._epoll.poll(max(0.0, until - now))
            except (ValueError, AttributeError):  # another thread closed the socket under this wait
                raise OSError(errno.EBADF, "Bad file descriptor") from None
            if self._closed or self._ep is None:
                raise OSError(errno.EBADF, "Bad file descriptor")

    def recvfrom(self, bufsize: int, flags: int = 0):
        if self._kb_state is not _BYPASS:
            return super().recvfrom(bufsize, flags)
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        r = None if flags else self._take(0, True)  # the common case, one call less
        data, addr, _ = r if r is not None else self._receive(flags)
        return (data if len(data) <= bufsize else data[:bufsize]), addr

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self._kb_state != _BYPASS:
            return super().recv(bufsize, flags)
        _check_size(bufsize)
        data = self._receive(flags)[0]
        return data if len(data) <= bufsize else data[:bufsize]

    def recvfrom_into(self, buffer, nbytes: int = 0, flags: int = 0):
        if self._kb_state != _BYPASS:
            return super().recvfrom_into(buffer, nbytes, flags)
        data, addr, _ = self._receive(flags)
        return _copy_into(buffer, nbytes, data), addr

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        if self._kb_state != _BYPASS:
            return super().recv_into(buffer, nbytes, flags)
        return _copy_into(buffer, nbytes, self._receive(flags)[0])

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0):
        if self._kb_state != _BYPASS:
            return super().recvmsg(bufsize, ancbufsize, flags)
        _check_size(bufsize)
        data, addr, ns = self._receive(flags)
        anc, mflags = self._ancillary(ns, ancbufsize)
        if len(data) > bufsize:
            data, mflags = data[:bufsize], mflags | MSG_TRUNC
        return data, anc, mflags, addr

    def recvmsg_into(self, buffers, ancbufsize: int = 0, flags: int = 0):
        if self._kb_state != _BYPASS:
            return super().recvmsg_into(buffers, ancbufsize, flags)
        data, addr, ns = self._receive(flags)
        anc, mflags = self._ancillary(ns, ancbufsize)
        done = 0
        for b in buffers:
            done += _copy_into(b, 0, data[done:])
        if done < len(data):
            mflags |= MSG_TRUNC
        return done, anc, mflags, addr

    def _ancillary(self, ns: int, ancbufsize: int) -> tuple[list, int]:
        if not ns:
            return [], 0
        if self.getsockopt(_s.SOL_SOCKET, SO_TIMESTAMPNS):
            kind, value = SO_TIMESTAMPNS, struct.pack("@ll", ns // 10**9, ns % 10**9)
        else:
            kind, value = SO_TIMESTAMP, TIMEVAL.pack(ns // 10**9, ns % 10**9 // 1000)
        if ancbufsize < _s.CMSG_SPACE(len(value)):
            return [], _s.MSG_CTRUNC
        return [(_s.SOL_SOCKET, kind, value)], 0

    # ---- send --------------------------------------------------------------------------------------
    def _resolve(self, address) -> tuple[str, int]:
        if not isinstance(address, tuple):
            raise TypeError(f"AF_INET address must be tuple, not {type(address).__name__}")
        if len(address) != 2:
            raise TypeError("AF_INET address must be a pair (host, port)")
        host, port = address
        if not isinstance(port, int):
            raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
        if not 0 <= port <= 0xFFFF:
            raise OverflowError("sendto(): port must be 0-65535.")
        if host == "<broadcast>":
            return "255.255.255.255", port
        if host == "":
            return "0.0.0.0", port
        return _s.gethostbyname(host), port

    def _route(self, address):
        """(ip, port) and whether it leaves through the rings; cached per address."""
        r = self._routes.get(address)
        if r is None:
            dst = self._resolve(address)
            if len(self._routes) >= _MAX_CACHE:
                self._routes.clear()
            r = self._routes[address] = (dst, dst[1] != 0 and self._plan.via_ring(dst[0]))
        return r

    def sendto(self, data, flags_or_address, address=None) -> int:
        flags, address = (0, flags_or_address) if address is None else (flags_or_address, address)
        if self._kb_state is not _BYPASS:
            if self._kb_state is _FRESH:
                self._autobind(self._resolve(address))
            if self._kb_state is not _BYPASS:
                return super().sendto(data, flags, address)
        r = self._routes.get(address) or self._route(address)
        if not r[1]:
            return self._kernel_send(data, flags, r[0])
        if not flags:  # the common case: straight to the rings while they have room
            try:
                with self._lock:
                    return self._ep.sendto(data, r[0])
            except BlockingIOError:
                pass  # the ring is full: _ring_send waits as the socket's timeout says
            except KbypassError as e:
                raise _os_error(e) from None
        return self._ring_send(data, flags, r[0])

    def send(self, data, flags: int = 0) -> int:
        if self._kb_state != _BYPASS:
            return super().send(data, flags)
        if self._peer is None:
            raise OSError(errno.EDESTADDRREQ, "Destination address required")
        dst, ring = self._route(self._peer)
        return self._ring_send(data, flags, dst) if ring else self._kernel_send(data, flags, None)

    def sendall(self, data, flags: int = 0) -> None:
        self.send(data, flags)  # one datagram: all of it or an error

    def sendmsg(self, buffers, ancdata=(), flags: int = 0, address=None) -> int:
        if self._kb_state == _FRESH and address is not None:
            self._autobind(self._resolve(address))
        if self._kb_state != _BYPASS or ancdata:  # ancillary data (IP_PKTINFO, IP_TOS...): the kernel's job
            args = (buffers, ancdata, flags) + ((address,) if address is not None else ())
            return super().sendmsg(*args)
        data = b"".join(buffers)
        return self.send(data, flags) if address is None else self.sendto(data, flags, address)

    def _kernel_send(self, data, flags: int, dst) -> int:
        while True:
            try:
                return super().send(data, flags) if dst is None else super().sendto(data, flags, dst)
            except BlockingIOError:
                if self._kbto == 0.0 or flags & MSG_DONTWAIT:
                    raise
                if not select.select([], [self.kernel_fileno()], [], self._kbto)[1]:
                    raise TimeoutError("timed out") from None

    def _ring_send(self, data, flags: int, dst) -> int:
        if flags & SEND_FLAGS:
            raise OSError(errno.EOPNOTSUPP, f"send flags {flags:#x} are not supported on an accelerated socket")
        deadline = None
        while True:
            try:
                with self._lock:
                    return self._ep.sendto(data, dst)
            except BlockingIOError:
                if self._kbto == 0.0 or flags & MSG_DONTWAIT:
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = None if self._kbto is None else now + self._kbto
                elif deadline is not None and now >= deadline:
                    raise TimeoutError("timed out") from None
                time.sleep(0)  # the kernel sends what is queued; its completions free the ring
            except KbypassError as e:
                raise _os_error(e) from None

    # ---- closing -----------------------------------------------------------------------------------
    def _close_readiness(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._evfd >= 0:
            os.close(self._evfd)
            self._evfd = -1

    def _drop_bypass(self, why: str) -> None:
        with self._lock:  # not under a receive or send of another thread
            ep, self._ep = self._ep, None
        if ep is not None:
            ep.close()
            self._kb_state, self.kbypass_reason = _KERNEL, why
        self._close_readiness()

    def __del__(self) -> None:  # the stdlib closes the fd; the endpoint's rules and the eventfd are ours
        try:
            self._drop_bypass("closed")
        except Exception:
            pass

    def close(self) -> None:
        self._drop_bypass("closed")
        super().close()

    def detach(self) -> int:
        """Ends the bypass; returns the kernel socket's fd, a plain kernel socket holding the port."""
        self._drop_bypass("detached")
        return super().detach()

    def dup(self):
        """A kernel socket on the same port (a dup of the placeholder): it does not see bypassed datagrams."""
        return _s.socket(self.family, self.type, self.proto, fileno=os.dup(self.kernel_fileno()))


def _os_error(e: KbypassError) -> OSError:
    """The stdlib's error for what the endpoint refused: a datagram too large for the MTU or a UMEM frame
    (EMSGSIZE), a bad address (EINVAL), a peer that did not answer ARP (EHOSTUNREACH)."""
    if isinstance(e, UsageError):
        if "message" in str(e):
            return OSError(errno.EMSGSIZE, "Message too long")
        return OSError(errno.EINVAL, str(e))
    return OSError(errno.EHOSTUNREACH, f"No route to host ({e})")


def _check_size(bufsize: int) -> None:
    if bufsize < 0:
        raise ValueError("negative buffersize in recvfrom")


def _copy_into(buffer, nbytes: int, data: bytes) -> int:
    mv = memoryview(buffer).cast("B")
    if nbytes < 0:
        raise ValueError("negative buffersize in recv_into")
    room = len(mv) if nbytes == 0 else min(nbytes, len(mv))
    n = min(room, len(data))
    mv[:n] = data[:n]
    return n
