"""Receive side: reassembly of out-of-order segments, duplicate removal, message boundaries, the window.

Memory bound: a segment is accepted only if it ends inside the advertised window, whose right edge is
`rcv_nxt + limit - unread`. Delivered-but-unread bytes plus buffered out-of-order bytes therefore never
exceed `limit`. The right edge never moves left (delivering k bytes moves rcv_nxt and unread by k).
"""

from __future__ import annotations

import bisect


class ReceiveBuffer:
    def __init__(self, limit: int, message_mode: bool) -> None:
        self.limit = limit
        self.message_mode = message_mode
        self.rcv_nxt = 0
        self.unread = 0  # delivered to the event queue, not yet taken by the application
        self.ooo: dict[int, tuple[bytes, bool, bool]] = {}  # seq -> (data, msg_end, fin)
        # the keys of `ooo`, ascending: the segments that a delivery made ready are a prefix of it, found
        # by bisection. (Scanning the dict for them once per delivered segment made repairing a hole
        # quadratic in the segments buffered behind it: a flight of them per loss.)
        self._ooo_seqs: list[int] = []
        # the received ranges above rcv_nxt (sack_blocks), kept through the usual changes (the highest range
        # grows, a new hole opens above it, the lowest ranges are delivered when a hole is repaired) and
        # merged afresh after any other (None). Merging every buffered segment into ranges at every ACK cost
        # 0.1 ms with 700 segments of 1.4 KB behind a hole (1% loss, 1500 MTU: nearly always a hole) on a
        # receiver that acknowledges every batch of arrivals.
        self._ranges: tuple[list[int], list[int]] | None = None
        self.ooo_bytes = 0
        self.boundaries: set[int] = set()  # message end offsets not yet delivered
        self.partial = bytearray()  # message mode: the message being assembled
        self.fin_seq: int | None = None
        self.fin_received = False
        # seqs of recent out-of-order arrivals that started a new run, most recent first (RFC 2018 block
        # order: see sack_blocks); an arrival that continues the previous one's run replaces its entry
        self.recent: list[int] = []
        self._run_end: int | None = None  # end of the latest out-of-order arrival

    @property
    def window(self) -> int:
        return max(0, self.limit - self.unread - len(self.partial))

    @property
    def right_edge(self) -> int:
        return self.rcv_nxt + self.window

    def accept(self, seq: int, data: bytes, msg_end: bool, fin: bool) -> tuple[list[bytes], bool, str | None]:
        """Take one segment. Returns (deliverables, fin_now_in_order, drop_reason).

        Deliverables are stream chunks (stream mode) or whole messages (message mode), in order.
        `drop_reason` is set when the segment was refused (outside the window, beyond FIN)."""
        if (seq == self.rcv_nxt and data and not fin and not self.ooo and self.fin_seq is None
                and not self.message_mode and len(data) <= self.limit - self.unread - len(self.partial)):
            # The bulk-transfer case: the next bytes of a stream, in order, inside the window, nothing
            # buffered behind them. What the general path below would do, without its checks.
            self.rcv_nxt += len(data)
            self.unread += len(data)
            return [data], False, None
        if not data and not fin:
            return [], False, None  # nothing to take (Connection calls with payload or FIN only): never buffered
        end = seq + len(data) + (1 if fin else 0)
        if end <= self.rcv_nxt:
            return [], False, "duplicate"
        window = self.window
        if end > self.rcv_nxt + window + (1 if fin else 0):
            return [], False, "out_of_window"
        if self.fin_seq is not None and (end > self.fin_seq + 1 or (fin and seq != self.fin_seq)):
            return [], False, "beyond_fin"
        if fin:
            self.fin_seq = seq + len(data)
        ooo = self.ooo
        ranges = self._ranges
        if seq > self.rcv_nxt:
            old = ooo.get(seq)
            if old is None or len(old[0]) < len(data):
                grown = len(data) - (len(old[0]) if old else 0)
                if self.ooo_bytes + grown > window:
                    return [], False, "buffer_full"  # only overlapping junk can get here; keeps the bound
                self.ooo_bytes += grown
                ooo[seq] = (data, msg_end, fin)
                if old is None:
                    bisect.insort(self._ooo_seqs, seq)
                if ranges is not None:
                    # the kept ranges follow the usual arrivals (a new hole opens above all data held, or the
                    # highest range grows); anything else (a repair between ranges) merges them afresh
                    starts, ends = ranges
                    if old is None and (not ends or seq > ends[-1]):
                        starts.append(seq)
                        ends.append(end)
                    elif old is None and seq == ends[-1]:
                        ends[-1] = end
                    else:
                        self._ranges = None
                self._touch(seq, end)
                return [], False, None
            return [], False, "duplicate"
        out: list[bytes] = []
        fin_now = self._deliver(seq, data, msg_end, fin, out)
        seqs = self._ooo_seqs
        while not fin_now and seqs:
            # pull every buffered segment that now touches rcv_nxt, lowest first
            k = bisect.bisect_right(seqs, self.rcv_nxt)
            if not k:
                break
            ready = seqs[:k]
            del seqs[:k]
            for s in ready:
                d, m, f = ooo.pop(s)
                self.ooo_bytes -= len(d)
                if s + len(d) + (1 if f else 0) > self.rcv_nxt:
                    fin_now = self._deliver(s, d, m, f, out) or fin_now
        if fin_now and seqs:
            # The stream is complete, and the loop above stopped at the FIN: what is still buffered lies
            # below rcv_nxt (an overlap it did not reach) or beyond the FIN (only a broken peer sends that).
            # Kept, it would go out as a SACK block below the ack, which the wire cannot encode.
            ooo.clear()
            seqs.clear()
            self.ooo_bytes = 0
        if ranges is not None:
            if ooo:  # the ranges that reached rcv_nxt were delivered whole (each is contiguous)
                k = bisect.bisect_right(ranges[0], self.rcv_nxt)
                del ranges[0][:k], ranges[1][:k]
            else:
                self._ranges = None
        return out, fin_now, None

    def _deliver(self, seq: int, data: bytes, msg_end: bool, fin: bool, out: list[bytes]) -> bool:
        skip = self.rcv_nxt - seq  # overlap with what we already have (same bytes by construction)
        piece = data[skip:] if skip > 0 else data
        if piece:
            self.rcv_nxt += len(piece)
            if self.message_mode:
                self.partial += piece
                if msg_end:
                    out.append(bytes(self.partial))
                    self.unread += len(self.partial)
                    self.partial.clear()
            else:
                out.append(piece)
                self.unread += len(piece)
        if fin and self.rcv_nxt == seq + len(data) and not self.fin_received:
            self.rcv_nxt += 1
            self.fin_received = True
            return True
        return False

    def take_messages(self, data: bytes, ends: list[int]) -> list[bytes]:
        """Message mode: the next in-order bytes `data`, which end messages at the offsets `ends`, checked
        to fit the window by the caller (Connection.rx_run_params): the messages they complete, and the
        rest kept as the partial message, as _deliver does segment by segment."""
        self.rcv_nxt += len(data)
        out = []
        start = 0
        for end in ends:
            if self.partial:
                self.partial += data[start:end]
                msg = bytes(self.partial)
                self.partial.clear()
            else:
                msg = data[start:end]
            self.unread += len(msg)
            out.append(msg)
            start = end
        if start < len(data):
            self.partial += data[start:]
        return out

    def extend_run(self, pieces: list[bytes]) -> None:
        """Buffer segments that continue the latest out-of-order arrival's run, which is the highest data
        held (Connection.rx_run_params checked that, the window and the order): what accept() does for
        each, without its checks."""
        seq = self._run_end
        ooo, seqs = self.ooo, self._ooo_seqs
        for d in pieces:
            ooo[seq] = (d, False, False)
            seqs.append(seq)  # above every key: the list stays sorted
            seq += len(d)
        self.ooo_bytes += seq - self._run_end
        self.recent[0] = seqs[-1]  # _touch: each continues the run, so the run's entry moves up
        ranges = self._ranges
        if ranges is not None and ranges[1] and ranges[1][-1] == self._run_end:
            ranges[1][-1] = seq  # the highest range grows: the run ended at the highest data held
        else:
            self._ranges = None
        self._run_end = seq

    def extendable_run_end(self) -> int | None:
        """Where the next segment extend_run may take starts: the end of the latest out-of-order arrival,
        when that is also the end of the highest data held (None otherwise, or with nothing buffered)."""
        if not self.ooo or not self.recent:
            return None
        last = self._ooo_seqs[-1]
        d, _, fin = self.ooo[last]
        return self._run_end if self._run_end == last + len(d) and not fin else None

    _RECENT = 8

    def _merged_ranges(self) -> tuple[list[int], list[int]]:
        """The buffered segments merged into ranges (touching and overlapping ones joined): starts, ends."""
        ooo = self.ooo
        starts: list[int] = []
        ends: list[int] = []
        start = end = -1
        for s in self._ooo_seqs:  # ascending
            d, _, f = ooo[s]
            e = s + len(d) + f
            if s <= end:
                if e > end:
                    end = e
            else:
                if end >= 0:
                    starts.append(start)
                    ends.append(end)
                start, end = s, e
        starts.append(start)
        ends.append(end)
        return starts, ends

    def _touch(self, seq: int, end: int) -> None:
        if self.recent and seq == self._run_end:
            self.recent[0] = seq  # the same run (the usual case: in-order arrivals after a hole)
        else:
            self.recent.insert(0, seq)
            del self.recent[self._RECENT :]
        self._run_end = end

    def consumed(self, n: int) -> None:
        """The application took `n` delivered bytes: the window opens by n."""
        self.unread -= n

    def sack_blocks(self, max_blocks: int) -> list[tuple[int, int]]:
        """Received ranges above rcv_nxt: the block of the latest arrival first, then the blocks of the
        arrivals before it, most recent first, then the rest ascending.

        RFC 2018 4: repeating the recently reported blocks means each block is reported in several ACKs,
        so one lost ACK does not hide a block from the sender. Without it, a block that stopped growing
        when a new hole opened above it was never reported again until it became one of the lowest, and
        the sender, seeing SACKed data above it, retransmitted all of it (at 1% loss and 64-datagram
        batches, a lost ACK cost up to a batch of spurious retransmissions)."""
        if not self.ooo:
            return []
        if self._ranges is None:
            self._ranges = self._merged_ranges()
        starts, ends = self._ranges
        ranges = list(zip(starts, ends))
        picked: list[int] = []
        for seq in self.recent:
            i = bisect.bisect_right(starts, seq) - 1
            if i >= 0 and ranges[i][0] <= seq < ranges[i][1] and i not in picked:
                picked.append(i)
                if len(picked) == max_blocks:
                    break
        if len(picked) < max_blocks:
            chosen = set(picked)
            picked += [i for i in range(len(ranges)) if i not in chosen][: max_blocks - len(picked)]
        return [ranges[i] for i in picked]
