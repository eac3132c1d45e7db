"""QueuePool: one queue shared by several clients, each with its own AF_XDP socket (XDP_SHARED_UMEM).

AF_XDP binds one UMEM per queue. Two programs can still receive on the same queue (each its own flows,
chosen by the steering program's rules through its own XSKMAP row) if their sockets share that UMEM, and with
it its fill and completion rings. The control plane makes the pool at the first member's request:

- the UMEM, a sealed memfd of SLICES slices (each of the first member's `frames`);
- an anchor socket that registers the UMEM and owns its fill and completion rings. It is bound to the queue
  but never put in the XSKMAP, so it receives nothing; it keeps the pool alive while members come and go;
- the pool's lock (kbypass.xsk.pool_lock), a robust mutex in a small memfd.

Each member gets a socket bound to the anchor with XDP_SHARED_UMEM (its own RX and TX rings), the UMEM's
memfd, the lock's memfd and a slice of frames to start from (kbypass.port.afxdp SharedQueue). Frames then
float between members (the kernel receives into whatever any member lent it), so the frames a member held
when it died are gone from the pool, and its slice cannot be handed out again: after SLICES members the pool
takes no more until it is empty and made anew. The pool goes when its last member does.

Members see each other's packets in the shared memory, so a pool is shared only by clients of one user.
"""

from __future__ import annotations

import fcntl
import logging
import os

from kbypass.xsk.pool_lock import make_lock_file
from kbypass.xsk.socket import XskSocket
from kbypass.xsk.umem import Umem

from .protocol import ProtocolError

log = logging.getLogger("kbypass.cp")
SLICES = 8  # members a pool can take over its lifetime (module doc)
MAX_POOL_BYTES = 1 << 30  # a pool's UMEM, all slices: pinned on the control plane's account
ANCHOR_RING = 64  # the anchor's own RX/TX rings: it never receives or sends
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _ring_size(per_member: int) -> int:
    """The pool's fill/completion ring: room for every member's share, a power of two, at most 32768."""
    return min(per_member * SLICES, 32768)


