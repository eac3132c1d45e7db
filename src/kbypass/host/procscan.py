"""Which process holds which socket, BPF program and bpf_link: one pass over /proc/*/fd, as `ss -p` and
`bpftool link show` (its "pids" column) do.

A socket is named by its inode ("socket:[INODE]"); a program or link fd is an anon inode whose fdinfo says
"prog_id:" or "link_id:". Only those fdinfo files are read, so the pass costs one readlink per open fd
of the machine. A process that ends during the pass is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

PROC = "/proc"


@dataclass
class Holders:
    sockets: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # inode -> [(pid, fd)]
    progs: dict[int, set[int]] = field(default_factory=dict)  # prog id -> pids
    links: dict[int, set[int]] = field(default_factory=dict)  # link id -> pids


def _fdinfo_id(pid: str, fd: str, key: str) -> int | None:
    try:
        with open(f"{PROC}/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def command(pid: int) -> str:
    """The command line of `pid` ("" if it is gone), as `ps -o args` shows it."""
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def scan() -> Holders:
    h = Holders()
    me = str(os.getpid())
    for pid in os.listdir(PROC):
        if not pid.isdigit() or pid == me:
            continue
        try:
            fds = os.listdir(f"{PROC}/{pid}/fd")
        except OSError:  # gone, or a kernel thread's empty table we may not read
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{PROC}/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                h.sockets.setdefault(int(target[8:-1]), []).append((int(pid), int(fd)))
            elif target == "anon_inode:bpf-prog":
                pid_ = _fdinfo_id(pid, fd, "prog_id:")
                if pid_ is not None:
                    h.progs.setdefault(pid_, set()).add(int(pid))
            elif target == "anon_inode:bpf_link":
                lid = _fdinfo_id(pid, fd, "link_id:")
                if lid is not None:
                    h.links.setdefault(lid, set()).add(int(pid))
    return h
