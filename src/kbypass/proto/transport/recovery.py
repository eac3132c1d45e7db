"""Connection's sender-side recovery: what an ACK tells us (cumulative progress, SACK blocks, RTT samples,
Eifel undo), loss detection (SACK/dupack threshold, RACK), the tail loss probe, and the timers (RTO,
persist, keepalive, linger). A mixin of Connection (connection.py), which holds the state; see its
module doc for the theory of operation.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import islice

from . import wire
from .errors import RemoteProtocolError
from .states import SYNCHRONIZED, Input, State

_TS_MASK = 0xFFFFFFFF
# Floor of the tail loss probe timer: below a millisecond a probe would mostly race the ACK that is already
# on its way (an event loop's wake-up jitter), and a spurious probe costs a datagram, no window cut.
_PTO_MIN = 0.001


def _seg_end(seg) -> int:
    return seg.seq + len(seg.data) + seg.fin


class LossRecovery:
    """Connection's methods for ACKs, loss recovery and timers (state in Connection.__init__)."""

    __slots__ = ()

    def _ts_to_time(self, ts: int, now: float) -> float:
        """Our send time encoded in an echoed timestamp, in the caller's clock."""
        return now - (((self._ts(now) - ts) & _TS_MASK) / 1e6)

    def _rtt_sample(self, tsecr: int, now: float) -> None:
        if tsecr:
            self.rtt.sample(now - self._ts_to_time(tsecr, now))

    def _quiet_ack(self, pkt: wire.Packet) -> bool:
        """No news in this ACK beyond its window: the usual ACK riding on the peer's data when we have
        nothing out (nothing in flight, nothing new acknowledged, no SACK, no FIN of ours pending)."""
        sb = self.sbuf
        return pkt.ack == sb.snd_una and not pkt.sacks and not sb.inflight and sb.fin_seq is None

    def _on_ack(self, pkt: wire.Packet, now: float) -> None:
        sb = self.sbuf
        ack = pkt.ack
        rtt = None
        if ack > sb.snd_nxt:
            raise RemoteProtocolError("ack_beyond_sent", f"ack {ack} > sent {sb.snd_nxt}")
        if ack < sb.snd_una and not pkt.payload:
            return  # an old reordered ACK: nothing it says is news
        if ack + pkt.window > self._peer_right:
            self._peer_right = ack + pkt.window
            self._persist_deadline = None  # re-armed by _send_segments if still blocked
            self._persist_backoff = 0
        if self._quiet_ack(pkt):
            return
        news = False
        if ack > sb.snd_una:
            if self._rto_undo is not None:
                self._maybe_undo_rto(pkt, now)
            acked = sb.ack(pkt.ack)
            self.stats.bytes_acked += acked
            samples = self.rtt.samples
            self._rtt_sample(pkt.tsecr, now)
            if self.rtt.samples != samples:
                rtt = self.rtt.latest
            self.cc.on_ack(max(acked, 1), sb.snd_una)
            self._retries = 0
            self._dupacks = 0
            self._rto_deadline = now + self.rtt.rto if sb.inflight else None
            news = True
        elif sb.inflight and pkt.sacks and not pkt.payload and not pkt.flags & (wire.FIN | wire.PING):
            # only ACKs that report out-of-order data count: window updates and ping answers do not
            self._dupacks += 1
        if pkt.sacks and sb.inflight:
            # blocks in order (a receiver sends disjoint blocks; an overlapping one from a broken peer may go
            # unused, which costs it a retransmission, nothing more)
            blocks = sorted(pkt.sacks)
            # RACK (RFC 8985 6.2) takes the send time of each newly SACKed segment: the echoed timestamp
            # cannot tell it, as the peer echoes only data at or below its rcv_nxt (RFC 7323 4.3), never
            # the data above a hole that SACKs report. A retransmitted segment SACKed sooner than min_rtt
            # after its latest transmission was the original's arrival: its send time is unknown.
            rack = self._rack_xmit
            min_rtt = self.rtt.min_rtt
            # Only what is new in each block is walked: the peer repeats every range it holds in every ACK
            # (up to wire.MAX_SACK_BLOCKS), and the part of a block the previous ACK reported (same start)
            # was marked then. Walking every block's segments cost a pass over the flight per ACK: behind
            # the holes of 5% loss a 1 MiB flight is ~700 segments, mostly SACKed (0.9 ms an ACK here).
            known = self._sack_known
            seen = {}
            inflight = sb.inflight
            for start, end in blocks:
                seen[start] = end
                lo = known.get(start, start)
                if lo >= end:
                    continue
                # the first segment that ends past `lo`: found by bisection (in C), not one by one here
                for seg in islice(inflight, bisect_right(inflight, lo, key=_seg_end), None):
                    if seg.seq >= end:
                        break
                    if not seg.sacked and seg.seq >= start and seg.end <= end:
                        seg.sacked = True
                        sb.sacked_segments += 1
                        sb.sacked_bytes += len(seg.data)
                        seg.lost = False
                        news = True
                        if seg.sent_at > rack and (seg.tx_count == 1 or (
                                min_rtt is not None and now - seg.sent_at >= min_rtt)):
                            rack = seg.sent_at
            self._sack_known = seen
            self._rack_xmit = rack
        if news and pkt.tsecr:
            self._rack_xmit = max(self._rack_xmit, self._ts_to_time(pkt.tsecr, now))
        if news:
            self._tlp_allowed = True
            self._pto_deadline = None
            self._arm_pto(now)
            if self.cc.paced:  # the model's input: everything the peer now holds, and what is still out
                self.cc.on_delivery(now, sb.snd_una + sb.sacked_bytes, sb.inflight_bytes - sb.sacked_bytes,
                                    self.rtt.srtt, rtt, self.rtt.min_rtt)
        if sb.inflight:
            self._detect_losses(now)
        if sb.fin_seq is not None and sb.snd_una > sb.fin_seq and self.state in (
            State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK,
        ):
            self._go(Input.FIN_ACKED)

    def _maybe_undo_rto(self, pkt: wire.Packet, now: float) -> None:
        """Eifel (RFC 3522 detection, RFC 4015 response): the first ACK of progress after an RTO echoes
        the send time of the datagram that reached the peer last. If that is older than the RTO, an
        original transmission got through and the RTO was only a delay (a scheduling stall of one of the
        two Python loops, typically): restore the window, and forget the "lost" marks so the flight is
        not sent again; SACK/RACK will find anything that really is lost."""
        cwnd, ssthresh, t_rto = self._rto_undo
        self._rto_undo = None
        if not pkt.tsecr or self._ts_to_time(pkt.tsecr, now) >= t_rto - 2e-6:  # µs timestamps
            return
        self.stats.spurious_timeouts += 1
        self.cc.cwnd, self.cc.ssthresh = cwnd, ssthresh
        for seg in self.sbuf.inflight:
            if seg.lost:
                seg.lost = False

    def _detect_losses(self, now: float) -> None:
        sb = self.sbuf
        reo = (self.rtt.min_rtt or 0.0) / 4
        if not sb.sacked_segments and not sb.resent_segments and self._dupacks < self.config.dupack_threshold:
            # Nothing SACKed, nothing sent twice: the flight went out in seq order, so send times only grow
            # along it, no segment has SACKed ones above it and only RACK could find a loss. If the first
            # segment is not overdue by RACK, none is, and the scan below would find nothing: an in-order
            # ACK stream costs O(1) here instead of a pass over the flight per ACK.
            first = sb.inflight[0]
            if not first.lost and first.tx_count and first.sent_at + reo >= self._rack_xmit:
                return
        segs = list(sb.inflight)
        sacked_above = 0
        newly_lost = 0  # bytes
        for seg in reversed(segs):
            if seg.sacked:
                sacked_above += 1
                continue
            if seg.lost or seg.tx_count == 0:
                continue
            if (sacked_above >= self.config.dupack_threshold and seg.tx_count == 1) or (
                seg.sent_at + reo < self._rack_xmit
            ):
                seg.lost = True
                newly_lost += len(seg.data) or 1
        first = segs[0]
        if (self._dupacks >= self.config.dupack_threshold and not first.sacked and not first.lost
                and first.tx_count == 1):  # a retransmission is judged by RACK, not by old dupacks
            first.lost = True
            newly_lost += len(first.data) or 1
            self._dupacks = 0
        if newly_lost and first.lost:
            # the first unacked segment goes out again with the next datagrams, which re-arms the RTO (_emit);
            # re-armed now, an RTO that came due while this process slept (a busy machine deschedules it
            # for tens of ms) does not fire in the same wake-up, after the ACKs that found the loss and
            # before the retransmission they call for: a window cut for a loss SACK was already repairing
            self._rto_deadline = now + self.rtt.rto
        if newly_lost:
            # FlightSize (RFC 5681) counts SACKed bytes too: cutting the pipe would cut twice as hard
            if self.cc.on_loss(sb.inflight_bytes, sb.snd_una, sb.snd_nxt, newly_lost):
                self.stats.loss_events += 1

    def _pto(self) -> float | None:
        """Tail loss probe timeout (RFC 8985 7.2): 2 SRTT, plus the peer's delayed-ACK allowance (ConnConfig.
        ack_delay; 0 when it acknowledges every batch of arrivals at once). None: no RTT yet, or the RTO is
        due first anyway."""
        if self.rtt.srtt is None:
            return None
        pto = max(2 * self.rtt.srtt, _PTO_MIN) + self.config.ack_delay  # the peer's ACK may wait that long
        return pto if pto < self.rtt.rto else None

    def _arm_pto(self, now: float) -> None:
        if self._pto_deadline is None and self._tlp_allowed and self._retries == 0 and self.sbuf.inflight:
            pto = self._pto()
            if pto is not None:
                self._pto_deadline = now + pto

    def _send_probe(self, now: float, out: list[bytes]) -> None:
        """RFC 8985 7.3: one new segment if the peer's window allows (cwnd does not limit a probe), else the
        highest un-SACKed segment again. Its ACK carries SACK news, so SACK/RACK recovery finds a lost tail or
        a lost retransmission, and a lost ACK costs a probe instead of an RTO and a collapsed window."""
        sb = self.sbuf
        n = sb.next_length(self.mss)
        if n and self._window_room() >= n:
            seg = sb.cut(n)
        elif sb.fin_queued and not sb.unsent:
            seg = sb.cut_fin()
        else:
            seg = next((s for s in reversed(sb.inflight) if not s.sacked), None)
            if seg is None:
                return
            self.stats.retransmits += 1
        self.stats.tail_probes += 1
        self._emit(seg, now, out)


    # ------------------------------------------------------------------ timers
    def next_timer(self) -> float | None:
        """The earliest time handle_timer() has work to do, or None (closed)."""
        if self.state is State.CLOSED:
            return None
        if self.state in (State.IDLE, State.LISTEN):
            return None
        cand = [] if self.state is State.TIME_WAIT else [self._last_recv + self.config.idle_timeout]
        for t in (self._rto_deadline, self._pto_deadline, self._persist_deadline, self._linger_deadline,
                  self._pace_at, self._ack_at if self._ack_pending else None):
            if t is not None:
                cand.append(t)
        if self.state in SYNCHRONIZED and self.state is not State.TIME_WAIT:
            cand.append(self._keepalive_at())
        return min(cand)

    @property
    def last_heard(self) -> float:
        """When the last valid datagram from the peer arrived (the idle clock's start)."""
        return self._last_recv

    def _keepalive_at(self) -> float:
        base = self._last_recv if self._last_ping is None else max(self._last_recv, self._last_ping)
        return base + self.config.keepalive_interval

    def handle_timer(self, now: float) -> None:
        """Run every timer that is due at `now`. Safe to call early (it then does nothing)."""
        self._now = now
        st = self.state
        if st in (State.CLOSED, State.IDLE, State.LISTEN):
            return
        if self._linger_deadline is not None and now >= self._linger_deadline:
            self._linger_deadline = None
            self._go(Input.LINGER_DONE)
            return
        # same expression as in next_timer: `now - last >= t` can be False at now == last + t (rounding)
        if st is not State.TIME_WAIT and now >= self._last_recv + self.config.idle_timeout:
            self._lose(f"peer silent for {now - self._last_recv:.3g} s (idle_timeout)")
            return
        if self._pace_at is not None and now >= self._pace_at:
            self._pace_at = None  # the pacer allows a datagram again: the next datagrams_to_send sends it
        if self._rto_deadline is not None and now >= self._rto_deadline:
            self._on_rto(now)
            if self.state is State.CLOSED:
                return
        if self._pto_deadline is not None and now >= self._pto_deadline:
            self._pto_deadline = None
            self._tlp_allowed = False  # until an ACK tells us something: then the RTO is in charge
            if self.sbuf.inflight and st in SYNCHRONIZED:
                self._probe_due = True
        if self._persist_deadline is not None and now >= self._persist_deadline:
            sb = self.sbuf
            n = sb.next_length(self.mss)
            if n and not sb.inflight and self._window_room() < n:  # still blocked by the peer's window
                if self._window_room() > 0:
                    self._fill_due = True  # a whole persist period too small: send what fits (_fill_window)
                    self._persist_deadline = None  # the segment's RTO takes over; re-armed if still blocked
                else:
                    self._persist_backoff = min(self._persist_backoff + 1, 10)
                    self._persist_deadline = now + min(self.rtt.rto * 2 ** self._persist_backoff,
                                                       self.config.max_rto)
                    self._ping_due = True
            else:
                self._persist_deadline = None
        if st in SYNCHRONIZED and st is not State.TIME_WAIT and now >= self._keepalive_at():
            self._last_ping = now
            self._ping_due = True

    def _on_rto(self, now: float) -> None:
        self.stats.timeouts += 1
        self.rtt.backoff()
        if self.state in (State.SYN_SENT, State.SYN_RCVD):
            self._syn_retries += 1
            if self._syn_retries > self.config.max_syn_retransmits:
                self._lose(f"no answer to the handshake after {self._syn_retries} tries")
                return
            self._syn_due = True
            self._rto_deadline = now + self.rtt.rto
            return
        sb = self.sbuf
        if not sb.inflight:
            self._rto_deadline = None
            return
        self._retries += 1
        if self._retries > self.config.max_retransmits:
            self._lose(f"{self._retries - 1} retransmission timeouts in a row")
            return
        flight = sb.inflight_bytes
        for seg in sb.inflight:
            if not seg.sacked:
                seg.lost = True
        if self._retries == 1:
            self._rto_undo = (self.cc.cwnd, self.cc.ssthresh, now)
        self.cc.on_timeout(flight, sb.snd_nxt)
        self.stats.loss_events += 1
        self._dupacks = 0
        self._pto_deadline = None
        self._probe_due = False
        self._rto_deadline = now + self.rtt.rto