class QueuePool:
    """The shared UMEM, anchor socket and lock of one queue; `join` makes a member's socket."""

    def __init__(self, iface: str, queue: int, uid: int, *, frames: int, frame_size: int, fill_size: int,
                 comp_size: int, headroom: int = 0, mode: str = "auto", multi_buffer: bool = False) -> None:
        self.iface, self.queue, self.uid = iface, queue, uid
        self.multi_buffer = multi_buffer
        self.slice_frames, self.frame_size, self.headroom = frames, frame_size, headroom
        self.fill_size, self.comp_size = _ring_size(fill_size), _ring_size(comp_size)
        self.frames = frames * SLICES
        if self.frames * frame_size > MAX_POOL_BYTES:
            raise ProtocolError(f"a shared queue's UMEM holds {SLICES} slices of --frames, at most "
                                f"{MAX_POOL_BYTES >> 20} MiB in all: ask for at most "
                                f"{MAX_POOL_BYTES // SLICES // frame_size} frames of {frame_size} bytes")
        self.members: dict[int, int] = {}  # client id -> its slice
        self.next_slice = 0
        self.memfd = self.lock_fd = self.umem = self.anchor = None
        try:
            self.memfd = os.memfd_create(f"kbypass-pool-{iface}-{queue}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(self.memfd, self.frames * frame_size)
            fcntl.fcntl(self.memfd, fcntl.F_ADD_SEALS, _SEALS)
            self.lock_fd = make_lock_file(f"{iface}-{queue}")
            self.umem = Umem(self.frames, frame_size, headroom, memfd=self.memfd)
            self.anchor = XskSocket(self.umem, iface, queue, rx_size=ANCHOR_RING, tx_size=ANCHOR_RING,
                                    fill_size=self.fill_size, comp_size=self.comp_size, mode=mode, need_wakeup=True,
                                    multi_buffer=multi_buffer)
        except BaseException:
            self.close()
            raise
        self.mode = self.anchor.mode

    @property
    def size(self) -> int:
        return self.frames * self.frame_size

    def check_layout(self, frames: int, frame_size: int, headroom: int, mode: str = "auto",
                     multi_buffer: bool = False) -> None:
        """A member's frames and bind mode are the pool's: refuse a request the pool cannot honour, naming
        the pool's."""
        if (frames, frame_size, headroom) != (self.slice_frames, self.frame_size, self.headroom):
            raise ProtocolError(f"queue {self.queue} of {self.iface} is shared with slices of {self.slice_frames} "
                                f"frames of {self.frame_size} bytes (headroom {self.headroom}): ask for the same "
                                "to join it")
        if mode not in ("auto", self.mode):
            raise ProtocolError(f"queue {self.queue} of {self.iface} is shared in {self.mode} mode, not {mode}: "
                                f"ask for {self.mode} (or auto) to join it")
        if multi_buffer != self.multi_buffer:
            how = ("with multi-buffer (XDP_USE_SG: packets larger than a frame arrive as chains), as its first member's "
                   "MTU needed" if self.multi_buffer else "without multi-buffer")
            raise ProtocolError(f"queue {self.queue} of {self.iface} is shared {how}: join it with the same MTU and "
                                "--frame-size as its members, or pick another queue")

    def join(self, cid: int, rx_size: int, tx_size: int) -> "Member":
        if self.next_slice >= SLICES:
            raise ProtocolError(f"queue {self.queue} of {self.iface}'s shared pool has given out all {SLICES} of its "
                                "slices (frames float between members, so a departed member's slice is not given "
                                "out again): pick another queue, or wait until its members are gone")
        member = Member(self, rx_size, tx_size, self.next_slice)
        self.members[cid] = self.next_slice
        self.next_slice += 1
        return member

    def leave(self, cid: int) -> None:
        self.members.pop(cid, None)

    def refuse(self, cid: int) -> None:
        """Undo a join whose socket was never handed out (its registration failed): its slice was not used,
        so it is given out again."""
        if self.members.pop(cid, None) == self.next_slice - 1:
            self.next_slice -= 1

    def describe(self) -> dict:
        return {"queue": self.queue, "uid": self.uid, "members": sorted(self.members), "slices_used": self.next_slice,
                "slices": SLICES, "frames": self.frames, "frame_size": self.frame_size, "mode": self.mode,
                "multi_buffer": self.multi_buffer}

    def close(self) -> None:
        if self.anchor is not None:
            self.anchor.close()
            self.anchor = None
        if self.umem is not None:
            self.umem.close()
            self.umem = None
        for name in ("memfd", "lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


class Member:
    """A member's socket of a pool, made for a client: `fds` go with the reply, then close() (like
    kbypass.cp.sockets.MadeSocket)."""

    def __init__(self, pool: QueuePool, rx_size: int, tx_size: int, slice_: int) -> None:
        self.pool, self.slice = pool, slice_
        self.xsk = XskSocket(pool.umem, pool.iface, pool.queue, rx_size=rx_size, tx_size=tx_size,
                             fill_size=pool.fill_size, comp_size=pool.comp_size, shared_with=pool.anchor.fd,
                             multi_buffer=pool.multi_buffer)  # the kernel takes XDP_USE_SG from the anchor's UMEM
        self.layout = {"frames": pool.frames, "frame_size": pool.frame_size, "headroom": pool.headroom,
                       "rx_size": rx_size, "tx_size": tx_size, "fill_size": pool.fill_size,
                       "comp_size": pool.comp_size, "multi_buffer": pool.multi_buffer}

    @property
    def fd(self) -> int:
        return self.xsk.fd

    @property
    def fds(self) -> tuple[int, int, int]:
        """What the reply carries: the socket, the UMEM's memory, the pool's lock."""
        return (self.xsk.fd, self.pool.memfd, self.pool.lock_fd)

    def reply(self, group: int) -> dict:
        first = self.slice * self.pool.slice_frames
        return {"group": group, "mode": self.xsk.mode, **self.layout,
                "shared_queue": {"first": first, "count": self.pool.slice_frames}}

    def close(self) -> None:
        if self.xsk is not None:
            self.xsk.close()
            self.xsk = None
