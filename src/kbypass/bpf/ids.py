"""What the kernel has loaded, found by id: programs, their maps, and links (what `bpftool prog/link show` reads).

Programs, maps and links are global objects with ids (not per network namespace); the *_GET_NEXT_ID
commands walk them and *_GET_FD_BY_ID plus BPF_OBJ_GET_INFO_BY_FD describe one. So a tool finds every
kbypass program on the machine from its name alone, with no registry file that a crash could leave stale.
An object can go between the walk and the look-up: it is then skipped, never an error.

The info structs are read at fixed offsets of the stable UAPI layout (<linux/bpf.h>): struct bpf_prog_info
(id @4, nr_map_ids @52, map_ids @56, name @64), struct bpf_map_info (type @0, id @4, key_size @8,
value_size @12, max_entries @16, name @24) and struct bpf_link_info (type @0, id @4, prog_id @8,
xdp.ifindex @16).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kbypass.bpf import libbpf

BPF_LINK_TYPE_XDP = 6  # enum bpf_link_type
PROG_INFO_SIZE = 80  # through char name[16]
MAP_INFO_SIZE = 40  # through char name[16]
LINK_INFO_SIZE = 24  # through the xdp member of the union
MAX_MAP_IDS = 64


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str
    map_ids: tuple[int, ...]


@dataclass(frozen=True)
class LinkInfo:
    id: int
    type: int
    prog_id: int
    ifindex: int  # XDP links only (0 otherwise); an index in the namespace the link was made in


def _walk(next_id: Callable[[int, ctypes.c_uint32], int]) -> Iterator[int]:
    cur = ctypes.c_uint32(0)
    while True:
        rc = next_id(cur.value, ctypes.byref(cur))
        if rc == -errno.ENOENT:
            return
        libbpf._check(rc, "walk BPF object ids")
        yield cur.value


def prog_ids() -> Iterator[int]:
    return _walk(libbpf.lib().bpf_prog_get_next_id)


def link_ids() -> Iterator[int]:
    return _walk(libbpf.lib().bpf_link_get_next_id)


def _info(fd: int, buf: ctypes.Array[ctypes.c_char]) -> bytes | None:
    n = ctypes.c_uint32(len(buf))
    if libbpf.lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(n)) < 0:
        return None
    return buf.raw[: n.value]


def _name(raw: bytes, off: int) -> str:
    return raw[off:off + 16].split(b"\0", 1)[0].decode(errors="replace")


def prog_info(prog_id: int) -> ProgInfo | None:
    """The program with kernel id `prog_id` and the ids of its maps (None: it is gone)."""
    fd = libbpf.lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        ids = (ctypes.c_uint32 * MAX_MAP_IDS)()
        buf = ctypes.create_string_buffer(PROG_INFO_SIZE)
        # the kernel writes at most nr_map_ids ids to the user pointer map_ids, both given in the request
        struct.pack_into("<IQ", buf, 52, MAX_MAP_IDS, ctypes.addressof(ids))
        raw = _info(fd, buf)
        if raw is None or len(raw) < PROG_INFO_SIZE:
            return None
        ptype, pid = struct.unpack_from("<II", raw, 0)
        nmaps = min(struct.unpack_from("<I", raw, 52)[0], MAX_MAP_IDS)
        return ProgInfo(pid, ptype, _name(raw, 64), tuple(ids[:nmaps]))
    finally:
        os.close(fd)


def open_map(map_id: int) -> libbpf.BpfMap | None:
    """A `BpfMap` on the map with kernel id `map_id`, holding its own fd (close it with `close_map`)."""
    fd = libbpf.lib().bpf_map_get_fd_by_id(map_id)
    if fd < 0:
        return None
    raw = _info(fd, ctypes.create_string_buffer(MAP_INFO_SIZE))
    if raw is None or len(raw) < MAP_INFO_SIZE:
        os.close(fd)
        return None
    mtype, _, key_size, value_size, max_entries = struct.unpack_from("<IIIII", raw, 0)
    return libbpf.BpfMap(_name(raw, 24), fd, key_size, value_size, max_entries, mtype)


def close_map(m: libbpf.BpfMap) -> None:
    os.close(m.fd)


def link_info(link_id: int) -> LinkInfo | None:
    fd = libbpf.lib().bpf_link_get_fd_by_id(link_id)
    if fd < 0:
        return None
    try:
        raw = _info(fd, ctypes.create_string_buffer(LINK_INFO_SIZE))
    finally:
        os.close(fd)
    if raw is None or len(raw) < 12:
        return None
    ltype, lid, prog = struct.unpack_from("<III", raw, 0)
    ifindex = struct.unpack_from("<I", raw, 16)[0] if ltype == BPF_LINK_TYPE_XDP and len(raw) >= 20 else 0
    return LinkInfo(lid, ltype, prog, ifindex)


def programs_named(names: set[str]) -> list[ProgInfo]:
    """Every loaded program whose name is one of `names` (the kernel keeps the first 15 characters)."""
    wanted = {n[:15] for n in names}
    found = []
    for pid in prog_ids():
        info = prog_info(pid)
        if info is not None and info.name in wanted:
            found.append(info)
    return found


def xdp_links() -> list[LinkInfo]:
    """Every XDP bpf_link on the machine (in any namespace)."""
    out = []
    for lid in link_ids():
        info = link_info(lid)
        if info is not None and info.type == BPF_LINK_TYPE_XDP:
            out.append(info)
    return out
