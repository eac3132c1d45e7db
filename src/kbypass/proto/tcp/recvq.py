"""The receive side's reassembly: in-order delivery of a byte stream that arrives in pieces, out of order,
overlapping, duplicated. Memory is bounded: the connection trims every segment to the receive window before
it gets here (so at most a window of bytes is held) and at most `max_ranges` separate out-of-order ranges
are kept (a segment that would make one more is dropped; the sender retransmits it).

Each held range is a list of chunks, joined only when it is delivered in order: a segment that extends or
joins ranges costs the bytes it brings (plus a bounded tail copy), never a rebuild of what is already held,
so an attacker trickling 1-byte segments onto a large range gets no leverage. Chunks smaller than SMALL are
coalesced with a small neighbour, so no two adjacent chunks are both small: a range of n bytes holds at most
2n/SMALL + 1 chunks, whatever sizes the segments had (bounded per-object overhead as well as bytes).

Sequence numbers are absolute (see seqnum.py).
"""

from __future__ import annotations

import bisect

SMALL = 2048


def _push(chunks: list, piece) -> None:
    """Append `piece` (copied: a payload may be a view of a reused buffer) to a range's chunk list."""
    if not piece:
        return
    last = chunks[-1] if chunks else None
    if last is not None and type(last) is bytearray and len(last) < SMALL and len(piece) < SMALL:
        last += piece  # small after small: one chunk (copies at most 2 * SMALL bytes)
    elif len(piece) < SMALL:
        chunks.append(bytearray(piece))
    else:
        chunks.append(bytes(piece))


def _extend(chunks: list, more: list) -> None:
    """Append another range's chunk list (the same objects: no byte copy beyond one small boundary)."""
    if more and chunks and type(more[0]) is bytearray and len(more[0]) < SMALL:
        _push(chunks, more[0])
        more = more[1:]
    chunks.extend(more)


class Reassembly:
    def __init__(self, rcv_nxt: int, max_ranges: int = 64) -> None:
        self.rcv_nxt = rcv_nxt
        self.max_ranges = max_ranges
        self._starts: list[int] = []  # sorted starts of the out-of-order ranges (disjoint, not adjacent)
        self._chunks: list[list] = []  # each range's bytes, as a list of chunks (see above)
        self._lens: list[int] = []  # each range's length
        self._recent: list[int] = []  # starts of ranges most recently changed, newest first (SACK order)
        self.ooo_bytes = 0
        self.dropped = 0  # segments dropped for the range limit

    def add(self, seq: int, data: bytes) -> bytes:
        """Take `data` starting at absolute `seq` (already trimmed to the window). Returns the bytes that
        became deliverable in order (b"" if none)."""
        end = seq + len(data)
        if end <= self.rcv_nxt or not data:
            return b""
        if seq < self.rcv_nxt:
            data = data[self.rcv_nxt - seq:]
            seq = self.rcv_nxt
        if seq == self.rcv_nxt:
            if not self._starts:  # the common case: in order, nothing held: no copy
                self.rcv_nxt = end
                return data
            out = bytearray(data)
            self.rcv_nxt = end
            self._pull(out)
            return bytes(out)
        self._insert(seq, data)
        return b""

    def _pull(self, out: bytearray) -> None:
        """Append ranges now contiguous with rcv_nxt (or overlapping it) to `out`."""
        while self._starts and self._starts[0] <= self.rcv_nxt:
            start, chunks, n = self._starts.pop(0), self._chunks.pop(0), self._lens.pop(0)
            self.ooo_bytes -= n
            self._forget(start)
            skip = self.rcv_nxt - start
            if skip >= n:
                continue
            for c in chunks:
                if skip >= len(c):
                    skip -= len(c)
                    continue
                out += c[skip:] if skip else c
                skip = 0
            self.rcv_nxt = start + n

    def _insert(self, seq: int, data: bytes) -> None:
        end = seq + len(data)
        starts, lens = self._starts, self._lens
        i = bisect.bisect_left(starts, seq)
        # merge with a predecessor that overlaps or touches
        if i > 0 and starts[i - 1] + lens[i - 1] >= seq:
            i -= 1
        j = i
        while j < len(starts) and starts[j] <= end:
            j += 1
        if j == i and len(starts) >= self.max_ranges:
            self.dropped += 1
            return
        # Keep the held bytes and add only the new ones that fill what lies before, between and after the
        # ranges merged (either copy is right: retransmissions carry the same bytes).
        view = memoryview(data)
        if j == i:
            new_start, chunks = seq, []
            _push(chunks, view)
        else:
            new_start = min(seq, starts[i])
            chunks = self._chunks[i]
            if seq < starts[i]:  # new bytes in front of the first range
                front: list = []
                _push(front, view[:starts[i] - seq])
                _extend(front, chunks)
                chunks = front
            pos = starts[i] + lens[i]
            for k in range(i + 1, j):
                _push(chunks, view[pos - seq:starts[k] - seq])  # the gap between two held ranges
                _extend(chunks, self._chunks[k])
                pos = starts[k] + lens[k]
            if end > pos:
                _push(chunks, view[pos - seq:])
        new_end = max(end, starts[j - 1] + lens[j - 1]) if j > i else end
        for k in range(i, j):
            self.ooo_bytes -= lens[k]
            self._forget(starts[k])
        starts[i:j] = [new_start]
        self._chunks[i:j] = [chunks]
        lens[i:j] = [new_end - new_start]
        self.ooo_bytes += new_end - new_start
        self._recent.insert(0, new_start)

    def _forget(self, start: int) -> None:
        try:
            self._recent.remove(start)
        except ValueError:
            pass

    def sack_blocks(self, limit: int, skip: int = 0) -> list[tuple[int, int]]:
        """Up to `limit` (left, right) absolute ranges held out of order, most recently changed first
        (RFC 2018 4: the first block reports the segment that triggered this ACK). `skip` starts further
        down that list (cyclically): a burst of duplicate ACKs then reports every range, not the same three."""
        out = []
        recent = self._recent
        if skip and recent:
            skip %= len(recent)
            recent = recent[skip:] + recent[:skip]
        for start in recent[:limit]:
            k = bisect.bisect_left(self._starts, start)
            out.append((start, start + self._lens[k]))
        return out

    @property
    def range_count(self) -> int:
        return len(self._starts)

    @property
    def highest(self) -> int:
        """One past the highest byte held (rcv_nxt when nothing is out of order)."""
        return self._starts[-1] + self._lens[-1] if self._starts else self.rcv_nxt
