"""Sequence-number accounting for a stream of stamped packets, one pass per batch.

Counts what a receiver of a numbered stream wants to know: received (every packet), duplicates (a number
seen before), lost (numbers from the first to the highest that never came: duplicates do not fill a
gap), reordered (a packet, not a duplicate, older than one already seen). One-way latency comes from the
send timestamp in the stamp (kbypass.proto.stamp) against CLOCK_MONOTONIC at receipt.

Which numbers were seen is kept for the latest WINDOW numbers below the highest one (a ring of flags,
4 MiB): at several Mpps a bitmap of the whole run would grow by megabytes a second. A packet older than
that window cannot be told from a duplicate; it is counted as `too_old` and, like any distinct arrival,
fills its gap (with a window of 4M numbers that is a packet over a second late at the generator's rate).

The counts live in `state`, eight int64s in FIELDS order (the C core's struct kb_seq), and the flags in
`seen`: the batch backend (kbypass.backend: C, or the numpy reference) updates both, and so does the C
sink path (AfXdpPort.consume) without a Python call per batch.
"""

from __future__ import annotations

import numpy as np

from kbypass import backend

WINDOW = 1 << 22
# struct kb_seq (csrc/core/kb_seq.h), word for word
FIELDS = ("received", "reordered", "duplicates", "too_old", "distinct", "first", "highest", "started")
_AT = {name: i for i, name in enumerate(FIELDS)}


def _field(name: str):
    i = _AT[name]
    return property(lambda self: int(self.state[i]), doc=f"kb_seq.{name}")


class SeqChecker:
    """ops: the batch backend whose seq_update does the work (None: the lane in force)."""

    received = _field("received")
    reordered = _field("reordered")
    duplicates = _field("duplicates")
    too_old = _field("too_old")
    distinct = _field("distinct")  # distinct numbers from `first` up that arrived
    highest = _field("highest")

    def __init__(self, window: int = WINDOW, ops=None) -> None:
        self.ops = ops if ops is not None else backend.batch()
        self.state = np.zeros(len(FIELDS), dtype=np.int64)
        self.state[_AT["highest"]] = -1
        self._seen = np.zeros(window, dtype=np.uint8)  # _seen[n % window] for n in (highest - window, highest]

    @property
    def window(self) -> int:
        return len(self._seen)

    @property
    def seen(self) -> np.ndarray:
        """The window's flags (for the C sink path, which updates them in place)."""
        return self._seen

    @property
    def first(self) -> int | None:
        return int(self.state[_AT["first"]]) if self.state[_AT["started"]] else None

    def update(self, seqs: np.ndarray) -> None:
        if len(seqs):
            self.ops.seq_update(self.state, self._seen, np.ascontiguousarray(seqs, dtype=np.int64))

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
