"""XskSocket: one AF_XDP socket bound to one queue of one interface, with its four rings mapped.

Setup order (the kernel insists): socket(AF_XDP) -> XDP_UMEM_REG -> ring sizes (fill, completion, RX, TX)
-> XDP_MMAP_OFFSETS -> mmap the rings -> bind(sockaddr_xdp). Python's socket module knows neither
sockaddr_xdp nor mmap offsets beyond 2 GiB, so bind goes through libc via ctypes; setsockopt/getsockopt
with SOL_XDP work from the socket object. Any failure closes everything opened so far. A socket another
process set up and bound (`fd=`: the control plane makes them for unprivileged clients) is only mapped:
XDP_MMAP_OFFSETS -> mmap the rings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import socket
import struct
import time

import numpy as np

from kbypass import netns as _netns
from kbypass.errors import (
    EnvironmentProblem,
    KbypassError,
    PermissionProblem,
    UsageError,
)
from kbypass.net.wait import wait_readable

from . import consts
from .ring import ConsumerRing, ProducerRing, check_architecture, check_size
from .umem import Umem

MODES = ("auto", "copy", "zerocopy")
BUSY_RETRY_SECONDS = 0.25
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ENOTSUPP = 524  # the kernel-internal "not supported" some drivers leak to user space

SIOCETHTOOL = 0x8946
ETHTOOL_GCHANNELS = 0x3C


class XskError(KbypassError):
    """AF_XDP socket setup or use failed; the message names the fix. `errno`: the kernel's, when it said one."""

    errno: int | None = None


COPY_TX_DEFAULT_BUDGET = 32  # frames the kernel sends per sendto() in copy mode before it returns EAGAIN


