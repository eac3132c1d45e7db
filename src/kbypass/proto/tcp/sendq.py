"""The send side's bytes and SACK scoreboard (RFC 6675): what is queued, sent, acknowledged, SACKed, lost.

Absolute sequence numbers (seqnum.py). `data_start` is the sequence number of buf[0]; bytes below `snd_una`
are dropped as soon as they are acknowledged, so memory is the unacknowledged plus the unsent bytes, capped
by the connection at send_buffer.

Loss marking: bytes in [rexmit_next, lost_high) that are not SACKed are lost and not yet retransmitted. Fast
recovery sets lost_high to the highest SACKed byte (a hole below SACKed data is lost: RFC 6675's IsLost with
the reordering allowance of the DupThresh entry test); an RTO sets it to snd_max (everything outstanding).
The retransmission pointer walks the holes once; pipe = outstanding - SACKed - lost-not-retransmitted.

The scoreboard is bounded, so a peer's SACK blocks cannot make an ACK expensive: at most MAX_SACK_RANGES
disjoint ranges are kept; a block that would make one more drops the lowest range (the one nearest snd_una).
SACK information is advisory (RFC 2018 8, RFC 6675 5.1: a sender may discard it), and forgetting a range
only ever makes its bytes look unSACKed, so the worst outcome is a retransmission the receiver did not need,
never a hole taken for delivered. Lookups bisect the sorted ranges. A real receiver reports at most a few
dozen holes (ours keeps 64 out-of-order ranges); a stream of tiny blocks is an attack or a broken peer.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque

MAX_SACK_RANGES = 64
MAX_REXMIT_LOG = 4096


class SendQueue:
    def __init__(self, iss: int) -> None:
        self.buf = bytearray()
        self.data_start = iss + 1  # the SYN takes the ISN
        self.snd_una = iss  # oldest unacknowledged (the SYN until it is acked)
        self.snd_max = iss  # one past the highest sequence number sent (SYN and FIN included)
        self.sacked: list[tuple[int, int]] = []  # disjoint sorted ranges above snd_una
        self.sacked_bytes = 0
        self._cum: list[int] | None = []  # running totals of the ranges' lengths (None: to rebuild)
        self.sack_ranges_dropped = 0  # ranges forgotten for the MAX_SACK_RANGES bound
        self.rexmit_next = iss
        self.lost_high = iss
        # Lost retransmissions (RFC 6675 cannot see them; RACK's idea, by sequence instead of time): each
        # retransmission remembers snd_max when it left; SACKed data above that mark was sent after it, so
        # if the retransmission is still a hole, it was lost too and goes again (instead of waiting an RTO).
        # (seq, end, snd_max when sent), in sending order, so sorted by the mark (snd_max never goes back)
        self.rexmits: deque[tuple[int, int, int]] = deque()
        # retransmissions found lost, to send again: sorted by seq, all at or above snd_una (acked() clips them),
        # with their total kept so pipe() costs no walk
        self.relost: list[tuple[int, int]] = []
        self.relost_bytes = 0

    @property
    def data_end(self) -> int:
        return self.data_start + len(self.buf)

    @property
    def unsent(self) -> int:
        return max(0, self.data_end - self.snd_max)

    def queued(self) -> int:
        return len(self.buf)

    def append(self, data: bytes) -> None:
        self.buf += data

    def take(self, seq: int, n: int) -> bytes:
        off = seq - self.data_start
        return bytes(self.buf[off:off + n])

    def acked(self, ack: int) -> None:
        """Cumulative ACK up to `ack` (the connection has checked it is new)."""
        self.snd_una = ack
        start, buf = self.data_start, self.buf
        end = start + len(buf)
        drop = (ack if ack < end else end) - start
        if drop > 0:
            del buf[:drop]
            self.data_start = start + drop
        ranges = self.sacked
        if ranges and ranges[0][0] < ack:
            self._cum = None
            k = bisect.bisect_left(ranges, (ack + 1,))  # ranges starting at or below ack: wholly or partly acked
            for s, e in ranges[:k]:
                self.sacked_bytes -= min(e, ack) - s
            if ranges[k - 1][1] > ack:  # the last of them reaches above ack: keep its rest
                ranges[k - 1] = (ack, ranges[k - 1][1])
                k -= 1
            del ranges[:k]
        relost = self.relost
        while relost and relost[0][0] < ack:  # sorted by seq: the entries reaching below ack are a prefix
            s, e = relost.pop(0)
            self.relost_bytes -= e - s
            if e > ack:
                bisect.insort(relost, (ack, e))
                self.relost_bytes += e - ack
        rexmits = self.rexmits
        while rexmits and rexmits[0][1] <= ack:  # arrived (the log is in mark order: a cheap trim at the front)
            rexmits.popleft()
        if ack > self.rexmit_next:
            self.rexmit_next = ack

    def sack(self, left: int, right: int) -> bool:
        """Mark [left, right) SACKed; returns True if it was news. Blocks outside (snd_una, snd_max] are
        ignored (RFC 2018: a block below snd_una is a D-SACK or stale)."""
        left, right = max(left, self.snd_una), min(right, self.snd_max)
        if right <= left:
            return False
        ranges = self.sacked
        i = bisect.bisect_left(ranges, (left, left))
        if i > 0 and ranges[i - 1][1] >= left:
            i -= 1
        j = i
        new_l, new_r = left, right
        covered = 0
        while j < len(ranges) and ranges[j][0] <= new_r:
            s, e = ranges[j]
            covered += e - s
            new_l, new_r = min(new_l, s), max(new_r, e)
            j += 1
        ranges[i:j] = [(new_l, new_r)]
        self._cum = None
        added = (new_r - new_l) - covered
        self.sacked_bytes += added
        if len(ranges) > MAX_SACK_RANGES:  # bounded: forget the lowest range (see the module docstring)
            s, e = ranges.pop(0)
            self.sacked_bytes -= e - s
            self.sack_ranges_dropped += 1
            if s == new_l:
                return False
        return added > 0

    @property
    def high_sacked(self) -> int:
        return self.sacked[-1][1] if self.sacked else self.snd_una

    def sacked_between(self, a: int, b: int) -> int:
        """SACKed bytes in [a, b): two bisections and the running totals, whatever the span."""
        ranges = self.sacked
        i = bisect.bisect_left(ranges, (a + 1,))  # ranges[:i] start at or below a
        if i and ranges[i - 1][1] > a:
            i -= 1  # the one starting at or below a reaches into [a, b)
        j = bisect.bisect_left(ranges, (b,))  # ranges[:j] start below b
        if j <= i:
            return 0
        cum = self._cum
        if cum is None:
            cum = self._cum = list(itertools.accumulate((e - s for s, e in ranges), initial=0))
        return cum[j] - cum[i] - max(0, a - ranges[i][0]) - max(0, ranges[j - 1][1] - b)

    def mark_lost(self, upto: int, restart: bool = False) -> None:
        """Bytes below `upto` not SACKed are lost. `restart` (a new loss episode) walks them from snd_una."""
        if restart:
            self.rexmit_next = self.snd_una
        self.lost_high = max(self.lost_high, upto)

    def clear_sacks(self) -> None:
        """After an RTO: forget the SACK scoreboard (RFC 2018 8) and the retransmission log."""
        self.sacked.clear()
        self._cum = []
        self.sacked_bytes = 0
        self.rexmits.clear()
        self.relost.clear()
        self.relost_bytes = 0

    def note_rexmit(self, seq: int, end: int) -> None:
        if len(self.rexmits) < MAX_REXMIT_LOG:  # bounded: beyond this, lost retransmissions fall back to the RTO
            self.rexmits.append((seq, end, self.snd_max))

    def find_lost_rexmits(self) -> None:
        """Move the logged retransmissions that SACKed data sent after them proves lost to `relost`. The log
        is in mark order, so only its front can qualify: each entry is looked at once, not once per ACK."""
        hs, rexmits = self.high_sacked, self.rexmits
        while rexmits and rexmits[0][2] < hs:
            seq, end, _mark = rexmits.popleft()
            if end <= self.snd_una or self.sacked_between(seq, end) == end - seq:
                continue  # it arrived
            seq = max(seq, self.snd_una)
            bisect.insort(self.relost, (seq, end))
            self.relost_bytes += end - seq

    def next_relost(self, mss: int) -> tuple[int, int] | None:
        """(seq, length) of the next lost retransmission to send again, or None."""
        relost, ranges = self.relost, self.sacked
        while relost:
            seq, end = relost.pop(0)
            self.relost_bytes -= end - seq
            k = bisect.bisect_left(ranges, (seq + 1,)) - 1  # skip what got SACKed meanwhile (ranges never touch)
            if k >= 0 and ranges[k][1] > seq:
                seq = ranges[k][1]
            n = min(mss, end - seq, self.data_end - seq)
            if n <= 0:
                continue
            if seq + n < end:
                relost.insert(0, (seq + n, end))
                self.relost_bytes += end - seq - n
            return seq, n
        return None

    def lost_unsent(self) -> int:
        lo = max(self.rexmit_next, self.snd_una)
        if lo >= self.lost_high:
            return 0
        return self.lost_high - lo - self.sacked_between(lo, self.lost_high)

    def pipe(self) -> int:
        """RFC 6675 pipe: bytes believed in the network."""
        if not self.sacked and self.rexmit_next >= self.lost_high and not self.relost:
            return self.snd_max - self.snd_una  # the common case: nothing SACKed or marked lost
        return (self.snd_max - self.snd_una) - self.sacked_bytes - self.lost_unsent() - self.relost_bytes

    def next_hole(self, mss: int) -> tuple[int, int] | None:
        """(seq, length) of the next lost range to retransmit, at most `mss`, advancing nothing."""
        seq = max(self.rexmit_next, self.snd_una)
        for s, e in self.sacked:
            if e <= seq:
                continue
            if s <= seq:
                seq = e
                continue
            break
        if seq >= self.lost_high:
            return None
        limit = self.lost_high
        for s, _e in self.sacked:
            if s > seq:
                limit = min(limit, s)
                break
        return seq, min(mss, limit - seq, self.data_end - seq) if seq < self.data_end else 0
