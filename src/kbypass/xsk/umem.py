"""UMEM: the packet memory shared with the kernel, and the bookkeeping of who owns each frame.

One mmap of `frames * frame_size` bytes (anonymous, or MAP_SHARED over a memfd the control plane made:
`memfd=`), seen as one np.uint8 array (`Umem.array`); a frame is
`array[addr:addr + len]`. Frames are aligned chunks (frame_size 2048 or 4096), so the frame of any address
is `addr >> log2(frame_size)` — descriptors from the kernel point past the headroom, not at the chunk start.

Every frame is in exactly one state:
  FREE  on our free list (a numpy stack of chunk addresses with a top index)
  FILL  given to the kernel for receiving (in the fill ring, in the driver, or in the RX ring unread)
  APP   owned by the application: received and not yet transmitted or freed, or allocated for sending
  TX    handed to the kernel for sending (in the TX ring, or sent and waiting on the completion ring)
In a UMEM shared by the members of a shared queue (kbypass.cp.pool) FILL also means "another member's": a
member starts with its own slice of frames (`keep_slice`), and frames then float, since the kernel receives
into whatever frame any member lent it and the completion ring returns a frame to whoever reaps it.
Transitions are vectorized and checked: handing out a frame that is not in the expected state (a double
free, transmitting a frame you do not own) raises instead of corrupting memory. `check()` verifies the
whole picture for tests: the free stack holds no duplicates and exactly the FREE frames.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from kbypass import backend
from kbypass.errors import KbypassError, UsageError
from kbypass.xsk.consts import XDP_DESC

# One bit per state, so "all these frames are in state S" is a single OR-reduction equal to S. The numbers
# are the C core's (enum kb_frame_state, csrc/core/kb_umem.h; kbypass._fastbatch.FRAME_*): a test holds
# them equal, since the C lane and the batch path write these states into the same array.
FREE, FILL, APP, TX = 1, 2, 4, 8
STATE_NAMES = {FREE: "free", FILL: "fill", APP: "app", TX: "tx"}
FRAME_SIZES = (2048, 4096)


def desc_in_frame(addr: int, length: int, umem_size: int, frame_size: int) -> bool:
    """Whether an RX descriptor lies wholly inside its own frame (the aligned chunk of frame_size bytes, a
    power of two, that addr is in) of a UMEM of umem_size bytes: all the kernel ever writes. The C core's
    kb_desc_in_frame (kb_ring.h) is its twin: the lanes and the sink give one verdict."""
    return addr < umem_size and length <= frame_size - (addr & (frame_size - 1))


class OwnershipError(KbypassError):
    """A frame was used by someone who does not own it (double free, transmit of a freed frame...)."""


class Umem:
    """Frames of packet memory plus their ownership states. Use as a context manager or call close().

    ops: the batch-bookkeeping backend (kbypass.backend: C or the reference Python) that moves frames
    between states; None: kbypass.backend.batch(), the lane in force. The port's batches use it too.
    memfd: map this memory file (at least `frames * frame_size` bytes) shared instead of anonymous memory,
    so that two processes see the same frames (the caller keeps and closes the fd)."""

    def __init__(self, frames: int = 4096, frame_size: int = 2048, headroom: int = 0, *, ops=None,
                 memfd: int | None = None) -> None:
        if frame_size not in FRAME_SIZES:
            raise UsageError(f"frame_size {frame_size} is not supported: use 2048 or 4096")
        if frames <= 0:
            raise UsageError(f"a UMEM needs at least one frame, not {frames}: pass frames=4096 or so")
        if not 0 <= headroom <= frame_size - 512:
            raise UsageError(f"headroom {headroom} leaves no room for packets in {frame_size}-byte frames: "
                             "use a headroom of at most frame_size - 512")
        self.ops = ops if ops is not None else backend.batch()
        self.frames = frames
        self.frame_size = frame_size
        self.headroom = headroom
        self.shift = frame_size.bit_length() - 1
        self.size = frames * frame_size
        try:
            self._mmap = self._map(memfd)
        except OSError as e:  # ENOMEM: more than the machine will lend
            raise UsageError(f"cannot allocate {frames} frames of {frame_size} bytes ({self.size / 2**20:,.0f} MiB "
                             f"of packet memory): {e.strerror}; use fewer frames (--frames)") from None
        self.array = np.frombuffer(self._mmap, dtype=np.uint8)
        self.state = np.full(frames, FREE, dtype=np.uint8)
        # The free list is a stack of frame numbers; the top is popped first, so recently used (cache-warm)
        # frames recur.
        self._free = np.arange(frames, dtype=np.intp)[::-1].copy()
        self._top = frames
        self._ushift = np.uint64(self.shift)
        # scratch for the duplicate check: mark[frame] = position in the batch (see expect)
        self._mark = np.zeros(frames, dtype=np.int32)
        self._positions = np.arange(frames, dtype=np.int32)

    # ---- the memory -------------------------------------------------------------------------------
    def _map(self, memfd: int | None) -> mmap.mmap:
        populate = getattr(mmap, "MAP_POPULATE", 0)
        if memfd is None:
            return mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | populate)
        have = os.fstat(memfd).st_size
        if have < self.size:  # a mapping past the file's end faults (SIGBUS) on first touch
            raise UsageError(f"the UMEM memory file holds {have} bytes, not the {self.size} of {self.frames} frames "
                             f"of {self.frame_size} bytes")
        return mmap.mmap(memfd, self.size, flags=mmap.MAP_SHARED | populate,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)

    @property
    def address(self) -> int:
        """The virtual address of the area (for XDP_UMEM_REG)."""
        return self.array.ctypes.data

    def close(self) -> None:
        """Unmap the memory. Views still held elsewhere (batches) keep it alive until they are dropped."""
        if self._mmap is None:
            return
        self.array = None
        try:
            self._mmap.close()
        except BufferError:
            pass  # someone still holds a numpy view; the mapping goes away with the last reference
        self._mmap = None

    def __enter__(self) -> "Umem":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- ownership --------------------------------------------------------------------------------
    @property
    def free_count(self) -> int:
        return self._top

    def keep_slice(self, first: int, count: int) -> None:
        """Own only frames first .. first+count-1 (free); the others are another member's of a shared queue's
        UMEM (state FILL, see the module doc). For a UMEM nothing was handed out of yet."""
        if not (0 <= first and 0 < count and first + count <= self.frames) or self._top != self.frames:
            raise UsageError(f"a slice of frames {first}..{first + count - 1} does not fit a fresh UMEM of "
                             f"{self.frames} frames")
        self.state[:] = FILL
        self.state[first:first + count] = FREE
        self._free[:count] = np.arange(first, first + count, dtype=np.intp)[::-1]
        self._top = count

    def frame_of(self, addrs: np.ndarray) -> np.ndarray:
        """Frame numbers of any addresses inside frames."""
        return (np.asarray(addrs, dtype=np.uint64) >> self._ushift).astype(np.intp)

    def take_free(self, n: int, to: int) -> np.ndarray:
        """Pop up to n free chunk addresses (u64 array, maybe shorter) and put them in state `to`."""
        n = min(n, self._top)
        top = self._top - n
        frames = self._free[top : self._top]
        self._top = top
        self.state[frames] = to
        return frames.astype(np.uint64) << self._ushift

    def give_free(self, addrs: np.ndarray, expected: int, what: str = "free", *, trusted: bool = False) -> None:
        """Return frames (any address inside them) in state `expected` to the free list.

        trusted: skip the ownership checks (for addresses that come from the kernel's completion ring).
        """
        n = len(addrs)
        if n == 0:
            return
        if trusted:
            self._top = self.ops.push_free(self.state, self._free, self._top,
                                           np.ascontiguousarray(addrs, dtype=np.uint64), self.shift)
            return
        else:
            self.hand_over(addrs, expected, FREE, what)
            frames = np.asarray(addrs, dtype=np.uint64) >> self._ushift
        self._free[self._top : self._top + n] = frames
        self._top += n

    def move(self, addrs: np.ndarray, expected: int, to: int, what: str) -> None:
        """Change the state of frames that must currently be in state `expected` (all or nothing)."""
        if len(addrs):
            self.hand_over(addrs, expected, to, what)

    def hand_over(self, addrs: np.ndarray, expected: int, to: int, what: str, *, descs=None) -> int:
        """Move frames from state `expected` to `to`, all or nothing, after the checks of `expect` (and of
        `validate_descs` when the TX descriptors `descs` are given); returns the total length of `descs`
        (0 without descs).

        One pass of the batch backend (ops.claim); when it finds a problem nothing has changed, and the
        numpy checks below run to raise the precise error."""
        d = descs
        if d is None:
            d = np.zeros(len(addrs), dtype=XDP_DESC)
            d["addr"] = addrs
        total = self.ops.claim(self.state, d, self.shift, self.size, self.frame_size, expected, to, descs is not None)
        if total >= 0:
            return total
        if descs is not None:
            self.validate_descs(descs["addr"], descs["len"])
        self.state[self.expect(addrs, expected, what)] = to
        return 0 if descs is None else int(descs["len"].sum())

    def mark_received(self, descs: np.ndarray, to: int) -> int:
        """Frames the kernel handed back (RX descriptors) now in state `to`; returns their total length."""
        return self.ops.mark(self.state, descs, self.shift, to)

    def expect(self, addrs: np.ndarray, expected: int, what: str) -> np.ndarray:
        """Frame numbers of addrs, after checking each is in state `expected` and none appears twice.

        Kept to a handful of numpy calls: this runs on every free() and transmit().
        """
        addrs = np.asarray(addrs, dtype=np.uint64)
        frames = addrs >> self._ushift
        try:
            states = self.state[frames]
        except IndexError:
            raise OwnershipError(f"{what}: address {int(addrs.max()):#x} is outside the UMEM "
                                 f"({self.size:#x} bytes); only pass frames this port gave you") from None
        if np.bitwise_or.reduce(states) != expected:
            bad = states != expected
            i = int(np.argmax(bad))
            raise OwnershipError(
                f"{what}: frame {int(frames[i])} (addr {int(addrs[i]):#x}) is {STATE_NAMES[int(states[i])]!r}, "
                f"not {STATE_NAMES[expected]!r}: a frame is yours from receive/alloc until you transmit or "
                "free it, once"
            )
        # Duplicates: write each frame's position in the batch, read back; a repeated frame reads the
        # position of its last copy at its first one.
        pos = self._positions[: len(frames)]
        self._mark[frames] = pos
        if not (self._mark[frames] == pos).all():
            raise OwnershipError(f"{what}: the same frame appears twice in one batch; use each frame once")
        return frames

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.state, minlength=TX + 1)
        return {name: int(c[state]) for state, name in STATE_NAMES.items()}

    def check(self, *, app: int | None = None, fill: int | None = None, tx: int | None = None) -> dict:
        """Verify the accounting (no frame leaked, none handed out twice); optionally the expected counts.

        Raises OwnershipError on any inconsistency; returns the per-state counts.
        """
        counts = self.counts()
        frames = self._free[: self._top]
        if len(np.unique(frames)) != len(frames):
            raise OwnershipError("UMEM free list holds a frame twice (double free)")
        if len(frames) and (self.state[frames] != FREE).any():
            raise OwnershipError("UMEM free list holds a frame that is also owned elsewhere")
        if counts["free"] != self._top:
            raise OwnershipError(f"UMEM: {counts['free']} frames marked free but {self._top} on the free list")
        for name, want in (("app", app), ("fill", fill), ("tx", tx)):
            if want is not None and counts[name] != want:
                raise OwnershipError(f"UMEM: {counts[name]} frames in state {name!r}, expected {want} "
                                     "(a leak: some frame was neither transmitted nor freed)")
        return counts

    def validate_descs(self, addrs: np.ndarray, lens: np.ndarray) -> None:
        """Refuse TX descriptors the kernel would reject, before it sees them (clear error, nothing sent)."""
        if len(addrs) == 0:
            return
        addrs = np.asarray(addrs, dtype=np.uint64)
        lens = np.asarray(lens, dtype=np.uint64)
        fs = np.uint64(self.frame_size)
        if int(addrs.max()) >= self.size:
            raise UsageError(f"TX descriptor address {int(addrs.max()):#x} is outside the UMEM "
                             f"({self.size:#x} bytes): send only frames from receive() or alloc()")
        if (lens == 0).any():
            raise UsageError("TX descriptor with length 0: set the frame length before transmitting")
        over = (addrs & (fs - np.uint64(1))) + lens > fs
        if over.any():
            i = int(np.argmax(over))
            raise UsageError(
                f"TX descriptor at {int(addrs[i]):#x} with length {int(lens[i])} crosses its "
                f"{self.frame_size}-byte frame: keep offset + length within one frame"
            )
