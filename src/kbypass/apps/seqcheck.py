"""Sequence-number accounting for a stream of stamped packets, one numpy pass per batch.

Counts what a receiver of a numbered stream wants to know: received (every packet), duplicates (a number
seen before), lost (numbers from the first to the highest that never came: duplicates do not fill a
gap), reordered (a packet, not a duplicate, older than one already seen). One-way latency comes from the
send timestamp in the stamp (kbypass.proto.stamp) against CLOCK_MONOTONIC at receipt.

Which numbers were seen is kept for the latest WINDOW numbers below the highest one (a ring of flags,
4 MiB): at several Mpps a bitmap of the whole run would grow by megabytes a second. A packet older than
that window cannot be told from a duplicate; it is counted as `too_old` and, like any distinct arrival,
fills its gap (with a window of 4M numbers that is a packet over a second late at the generator's rate).
"""

from __future__ import annotations

import numpy as np

WINDOW = 1 << 22


class SeqChecker:
    def __init__(self, window: int = WINDOW) -> None:
        self.received = 0
        self.reordered = 0
        self.duplicates = 0
        self.too_old = 0
        self.distinct = 0  # distinct numbers from `first` up that arrived
        self.first: int | None = None
        self.highest = -1
        self._window = window
        self._seen = np.zeros(window, dtype=bool)  # _seen[n % window] for n in (highest - window, highest]

    def update(self, seqs: np.ndarray) -> None:
        if len(seqs) == 0:
            return
        s = seqs.astype(np.int64, copy=False)
        if self.first is None:
            self.first = int(s[0])
            self.highest = int(s[0]) - 1
        # The highest number seen before each packet: a packet at or below it came late (or twice).
        before = np.maximum.accumulate(np.concatenate(([self.highest], s[:-1])))
        late = int(np.count_nonzero(s <= before))
        self._advance(max(self.highest, int(s.max())))
        w = self._window
        self.received += len(s)
        if late == 0:  # the usual batch: rising, all above what came before, so all new and distinct
            self._mark(s)
            self.distinct += len(s)
            return
        fresh = s[s >= self.first]
        old = fresh <= self.highest - w
        self.too_old += int(np.count_nonzero(old))
        inwin = fresh[~old]
        srt = np.sort(inwin)  # np.unique, cheaper for a batch (its hash table costs ~35 us at 256)
        uniq = srt[np.concatenate(([True], srt[1:] != srt[:-1]))] if len(srt) else srt
        new = uniq[~self._seen[uniq % w]]
        self._mark(new)
        dups = len(inwin) - len(new)  # twice in this batch, or seen in an earlier one
        self.duplicates += dups
        self.distinct += len(new) + int(np.count_nonzero(old))
        self.reordered += late - dups

    def _mark(self, seqs: np.ndarray) -> None:
        w = self._window
        n = len(seqs)
        if n and int(seqs[-1]) - int(seqs[0]) == n - 1 and n <= w:  # one rising run (checked by caller):
            lo = int(seqs[0]) % w  # a slice or two, not a gather
            if lo + n <= w:
                self._seen[lo:lo + n] = True
            else:
                self._seen[lo:] = True
                self._seen[:lo + n - w] = True
        else:
            self._seen[seqs % w] = True

    def _advance(self, highest: int) -> None:
        """Move the window's top to `highest`: the flags of the numbers it newly covers start clear."""
        old, w = self.highest, self._window
        if highest <= old:
            return
        if highest - old >= w:
            self._seen[:] = False
        else:
            lo, hi = (old + 1) % w, (highest + 1) % w  # clear flags of old+1 .. highest (mod w)
            if lo < hi:
                self._seen[lo:hi] = False
            else:
                self._seen[lo:] = False
                self._seen[:hi] = False
        self.highest = highest

    @property
    def expected(self) -> int:
        return 0 if self.first is None else self.highest - self.first + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.distinct)

    def summary(self) -> dict:
        return {"received": self.received, "expected": self.expected, "lost": self.lost,
                "reordered": self.reordered, "duplicates": self.duplicates, "too_old": self.too_old,
                "first_seq": self.first, "last_seq": self.highest}
