"""The AF_XDP ring protocol: single-producer/single-consumer rings shared with the kernel.

Mirrors libxdp's xsk.h, and the C core's twin of it (csrc/core/kb_ring.h): one protocol, two front ends.
Each ring is a power-of-two array of slots plus three u32 words in shared memory:
`producer`, `consumer` and `flags`. Indexes run free and wrap at 2**32; a slot is `index & mask`.

- Producer rings (fill, TX; we produce, the kernel consumes): `reserve(n)` claims up to n free slots
  (bounded by a cached copy of the consumer index, re-read only when the cache shows fewer than n free),
  the caller writes the slots, then `submit(n)` publishes them by storing the new producer index.
- Consumer rings (RX, completion; the kernel produces): `peek(n)` returns up to n filled slots (bounded
  by a cached producer index, re-read only when the cache holds fewer than n), the caller copies them out, then
  `release(n)` hands the slots back by storing the new consumer index.
- Multi-buffer (XDP_USE_SG): a packet is several consecutive RX/TX descriptors, XDP_PKT_CONTD in the
  options of every one but its last. `ConsumerRing.peek_packets(n)` is `peek(n)` cut back to whole packets
  (and stretched past n when the first packet alone is longer), so a reader never holds half a packet.
  The kernel publishes a packet's descriptors together (one producer store after the last), so a packet
  is either wholly on the ring or not at all.
- `needs_wakeup()` reads XDP_RING_NEED_WAKEUP: the kernel asks for a syscall (poll/sendto) to make progress.

The cached indexes live in `Ring.shared`, a `KbRing`: the C core's struct kb_ring, whose address the C
lane (kbypass._fastlane) is given, so Python and C each take the next step on the same ring and neither
keeps a copy of the other's indexes. Nobody else touches the struct: use the methods.

Memory ordering. The protocol needs, in the kernel's words (xsk_queue.h): the producer's slot writes must
be visible before its producer-index store (release), the consumer's slot reads must happen after its
producer-index load (acquire), and symmetrically for the consumer index (the consumer's slot reads before
its consumer-index store; the producer's consumer-index load before its slot writes).
On x86-64 (TSO) the hardware already gives all of this: stores are not reordered with older stores, loads
are not reordered with older loads, and stores are not reordered with older loads. The only reordering x86
does (a store followed by a load of another address) matters in one place: `submit()` then
`needs_wakeup()`, where the flag may be read before our producer store is visible. libxdp has no fence
there either; the worst case is a late wakeup, and the port re-reads the flag (and poll() wakes the driver
unconditionally) each time it finds the RX ring empty, so nothing stalls for good. Otherwise plain aligned
32-bit loads and stores suffice; libxdp's acquire/release compile to plain MOVs on x86 for the same reason.
The compiler side is covered because every index access is a separate call into ctypes/numpy C code
through the interpreter, which no compiler can reorder with the next Python-level operation.
On weakly ordered CPUs (arm64, ppc64, riscv) we would need real barriers: a load-acquire of the
producer/consumer index (or a read barrier after it) and a store-release of our index (or a write barrier
before it). Python offers no such primitive, so `Ring` refuses to run there rather than corrupt data (the
C core's functions have them: __atomic acquire/release, LDAR/STLR on arm64).
"""

from __future__ import annotations

import ctypes
import platform

import numpy as np

from kbypass.errors import EnvironmentProblem, UsageError

from . import consts

_TSO_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686"})
_U32 = 0xFFFFFFFF


def check_architecture(machine: str | None = None) -> None:
    """Raise unless the ring protocol's memory ordering is guaranteed on this CPU (see module doc)."""
    machine = (machine or platform.machine()).lower()
    if machine not in _TSO_MACHINES:
        raise EnvironmentProblem(
            f"kbypass's AF_XDP rings rely on x86 (TSO) memory ordering and this CPU is {machine!r}: "
            "run on x86-64, or use the packet_mmap/socket port backends here"
        )


def check_size(name: str, size: int) -> None:
    """Ring sizes must be powers of two (the kernel masks indexes); say so clearly."""
    if not isinstance(size, int) or size <= 0 or size & (size - 1):
        raise UsageError(f"{name} ring size {size!r} is not a power of two: use e.g. 512, 1024, 2048 or 4096")


class KbRing(ctypes.Structure):
    """struct kb_ring of csrc/core/kb_ring.h, field for field (a test compares it with the C layout)."""

    _fields_ = [("cached_prod", ctypes.c_uint32), ("cached_cons", ctypes.c_uint32), ("mask", ctypes.c_uint32),
                ("size", ctypes.c_uint32), ("producer", ctypes.c_void_p), ("consumer", ctypes.c_void_p),
                ("ring", ctypes.c_void_p), ("flags", ctypes.c_void_p)]


