"""Batch: many frames at once, as numpy descriptors over one packet-memory array.

A Batch is a structured array of descriptors (`addr` u64, `len` u32, `options` u32) plus the np.uint8 array
of the memory they point into (the UMEM for AF_XDP). Frame i is `mem[addr[i]:addr[i] + len[i]]`: no copy.
Header fields are read and written for the whole batch at once with numpy fancy indexing, so the
per-packet cost on Mpps paths stays in C: a field of `width` bytes is one element of a strided view of the
memory whose elements are `width`-byte runs starting at every byte (`_runs`), so a batch's fields are one
1-D index of n elements (`addr + offset`) rather than n x width byte indexes: 3.5x faster for a 16-byte
stamp in 2048 frames (26 against 95 us, measured here).

Ownership: a Batch is a set of frames you own (see kbypass.port.base). Slicing it (`batch[a:b]`,
`batch[mask]`) gives a Batch of some of the same frames; it does not duplicate ownership, so transmit or
free each frame once. A slice shares the descriptor array (setting lengths shows in both); a mask or index
array copies the descriptors (frame memory is shared either way).
Bounds: a frame may grow (write, fill) only up to the end of its own memory, never into the next frame.
That end is the end of its aligned chunk when the frames are chunks of `frame_size` bytes (the Batch's
own `frame_size`, or the owner port's UMEM frame size: a frame's addr already lies past any headroom);
an owner may say it exactly with a `frame_ends(descs)` method (PacketMmapPort); else the memory's end.
Multi-frame packets (multi-buffer AF_XDP, jumbo frames): a Batch is a batch of *packets*. A packet longer
than one frame is a chain: its first frame (the head) is in `descs` like any frame, the rest (its tails)
are in `tails`, all packets' tails one after the other, with `ntails[i]` of them for packet i. Both are None
for a batch of one-frame packets, the fast path, which is exactly what it was before chains existed. So
`len(batch)` counts packets; `lens` and every header helper (u16be, swap_macs, stamp...) act on the heads,
where the kernel and the steering program keep the headers too; `total_lens()`, `frame_counts()`,
`packet(i)` (the whole packet, contiguous), `tobytes(i)` and `fill()` / `write_packet()` (scatter over a
chain) see whole packets; `ring_descs()` is the chain in ring order with XDP_PKT_CONTD set, what transmit
writes (gather on send: the frames go out as they are, no copy). Ownership covers every frame of a chain.
Offsets are from the start of the Ethernet frame. The IPv4/UDP helpers assume untagged Ethernet and a
20-byte IPv4 header (no options): Ethernet 0..13, IPv4 14..33 (src 26, dst 30), UDP 34.. (sport 34, dport
36, length 38, checksum 40), payload 42.. . Check `u8(14) == 0x45` if you are not sure.
"""

from __future__ import annotations

import numpy as np

from kbypass import backend
from kbypass.errors import UsageError
from kbypass.xsk.consts import XDP_PKT_CONTD

DESC = np.dtype([("addr", "<u8"), ("len", "<u4"), ("options", "<u4")])

ETH_HLEN = 14
IPV4_SRC = 26
IPV4_DST = 30
UDP_SPORT = 34
UDP_DPORT = 36
UDP_PAYLOAD = 42


