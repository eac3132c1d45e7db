"""asyncio over the bypass: `create_datagram_endpoint`, the twin of `loop.create_datagram_endpoint`, for
kbypass.socket's UDP sockets. It works on any event loop with `add_reader` (asyncio's own, uvloop):
readiness comes from the socket's readiness fd (the AF_XDP rings, the kernel socket and kbypass's own
queue, see kbypass.sockapi.udp), so the loop sleeps in its own epoll until a datagram is there.

    import asyncio
    from kbypass import aio

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport
        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    async def main():
        transport, protocol = await aio.create_datagram_endpoint(Echo, local_addr=("10.77.0.2", 9000))
        await asyncio.sleep(3600)

    asyncio.run(main())

The transport is an `asyncio.DatagramTransport`: sendto (queued when the TX ring is full, and flushed on
a short timer, since a bypassed socket never polls writable; the protocol's pause_writing/resume_writing
around a 64 KiB high-water mark), get_write_buffer_size, get_extra_info ("socket", "sockname", "peername"),
close, abort, is_closing, set_protocol/get_protocol. Errors of a send or receive go to the protocol's
error_received, as asyncio's transport does. A socket that could not be accelerated (kbypass_reason)
works the same, on the kernel.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import socket as _s

from .udp import socket as kbsocket

READ_BUDGET = 64  # datagrams per readiness callback, so one busy socket does not starve the loop
RETRY_S = 0.0002  # how soon a send queued on a full TX ring is tried again
HIGH_WATER = 64 * 1024


class DatagramTransport(asyncio.DatagramTransport):
    """asyncio.DatagramTransport over a kbypass.socket UDP socket (see the module doc)."""

    max_size = 256 * 1024

    def __init__(self, loop, sock, protocol, address=None) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname(), "peername": address})
        self._loop, self._sock, self._protocol, self._address = loop, sock, protocol, address
        self._fd = sock.fileno()
        # an unbound socket is bound (and maybe accelerated, its fileno() then the readiness fd) by its
        # first send: the reader follows it there
        self._unbound = getattr(sock, "kbypass_reason", None) == "not bound yet"
        self._buffer: collections.deque = collections.deque()
        self._buffer_size = 0
        self._closing = False
        self._paused = False
        self._retry = None
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(loop.add_reader, self._fd, self._read_ready)

    # ---- BaseTransport ------------------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self):
        return self._protocol

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._buffer:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        self._buffer.clear()
        self._buffer_size = 0
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._finish(None)

    def _finish(self, exc) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._sock is None:
            return
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()
            self._sock = None

    # ---- receive ------------------------------------------------------------------------------------
    def _read_ready(self) -> None:
        sock = self._sock
        for _ in range(READ_BUDGET):
            if self._closing or sock is None:
                return
            try:
                data, addr = sock.recvfrom(self.max_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal(exc)
                return
            self._protocol.datagram_received(data, addr)

    # ---- send ---------------------------------------------------------------------------------------
    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def sendto(self, data, addr=None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._address is not None:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = None
        elif addr is None:
            raise ValueError("Invalid address: must be given for an unconnected transport")
        if self._closing:
            return
        if not self._buffer:
            try:
                if addr is None:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
                if self._unbound:
                    self._follow_fileno()
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._protocol.error_received(exc)
                return
        self._buffer.append((bytes(data), addr))
        self._buffer_size += len(data)
        self._schedule_retry()
        if not self._paused and self._buffer_size > HIGH_WATER:
            self._paused = True
            self._protocol.pause_writing()

    def _follow_fileno(self) -> None:
        self._unbound = False
        fd = self._sock.fileno()
        if fd != self._fd:
            self._loop.remove_reader(self._fd)
            self._fd = fd
            self._loop.add_reader(fd, self._read_ready)

    def _schedule_retry(self) -> None:
        if self._retry is None:
            self._retry = self._loop.call_later(RETRY_S, self._flush)

    def _flush(self) -> None:
        self._retry = None
        while self._buffer and self._sock is not None:
            data, addr = self._buffer[0]
            try:
                if addr is None:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self._schedule_retry()
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._buffer.popleft()
            self._buffer_size -= len(data)
        if self._paused and self._buffer_size <= HIGH_WATER // 4:
            self._paused = False
            self._protocol.resume_writing()
        if self._closing and not self._buffer:
            self._finish(None)

    def _fatal(self, exc) -> None:
        self._loop.call_exception_handler({"message": "fatal error on a kbypass datagram transport",
                                           "exception": exc, "transport": self, "protocol": self._protocol})
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._finish(exc)


async def create_datagram_endpoint(protocol_factory, local_addr=None, remote_addr=None, *, loop=None,
                                   reuse_port: bool | None = None, allow_broadcast: bool | None = None,
                                   sock=None):
    """(transport, protocol), as `loop.create_datagram_endpoint` returns them, for an IPv4 UDP socket of
    kbypass.socket: bound to local_addr (port 0: one is picked), connected to remote_addr, or `sock`
    (a kbypass.socket UDP socket) as it is. `loop`: the running loop by default."""
    loop = loop or asyncio.get_running_loop()
    if sock is not None:
        if local_addr or remote_addr or reuse_port or allow_broadcast:
            raise ValueError("socket modifier keyword arguments can not be used when sock is specified")
        if sock.type != _s.SOCK_DGRAM:
            raise ValueError(f"A UDP Socket was expected, got {sock!r}")
    else:
        sock = kbsocket(_s.AF_INET, _s.SOCK_DGRAM)

        def setup() -> None:  # netlink, the control plane, the rings: blocking work, off the loop
            if reuse_port:
                sock.setsockopt(_s.SOL_SOCKET, _s.SO_REUSEPORT, 1)
            if allow_broadcast:
                sock.setsockopt(_s.SOL_SOCKET, _s.SO_BROADCAST, 1)
            if local_addr is not None:
                sock.bind(local_addr)
            if remote_addr is not None:
                sock.connect(remote_addr)

        try:
            await loop.run_in_executor(None, setup)
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    peer = None
    try:
        peer = sock.getpeername()
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise
    protocol = protocol_factory()
    transport = DatagramTransport(loop, sock, protocol, peer)
    await asyncio.sleep(0)  # connection_made runs before we return, as asyncio's does
    return transport, protocol
