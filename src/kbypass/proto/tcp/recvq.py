"""The receive side's reassembly: in-order delivery of a byte stream that arrives in pieces, out of order,
overlapping, duplicated. Memory is bounded: the connection trims every segment to the receive window before
it gets here (so at most a window of bytes is held) and at most `max_ranges` separate out-of-order ranges
are kept (a segment that would make one more is dropped; the sender retransmits it).

Sequence numbers are absolute (see seqnum.py).
"""

from __future__ import annotations

import bisect


class Reassembly:
    def __init__(self, rcv_nxt: int, max_ranges: int = 64) -> None:
        self.rcv_nxt = rcv_nxt
        self.max_ranges = max_ranges
        self._starts: list[int] = []  # sorted starts of the out-of-order ranges (disjoint, not adjacent)
        self._data: list[bytearray] = []  # their bytes
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
            start, buf = self._starts.pop(0), self._data.pop(0)
            self.ooo_bytes -= len(buf)
            self._forget(start)
            skip = self.rcv_nxt - start
            if skip < len(buf):
                out += buf[skip:]
                self.rcv_nxt = start + len(buf)

    def _insert(self, seq: int, data: bytes) -> None:
        end = seq + len(data)
        i = bisect.bisect_left(self._starts, seq)
        # merge with a predecessor that overlaps or touches
        if i > 0 and self._starts[i - 1] + len(self._data[i - 1]) >= seq:
            i -= 1
        j = i
        new_start, new_end = seq, end
        while j < len(self._starts) and self._starts[j] <= new_end:
            new_start = min(new_start, self._starts[j])
            new_end = max(new_end, self._starts[j] + len(self._data[j]))
            j += 1
        if j == i and len(self._starts) >= self.max_ranges:
            self.dropped += 1
            return
        merged = bytearray(new_end - new_start)
        for k in range(i, j):  # old bytes first, then the new: either is right (retransmissions are equal)
            s = self._starts[k] - new_start
            merged[s:s + len(self._data[k])] = self._data[k]
            self.ooo_bytes -= len(self._data[k])
            self._forget(self._starts[k])
        merged[seq - new_start:end - new_start] = data
        self._starts[i:j] = [new_start]
        self._data[i:j] = [merged]
        self.ooo_bytes += len(merged)
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
            out.append((start, start + len(self._data[k])))
        return out

    @property
    def range_count(self) -> int:
        return len(self._starts)

    @property
    def highest(self) -> int:
        """One past the highest byte held (rcv_nxt when nothing is out of order)."""
        return self._starts[-1] + len(self._data[-1]) if self._starts else self.rcv_nxt
