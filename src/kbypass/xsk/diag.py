"""Every AF_XDP socket of a network namespace, as the kernel describes it (sock_diag, what `ss --xdp` reads).

A NETLINK_SOCK_DIAG dump of family AF_XDP (the kernel's xsk_diag) returns, per socket: its inode, the
interface and queue it is bound to, its owner's uid, ring sizes, its UMEM, and the counters that
getsockopt(XDP_STATISTICS) gives its owner. Another process may read them without touching the socket,
so a monitor costs the data path nothing. pyroute2 has no AF_XDP diag, hence the few structs below
(<linux/sock_diag.h>, <linux/xdp_diag.h>); `encode_request` and `decode` are pure, so tests hold them to
bytes captured from a real kernel.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field

from kbypass import netns as _netns
from kbypass.errors import EnvironmentProblem
from kbypass.xsk.consts import AF_XDP

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
# XDP_SHOW_*: which attributes the dump carries
SHOW_INFO, SHOW_RING_CFG, SHOW_UMEM, SHOW_MEMINFO, SHOW_STATS = 1, 2, 4, 8, 16
SHOW_ALL = SHOW_INFO | SHOW_RING_CFG | SHOW_UMEM | SHOW_STATS
# XDP_DIAG_* attribute types
(DIAG_INFO, DIAG_UID, DIAG_RX_RING, DIAG_TX_RING, DIAG_UMEM, DIAG_UMEM_FILL_RING, DIAG_UMEM_COMPLETION_RING,
 DIAG_MEMINFO, DIAG_STATS) = range(1, 10)
RINGS = {DIAG_RX_RING: "rx", DIAG_TX_RING: "tx", DIAG_UMEM_FILL_RING: "fill", DIAG_UMEM_COMPLETION_RING: "completion"}
# struct xdp_diag_stats, in the names of XDP_STATISTICS' fields (what every kbypass --json summary shows)
STATS = ("rx_dropped", "rx_invalid_descs", "rx_ring_full", "rx_fill_ring_empty_descs", "tx_invalid_descs",
         "tx_ring_empty_descs")
NLMSGHDR = struct.Struct("<IHHII")
REQ = struct.Struct("<BBHII2I")  # struct xdp_diag_req
MSG = struct.Struct("<BBHI2I")  # struct xdp_diag_msg
UMEM = struct.Struct("<QIIIIIIII")  # struct xdp_diag_umem


@dataclass
class XskInfo:
    """One AF_XDP socket as xsk_diag reports it."""

    inode: int
    ifindex: int = 0  # 0: not bound
    queue: int = 0
    uid: int | None = None
    rings: dict[str, int] = field(default_factory=dict)  # ring name -> entries
    umem: dict[str, int] = field(default_factory=dict)  # id, size, chunk_size, headroom, refs (>1: shared)
    stats: dict[str, int] = field(default_factory=dict)


def encode_request(show: int = SHOW_ALL, seq: int = 1) -> bytes:
    """A dump request for every AF_XDP socket of the namespace the netlink socket lives in."""
    body = REQ.pack(AF_XDP, 0, 0, 0, show, 0xFFFFFFFF, 0xFFFFFFFF)  # inode 0 + cookie ~0: any socket
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def decode(data: bytes) -> tuple[list[XskInfo], bool]:
    """The sockets in one read of the dump's replies, and whether the dump is complete (NLMSG_DONE)."""
    out: list[XskInfo] = []
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length, mtype, _, _, _ = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > len(data):
            raise EnvironmentProblem(f"sock_diag: truncated netlink message ({length} bytes at {off})")
        body = data[off + NLMSGHDR.size:off + length]
        off += (length + 3) & ~3
        if mtype == NLMSG_DONE:
            return out, True
        if mtype == NLMSG_ERROR:
            err = -struct.unpack_from("<i", body)[0]
            if err in (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP):
                raise EnvironmentProblem("this kernel has no AF_XDP socket diagnostics: load them with "
                                         "'modprobe xsk_diag' (CONFIG_XDP_SOCKETS_DIAG)")
            raise EnvironmentProblem(f"sock_diag dump of AF_XDP sockets: {os.strerror(err)}")
        if mtype == SOCK_DIAG_BY_FAMILY:
            out.append(_socket(body))
    return out, False


def _socket(body: bytes) -> XskInfo:
    _, _, _, inode, _, _ = MSG.unpack_from(body)
    x = XskInfo(inode)
    off = MSG.size
    while off + 4 <= len(body):
        alen, atype = struct.unpack_from("<HH", body, off)
        if alen < 4:
            break
        val = body[off + 4:off + alen]
        off += (alen + 3) & ~3
        if atype == DIAG_INFO:
            x.ifindex, x.queue = struct.unpack_from("<II", val)
        elif atype == DIAG_UID:
            x.uid = struct.unpack_from("<I", val)[0]
        elif atype in RINGS:
            x.rings[RINGS[atype]] = struct.unpack_from("<I", val)[0]
        elif atype == DIAG_UMEM:
            size, uid, _, chunk, headroom, _, _, _, refs = UMEM.unpack_from(val)
            x.umem = {"id": uid, "size": size, "chunk_size": chunk, "headroom": headroom, "refs": refs}
        elif atype == DIAG_STATS:
            x.stats = dict(zip(STATS, struct.unpack_from(f"<{len(STATS)}Q", val)))
    return x


def sockets(netns: str | None = None, show: int = SHOW_ALL) -> list[XskInfo]:
    """Every AF_XDP socket of namespace `netns` (None: the caller's). Needs root (or CAP_NET_ADMIN) for
    other users' sockets' details, like `ss`."""
    with _netns.entered(netns):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    try:
        s.sendto(encode_request(show), (0, 0))
        found: list[XskInfo] = []
        done = False
        while not done:
            part, done = decode(s.recv(1 << 16))
            found += part
        return found
    finally:
        s.close()
