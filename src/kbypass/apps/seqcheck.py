"""Sequence-number accounting for a stream of stamped packets, one numpy pass per batch.

Counts what a receiver of a numbered stream wants to know: received, lost (gaps never filled), reordered
(a packet older than one already seen), duplicates are counted as reordered. One-way latency comes from
the send timestamp in the stamp (kbypass.gen.stamp) against CLOCK_MONOTONIC at receipt.
"""

from __future__ import annotations

import numpy as np


class SeqChecker:
    def __init__(self) -> None:
        self.received = 0
        self.reordered = 0
        self.first: int | None = None
        self.highest = -1

    def update(self, seqs: np.ndarray) -> None:
        if len(seqs) == 0:
            return
        s = seqs.astype(np.int64, copy=False)
        if self.first is None:
            self.first = int(s[0])
            self.highest = int(s[0]) - 1
        # The highest number seen before each packet: a packet at or below it came late (or twice).
        before = np.maximum.accumulate(np.concatenate(([self.highest], s[:-1])))
        self.reordered += int(np.count_nonzero(s <= before))
        self.highest = max(self.highest, int(s.max()))
        self.received += len(s)

    @property
    def expected(self) -> int:
        return 0 if self.first is None else self.highest - self.first + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)

    def summary(self) -> dict:
        return {"received": self.received, "expected": self.expected, "lost": self.lost,
                "reordered": self.reordered, "first_seq": self.first, "last_seq": self.highest}
