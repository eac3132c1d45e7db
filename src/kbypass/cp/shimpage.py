"""The preload shim's counters page: a sealed memfd the shim writes and the control plane reads for status.

The shim (csrc/preload/kbp_shim.h, struct kbp_page) keeps one slot per accelerated socket in it and hands the
memfd over once (`shim_page`). The control plane maps it read-only only when it is sealed against shrinking
(an app that cut the file under our mapping would kill the control plane with SIGBUS) and treats what it
reads as numbers an app wrote: shown in `kbypass run --status`, never acted on.

Layout (little-endian, PAGE_BYTES): header {magic u32, version u32, slots u32, pad u32, then the app's TCP host
counters: TCP_COUNTERS u64 each (kbypass.sockapi.shimtcp.ShimTcp.tally)}, padded to 64 bytes, then SLOTS slots of
64 bytes {used u32, fd u32, ip 4 bytes, port u16, proto u16 (6: TCP, else UDP), rx u64, tx u64, then for UDP
rx_kernel u64, tx_kernel u64, rx_dropped u64, tx_failed u64; for TCP peer ip 4 bytes, peer port u16, state u8
(1 + its index in kbypass.proto.tcp.State, 0: none yet), role u8 (1 listener, 2 accepted, 3 connected, 4 a listener
a fork's child inherited and left on the kernel: another process has its port, csrc/preload/kbp_tcpadopt.c), accepted
u64 (a listener's), 16 bytes unused}. UDP's rx and tx count datagrams, TCP's (rx, tx too) bytes the app read and sent.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
import stat
import struct

from kbypass.proto.tcp import State

from .protocol import ProtocolError

MAGIC = 0x5042534B  # "KSBP" little-endian
VERSION = 2
SLOTS = 64
HEADER = 64
SLOT = struct.Struct("<II4sHH6Q")
TCP_SLOT = struct.Struct("<II4sHH2Q4sHBBQ16x")
PAGE_BYTES = 8192
COUNTERS = ("rx", "tx", "rx_kernel", "tx_kernel", "rx_dropped", "tx_failed")
TCP_COUNTERS = ("rx_segments", "rx_predicted", "tx_segments", "retransmits", "connections", "rx_no_socket")
TCP_STATES = ("", *(s.value for s in State))
ROLES = {1: "listener", 2: "accepted", 3: "connected", 4: "listener"}


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
            if used != 1:
                continue
            if proto != socket.IPPROTO_TCP:
                out.append({"fd": fd, "proto": "udp", "local": f"{socket.inet_ntoa(ip)}:{port}",
                            **dict(zip(COUNTERS, counts))})
                continue
            *_, rx, tx, peer_ip, peer_port, state, role, accepted = TCP_SLOT.unpack_from(self.map,
                                                                                        HEADER + i * SLOT.size)
            listener = role in (1, 4)
            out.append({"fd": fd, "proto": "tcp", "local": f"{socket.inet_ntoa(ip)}:{port}",
                        "role": ROLES.get(role, "?"),
                        "peer": "" if listener else f"{socket.inet_ntoa(peer_ip)}:{peer_port}",
                        "state": "LISTEN (kernel)" if role == 4 else "LISTEN" if listener
                        else TCP_STATES[state] if state < len(TCP_STATES) else "?",
                        "rx": rx, "tx": tx, **({"accepted": accepted} if listener else {})})
        return out

    def tcp_counters(self) -> dict:
        """The app's TCP host counters (all 0 until it accelerated a TCP socket)."""
        return dict(zip(TCP_COUNTERS, struct.unpack_from(f"<{len(TCP_COUNTERS)}Q", self.map, 16)))

    def close(self) -> None:
        self.map.close()
