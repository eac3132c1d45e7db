"""SocketPort: the kernel baseline behind the Port API, one UDP socket moved in batches (recvmmsg/sendmmsg).

Everything the kernel stack does per packet still happens (routing, socket lookup, queueing, a copy to
and from user memory); this port only saves the syscall per datagram. It exists so that `sink`, `reflect`
and the benchmarks compare the bypass with the kernel through the same code.

Frames are synthetic. The kernel gives us a payload and a source address, not a frame, so each received
datagram is written into a frame of packet memory as Ethernet/IPv4/UDP (numpy, one pass per batch) and the
payload lands right behind it (recvmmsg writes it at offset 42):
  - MACs: both all-zero (there is no link layer here); EtherType 0x0800.
  - IPv4: version/IHL 0x45, TOS 0, total length from the datagram, ID 0, DF, TTL 64, protocol 17, a correct
    header checksum, source from recvmmsg's address, destination the bound IP (0.0.0.0 if bound to any).
  - UDP: source port from recvmmsg's address, destination the bound port, length from the datagram,
    checksum 0 ("none", legal on IPv4).
So the Batch accessors (u16be(36), payload_u64(42), swap_macs, swap_ips_and_ports) work as on the other
backends. transmit() reads only the destination IPv4 address (30..33), destination port (36..37) and the
payload (42..len) of each frame and sends the payload there with sendmmsg; the source address is always
the socket's own, whatever the frame says. Datagrams longer than frame_size - 42 are truncated (counted in
rx_truncated).

Ownership (kbypass.port.base): frames live in a Umem-style pool (kbypass.xsk.umem.Umem, anonymous memory),
so the same accounting and `check()` as AF_XDP apply: a frame is yours from receive()/alloc() until you
transmit() (the kernel copies it; the frame is free again at once) or free() it, once.

The mmsghdr/iovec/sockaddr_in arrays are numpy structured arrays laid out as on x86-64/aarch64 Linux (LP64).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import socket

import numpy as np

from kbypass import netns as _netns
from kbypass.errors import KbypassError, UsageError
from kbypass.net.wait import wait_readable
from kbypass.xsk.umem import APP, Umem

from .base import UmemPort
from .batch import DESC, UDP_PAYLOAD, Batch

MSG_DONTWAIT, MSG_TRUNC = 0x40, 0x20
SO_RCVBUFFORCE, SO_SNDBUFFORCE, SO_MEMINFO = 33, 32, 55
SK_MEMINFO_DROPS = 8
MAX_BATCH = 1024  # UIO_MAXIOV: the kernel's cap on messages per recvmmsg/sendmmsg

IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])
MMSGHDR = np.dtype({
    "names": ["name", "namelen", "iov", "iovlen", "control", "controllen", "flags", "msg_len"],
    "formats": ["<u8", "<u4", "<u8", "<u8", "<u8", "<u8", "<i4", "<u4"],
    "offsets": [0, 8, 16, 24, 32, 40, 48, 56],
    "itemsize": 64,
})
SOCKADDR_IN = 16
_SRC_COLS = np.array([26, 27, 28, 29, 34, 35])  # IPv4 source, UDP source port in the frame
_NAME_COLS = np.array([4, 5, 6, 7, 2, 3])  # sin_addr, sin_port in struct sockaddr_in
_LEN_COLS = np.array([16, 17, 24, 25, 38, 39])  # IPv4 total length, IPv4 checksum, UDP length

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
for _fn in (_libc.recvmmsg, _libc.sendmmsg):
    _fn.restype = ctypes.c_int
_libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]


class _Msgs:
    """Pre-built mmsghdr + iovec + sockaddr_in arrays for up to n messages (one set for RX, one for TX)."""

    def __init__(self, n: int) -> None:
        self.hdr = np.zeros(n, dtype=MMSGHDR)
        self.iov = np.zeros(n, dtype=IOVEC)
        self.names = np.zeros((n, SOCKADDR_IN), dtype=np.uint8)
        self.hdr["name"] = self.names.ctypes.data + SOCKADDR_IN * np.arange(n, dtype=np.uint64)
        self.hdr["iov"] = self.iov.ctypes.data + IOVEC.itemsize * np.arange(n, dtype=np.uint64)
        self.hdr["iovlen"] = 1
        self.ptr = self.hdr.ctypes.data


def _header_template(dst_ip: bytes, dport: int) -> np.ndarray:
    h = np.zeros(UDP_PAYLOAD, dtype=np.uint8)
    h[12:14] = (0x08, 0x00)
    h[14:24] = (0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17)
    h[30:34] = np.frombuffer(dst_ip, dtype=np.uint8)
    h[36:38] = (dport >> 8, dport & 0xFF)
    return h


class SocketPort(UmemPort):
    """A UDP socket bound to (bind_ip, port) in namespace `netns`, presented as a Port of synthetic frames.

    batch: datagrams per recvmmsg/sendmmsg call (1..1024); frames: pool size (default 4 x batch, >= 1024);
    rcvbuf: socket receive buffer in bytes (forced as root, so bursts are not dropped by a small default).
    """

    mode = "socket"

    def __init__(self, bind_ip: str, port: int, *, netns: str | None = None, batch: int = 64,
                 frame_size: int = 2048, frames: int | None = None, rcvbuf: int = 8 << 20,
                 batch_ops=None) -> None:
        try:
            ip = ipaddress.IPv4Address(bind_ip)
        except ValueError:
            raise UsageError(f"bind address {bind_ip!r} is not an IPv4 address: use e.g. 10.77.0.2 or "
                             "0.0.0.0") from None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise UsageError(f"UDP port {port!r}: use a number from 0 to 65535")
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            raise UsageError(f"batch {batch!r}: use 1 to {MAX_BATCH} datagrams per call (the kernel's limit)")
        frames = max(4 * batch, 1024) if frames is None else frames
        self.netns, self.batch = netns, batch
        self._closed = False
        self._sock = None
        self.umem = Umem(frames=frames, frame_size=frame_size, ops=batch_ops)  # checks frame_size and frames
        where = f" in namespace {netns!r}" if netns else ""
        try:
            with _netns.entered(netns):
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
                                       (SO_SNDBUFFORCE, socket.SO_SNDBUF, rcvbuf)):
                try:
                    self._sock.setsockopt(socket.SOL_SOCKET, force, size)
                except OSError:  # not root: the plain option, capped by net.core.[rw]mem_max
                    self._sock.setsockopt(socket.SOL_SOCKET, plain, size)
            try:
                self._sock.bind((str(ip), port))
            except OSError as e:
                hint = {errno.EADDRNOTAVAIL: f"{ip} is not an address of this host{where}: check 'ip addr'",
                        errno.EADDRINUSE: f"another socket has UDP port {port} on {ip}{where}: pick another port",
                        errno.EACCES: "ports below 1024 need root"}.get(e.errno, "check the address and port")
                raise UsageError(f"cannot bind UDP {ip}:{port}{where} ({e.strerror}): {hint}") from None
        except BaseException:
            self.close()
            raise
        self.bind_ip, self.port = str(ip), self._sock.getsockname()[1]
        self._fd = self._sock.fileno()
        self._rx, self._tx = _Msgs(batch), _Msgs(batch)
        self._base = np.uint64(self.umem.array.ctypes.data)
        self._max_payload = frame_size - UDP_PAYLOAD
        self._tmpl = _header_template(ip.packed, self.port)
        # IPv4 header checksum of the template (all but total length and source address), in 16-bit words
        self._ck_base = int(self._tmpl[14:34].view(">u2").astype(np.int64).sum())
        self._rows = self.umem.array.reshape(-1, frame_size)
        self._poll_fd = self._fd
        self._counters = dict.fromkeys(("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_truncated",
                                        "rx_calls", "tx_calls"), 0)

    # ---- receive ----------------------------------------------------------------------------------
    def receive(self, max_frames: int = 64) -> Batch:
        """Up to max_frames datagrams as synthetic frames; yours until you transmit or free them."""
        want = min(max_frames, self.batch, self.umem.free_count)
        mem = self.umem.array
        if want <= 0:
            return Batch(np.zeros(0, dtype=DESC), mem, self)
        addrs = self.umem.take_free(want, APP)
        m = self._rx
        m.iov["base"][:want] = self._base + addrs + np.uint64(UDP_PAYLOAD)
        m.iov["len"][:want] = self._max_payload
        m.hdr["namelen"][:want] = SOCKADDR_IN
        m.hdr["flags"][:want] = 0
        self._counters["rx_calls"] += 1
        r = _libc.recvmmsg(self._fd, m.ptr, want, MSG_DONTWAIT, None)
        if r < 0:
            err = ctypes.get_errno()
            self.umem.give_free(addrs, APP, trusted=True)
            if err in (errno.EAGAIN, errno.EINTR):
                return Batch(np.zeros(0, dtype=DESC), mem, self)
            raise KbypassError(f"recvmmsg on UDP {self.bind_ip}:{self.port} failed: {os.strerror(err)}")
        if r < want:
            self.umem.give_free(addrs[r:], APP, trusted=True)
        addrs = addrs[:r]
        plen = m.hdr["msg_len"][:r].astype(np.int64)
        self._counters["rx_truncated"] += int(np.count_nonzero(m.hdr["flags"][:r] & MSG_TRUNC))
        self._write_headers(addrs, plen, m.names[:r])
        descs = np.zeros(r, dtype=DESC)
        descs["addr"] = addrs
        descs["len"] = plen + UDP_PAYLOAD
        self._counters["rx_packets"] += r
        self._counters["rx_bytes"] += int(descs["len"].sum())
        return Batch(descs, mem, self)

    def _write_headers(self, addrs: np.ndarray, plen: np.ndarray, names: np.ndarray) -> None:
        """Build the Ethernet/IPv4/UDP header of every received datagram at once (see the module doc).

        Kept to a dozen numpy calls per batch: the per-call cost, not the per-frame one, dominates here."""
        n = len(addrs)
        h = np.broadcast_to(self._tmpl, (n, UDP_PAYLOAD)).copy()
        # sin_addr and sin_port are already in network order: copy their bytes to IPv4 src and UDP sport
        h[:, _SRC_COLS] = names[:, _NAME_COLS]
        words = names.view(">u2")  # sockaddr_in as 16-bit words; words 2 and 3 are the address
        total = plen + 28
        s = self._ck_base + total + words[:, 2] + words[:, 3]
        s = (s & 0xFFFF) + (s >> 16)
        fields = np.empty((n, 3), dtype=">u2")  # IPv4 total length, header checksum, UDP length
        fields[:, 0] = total
        fields[:, 1] = ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF
        fields[:, 2] = plen + 8
        h[:, _LEN_COLS] = fields.view(np.uint8)
        # Frames start at whole chunks, so a 2-D view (frame, byte) turns the scatter into row copies.
        self._rows[self.umem.frame_of(addrs), :UDP_PAYLOAD] = h

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a datagram is queued or timeout seconds pass; True if one is."""
        return wait_readable(self._poll_fd, timeout)  # (a sub-ms timeout sleeps: kbypass.net.wait)

    # ---- transmit ---------------------------------------------------------------------------------
    def alloc(self, n: int) -> Batch:
        """Up to n empty frames (len 0); fill them as Ethernet/IPv4/UDP and transmit, or free them."""
        return self._take_frames(n)

    def transmit(self, batch: Batch) -> int:
        """Send each frame's UDP payload to the frame's destination IPv4:port; returns k, the accepted prefix.

        Frames that are not untagged IPv4/UDP with a 20-byte header are refused with a UsageError before any
        is sent. Accepted frames are free again at once (the kernel copied them); batch[k:] stays yours.
        """
        n = len(batch)
        if n == 0:
            return 0
        self._own(batch, "transmit")
        if int(batch.lens.min()) < UDP_PAYLOAD:
            raise UsageError(f"a {int(batch.lens.min())}-byte frame has no room for Ethernet/IPv4/UDP headers "
                             f"(42 bytes): the socket backend sends UDP only")
        if (batch.u16be(12) != 0x0800).any() or (batch.u8(14) != 0x45).any() or (batch.u8(23) != 17).any():
            raise UsageError("the socket backend sends only untagged IPv4/UDP frames with a 20-byte IP header "
                             "(EtherType 0x0800, byte 14 = 0x45, protocol 17)")
        if int(batch.lens.max()) - UDP_PAYLOAD > 65507:
            raise UsageError("a UDP payload above 65507 bytes cannot be sent")
        self.umem.validate_descs(batch.addr, batch.lens)
        self.umem.expect(batch.addr, APP, "transmit")
        sent = 0
        while sent < n:
            chunk = batch[sent : sent + self.batch]
            k = self._send(chunk)
            sent += k
            if k < len(chunk):
                break
        return sent

    def _send(self, batch: Batch) -> int:
        n = len(batch)
        m = self._tx
        addrs = batch.addr
        m.names[:n, 0] = socket.AF_INET & 0xFF
        m.names[:n, 1] = socket.AF_INET >> 8
        m.names[:n, 2:4] = batch.bytes_at(36, 2)
        m.names[:n, 4:8] = batch.bytes_at(30, 4)
        m.hdr["namelen"][:n] = SOCKADDR_IN
        m.iov["base"][:n] = self._base + addrs + np.uint64(UDP_PAYLOAD)
        m.iov["len"][:n] = batch.lens - UDP_PAYLOAD
        self._counters["tx_calls"] += 1
        r = _libc.sendmmsg(self._fd, m.ptr, n, MSG_DONTWAIT)
        if r < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
                return 0
            raise KbypassError(f"sendmmsg from UDP {self.bind_ip}:{self.port} failed: {os.strerror(err)}: check "
                               "the destination address and port in the frames (bytes 30-33 and 36-37)")
        if r:
            self.umem.give_free(addrs[:r], APP, trusted=True)  # checked in transmit()
            self._counters["tx_packets"] += r
            self._counters["tx_bytes"] += int(batch.lens[:r].sum())
        return r

    def flush(self) -> None:
        """Nothing to do: sendmmsg has handed every accepted datagram to the kernel already."""

    # ---- free, stats, teardown -------------------------------------------------------------------
    def free(self, batch: Batch) -> None:
        """Give frames back without sending them (checked: each frame must be yours, once)."""
        if len(batch) == 0:
            return
        self._own(batch, "free")
        self.umem.give_free(batch.addr, APP, "free")

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def stats(self) -> dict:
        """Our counters plus rx_dropped: datagrams the kernel dropped at this socket (sk_drops, from
        SO_MEMINFO: a full receive buffer)."""
        s = dict(self._counters)
        if not self._closed:
            info = np.frombuffer(self._sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 40), dtype="<u4")
            s["rx_dropped"] = int(info[SK_MEMINFO_DROPS])
        s["frames_free"] = self.umem.free_count
        return s

    def check(self, *, app: int | None = None) -> dict:
        """Verify the frame accounting (no leak, no double hand-out); `app`: frames you should hold now."""
        return self.umem.check(app=app, fill=0, tx=0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sock is not None:
            self._sock.close()
        self.umem.close()

    def __repr__(self) -> str:
        return f"<SocketPort UDP {getattr(self, 'bind_ip', '?')}:{getattr(self, 'port', '?')}>"