def rx_queue_count(ifname: str) -> int | None:
    """Receive queues of ifname in the current namespace (ethtool channels), None if the driver won't say."""
    channels = (ctypes.c_uint32 * 9)(ETHTOOL_GCHANNELS)
    ifreq = bytearray(struct.pack("16sP", ifname.encode(), ctypes.addressof(channels)).ljust(40, b"\0"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
        except OSError:
            return None
    # struct ethtool_channels: cmd, max_rx, max_tx, max_other, max_combined, rx, tx, other, combined
    return channels[5] + channels[8] or None


class XskSocket:
    """An AF_XDP socket over `umem`, bound to (ifname, queue). Close it (or use `with`).

    mode: "copy", "zerocopy", or "auto" (try zero-copy, fall back to copy); `self.mode` says what is in use.
    need_wakeup: bind with XDP_USE_NEED_WAKEUP so the kernel sleeps until kicked (see `kick_tx`, `wake_rx`).
    multi_buffer: bind with XDP_USE_SG (Linux >= 6.6): a packet larger than a frame arrives, and may be
    sent, as a chain of frames (XDP_PKT_CONTD on all descriptors but its last; kbypass.xsk.ring).
    busy_poll: set SO_PREFER_BUSY_POLL, SO_BUSY_POLL (busy_usecs) and SO_BUSY_POLL_BUDGET (busy_budget).
    fd: adopt this AF_XDP socket, set up and bound elsewhere over this UMEM's memory with rings of these sizes
    (the control plane's, see kbypass.cp.protocol open_socket), instead of making one: no root needed, and
    the socket is ours to close. `ifname` and `queue` then only name it; busy polling is refused (its
    socket options need root).
    shared_with: the fd of a bound socket on the same queue whose UMEM this one joins (XDP_SHARED_UMEM: the
    control plane's pool of a shared queue, kbypass.cp.pool). Only the RX and TX rings are this socket's;
    the fill and completion rings (mapped through it, of sizes fill_size and comp_size) are the pool's,
    shared with every member, and the bind mode and need_wakeup are the pool's too.
    """

    def __init__(self, umem: Umem, ifname: str, queue: int = 0, *, netns: str | None = None,
                 rx_size: int = 2048, tx_size: int = 2048, fill_size: int = 2048, comp_size: int = 2048,
                 mode: str = "auto", need_wakeup: bool = True, busy_poll: bool = False,
                 busy_usecs: int = 20, busy_budget: int = 64, fd: int | None = None,
                 shared_with: int | None = None, multi_buffer: bool = False) -> None:
        check_architecture()
        if mode not in MODES:
            raise UsageError(f"AF_XDP mode {mode!r} is unknown: use one of {', '.join(MODES)}")
        for name, size in (("RX", rx_size), ("TX", tx_size), ("fill", fill_size), ("completion", comp_size)):
            check_size(name, size)
        self.ifname, self.queue, self.netns = ifname, queue, netns
        self.umem = umem
        self.mode = None
        self.multi_buffer = multi_buffer
        self._sock = None
        self._maps: list[mmap.mmap] = []
        self.rx = self.tx = self.fill = self.comp = None
        where = f" in namespace {netns!r}" if netns else ""
        if fd is not None:
            self._adopt(fd, (rx_size, tx_size, fill_size, comp_size), busy_poll)
            return
        if os.geteuid() != 0:
            raise PermissionProblem("an AF_XDP socket needs root (CAP_NET_RAW, CAP_NET_ADMIN): run with sudo, or "
                                    "have the control plane make it (kbypass.port.SteeredPort(sockets='cp'))")
        with _netns.entered(netns):
            try:
                self.ifindex = socket.if_nametoindex(ifname)
            except OSError:
                raise UsageError(f"no interface {ifname!r}{where}: check the name with 'ip link'") from None
            nq = rx_queue_count(ifname)
            if not isinstance(queue, int) or queue < 0 or (nq is not None and queue >= nq):
                raise UsageError(f"queue {queue!r} does not exist on {ifname}{where}, which has {nq} receive "
                                 f"queue(s): use a queue id from 0 to {(nq or 1) - 1}")
            try:
                self._sock = socket.socket(consts.AF_XDP, socket.SOCK_RAW, 0)
            except OSError as e:
                raise EnvironmentProblem(f"cannot create an AF_XDP socket ({e.strerror}): the kernel needs "
                                         "CONFIG_XDP_SOCKETS=y") from None
        try:
            if shared_with is None:
                self._setup(rx_size, tx_size, fill_size, comp_size)
                self._map_rings(rx_size, tx_size, fill_size, comp_size)
                if busy_poll:
                    self._set_busy_poll(busy_usecs, busy_budget)
                self._bind(mode, need_wakeup, where)
            else:  # the UMEM and its fill and completion rings are the pool's
                self._setsockopt(consts.XDP_RX_RING, rx_size, "RX ring size")
                self._setsockopt(consts.XDP_TX_RING, tx_size, "TX ring size")
                if busy_poll:
                    self._set_busy_poll(busy_usecs, busy_budget)
                self._join(shared_with, where)
                # only a bound member reaches the pool's fill and completion rings
                self._map_rings(rx_size, tx_size, fill_size, comp_size)
        except BaseException:
            self.close()
            raise

    def _adopt(self, fd: int, sizes: tuple[int, int, int, int], busy_poll: bool) -> None:
        """Take over `fd`, an AF_XDP socket someone else set up and bound over this UMEM's memory (the control
        plane, for a process that may not make one): map its rings, nothing more. The socket is ours to
        close from here on, whatever happens."""
        try:
            # the family is given: Python would ask getsockname(), which AF_XDP does not answer
            self._sock = socket.socket(consts.AF_XDP, socket.SOCK_RAW, 0, fileno=fd)
        except OSError as e:
            os.close(fd)
            raise XskError(f"fd {fd} is not a socket: {e.strerror}") from None
        try:
            if busy_poll:
                raise UsageError("busy polling needs socket options only root may set: use poll='wakeup' with a "
                                 "socket the control plane made")
            family = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
            if family != consts.AF_XDP:
                raise XskError(f"fd {fd} is not an AF_XDP socket (family {family})")
            self.ifindex = None
            self._map_rings(*sizes)
            self.mode = "zerocopy" if self.zerocopy_in_use() else "copy"
        except BaseException:
            self.close()
            raise

    # ---- setup ------------------------------------------------------------------------------------
    def _setsockopt(self, opt: int, value, what: str) -> None:
        try:
            self._sock.setsockopt(consts.SOL_XDP, opt, value)
        except OSError as e:
            raise XskError(f"AF_XDP {what} failed: {e.strerror}") from None

    def _setup(self, rx_size: int, tx_size: int, fill_size: int, comp_size: int) -> None:
        reg = np.zeros(1, dtype=consts.XDP_UMEM_REG_T)
        reg["addr"], reg["len"] = self.umem.address, self.umem.size
        reg["chunk_size"], reg["headroom"] = self.umem.frame_size, self.umem.headroom
        try:
            self._sock.setsockopt(consts.SOL_XDP, consts.XDP_UMEM_REG, reg.tobytes())
        except OSError as e:
            hint = ("raise 'ulimit -l' (locked memory) or run as root" if e.errno in (errno.ENOMEM, errno.EPERM)
                    else "use frame_size 2048/4096 and a page-aligned UMEM")
            raise XskError(f"registering the UMEM ({self.umem.size} bytes) failed: {e.strerror}: {hint}") from None
        self._setsockopt(consts.XDP_UMEM_FILL_RING, fill_size, "fill ring size")
        self._setsockopt(consts.XDP_UMEM_COMPLETION_RING, comp_size, "completion ring size")
        self._setsockopt(consts.XDP_RX_RING, rx_size, "RX ring size")
        self._setsockopt(consts.XDP_TX_RING, tx_size, "TX ring size")

    def _map_rings(self, rx_size: int, tx_size: int, fill_size: int, comp_size: int) -> None:
        raw = self._sock.getsockopt(consts.SOL_XDP, consts.XDP_MMAP_OFFSETS, consts.XDP_MMAP_OFFSETS_T.itemsize)
        off = np.frombuffer(raw, dtype=consts.XDP_MMAP_OFFSETS_T)[0]
        self.rx = self._map(ConsumerRing, off["rx"], rx_size, consts.XDP_DESC, consts.XDP_PGOFF_RX_RING, "RX")
        self.tx = self._map(ProducerRing, off["tx"], tx_size, consts.XDP_DESC, consts.XDP_PGOFF_TX_RING, "TX")
        self.fill = self._map(ProducerRing, off["fr"], fill_size, consts.UMEM_ADDR,
                              consts.XDP_UMEM_PGOFF_FILL_RING, "fill")
        self.comp = self._map(ConsumerRing, off["cr"], comp_size, consts.UMEM_ADDR,
                              consts.XDP_UMEM_PGOFF_COMPLETION_RING, "completion")

    def _map(self, cls, off, size: int, dtype, pgoff: int, name: str):
        length = int(off["desc"]) + size * dtype.itemsize
        try:
            m = mmap.mmap(self._sock.fileno(), length, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                          prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=pgoff)
        except OSError as e:
            raise XskError(f"mapping the {name} ring failed: {e.strerror}") from None
        self._maps.append(m)
        return cls(m, size=size, producer_off=int(off["producer"]), consumer_off=int(off["consumer"]),
                   flags_off=int(off["flags"]), desc_off=int(off["desc"]), dtype=dtype, name=name)

    def _set_busy_poll(self, usecs: int, budget: int) -> None:
        for opt, value, name in ((consts.SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"),
                                 (consts.SO_BUSY_POLL, usecs, "SO_BUSY_POLL"),
                                 (consts.SO_BUSY_POLL_BUDGET, budget, "SO_BUSY_POLL_BUDGET")):
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, opt, value)
            except OSError as e:
                raise XskError(f"setting {name}={value} failed: {e.strerror}: busy polling needs root and "
                               "Linux >= 5.11; use poll='wakeup' instead") from None

    def _bind_once(self, flags: int) -> int:
        # A socket closed just before still holds its queue for a few tens of ms: the kernel releases the
        # buffer pool from a workqueue. So "busy" is retried briefly; a queue really in use stays busy.
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        while True:
            err = self._bind_raw(flags)
            if err != errno.EBUSY or time.monotonic() >= deadline:
                return err
            time.sleep(0.005)

    def _bind_raw(self, flags: int, shared_umem_fd: int = 0) -> int:
        addr = np.zeros(1, dtype=consts.SOCKADDR_XDP)
        addr["family"], addr["flags"] = consts.AF_XDP, flags
        addr["ifindex"], addr["queue_id"], addr["shared_umem_fd"] = self.ifindex, self.queue, shared_umem_fd
        buf = ctypes.create_string_buffer(addr.tobytes(), consts.SOCKADDR_XDP.itemsize)
        if _libc.bind(self._sock.fileno(), buf, consts.SOCKADDR_XDP.itemsize) == 0:
            return 0
        return ctypes.get_errno()

    def _bind(self, mode: str, need_wakeup: bool, where: str) -> None:
        wake = consts.XDP_USE_NEED_WAKEUP if need_wakeup else 0
        if self.multi_buffer:
            wake |= consts.XDP_USE_SG
        err = 0
        if mode in ("auto", "zerocopy"):
            err = self._bind_once(consts.XDP_ZEROCOPY | wake)
            if err and mode == "zerocopy":
                self._bind_failed(err, where, "zero-copy")
        if mode == "copy" or (mode == "auto" and err):
            # A failed bind leaves the socket unbound, so the same socket can try again in copy mode.
            err = self._bind_once(consts.XDP_COPY | wake)
            if err:
                self._bind_failed(err, where, "copy")
        self.mode = "zerocopy" if self.zerocopy_in_use() else "copy"

    def _join(self, shared_with: int, where: str) -> None:
        # the kernel refuses mode and wakeup flags here: a joining socket takes the pool's
        err = self._bind_raw(consts.XDP_SHARED_UMEM, shared_with)
        if err:
            self._bind_failed(err, where, "shared-UMEM")
        self.mode = "zerocopy" if self.zerocopy_in_use() else "copy"

    def _bind_failed(self, err: int, where: str, how: str) -> None:
        what = f"binding an AF_XDP socket to {self.ifname} queue {self.queue}{where} in {how} mode"
        if err == errno.EBUSY:
            hint = "another AF_XDP socket already uses this queue: close it or pick another queue"
        elif err in (errno.EOPNOTSUPP, _ENOTSUPP) and how == "zero-copy":
            hint = "the driver has no zero-copy support (veth has none): use mode='copy' or 'auto'"
        elif err == errno.EINVAL and self.multi_buffer:
            hint = ("multi-buffer (XDP_USE_SG, for packets larger than a frame) needs Linux >= 6.6 and, in zero-copy "
                    "mode, a driver with multi-buffer support: use mode='copy', or an MTU that fits one frame")
        elif err == errno.EINVAL:
            hint = "check the queue id and that the interface is up"
        elif err == errno.ENETDOWN:
            hint = f"the interface is down: 'ip link set {self.ifname} up'"
        else:
            hint = "see 'kbypass doctor'"
        e = XskError(f"{what} failed: {os.strerror(err)}: {hint}")
        e.errno = err
        raise e

    # ---- queries ----------------------------------------------------------------------------------
    @property
    def fd(self) -> int:
        """The socket's file descriptor, for the steering program's XSKMAP."""
        return self._sock.fileno()

    def zerocopy_in_use(self) -> bool:
        raw = self._sock.getsockopt(consts.SOL_XDP, consts.XDP_OPTIONS, 4)
        return bool(struct.unpack("I", raw)[0] & consts.XDP_OPTIONS_ZEROCOPY)

    def statistics(self) -> dict[str, int]:
        """The kernel's struct xdp_statistics for this socket."""
        raw = self._sock.getsockopt(consts.SOL_XDP, consts.XDP_STATISTICS, consts.XDP_STATISTICS_T.itemsize)
        raw = raw.ljust(consts.XDP_STATISTICS_T.itemsize, b"\0")
        rec = np.frombuffer(raw, dtype=consts.XDP_STATISTICS_T)[0]
        return {name: int(rec[name]) for name in consts.XDP_STATISTICS_FIELDS}

    def set_tx_budget(self, frames: int) -> int:
        """Let one sendto() send up to `frames` frames in copy mode (XDP_MAX_TX_SKB_BUDGET). Fewer
        syscalls per frame; returns the budget in force (32, the kernel's fixed batch, where the kernel
        lacks the option)."""
        try:
            self._sock.setsockopt(consts.SOL_XDP, consts.XDP_MAX_TX_SKB_BUDGET, struct.pack("I", frames))
        except OSError:
            return COPY_TX_DEFAULT_BUDGET
        return frames

    # ---- wakeups ----------------------------------------------------------------------------------
    def kick_tx(self) -> int:
        """sendto(MSG_DONTWAIT): make the kernel process the TX ring. Returns 0 or a transient errno
        (EAGAIN: more left or no completion space, EBUSY/ENOBUFS: try again later)."""
        try:
            self._sock.send(b"", socket.MSG_DONTWAIT)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EBUSY, errno.ENOBUFS, errno.ENETDOWN):
                return e.errno
            raise XskError(f"TX wakeup failed: {e.strerror}") from None
        return 0

    def wake_rx(self) -> None:
        """recvfrom(MSG_DONTWAIT): let the kernel refill from the fill ring / run a busy-poll round."""
        try:
            self._sock.recv(0, socket.MSG_DONTWAIT)
        except OSError:
            pass  # EAGAIN and friends: nothing to do now, the rings tell the rest

    def poll(self, timeout: float | None) -> bool:
        """Wait for POLLIN (RX ring not empty); timeout in seconds, kept to the microsecond (a sub-ms wait
        sleeps, see kbypass.net.wait), None blocks."""
        return wait_readable(self._sock.fileno(), timeout)

    # ---- teardown ---------------------------------------------------------------------------------
    def close(self) -> None:
        for ring in (self.rx, self.tx, self.fill, self.comp):
            if ring is not None:
                ring.release_views()
        self.rx = self.tx = self.fill = self.comp = None
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass
        self._maps = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "XskSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
