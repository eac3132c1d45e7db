"""SocketEndpoint: the UdpEndpoint API over a kernel UDP socket (`backend="socket"`), the baseline the
latency tool compares the bypass with."""

from __future__ import annotations

import socket
import time

from kbypass.errors import UsageError
from kbypass.net import Interface, bind_udp, check_address

from .base import UdpEndpoint

SO_BUSY_POLL, SO_PREFER_BUSY_POLL = 46, 69


class SocketEndpoint(UdpEndpoint):
    """The same API over a kernel UDP socket: the baseline, with SO_BUSY_POLL when poll="busy"."""

    def __init__(self, ifname: str | None, ip: str, port: int, *, netns: str | None = None,
                 dedicated: bool = False, prefixlen: int | None = None, poll: str = "wakeup",
                 backend: str = "socket", busy_poll_usecs: int = 50, **_ignored) -> None:
        self._closed = True
        self._check_common(ip, port, poll)
        if dedicated:
            raise UsageError("a dedicated address needs the bypass (the kernel does not have the address): "
                             "use backend='afxdp', or bind one of the interface's own addresses")
        self.ifname, self.netns, self.ip, self.port = ifname, netns, ip, port
        self.poll_mode, self.dedicated = poll, False
        self.backend = "socket"
        self.mtu = 1500
        if ifname:
            iface = Interface(ifname, netns)
            try:
                self.mtu = iface.mtu
                check_address(iface, ip, False, None)
            finally:
                iface.close()
        self.max_payload = self.mtu - 28
        s = bind_udp(netns, ip, port)
        self.port = s.getsockname()[1]
        if poll == "busy":
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, busy_poll_usecs)
                s.setsockopt(socket.SOL_SOCKET, SO_PREFER_BUSY_POLL, 1)
            except OSError:
                pass  # not root or an old kernel: plain spinning on a non-blocking socket still works
            s.setblocking(False)
        self._sock = s
        self._closed = False
        self.counters = {"rx_datagrams": 0, "tx_datagrams": 0}

    def recvfrom(self, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        s = self._sock
        if self.poll_mode == "busy":
            deadline = None if timeout is None else time.monotonic() + timeout
            spins = 0
            while True:
                try:
                    data, addr = s.recvfrom(65536)
                    self.counters["rx_datagrams"] += 1
                    return data, addr
                except BlockingIOError:
                    spins += 1
                    if deadline is not None and (timeout <= 0 or spins & 0x3FF == 0) and \
                            time.monotonic() >= deadline:
                        raise TimeoutError(f"no datagram for {self.ip}:{self.port} within {timeout} s") from None
        s.settimeout(timeout)
        try:
            data, addr = s.recvfrom(65536)
        except (socket.timeout, BlockingIOError, InterruptedError):
            # timeout 0 makes the socket non-blocking: an empty one says EAGAIN, not "timed out"
            raise TimeoutError(f"no datagram for {self.ip}:{self.port} within {timeout} s") from None
        self.counters["rx_datagrams"] += 1
        return data, addr

    def recv_batch(self, max_datagrams: int = 64, timeout: float = 0.0) -> list:
        """Up to max_datagrams datagrams, waiting at most `timeout` for the first (0: do not wait)."""
        out = []
        try:
            out.append(self.recvfrom(timeout))
        except TimeoutError:
            return out
        # the rest without waiting: MSG_DONTWAIT alone does not do it, since Python first waits out a
        # socket timeout (recvfrom above may have set one) for readability
        self._sock.settimeout(0)
        while len(out) < max_datagrams:
            try:
                data, addr = self._sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            self.counters["rx_datagrams"] += 1
            out.append((data, addr))
        return out

    def sendto(self, payload: bytes, addr: tuple[str, int]) -> int:
        if len(payload) > self.max_payload:
            self._check_size(len(payload))
        while True:
            try:
                n = self._sock.sendto(payload, addr)
                break
            except BlockingIOError:
                continue
        self.counters["tx_datagrams"] += 1
        return n

    def send_batch(self, payloads: list[bytes], addr: tuple[str, int]) -> int:
        for p in payloads:
            self.sendto(p, addr)
        return len(payloads)

    @property
    def stats(self) -> dict:
        return dict(self.counters)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._sock.close()