_PROD, _CONS = 0, 1  # the cached indexes: the struct's first two u32 words


class _ClosedIndex:
    """What a ring's producer/consumer/flags words become when its socket closes: reading or writing one is
    a ValueError naming the ring, not "'NoneType' object has no attribute 'value'"."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _refuse(self, *_):
        raise ValueError(f"the {self.name} ring is closed: its socket (or port) was closed")

    value = property(_refuse, _refuse)


class Ring:
    """One ring over a writable buffer (the mmap the kernel gave us, or a bytearray in tests).

    `producer_off`, `consumer_off`, `flags_off`, `desc_off` are the byte offsets reported by
    XDP_MMAP_OFFSETS; `dtype` is XDP_DESC (RX/TX) or UMEM_ADDR (fill/completion).
    """

    def __init__(self, buf, *, size: int, producer_off: int, consumer_off: int, flags_off: int,
                 desc_off: int, dtype: np.dtype, name: str = "ring") -> None:
        check_architecture()
        check_size(name, size)
        self.name = name
        self.size = size
        self.mask = size - 1
        # ctypes views give one aligned 32-bit load/store per access (see the ordering note above).
        self._producer = ctypes.c_uint32.from_buffer(buf, producer_off)
        self._consumer = ctypes.c_uint32.from_buffer(buf, consumer_off)
        self._flags = ctypes.c_uint32.from_buffer(buf, flags_off)
        self.slots = np.frombuffer(buf, dtype=dtype, count=size, offset=desc_off)
        self.shared = KbRing(0, 0, self.mask, size, ctypes.addressof(self._producer),
                             ctypes.addressof(self._consumer), self.slots.ctypes.data, ctypes.addressof(self._flags))
        # the cached indexes as one memoryview of u32: an item access costs a third of a ctypes field's
        self._cache = memoryview(self.shared).cast("B").cast("I")

    def needs_wakeup(self) -> bool:
        return bool(self._flags.value & consts.XDP_RING_NEED_WAKEUP)

    def read_slots(self, idx: int, n: int) -> np.ndarray:
        """Copy n slots starting at free-running index idx (one or two numpy slices when it wraps)."""
        start = idx & self.mask
        end = start + n
        if end <= self.size:
            return self.slots[start:end].copy()
        return np.concatenate((self.slots[start:], self.slots[: end - self.size]))

    def write_slots(self, idx: int, values: np.ndarray) -> None:
        """Write values into consecutive slots starting at free-running index idx, wrapping as needed."""
        start = idx & self.mask
        n = len(values)
        first = min(n, self.size - start)
        self.slots[start : start + first] = values[:first]
        if first < n:
            self.slots[: n - first] = values[first:]

    def release_views(self) -> None:
        """Drop our views of the buffer so the mmap can be closed; any later use of the ring is an error
        that says so (and the C core's kb_ring_valid is false: its pointers are cleared)."""
        self._producer = self._consumer = self._flags = _ClosedIndex(self.name)
        self.slots = None
        self.shared.producer = self.shared.consumer = self.shared.ring = self.shared.flags = None


class ProducerRing(Ring):
    """Fill and TX rings: we write slots, the kernel reads them."""

    def __init__(self, buf, **kw) -> None:
        super().__init__(buf, **kw)
        self._cache[_PROD] = self._producer.value
        # Like libxdp, keep the consumer cache `size` ahead so free slots = cached_cons - cached_prod.
        self._cache[_CONS] = (self._consumer.value + self.size) & _U32

    def resync(self) -> None:
        """Drop the cached indexes and read the ring's own: for a ring other processes produce into too (a
        shared queue's fill ring, kbypass.xsk.pool_lock), under their common lock, before reserving."""
        self._cache[_PROD] = self._producer.value
        self._cache[_CONS] = (self._consumer.value + self.size) & _U32

    def free(self, wanted: int = 1) -> int:
        """How many slots can be reserved; re-reads the kernel's consumer index only if the cache is short."""
        c = self._cache
        free = (c[_CONS] - c[_PROD]) & _U32
        if free >= wanted:
            return free
        cons = c[_CONS] = (self._consumer.value + self.size) & _U32
        return (cons - c[_PROD]) & _U32

    def reserve(self, n: int) -> tuple[int, int]:
        """Claim up to n slots: returns (first index, count). Write them, then submit(count)."""
        c = self._cache
        idx = c[_PROD]
        free = (c[_CONS] - idx) & _U32
        if free < n:  # free() inlined: this runs once per message on the Python lane
            cons = c[_CONS] = (self._consumer.value + self.size) & _U32
            free = (cons - idx) & _U32
        count = n if free >= n else free
        c[_PROD] = (idx + count) & _U32
        return idx, count

    def cancel(self, n: int) -> None:
        """Give back the last n reserved, not yet submitted slots."""
        self._cache[_PROD] = (self._cache[_PROD] - n) & _U32

    def submit(self, n: int) -> None:
        """Publish n reserved slots to the kernel (the producer-index store is the release)."""
        self._producer.value = (self._producer.value + n) & _U32

    def outstanding(self) -> int:
        """Slots submitted that the kernel has not consumed yet."""
        return (self._producer.value - self._consumer.value) & _U32


class ConsumerRing(Ring):
    """RX and completion rings: the kernel writes slots, we read them."""

    def __init__(self, buf, **kw) -> None:
        super().__init__(buf, **kw)
        self._cache[_PROD] = self._producer.value
        self._cache[_CONS] = self._consumer.value

    def resync(self) -> None:
        """Drop the cached indexes and read the ring's own: for a ring other processes consume from too (a
        shared queue's completion ring), under their common lock, before peeking."""
        self._cache[_CONS] = self._consumer.value
        self._cache[_PROD] = self._producer.value

    def pending(self) -> int:
        """Filled slots by the ring's own indexes, not the cache (another process may have consumed some)."""
        return (self._producer.value - self._consumer.value) & _U32

    def available(self, wanted: int = 1) -> int:
        c = self._cache
        entries = (c[_PROD] - c[_CONS]) & _U32
        if entries >= wanted:
            return entries
        prod = c[_PROD] = self._producer.value  # the producer-index load is the acquire
        return (prod - c[_CONS]) & _U32

    def peek(self, n: int) -> tuple[int, int]:
        """Up to n filled slots: returns (first index, count). Read them, then release(count)."""
        c = self._cache
        idx = c[_CONS]
        entries = (c[_PROD] - idx) & _U32
        if entries < n:  # available() inlined: this runs once per message on the Python lane
            prod = c[_PROD] = self._producer.value
            entries = (prod - idx) & _U32
        count = n if entries >= n else entries
        c[_CONS] = (idx + count) & _U32
        return idx, count

    def peek_packets(self, n: int) -> tuple[int, int]:
        """peek(n) for an RX ring of a multi-buffer socket: up to n slots that end at the end of a packet
        (see the module doc; the C twin is kb_ring_cons_peek_packets). When the first packet alone has more
        than n frames, all of its frames; when the ring holds no whole packet, none."""
        idx, count = self.peek(n)
        if count == 0 or not self.slots["options"][(idx + count - 1) & self.mask] & consts.XDP_PKT_CONTD:
            return idx, count  # one slot read: the common case, a packet ends where the batch does
        ends = np.flatnonzero((self.read_slots(idx, count)["options"] & consts.XDP_PKT_CONTD) == 0)
        if len(ends):
            keep = int(ends[-1]) + 1
            self.cancel(count - keep)
            return idx, keep
        # not one whole packet in n slots: the first packet's whole chain, if the ring holds it
        self.cancel(count)
        have = self.available(count + 1)
        ends = np.flatnonzero((self.read_slots(idx, have)["options"] & consts.XDP_PKT_CONTD) == 0)
        return self.peek(int(ends[0]) + 1) if len(ends) else (idx, 0)

    def peek_broken(self) -> tuple[int, int]:
        """Every slot on a multi-buffer RX ring when none of them ends a packet (all XDP_PKT_CONTD): (first
        index, count), peeked; count 0 when the ring is empty or holds a packet's end. The kernel publishes a
        packet's descriptors with one producer store, so continuations alone never complete (a kernel bug):
        the caller takes them off and counts them instead of waiting (C twin: kb_ring_cons_peek_broken)."""
        have = self.available(self.size)
        idx = self._cache[_CONS]
        if not have or ((self.read_slots(idx, have)["options"] & consts.XDP_PKT_CONTD) == 0).any():
            return idx, 0
        return self.peek(have)

    def cancel(self, n: int) -> None:
        """Un-peek the last n slots (they will be returned again by the next peek)."""
        self._cache[_CONS] = (self._cache[_CONS] - n) & _U32

    def release(self, n: int) -> None:
        """Hand n peeked slots back to the kernel."""
        self._consumer.value = (self._consumer.value + n) & _U32


def ring_layout(size: int, dtype: np.dtype) -> dict:
    """A layout like the kernel's for a test ring in a bytearray: producer, consumer, flags, then slots."""
    return {"producer_off": 0, "consumer_off": 64, "flags_off": 128, "desc_off": 192, "size": size,
            "dtype": np.dtype(dtype), "bytes": 192 + size * np.dtype(dtype).itemsize}
