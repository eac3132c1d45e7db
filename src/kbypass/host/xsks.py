"""Every AF_XDP socket on the machine, its namespace, owner processes and XDP statistics, read from outside.

Where the kernel has AF_XDP socket diagnostics (CONFIG_XDP_SOCKETS_DIAG, a module on Debian and Fedora),
a sock_diag dump per namespace says everything (`kbypass.xsk.diag`). Where it does not (the kernel of
this machine), the sockets are found in /proc: an AF_XDP socket's rings are mmapped at page offsets no
other socket family uses (TX 0x80000000, fill 0x100000000, completion 0x180000000; AF_PACKET maps at 0
only), so /proc/PID/maps names them, and a copy of the owner's fd (pidfd_getfd, root) answers
getsockopt(XDP_STATISTICS) and SIOCGSKNS (its namespace). The copy is closed at once: a monitor that kept
it would keep the socket and its UMEM alive after its owner exits. Which interface and queue the socket
is bound to only sock_diag can tell; the fallback leaves them unknown (None).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
from dataclasses import asdict, dataclass, field

import numpy as np

from kbypass.errors import EnvironmentProblem, KbypassError
from kbypass.host.procscan import PROC, Holders
from kbypass.xsk import consts, diag

SYS_PIDFD_GETFD = 438  # the same number on every architecture (unified syscall table, Linux >= 5.6)
SIOCGSKNS = 0x894C
XDP_RING_OFFSETS = {"80000000", "100000000", "180000000"}
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Xsk:
    inode: int
    netns: str | None  # the namespace's name under /var/run/netns, "init", or None when unknown
    ifindex: int | None
    queue: int | None
    pids: list[int]
    stats: dict[str, int] = field(default_factory=dict)
    rings: dict[str, int] = field(default_factory=dict)
    umem: dict[str, int] = field(default_factory=dict)
    source: str = "sock_diag"

    def as_dict(self) -> dict:
        return asdict(self)


def _copy_fd(pid: int, fd: int) -> int | None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        got = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        return got if got >= 0 else None
    finally:
        os.close(pidfd)


def _netns_inode_of(sock_fd: int) -> int | None:
    try:
        nsfd = fcntl.ioctl(sock_fd, SIOCGSKNS)
    except OSError:
        return None
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


def _xdp_statistics(s: socket.socket) -> dict[str, int]:
    raw = s.getsockopt(consts.SOL_XDP, consts.XDP_STATISTICS, consts.XDP_STATISTICS_T.itemsize)
    rec = np.frombuffer(raw.ljust(consts.XDP_STATISTICS_T.itemsize, b"\0"), consts.XDP_STATISTICS_T)[0]
    return {name: int(rec[name]) for name in consts.XDP_STATISTICS_FIELDS}


def _mapped_xsk_inodes(pid: int) -> set[int]:
    found = set()
    try:
        with open(f"{PROC}/{pid}/maps") as f:
            for line in f:
                if "socket:[" in line:
                    parts = line.split()
                    if parts[2].lstrip("0") in XDP_RING_OFFSETS:
                        found.add(int(parts[-1][8:-1]))
    except OSError:
        pass
    return found


class Finder:
    """Finds the sockets each interval; remembers which processes' maps it read, so a process is read
    again only when its set of sockets changed."""

    def __init__(self, namespaces: dict[str, int], here: str) -> None:
        self.namespaces = namespaces  # name -> namespace inode
        self.here = here  # the name of the caller's own namespace (entered as None)
        self.use_diag = True
        self._seen: dict[int, tuple[frozenset[int], set[int]]] = {}  # pid -> (its sockets, its xsk inodes)

    def find(self, holders: Holders) -> list[Xsk]:
        if self.use_diag:
            try:
                return self._by_diag(holders)
            except KbypassError as e:  # TestbedError: a namespace that went away mid-sample
                if not isinstance(e, EnvironmentProblem) or "xsk_diag" not in str(e):  # the next sample is fresh
                    return []
                self.use_diag = False  # this kernel has no xsk_diag: read /proc instead from now on
        return self._by_proc(holders)

    def _by_diag(self, holders: Holders) -> list[Xsk]:
        out = []
        for name in self.namespaces:
            for x in diag.sockets(None if name == self.here else name):
                pids = sorted({p for p, _ in holders.sockets.get(x.inode, [])})
                out.append(Xsk(x.inode, name, x.ifindex, x.queue, pids, x.stats, x.rings, x.umem))
        return out

    def _by_proc(self, holders: Holders) -> list[Xsk]:
        by_pid: dict[int, set[int]] = {}
        for inode, fds in holders.sockets.items():
            for pid, _ in fds:
                by_pid.setdefault(pid, set()).add(inode)
        seen: dict[int, tuple[frozenset[int], set[int]]] = {}
        for pid, inodes in by_pid.items():
            key = frozenset(inodes)
            old = self._seen.get(pid)
            seen[pid] = old if old and old[0] == key else (key, _mapped_xsk_inodes(pid))
        self._seen = seen
        xsk_inodes = set().union(*(v[1] for v in seen.values())) if seen else set()
        names = {ino: name for name, ino in self.namespaces.items()}
        out = []
        for inode in sorted(xsk_inodes):
            fds = holders.sockets.get(inode, [])
            x = Xsk(inode, None, None, None, sorted({p for p, _ in fds}), source="proc")
            for pid, fd in fds:
                got = _copy_fd(pid, fd)
                if got is None:
                    continue
                # the family given: Python would ask getsockname(), which AF_XDP does not answer
                with socket.socket(consts.AF_XDP, socket.SOCK_RAW, 0, fileno=got) as s:
                    x.netns = names.get(_netns_inode_of(s.fileno()))
                    try:
                        x.stats = _xdp_statistics(s)
                    except OSError:
                        continue  # not bound yet
                break
            if x.netns is not None or len(self.namespaces) > 1:
                out.append(x)  # with one namespace asked for, a socket of another is none of ours
        return out