class Batch:
    """Descriptors + the memory they point into. `len(batch)` frames; see the module doc."""

    __slots__ = ("descs", "mem", "owner", "frame_size", "tails", "ntails", "_ring")

    def __init__(self, descs: np.ndarray, mem: np.ndarray, owner=None, frame_size: int | None = None, *,
                 tails: np.ndarray | None = None, ntails: np.ndarray | None = None) -> None:
        self.descs = descs  # one per packet: its (first) frame
        self.mem = mem
        self.owner = owner  # the port the frames belong to (None for free-standing batches)
        # frames are aligned chunks of this many bytes (None: ask the owner; see "Bounds" in the module doc)
        self.frame_size = frame_size
        # multi-frame packets (module doc): the frames after each head, and how many per packet; None: none
        self.tails = tails
        self.ntails = ntails
        self._ring = None  # from_ring's descriptors in ring order, for ring_descs (see there)

    @classmethod
    def from_ring(cls, descs: np.ndarray, mem: np.ndarray, owner=None, frame_size: int | None = None) -> "Batch":
        """Descriptors in ring order (a multi-buffer ring's: a packet's frames consecutive, XDP_PKT_CONTD on
        all but its last; the last descriptor ends a packet) as a Batch of packets. One pass of the batch
        backend (split_chains: in numpy a dozen calls, ~45 us for a 136-frame batch of jumbo chains here, on
        every receive and every send of the transport's jumbo datagrams)."""
        n = len(descs)
        heads, tails, kept = np.empty(n, dtype=DESC), np.empty(n, dtype=DESC), np.empty(n, dtype=DESC)
        ntails = np.empty(n, dtype=np.uint32)
        ops = getattr(owner, "batch_ops", None) or backend.batch()
        k = ops.split_chains(descs, heads, tails, ntails, kept)
        if k < 0:
            raise UsageError("the descriptors end in the middle of a packet (XDP_PKT_CONTD on the last): read "
                             "whole packets (ConsumerRing.peek_packets)")
        if k == n:  # no chains: the one-frame batch
            return cls(descs, mem, owner, frame_size)
        batch = cls(heads[:k], mem, owner, frame_size, tails=tails[:n - k], ntails=ntails[:k])
        # ring_descs() would rebuild this order from heads and tails (~20 us of numpy a batch, the transport's
        # every receive and send of jumbo chains): keep it, with what it was split into to see any change
        batch._ring = (kept, batch.descs, batch.tails, batch.descs.tobytes(), batch.tails.tobytes())
        return batch

    @classmethod
    def empty(cls, mem: np.ndarray, owner=None, frame_size: int | None = None) -> "Batch":
        return cls(np.zeros(0, dtype=DESC), mem, owner, frame_size)

    # ---- descriptors --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.descs)

    def __bool__(self) -> bool:
        return len(self.descs) > 0

    def __getitem__(self, key) -> "Batch":
        """A Batch of some of these packets: a slice, a boolean mask or an index array (with their tails)."""
        if isinstance(key, (int, np.integer)):
            raise TypeError("batch[i] would be one packet; use batch.frame(i) or batch[i:i+1]")
        if self.tails is None:
            return Batch(self.descs[key], self.mem, self.owner, self.frame_size)
        picked = np.arange(len(self))[key]
        nt = self.ntails[picked].astype(np.intp)
        if not nt.any():
            return Batch(self.descs[key], self.mem, self.owner, self.frame_size)
        all_nt = self.ntails.astype(np.intp)
        first = (np.cumsum(all_nt) - all_nt)[picked]
        within = np.arange(int(nt.sum())) - np.repeat(np.cumsum(nt) - nt, nt)
        return Batch(self.descs[key], self.mem, self.owner, self.frame_size,
                     tails=self.tails[np.repeat(first, nt) + within], ntails=nt.astype(np.uint32))

    def __repr__(self) -> str:
        if self.tails is None:
            return f"<Batch of {len(self)} frames>"
        return f"<Batch of {len(self)} packets in {len(self) + len(self.tails)} frames>"

    # ---- multi-frame packets (module doc) ------------------------------------------------------------
    def frame_counts(self) -> np.ndarray:
        """Frames per packet (1 for each, on the one-frame path)."""
        if self.tails is None:
            return np.ones(len(self), dtype=np.uint32)
        return self.ntails + np.uint32(1)

    def total_lens(self) -> np.ndarray:
        """Each packet's length over all its frames (`lens`, the heads' lengths, on the one-frame path)."""
        if self.tails is None:
            return self.descs["len"]
        owner = np.repeat(np.arange(len(self)), self.ntails)
        extra = np.bincount(owner, weights=self.tails["len"], minlength=len(self)).astype(np.int64)
        return self.descs["len"].astype(np.int64) + extra

    def frame_descs(self, i: int) -> np.ndarray:
        """The descriptors of packet i's frames, head first."""
        i = range(len(self))[i]
        if self.tails is None or not self.ntails[i]:
            return self.descs[i : i + 1]
        first = int(self.ntails[:i].sum())
        return np.concatenate((self.descs[i : i + 1], self.tails[first : first + int(self.ntails[i])]))

    def packet(self, i: int) -> np.ndarray:
        """Packet i, contiguous: a view of packet memory for a one-frame packet, a copy of its frames
        gathered in order for a chain."""
        if self.tails is None or not self.ntails[range(len(self))[i]]:
            return self.frame(i)
        return np.concatenate([self.mem[int(d["addr"]) : int(d["addr"]) + int(d["len"])]
                               for d in self.frame_descs(i)])

    def ring_descs(self) -> np.ndarray:
        """Every frame's descriptor in ring order, XDP_PKT_CONTD in the options of all but each packet's
        last (all options 0 on the one-frame path): what a multi-buffer TX ring takes."""
        if self.tails is None:
            out = self.descs.copy()
            out["options"] = 0
            return out
        kept = self._ring
        if kept is not None:  # from_ring's order, unless the heads or tails changed since (replaced or written)
            ring, descs, tails, dbytes, tbytes = kept
            if descs is self.descs and tails is self.tails and descs.tobytes() == dbytes and tails.tobytes() == tbytes:
                return ring.copy()
            self._ring = None
        counts = self.frame_counts().astype(np.intp)
        heads = np.cumsum(counts) - counts
        out = np.empty(int(counts.sum()), dtype=DESC)
        rest = np.ones(len(out), dtype=bool)
        rest[heads] = False
        out[heads] = self.descs
        out[rest] = self.tails
        out["options"] = XDP_PKT_CONTD
        out["options"][heads + counts - 1] = 0
        return out

    def all_addrs(self) -> np.ndarray:
        """The address of every frame the batch holds (heads, then tails): what freeing it gives back."""
        if self.tails is None:
            return self.descs["addr"]
        return np.concatenate((self.descs["addr"], self.tails["addr"]))

    def write_packet(self, i: int, data: bytes) -> None:
        """Scatter `data` over packet i's frames in order, each filled to its room, and set their lengths
        (slow path). The chain must need every frame it has: alloc it with size=len(data)."""
        frames = self.frame_descs(i)
        rooms = self[i : i + 1]._rooms_of(frames)
        used = np.cumsum(rooms)
        if len(data) > int(used[-1]) or (len(frames) > 1 and len(data) <= int(used[-2])):
            raise UsageError(f"{len(data)} bytes do not fit packet {i} exactly: it has {len(frames)} frame(s) with "
                             f"room for {int(used[-1])} bytes; allocate it with size={len(data)}")
        pos = 0
        for d, room in zip(frames, rooms):
            a, take = int(d["addr"]), min(int(room), len(data) - pos)
            self.mem[a : a + take] = np.frombuffer(data, dtype=np.uint8, count=take, offset=pos)
            d["len"] = take
            pos += take
        self.descs["len"][i] = frames["len"][0]
        if len(frames) > 1:
            first = int(self.ntails[:i].sum())
            self.tails["len"][first : first + len(frames) - 1] = frames["len"][1:]

    def _rooms_of(self, descs: np.ndarray) -> np.ndarray:
        return Batch(descs, self.mem, self.owner, self.frame_size).room()

    @property
    def addr(self) -> np.ndarray:
        return self.descs["addr"]

    @property
    def lens(self) -> np.ndarray:
        return self.descs["len"]

    @lens.setter
    def lens(self, values) -> None:
        self.descs["len"] = values

    def set_len(self, values) -> None:
        """Set frame lengths (a scalar for all, or one per frame), e.g. after building frames to send."""
        self.descs["len"] = values

    # ---- slow paths: one frame --------------------------------------------------------------------
    def frame(self, i: int) -> np.ndarray:
        """Packet i's (first) frame as a writable np.uint8 view into packet memory (no copy)."""
        a = int(self.descs["addr"][i])
        return self.mem[a : a + int(self.descs["len"][i])]

    def tobytes(self, i: int) -> bytes:
        """Packet i's bytes, all its frames (see `packet`)."""
        return self.packet(i).tobytes()

    def write(self, i: int, data: bytes, offset: int = 0) -> None:
        """Copy bytes into frame i at offset and set its length to cover them (slow path).

        Raises UsageError, writing nothing, when offset + len(data) is past the end of the frame's memory."""
        if offset < 0:
            raise UsageError(f"write at offset {offset}: offsets start at 0 (the Ethernet header)")
        i = range(len(self))[i]  # a negative i counts from the end; out of range raises IndexError
        room = int(self[i : i + 1].room()[0])
        if offset + len(data) > room:
            raise UsageError(f"writing {len(data)} bytes at offset {offset} of frame {i} needs {offset + len(data)} "
                             f"bytes but the frame has room for {room}: write less (or use larger frames)")
        a = int(self.descs["addr"][i]) + offset
        self.mem[a : a + len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.descs["len"][i] = max(int(self.descs["len"][i]), offset + len(data))

    def fill(self, data: bytes) -> None:
        """Copy the same bytes into every packet and set every length to len(data) (generators); over the
        frames of each chain in order when the packets have several (alloc(n, size=len(data)) makes them).

        Raises UsageError, writing nothing, when data does not fit in every frame's memory."""
        if self.tails is not None:
            self._fill_chains(data)
            return
        n = len(data)
        if n and len(self):
            room = int(self.room().min())
            if n > room:
                raise UsageError(f"cannot fill frames with {n} bytes: a frame of this batch has room for {room} "
                                 "bytes (frame size less headroom); use at most that many")
            self._runs(n)[self._at(0, check=False)] = np.frombuffer(data, dtype=np.dtype(f"V{n}"))[0]
        self.descs["len"] = n

    def _fill_chains(self, data: bytes) -> None:
        """fill() for chains of equal length: one vectorized copy per frame position (head, tail 1, ...)."""
        if not len(self):  # nothing to fill (an alloc that found no whole chain free)
            return
        k = int(self.ntails[0])
        if (self.ntails != k).any():
            raise UsageError("fill() needs packets of as many frames each: fill them one by one with write_packet()")
        pos = 0
        tails = self.tails.reshape(len(self), k)
        for j in range(k + 1):
            descs = self.descs if j == 0 else tails[:, j - 1]
            part = Batch(np.ascontiguousarray(descs), self.mem, self.owner, self.frame_size)
            room = int(part.room().min())
            take = min(room, len(data) - pos) if j < k else len(data) - pos
            if take <= 0 or take > room:
                raise UsageError(f"{len(data)} bytes do not fit chains of {k + 1} frames exactly: allocate the "
                                 f"packets with size={len(data)}")
            part.fill(data[pos : pos + take])
            if j == 0:
                self.descs["len"] = take
            else:
                tails[:, j - 1]["len"] = take
            pos += take
        self.tails = tails.reshape(-1)

    def chunk_size(self) -> int | None:
        """The size of the aligned chunks its frames lie in (the Batch's own `frame_size`, else the owner's:
        its UMEM's, or a PacketMmapPort's slot size, whose staging frames are aligned chunks too), or None
        when it is not known. Writers that check bounds in C are given this, not a computed room."""
        if self.frame_size:
            return self.frame_size
        fs = _owner_frame_size(self.owner) or getattr(self.owner, "frame_size", None)
        return fs if isinstance(fs, int) and fs > 0 else None

    def room(self) -> np.ndarray:
        """Bytes each frame can hold from its start (addr) to the end of its memory (see "Bounds")."""
        addr = self.descs["addr"].astype(np.int64)
        ends = getattr(self.owner, "frame_ends", None)
        if self.frame_size is None and ends is not None:
            end = np.asarray(ends(self.descs), dtype=np.int64)
        else:
            fs = self.frame_size or _owner_frame_size(self.owner)
            end = addr - addr % fs + fs if fs else np.full(len(addr), len(self.mem), dtype=np.int64)
        return np.maximum(np.minimum(end, len(self.mem)) - addr, 0)

    # ---- vectorized field access ------------------------------------------------------------------
    def _check(self, offset: int, width: int) -> None:
        if len(self) and int(self.descs["len"].min()) < offset + width:
            raise UsageError(
                f"field at offset {offset} (+{width} bytes) is past the end of a {int(self.descs['len'].min())}"
                "-byte frame in this batch: filter short frames first (batch[batch.lens >= n])"
            )

    def _runs(self, width: int) -> np.ndarray:
        """Packet memory as overlapping `width`-byte elements, element i = bytes i .. i+width-1 (a view,
        no copy; see the module doc). Index it with addr + offset."""
        return np.ndarray((len(self.mem) - width + 1,), dtype=np.dtype(f"V{width}"), buffer=self.mem,
                          strides=(1,))

    def _at(self, offset: int, check: bool = True, width: int = 0) -> np.ndarray:
        if check:
            self._check(offset, width)
        return self.descs["addr"].astype(np.intp) + offset

    def bytes_at(self, offset: int, width: int) -> np.ndarray:
        """An (n, width) uint8 copy of `width` bytes at `offset` of every frame."""
        return self._runs(width)[self._at(offset, width=width)].view(np.uint8).reshape(len(self), width)

    def set_bytes(self, offset: int, values) -> None:
        """Write an (n, width) or (width,) uint8 array at `offset` of every frame."""
        values = np.asarray(values, dtype=np.uint8)
        width = values.shape[-1]
        if width == 0 or len(self) == 0:
            return
        rows = np.ascontiguousarray(np.broadcast_to(values, (len(self), width)))
        self._runs(width)[self._at(offset, width=width)] = rows.view(np.dtype(f"V{width}")).reshape(-1)

    def stamp(self, offset: int, first_seq: int, now_ns: int) -> None:
        """Write the generators' 16-byte stamp at `offset` of every frame: sequence number first_seq + i
        in frame i, then `now_ns`, both big-endian u64 (kbypass.proto.stamp). One pass of the
        batch backend (_ops); the numpy scatter below is the reference and raises the errors."""
        if len(self) == 0:
            return
        if self.descs.dtype == DESC:
            if self._ops().stamp(self.mem, self.descs, offset, first_seq, now_ns) < 0:
                return
            # a frame is too short and nothing was written: set_bytes below raises the precise error
        rows = np.empty((len(self), 2), dtype=">u8")
        rows[:, 0] = np.arange(first_seq, first_seq + len(self), dtype=np.uint64)
        rows[:, 1] = now_ns
        self.set_bytes(offset, rows.view(np.uint8))

    def _swap(self, offset: int, width: int, need: int = 0) -> None:
        """Swap the `width` bytes at `offset` with the `width` bytes after them, in every frame (which must
        hold `need` bytes, at least the two fields)."""
        need = max(need, offset + 2 * width)
        if self.descs.dtype == DESC:
            if self._ops().swap(self.mem, self.descs, offset, width, need) < 0:
                return
            # a frame is too short and nothing was swapped: the check below raises the precise error
        self._check(0, need)
        runs = self._runs(width)
        first = self._at(offset, check=False)
        second = first + width
        a = runs[first]
        runs[first] = runs[second]
        runs[second] = a

    def _ops(self):
        """The batch backend: the owner port's (chosen when it was opened), else the lane in force."""
        ops = getattr(self.owner, "batch_ops", None)
        return ops if ops is not None else backend.batch()

    def u8(self, offset: int) -> np.ndarray:
        self._check(offset, 1)
        return self.mem[self.descs["addr"].astype(np.intp) + offset]

    def _uint_be(self, offset: int, width: int, dtype) -> np.ndarray:
        raw = np.ascontiguousarray(self.bytes_at(offset, width))
        return raw.view(np.dtype(dtype).newbyteorder(">")).reshape(-1).astype(dtype)

    def _set_uint_be(self, offset: int, width: int, dtype, values) -> None:
        be = np.empty(len(self), dtype=np.dtype(dtype).newbyteorder(">"))
        be[:] = values
        self.set_bytes(offset, be.view(np.uint8).reshape(len(self), width))

    def u16be(self, offset: int) -> np.ndarray:
        """The big-endian 16-bit field at `offset` of every frame, e.g. u16be(UDP_DPORT)."""
        return self._uint_be(offset, 2, np.uint16)

    def set_u16be(self, offset: int, values) -> None:
        self._set_uint_be(offset, 2, np.uint16, values)

    def u32be(self, offset: int) -> np.ndarray:
        return self._uint_be(offset, 4, np.uint32)

    def set_u32be(self, offset: int, values) -> None:
        self._set_uint_be(offset, 4, np.uint32, values)

    def payload_u64(self, offset: int = UDP_PAYLOAD, *, big_endian: bool = True) -> np.ndarray:
        """The 64-bit word at `offset` of every frame (sequence numbers); network byte order by default."""
        raw = np.ascontiguousarray(self.bytes_at(offset, 8))
        return raw.view(np.dtype(">u8" if big_endian else "<u8")).reshape(-1).astype(np.uint64)

    def set_payload_u64(self, offset: int, values, *, big_endian: bool = True) -> None:
        be = np.empty(len(self), dtype=">u8" if big_endian else "<u8")
        be[:] = values
        self.set_bytes(offset, be.view(np.uint8).reshape(len(self), 8))

    # ---- whole-header rewrites (reflectors) ----------------------------------------------------------
    def swap_macs(self) -> None:
        """Swap destination and source MAC in every frame, in place."""
        self._swap(0, 6)

    def swap_ips_and_ports(self) -> None:
        """Swap IPv4 src/dst addresses and UDP/TCP src/dst ports in every frame, in place.

        Assumes untagged Ethernet, IPv4 with a 20-byte header (IHL 5). Checksums stay valid: the IPv4 and
        UDP/TCP checksums are one's-complement sums, which do not change when summed words swap places.
        """
        self._swap(IPV4_SRC, 4, need=UDP_SPORT + 4)  # both swaps' bytes checked first: all or nothing
        self._swap(UDP_SPORT, 2)


def _owner_frame_size(owner) -> int | None:
    """The UMEM frame (chunk) size of the port that owns a batch, when it has one (AF_XDP, socket ports)."""
    umem = getattr(owner, "umem", None)
    fs = getattr(umem, "frame_size", None)
    return fs if isinstance(fs, int) and fs > 0 else None
