"""Send side buffering: bytes the application handed us, cut into segments, kept until cumulatively acked.

Segments are cut once, when first sent, and retransmitted with the same boundaries, so message boundaries
(MSG_END) and SACK ranges stay stable. Memory is bounded by `limit` (unsent + unacknowledged bytes).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Segment:
    seq: int
    data: bytes
    msg_end: bool = False
    fin: bool = False
    sent_at: float = 0.0  # time of the latest transmission
    tx_count: int = 0
    sacked: bool = False
    lost: bool = False  # deemed lost and waiting to be retransmitted

    @property
    def end(self) -> int:
        return self.seq + len(self.data) + (1 if self.fin else 0)


class SendBuffer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.unsent = bytearray()
        self.unsent_seq = 0  # stream offset of unsent[0] == snd_nxt for data
        self.boundaries: deque[int] = deque()  # message end offsets not yet cut into segments
        # seq order (we only append at snd_nxt, and only ever drop from the left), so a deque: no lookup by
        # seq is needed, and acknowledging a segment is a popleft
        self.inflight: deque[Segment] = deque()
        self.inflight_bytes = 0
        self.snd_una = 0
        self.fin_queued = False
        self.fin_seq: int | None = None  # set once close() was called: offset of the FIN

    @property
    def used(self) -> int:
        return len(self.unsent) + self.inflight_bytes

    @property
    def space(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def snd_nxt(self) -> int:
        return self.unsent_seq

    def write(self, data: bytes) -> int:
        """Stream mode: accept as much of `data` as fits; return the count."""
        n = min(len(data), self.space)
        self.unsent += data[:n]
        return n

    def write_message(self, msg: bytes) -> bool:
        """Message mode: accept all of `msg` or nothing."""
        if len(msg) > self.space:
            return False
        self.unsent += msg
        self.boundaries.append(self.unsent_seq + len(self.unsent))
        return True

    def queue_fin(self) -> None:
        self.fin_queued = True
        self.fin_seq = self.unsent_seq + len(self.unsent)

    def next_length(self, mss: int) -> int:
        """Length of the next new segment: up to mss, never across a message boundary."""
        n = min(mss, len(self.unsent))
        if self.boundaries:
            n = min(n, self.boundaries[0] - self.unsent_seq)
        return n

    def cut(self, n: int) -> Segment:
        """Take the next `n` unsent bytes as a new in-flight segment."""
        seq = self.unsent_seq
        unsent = self.unsent
        data = bytes(unsent[:n])
        del unsent[:n]  # from the front of a bytearray: moves its start, copies nothing
        self.unsent_seq = end = seq + n
        boundaries = self.boundaries
        msg_end = bool(boundaries) and boundaries[0] == end
        if msg_end:
            boundaries.popleft()
        seg = Segment(seq, data, msg_end)
        self.inflight.append(seg)
        self.inflight_bytes += n
        return seg

    def cut_fin(self) -> Segment:
        seg = Segment(self.unsent_seq, b"", fin=True)
        self.unsent_seq += 1
        self.fin_queued = False
        self.inflight.append(seg)
        return seg

    def ack(self, cum: int) -> int:
        """Drop segments wholly below `cum`; return data bytes newly acknowledged."""
        if cum <= self.snd_una:
            return 0
        data_end = self.fin_seq if self.fin_seq is not None else cum
        acked = min(cum, data_end) - min(self.snd_una, data_end)
        self.snd_una = cum
        inflight = self.inflight
        freed = 0
        while inflight:
            seg = inflight[0]
            if seg.seq + len(seg.data) + seg.fin > cum:  # seg.end, without a property call per segment
                break
            inflight.popleft()
            freed += len(seg.data)
        self.inflight_bytes -= freed
        return max(0, acked)
