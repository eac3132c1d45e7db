"""The preload shim's counters page: a sealed memfd the shim writes and the control plane reads for status.

The shim (csrc/preload/kbp_shim.h, struct kbp_page) keeps one slot per accelerated socket in it and hands the
memfd over once (`shim_page`). The control plane maps it read-only only when it is sealed against shrinking
(an app that cut the file under our mapping would kill the control plane with SIGBUS) and treats what it
reads as numbers an app wrote: shown in `kbypass run --status`, never acted on.

Layout (little-endian, PAGE_BYTES): header {magic u32, version u32, slots u32, pad u32}, padded to 64 bytes,
then SLOTS slots of 64 bytes {used u32, fd u32, ip 4 bytes, port u16, proto u16 (6: TCP, else UDP), rx u64,
tx u64, rx_kernel u64, tx_kernel u64, rx_dropped u64, tx_failed u64}. TCP counts the app's receive and send
calls served (rx, tx).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
import stat
import struct

from .protocol import ProtocolError

MAGIC = 0x5042534B  # "KSBP" little-endian
VERSION = 1
SLOTS = 64
HEADER = 64
SLOT = struct.Struct("<II4sHH6Q")
PAGE_BYTES = 8192
COUNTERS = ("rx", "tx", "rx_kernel", "tx_kernel", "rx_dropped", "tx_failed")


class ShimPage:
    def __init__(self, fd: int) -> None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < PAGE_BYTES:
            raise ProtocolError(f"shim_page: send a memfd of {PAGE_BYTES} bytes")
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            seals = 0
        if not seals & fcntl.F_SEAL_SHRINK:
            raise ProtocolError("shim_page: seal the memfd against shrinking (F_SEAL_SHRINK)")
        self.map = mmap.mmap(fd, PAGE_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
        magic, version, slots, _ = struct.unpack_from("<4I", self.map, 0)
        if (magic, version, slots) != (MAGIC, VERSION, SLOTS):
            self.map.close()
            raise ProtocolError(f"shim_page: not a version {VERSION} counters page of {SLOTS} slots")

    def sockets(self) -> list[dict]:
        out = []
        for i in range(SLOTS):
            used, fd, ip, port, proto, *counts = SLOT.unpack_from(self.map, HEADER + i * SLOT.size)
            if used == 1:
                out.append({"fd": fd, "proto": "tcp" if proto == socket.IPPROTO_TCP else "udp",
                            "local": f"{socket.inet_ntoa(ip)}:{port}", **dict(zip(COUNTERS, counts))})
        return out

    def close(self) -> None:
        self.map.close()
