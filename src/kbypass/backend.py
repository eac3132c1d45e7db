"""Backends of the accelerated concerns (design.md "Narrow C boundary", after pyzmq): one object per concern,
with a fixed API, in C (a thin wrapper over a kbypass C module) and in reference Python; chosen once and
passed in, so no caller asks "is C built?".

    concern  API                                                  C               reference Python
    batch    swap, stamp, claim, mark, push_free, seq_update      CBatch          PyBatch (numpy; below)
             (UMEM frame states, header swaps, generator stamps,  (_fastbatch)
             sequence checks; C only: drain, the sink's receive
             and give back, whose reference is the port's
             receive() + free())
    codec    encode, encode_segments, rx_run, write_frames,   CCodec          kbypass.proto.transport.codec
             write_chains (the transport's bulk path)             (_fastxfer)     .PythonCodec

The UDP lane (kbypass._fastlane, used by kbypass.endpoint) is named here too (`native_module("lane")`), and
so is the TCP fast path (kbypass._fasttcp: header prediction and the established path's frames, used by
kbypass.endpoint.tcpio.TcpHost beside the lane; its reference is kbypass.proto.tcp itself).

Choosing: `lane()` is "c" or "python": KBYPASS_PURE_PYTHON=1 in the environment says python, else
`select(name)` (a tool's --lane option, called once before anything is opened), else C. `batch()` and
`codec()` give the backend of that lane (or of the one named); a C backend whose module is not built raises
NativeMissing with the fix (`make setup`). Nothing here imports a C module until a C backend is asked for,
so a process that runs the python lane has none in sys.modules.

Layering: this module is for the lowest layer (rings and UMEM) and imports only numpy and kbypass.errors;
the Python codec, a transport (protocol-layer) object, is named by its import path, as pyzmq names its
backends.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from kbypass.errors import KbypassError, UsageError

LANES = ("c", "python")
MODULES = {"lane": "kbypass._fastlane", "batch": "kbypass._fastbatch", "xfer": "kbypass._fastxfer",
           "tcp": "kbypass._fasttcp"}
_PY_CODEC = ("kbypass.proto.transport.codec", "PythonCodec")


class NativeMissing(UsageError, ImportError):
    """A C backend was asked for and its module is not built (or KBYPASS_PURE_PYTHON=1 switches C off)."""


_selected: str | None = None


def pure_python() -> bool:
    """KBYPASS_PURE_PYTHON=1: no C at all in this process."""
    return os.environ.get("KBYPASS_PURE_PYTHON") == "1"


def select(name: str | None) -> None:
    """Choose this process's lane once (a tool's --lane): "c", "python", or None for the default."""
    global _selected
    if name is not None and name not in LANES:
        raise KbypassError(f"unknown lane {name!r}: use one of {', '.join(LANES)}")
    _selected = name


def selected() -> str | None:
    """What select() chose (None: nothing; the environment may still say python, see lane())."""
    return _selected


def lane() -> str:
    """The lane in force: python under KBYPASS_PURE_PYTHON=1 or after select("python"); else c when its
    modules import, python when they do not (C is an optional speed-up, never a requirement)."""
    if pure_python():
        return "python"
    if _selected is not None:
        return _selected
    return "c" if built("batch") and built("xfer") else "python"


def built(name: str) -> bool:
    """Whether the C module `name` (a key of MODULES) imports (and is not switched off)."""
    try:
        native_module(name)
    except NativeMissing:
        return False
    return True


def native_module(name: str):
    """The C module `name` (a key of MODULES), imported now; NativeMissing (with the fix) when it is not
    built or KBYPASS_PURE_PYTHON=1 switches C off."""
    mod = MODULES[name]
    if pure_python():
        raise NativeMissing(f"{mod} is switched off by KBYPASS_PURE_PYTHON=1: unset it, or use the python lane")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise NativeMissing(f"the C module {mod} is not built ({e}): run 'make setup' (it needs gcc, python3-dev "
                            "and libisal-dev), or use the python lane (--lane python)") from None
    stale = _stale_source(module)
    if stale:
        raise NativeMissing(f"the C module {mod} is older than {stale}, which it is built from (shared structs such "
                            "as the port's counters may have changed): run 'make setup' to rebuild it")
    return module


_SOURCES = Path(__file__).resolve().parents[2] / "csrc"  # an editable tree's C sources; absent when installed
_stale_checked: dict[str, str | None] = {}


def _stale_source(module) -> str | None:
    """A source the C module is built from (the Makefile's prerequisites: csrc/<name>.c, csrc/*.h, csrc/core/*)
    that is newer than the module, or None. After a pull that changed a shared struct, a module not yet rebuilt
    reads the wrong layout (a counters buffer of the wrong size, fields at other offsets): say so, once."""
    path = getattr(module, "__file__", None) or ""
    if path in _stale_checked:
        return _stale_checked[path]
    found = None
    name = Path(path).name.split(".")[0].lstrip("_")  # _fastlane.cpython-311-x86_64-linux-gnu.so -> fastlane
    if path and _SOURCES.is_dir():
        built = os.stat(path).st_mtime
        sources = [_SOURCES / f"{name}.c", *_SOURCES.glob("*.h"), *(_SOURCES / "core").glob("*")]
        newer = [p for p in sources if p.is_file() and p.stat().st_mtime > built]
        found = str(max(newer, key=lambda p: p.stat().st_mtime).relative_to(_SOURCES.parent)) if newer else None
    _stale_checked[path] = found
    return found


def missing() -> dict[str, str]:
    """Modules that do not import, with the reason: {module: error} (kbypass doctor)."""
    out = {}
    for mod in MODULES.values():
        try:
            stale = _stale_source(importlib.import_module(mod))
        except ImportError as e:
            out[mod] = str(e)
        else:
            if stale:
                out[mod] = f"older than {stale}: run 'make setup'"
    return out


def _check(name: str | None) -> str:
    name = lane() if name is None else name
    if name not in LANES:
        raise KbypassError(f"unknown lane {name!r}: use one of {', '.join(LANES)}")
    return name


_made: dict = {}  # (class, module name) -> the C backend made over it: one object per process


def _c_backend(cls, name: str):
    key = (cls, MODULES[name])
    obj = _made.get(key)
    if obj is None or pure_python():
        obj = _made[key] = cls(native_module(name))
    return obj


def batch(name: str | None = None):
    """The batch-bookkeeping backend of lane `name` (None: the lane in force)."""
    if _check(name) == "c":
        return _c_backend(CBatch, "batch")
    return PY_BATCH


def codec(name: str | None = None):
    """The transport codec of lane `name` (None: the lane in force)."""
    if _check(name) == "c":
        return _c_backend(CCodec, "xfer")
    return getattr(importlib.import_module(_PY_CODEC[0]), _PY_CODEC[1])()


# ---------------------------------------------------------------------------------------------- batch
class CBatch:
    """Batch bookkeeping in C: kbypass._fastbatch's functions, as they are (typed in _fastbatch.pyi)."""

    name = "c"

    def __init__(self, mod) -> None:
        self.swap = mod.swap
        self.stamp = mod.stamp
        self.claim = mod.claim
        self.mark = mod.mark
        self.push_free = mod.push_free
        self.seq_update = mod.seq_update
        self.split_chains = mod.split_chains
        self.chain_ends = mod.chain_ends
        self.drain = mod.drain

    def __repr__(self) -> str:
        return "<batch backend c>"


_ADDR = "addr"
_LEN = "len"


class PyBatch:
    """The reference: what kbypass._fastbatch does (csrc/core/kb_batch.c, kb_umem.c), in numpy. Same
    arguments, same results, same exceptions; the same-verdict tests (tests/unit/test_batch.py,
    test_umem.py) hold the two together."""

    name = "python"

    @staticmethod
    def _frames_ok(mem, descs, need: int) -> int:
        """kb_batch_check: -1, or the first frame shorter than need; IndexError for one past the memory."""
        lens = descs[_LEN]
        short = lens < need
        first_short = int(np.argmax(short)) if short.any() else len(descs)
        addrs = descs[_ADDR]
        memlen = len(mem)
        outside = (addrs > memlen) | (np.uint64(memlen) - np.minimum(addrs, np.uint64(memlen)) < need)
        if outside[:first_short].any():
            i = int(np.argmax(outside))
            raise IndexError(f"frame {i} at {int(addrs[i]):#x} is outside the packet memory")
        return first_short if first_short < len(descs) else -1

    def swap(self, mem, descs, offset: int, width: int, need: int) -> int:
        """Swap the width bytes at offset with the next width bytes in every frame (each at least need
        bytes long): -1, or the first frame too short (then nothing is swapped)."""
        if not (offset >= 0 and 0 < width <= 64 and need >= offset and need - offset >= 2 * width):
            raise ValueError("swap: bad offset, width or need")
        mem = np.frombuffer(mem, dtype=np.uint8) if not isinstance(mem, np.ndarray) else mem
        bad = self._frames_ok(mem, descs, need)
        if bad >= 0 or not len(descs):
            return bad
        at = descs[_ADDR].astype(np.intp)[:, None] + offset + np.arange(width)
        a = mem[at]
        mem[at] = mem[at + width]
        mem[at + width] = a
        return -1

    def stamp(self, mem, descs, offset: int, first_seq: int, now_ns: int) -> int:
        """Sequence first_seq + i and now_ns, big-endian u64s, at offset of frame i: -1, or the first frame
        too short (then nothing is written)."""
        if offset < 0:
            raise ValueError("stamp: negative offset")
        mem = np.frombuffer(mem, dtype=np.uint8) if not isinstance(mem, np.ndarray) else mem
        bad = self._frames_ok(mem, descs, offset + 16)
        if bad >= 0 or not len(descs):
            return bad
        rows = np.empty((len(descs), 2), dtype=">u8")
        rows[:, 0] = (np.arange(len(descs), dtype=np.uint64) + np.uint64(first_seq & 0xFFFFFFFFFFFFFFFF))
        rows[:, 1] = now_ns
        mem[descs[_ADDR].astype(np.intp)[:, None] + offset + np.arange(16)] = rows.view(np.uint8).reshape(-1, 16)
        return -1

    def claim(self, state, descs, shift: int, umem_size: int, frame_size: int, expected: int, to: int,
              tx: bool) -> int:
        """Every frame from state expected to to, all or nothing: their total length, or -1 with nothing
        changed (a frame outside the UMEM, in another state, twice in the batch, or with tx a descriptor
        the kernel would refuse)."""
        if (expected == to or not 0 <= expected <= 255 or not 0 <= to <= 255 or not 0 <= shift <= 31
                or frame_size != 1 << shift):
            raise ValueError("claim: bad states, shift or frame size")
        if not len(descs):
            return 0
        addrs = descs[_ADDR]
        if int(addrs.max()) >= umem_size:
            return -1
        frames = (addrs >> np.uint64(shift)).astype(np.intp)
        if int(frames.max()) >= len(state):
            return -1
        if tx:
            lens = descs[_LEN].astype(np.uint64)
            if (lens == 0).any() or ((addrs & np.uint64(frame_size - 1)) + lens > frame_size).any():
                return -1
        if (state[frames] != expected).any():
            return -1
        if len(frames) > 1:  # (a frame twice: C finds it in state `to` the second time)
            s = np.sort(frames)
            if (s[1:] == s[:-1]).any():
                return -1
        state[frames] = to
        return int(descs[_LEN].sum())

    def mark(self, state, descs, shift: int, to: int) -> int:
        """Received frames into state to; their total length."""
        if not 0 <= shift <= 31 or not 0 <= to <= 255:
            raise ValueError("mark: bad shift or state")
        frames = (descs[_ADDR] >> np.uint64(shift)).astype(np.intp)
        if len(frames) and int(frames.max()) >= len(state):
            raise IndexError(f"descriptor {int(np.argmax(frames >= len(state)))} points outside the UMEM")
        state[frames] = to
        return int(descs[_LEN].sum())

    def split_chains(self, ring, heads, tails, ntails, kept) -> int:
        """Ring-order descriptors (XDP_PKT_CONTD on all but a packet's last frame) split into packets: each
        one's first descriptor into heads, the rest into tails, ntails[k] the tails of packet k, every
        descriptor into kept with its options reduced to XDP_PKT_CONTD. The packet count, or -1 when the
        last descriptor continues a packet (then nothing meaningful is written)."""
        n = len(ring)
        if min(len(heads), len(tails), len(ntails), len(kept)) < n:
            raise ValueError("split_chains: every output needs room for len(ring) records")
        if ntails.dtype != np.uint32:
            raise TypeError("split_chains: ntails must be a uint32 array")
        contd = (ring["options"] & 1) != 0  # XDP_PKT_CONTD (kbypass.xsk.consts)
        if n and contd[-1]:
            return -1
        head = np.ones(n, dtype=bool)
        head[1:] = ~contd[:-1]
        starts = np.flatnonzero(head)
        k = len(starts)
        heads[:k] = ring[starts]
        tails[:n - k] = ring[~head]
        ntails[:k] = np.append(starts[1:], n) - starts - 1
        kept[:n] = ring
        kept["options"][:n] &= 1
        return k

    def chain_ends(self, descs, ends, max_frames: int) -> tuple[int, int]:
        """The packets of ring-order descriptors up to the first of more than max_frames frames: (packets,
        stopped), ends[k] one past packet k's last descriptor; stopped 1 when a longer packet ended them, -1
        (no packets) when the last descriptor continues a packet, else 0."""
        n = len(descs)
        if len(ends) < n:
            raise ValueError("chain_ends: ends needs room for len(descs)")
        if ends.dtype != np.int64:
            raise TypeError("chain_ends: ends must be an int64 array")
        last = np.flatnonzero((descs["options"] & 1) == 0) + 1  # XDP_PKT_CONTD (kbypass.xsk.consts)
        if n and (not len(last) or last[-1] != n):
            return 0, -1
        longer = np.flatnonzero(np.diff(last, prepend=0) > max_frames)
        k = int(longer[0]) if len(longer) else len(last)
        ends[:k] = last[:k]
        return k, 1 if len(longer) else 0

    def push_free(self, state, free, top: int, addrs, shift: int) -> int:
        """Completed frames (addresses from the kernel) back on the free stack: the new top."""
        n = len(addrs)
        if top < 0 or top > len(free) or n > len(free) - top or not 0 <= shift <= 31:
            raise ValueError("push_free: bad shift, addresses or free-stack size")
        frames = np.asarray(addrs, dtype=np.uint64) >> np.uint64(shift)
        if n and int(frames.max()) >= len(state):
            raise IndexError(f"completed address {int(addrs[int(np.argmax(frames >= len(state)))]):#x} is "
                             "outside the UMEM")
        state[frames.astype(np.intp)] = 1  # FREE (xsk.umem's numbering, the C core's enum kb_frame_state)
        free[top:top + n] = frames
        return top + n

    drain = None  # C only: the port's receive() + free() are its reference (kbypass.port.afxdp.consume)

    def seq_update(self, state, seen, seqs) -> None:
        """kb_seq_update: account for the batch `seqs` (int64) in `state` (kbypass.apps.seqcheck.FIELDS) and
        the window of flags `seen`. "Late" is against the highest number before each packet; the window's
        edge is the highest after the whole batch. Any int64 is a sequence number: the arithmetic is on
        Python ints (exact), never on int64 values that could wrap."""
        s = seqs
        if getattr(s, "dtype", None) != np.int64:
            raise TypeError("seq_update: seqs must be an int64 array")
        if len(s) == 0:
            return
        received, reordered, duplicates, too_old, distinct, first, highest, started = (int(x) for x in state)
        w = len(seen)
        fresh_start = not started
        if fresh_start:  # nothing seen yet: the top starts at s[0] (not s[0] - 1, below INT64_MIN for some)
            first, highest, started = int(s[0]), int(s[0]), 1
            seen[first % w] = 0
        # The highest number seen before each packet: a packet at or below it came late (or twice).
        before = np.maximum.accumulate(np.concatenate((np.array([highest], dtype=np.int64), s[:-1])))
        is_late = s <= before
        is_late[0] &= not fresh_start  # the stream's first packet is late against nothing
        late = int(np.count_nonzero(is_late))
        highest = self._advance(seen, highest, max(highest, int(s.max())))
        received += len(s)
        if late == 0:  # the usual batch: rising, all above what came before, so all new and distinct
            self._mark(seen, s)
            distinct += len(s)
        else:
            fresh = s[s >= first]
            edge = highest - w  # a Python int: below INT64_MIN nothing is under the window
            old = fresh <= edge if edge >= -2**63 else np.zeros(len(fresh), dtype=bool)
            n_old = int(np.count_nonzero(old))
            inwin = fresh[~old]
            srt = np.sort(inwin)  # np.unique, cheaper for a batch (its hash table costs ~35 us at 256)
            uniq = srt[np.concatenate(([True], srt[1:] != srt[:-1]))] if len(srt) else srt
            new = uniq[seen[uniq % w] == 0]
            self._mark(seen, new)
            dups = len(inwin) - len(new)  # twice in this batch, or seen in an earlier one
            too_old += n_old
            duplicates += dups
            distinct += len(new) + n_old
            reordered += late - dups
        state[:] = (received, reordered, duplicates, too_old, distinct, first, highest, started)

    @staticmethod
    def _mark(seen, seqs) -> None:
        w = len(seen)
        n = len(seqs)
        if n and int(seqs[-1]) - int(seqs[0]) == n - 1 and n <= w:  # one rising run (checked by caller):
            lo = int(seqs[0]) % w  # a slice or two, not a gather
            if lo + n <= w:
                seen[lo:lo + n] = 1
            else:
                seen[lo:] = 1
                seen[:lo + n - w] = 1
        else:
            seen[seqs % w] = 1

    @staticmethod
    def _advance(seen, old: int, highest: int) -> int:
        """Move the window's top to `highest`: the flags of the numbers it newly covers start clear."""
        w = len(seen)
        if highest <= old:
            return old
        if highest - old >= w:
            seen[:] = 0
        else:
            lo, hi = (old + 1) % w, (highest + 1) % w  # clear flags of old+1 .. highest (mod w)
            if lo < hi:
                seen[lo:hi] = 0
            else:
                seen[lo:] = 0
                seen[:hi] = 0
        return highest

    def __repr__(self) -> str:
        return "<batch backend python>"


PY_BATCH = PyBatch()


# ---------------------------------------------------------------------------------------------- codec
class CCodec:
    """The transport codec in C: kbypass._fastxfer's functions, as they are (typed in _fastxfer.pyi)."""

    name = "c"

    def __init__(self, mod) -> None:
        self.encode = mod.encode
        self.encode_segments = mod.encode_segments
        self.rx_run = mod.rx_run
        self.write_frames = mod.write_frames
        self.write_chains = mod.write_chains
        self.lane_chains = mod.lane_chains

    def __repr__(self) -> str:
        return "<codec c>"
