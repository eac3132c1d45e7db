"""The send path and the timers of TcpConnection (a mixin; the state lives in connection.py).

What goes out, in order: a pending RST; our SYN or SYN-ACK; retransmissions of lost ranges while the pipe
is below cwnd (RFC 6675 NextSeg rule 1; the first fast retransmission ignores cwnd); new data within cwnd and
the peer's window, with sender SWS avoidance and optional Nagle; our FIN; a probe (zero window, keepalive);
a pure ACK if one is owed (delayed-ACK rules, out-of-order data, challenge ACKs, window updates).

Timers (one deadline each, `next_timer` is their minimum): RTO (RFC 6298, Karn, backoff), delayed ACK,
persist (zero-window probes with backoff), keepalive, TIME_WAIT.
"""

from __future__ import annotations

from . import events as ev
from .segment import ACK, FIN, NO_OPTIONS, PSH, RST, SYN, Options, Segment
from .states import PEER_OPEN, Input, State

MASK = 0xFFFFFFFF
_KEEPALIVE_STATES = frozenset({State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_2})
_FAST_SEND = frozenset({State.ESTABLISHED, State.CLOSE_WAIT})  # send_now: CAN_SEND without the handshake's
_DATA_STATES = frozenset({State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK})


class Output:
    # ------------------------------------------------------------------ building segments
    def _tsval(self, now: float) -> int:
        return (int(now * 1000) + self._ts_offset) & MASK  # 1 ms ticks (RFC 7323 5.4 allows 1 ms .. 1 s)

    def _make(self, seq: int, flags: int, payload: bytes = b"", sack_skip: int = 0) -> Segment:
        rq = self.rq
        sacking = self.sack_ok and rq is not None and rq.ooo_bytes
        opts = NO_OPTIONS
        if self.ts_ok or sacking:
            ts = (self._tsval(self._now), self.ts_recent) if self.ts_ok else None
            sack = ()
            if sacking:
                sack = tuple((a & MASK, b & MASK) for a, b in rq.sack_blocks(3 if self.ts_ok else 4, sack_skip))
            opts = Options(timestamps=ts, sack=sack)
        wfield = self._wnd_field()
        ack = 0
        if flags & ACK:
            ack = self.rcv_nxt & MASK
            self._adv_right = max(self._adv_right, self.rcv_nxt + (wfield << self.rcv_wscale))
            self._last_ack_sent = self.rcv_nxt
            self._ack_now = False
            self._segs_unacked = 0
            self._delack_at = None
        self.stats.segs_out += 1
        return Segment(self.local[1], self.remote[1], seq & MASK, ack, flags, wfield, opts, payload)

    def _syn_segment(self, now: float) -> Segment:
        cfg = self.config
        if self.state is State.SYN_RCVD:  # SYN-ACK: offer back only what the peer offered
            opts = Options(mss=cfg.mss, wscale=self.rcv_wscale if self.wscale_ok else None,
                           sack_permitted=self.sack_ok,
                           timestamps=(self._tsval(now), self.ts_recent) if self.ts_ok else None)
            flags, ack = SYN | ACK, self.rcv_nxt & MASK
            self._adv_right = self.rcv_nxt + min(cfg.recv_buffer, 0xFFFF)
            self._last_ack_sent = self.rcv_nxt
            self._ack_now = False
        else:
            opts = Options(mss=cfg.mss, wscale=cfg.rcv_wscale if cfg.window_scaling else None,
                           sack_permitted=cfg.sack, timestamps=(self._tsval(now), 0) if cfg.timestamps else None)
            flags, ack = SYN, 0
        sq = self.sq
        if sq.snd_max == self.iss:
            sq.snd_max = self.iss + 1
            self._rtt_seq, self._rtt_time = self.iss, now
        if self._rto_at is None:
            self._rto_at = now + self.rtt.rto
        self.stats.segs_out += 1
        return Segment(self.local[1], self.remote[1], self.iss, ack, flags, min(cfg.recv_buffer, 0xFFFF), opts)

    # ------------------------------------------------------------------ what to send now
    def segments_to_send(self, now: float) -> list[Segment]:
        """Segments to put on the wire now (to self.remote), in order. Call after every other method."""
        self._now = now
        out = self._rst_out
        self._rst_out = []
        st = self.state
        if st is State.CLOSED:
            return out
        if st is State.SYN_SENT or st is State.SYN_RCVD:
            if self._syn_due or (st is State.SYN_RCVD and self._ack_now):
                self._syn_due = False
                out.append(self._syn_segment(now))
            return out
        n0 = len(out)
        if st is not State.TIME_WAIT:
            self._send_data(now, out)
        if self._probe_due:
            self._probe_due = False
            out.append(self._make(self.sq.snd_una - 1, ACK))  # seq already acked: the peer must answer
        elif len(out) == n0 and (self._ack_now or (st in PEER_OPEN and self._window_update_due())):
            out.append(self._make(self.sq.snd_max, ACK))
        if self._dupacks_owed > 1 and out and out[-1].flags == ACK and not out[-1].payload:
            # several out-of-order segments arrived in one batch: RFC 5681 wants an ACK for each (capped:
            # a burst, not a flood), and each reports the next SACK blocks, so the sender learns every range
            limit = 3 if self.ts_ok else 4
            for i in range(1, min(self._dupacks_owed, 8)):
                out.append(self._make(self.sq.snd_max, ACK, sack_skip=i * limit))
        self._dupacks_owed = 0
        return out

    def _send_data(self, now: float, out: list[Segment]) -> None:
        sq, fin = self.sq, self._fin_seq
        if (fin is None and sq.snd_max == sq.data_end and not sq.relost and not self._tlp_due
                and sq.rexmit_next >= sq.lost_high):
            # nothing unsent, lost or probed (the case after every segment of a ping-pong): what the steps
            # below would do, without walking them
            self._rexmit_force = self._sws_override = False
            return
        mss, cwnd = self._payload_mss(), self.cc.cwnd
        force = self._rexmit_force
        self._rexmit_force = False
        while sq.relost and sq.pipe() < cwnd:  # lost retransmissions first: they are the oldest holes
            again = sq.next_relost(mss)
            if again is None:
                break
            self._retransmit(now, out, *again)
        if self._tlp_due:
            self._tlp_due = False
            self._probe_tail(now, out)
        while sq.rexmit_next < sq.lost_high and (force or sq.pipe() < cwnd):  # then the lost holes
            force = False
            hole = sq.next_hole(mss)
            if hole is None:
                break
            seq, n = hole
            end = seq + n
            flags = ACK
            if fin is not None and end == fin and sq.lost_high > fin:
                flags |= FIN
            if n == 0 and not flags & FIN:
                sq.rexmit_next = sq.lost_high
                break
            self._retransmit(now, out, seq, n, flags)
            sq.rexmit_next = end + (1 if flags & FIN else 0)
        right = sq.snd_una + self.snd_wnd
        sent = False
        if (sq.snd_una == sq.snd_max < sq.data_end and self.config.slow_start_after_idle
                and now - self._last_data_at > self.rtt.rto):
            self.cc.cwnd = min(self.cc.cwnd, self.config.initial_cwnd * self.snd_mss)  # restart after idle
        cwnd = self.cc.cwnd
        while True:  # new data
            unsent = sq.data_end - sq.snd_max
            if unsent <= 0 or sq.pipe() >= cwnd:
                break
            n = min(mss, unsent, right - sq.snd_max)
            if n <= 0:
                break
            if n < mss and n < unsent and n < self.max_snd_wnd // 2 and not self._sws_override:
                break  # sender SWS avoidance: wait for a window worth a segment (or the persist timer)
            if n < mss and n == unsent and not self.config.nodelay and sq.snd_una < sq.snd_max:
                break  # Nagle: one small segment in flight at a time
            seq = sq.snd_max
            end = seq + n
            flags = ACK
            if n == unsent:
                flags |= PSH | (FIN if fin == end else 0)
            out.append(self._make(seq, flags, sq.take(seq, n)))
            sq.snd_max = end + (1 if flags & FIN else 0)
            self.stats.bytes_out += n
            self._last_data_at = now
            sent = True
            if self._rtt_seq is None:
                self._rtt_seq, self._rtt_time = end - 1, now
            if self._rto_at is None:
                self._rto_at = now + self.rtt.rto
        self._sws_override = False
        if sent:
            self._arm_tlp(now)
        if fin is not None and sq.snd_max == fin == sq.data_end:
            out.append(self._make(fin, FIN | ACK))
            sq.snd_max = fin + 1
            if self._rto_at is None:
                self._rto_at = now + self.rtt.rto
        elif not sent and sq.snd_una == sq.snd_max < sq.data_end and self._persist_at is None:
            self._persist_at = now + self._persist_interval()  # the window is shut: probe it

    def send_now(self, data, now: float) -> tuple | None:
        """send(data) then segments_to_send(now), for the case a request/response server lives in: an
        established connection with nothing unsent, lost or owed but this one segment, which fits the send
        buffer, one MSS, the peer's window and cwnd. Returns the segment's header fields (seq, ack, flags,
        window, timestamps or None) with the state changed exactly as the two calls change it, the payload
        being `data` (the endpoint builds the frame: kbypass._fasttcp.frame); or None, having changed
        nothing, when any of that does not hold (the caller then takes the usual way).
        tests/unit/test_tcp_fastpath.py holds it to the two calls."""
        n = len(data)
        sq = self.sq
        una, nxt = sq.snd_una, sq.snd_max
        if (self.state not in _FAST_SEND or not n or self._rst_out or self._probe_due or self._tlp_due
                or self._fin_seq is not None or self._shutdown_pending or nxt != sq.data_end or sq.relost
                or sq.rexmit_next < sq.lost_high or n > self.config.send_buffer - len(sq.buf)
                or n > una + self.snd_wnd - nxt or (self.sack_ok and self.rq.ooo_bytes)
                or n > self.snd_mss or (una < nxt and not self.config.nodelay and n < self.snd_mss)):
            return None
        cwnd = self.cc.cwnd
        if una == nxt and self.config.slow_start_after_idle and now - self._last_data_at > self.rtt.rto:
            cwnd = min(cwnd, self.config.initial_cwnd * self.snd_mss)  # restart after idle (_send_data's)
        if sq.pipe() >= cwnd:
            return None
        self.cc.cwnd = cwnd
        self._now = now
        sq.append(data)
        self._rexmit_force = self._sws_override = False
        end = nxt + n
        ts = (self._tsval(now), self.ts_recent) if self.ts_ok else None
        wfield = self._wnd_field()
        rcv_nxt = self.rcv_nxt
        self._adv_right = max(self._adv_right, rcv_nxt + (wfield << self.rcv_wscale))
        self._last_ack_sent = rcv_nxt
        self._ack_now = False
        self._segs_unacked = 0
        self._delack_at = None
        self._dupacks_owed = 0
        stats = self.stats
        stats.segs_out += 1
        stats.bytes_out += n
        sq.snd_max = end
        self._last_data_at = now
        if self._rtt_seq is None:
            self._rtt_seq, self._rtt_time = end - 1, now
        if self._rto_at is None:
            self._rto_at = now + self.rtt.rto
        self._arm_tlp(now)
        return nxt & MASK, rcv_nxt & MASK, ACK | PSH, wfield, ts

    def _payload_mss(self) -> int:
        """snd_mss (timestamps already counted) less the SACK blocks our segments carry now, so a data
        segment never outgrows the path (Linux's tcp_current_mss does the same)."""
        rq = self.rq
        if self.sack_ok and rq is not None and rq.ooo_bytes:
            return self.snd_mss - 4 - 8 * min(rq.range_count, 3 if self.ts_ok else 4)
        return self.snd_mss

    def _retransmit(self, now: float, out: list[Segment], seq: int, n: int, flags: int = ACK) -> None:
        sq = self.sq
        out.append(self._make(seq, flags, sq.take(seq, n)))
        if n:
            sq.note_rexmit(seq, seq + n)
        self.stats.retransmits += 1
        self._ts_sample_ok = True
        if self._rtt_seq is not None and seq <= self._rtt_seq:
            self._rtt_seq = None  # Karn: an ACK of it now times two transmissions
        if self._rto_at is None:
            self._rto_at = now + self.rtt.rto

    def _arm_tlp(self, now: float) -> None:
        """RFC 8985 7.2: PTO = 2 SRTT (+ the peer's worst delayed ACK when one segment is in flight), if it
        comes before the RTO. Only outside recovery, with an RTT measured, one probe per tail."""
        sq, srtt = self.sq, self.rtt.srtt
        if (self._tlp_out or self._in_recovery or srtt is None or sq.snd_una >= sq.snd_max
                or self.state not in _DATA_STATES):
            return
        # RFC 8985 allows 200 ms for the delayed ACK; Linux peers delay at most 40 ms (TCP_DELACK_MIN)
        pto = max(2 * srtt, 0.002) + (0.05 if sq.snd_max - sq.snd_una <= self.snd_mss else 0.0)
        at = now + pto
        if self._rto_at is None or at < self._rto_at:
            self._tlp_at = at

    def _probe_tail(self, now: float, out: list[Segment]) -> None:
        """The probe: new data if some fits the peer's window, else the last segment again; its ACK (with
        SACK) turns a tail loss into a fast recovery instead of an RTO."""
        sq = self.sq
        self._tlp_out = True
        self.stats.tail_probes += 1
        if sq.data_end > sq.snd_max and sq.snd_una + self.snd_wnd > sq.snd_max:
            return  # the new-data loop sends it (a tail leaves the pipe room for it)
        end = min(sq.snd_max, sq.data_end)
        seq = max(sq.snd_una, end - self._payload_mss())
        if end > seq and sq.sacked_between(seq, end) < end - seq:
            self._retransmit(now, out, seq, end - seq)
        elif self._fin_seq is not None and sq.snd_max == self._fin_seq + 1 and sq.snd_una <= self._fin_seq:
            self._retransmit(now, out, self._fin_seq, 0, FIN | ACK)

    # ------------------------------------------------------------------ timers
    def next_timer(self) -> float | None:
        """When `on_timer` must next be called (None: no timer runs)."""
        best = None
        for t in (self._rto_at, self._delack_at, self._persist_at, self._timewait_at, self._tlp_at, self._fin2_at,
                  self._keepalive_due()):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def on_timer(self, now: float) -> None:
        self._now = now
        if self._timewait_at is not None and now >= self._timewait_at:
            self._timewait_at = None
            self._go(Input.TIMEWAIT_DONE)
            return
        if self._fin2_at is not None and now >= self._fin2_at:
            self._kill(ev.TIMED_OUT)  # quietly: Linux's FIN_WAIT_2 timeout sends nothing
            return
        if self._rto_at is not None and now >= self._rto_at:
            self._tlp_at = None
            self._on_rto(now)
        if self._tlp_at is not None and now >= self._tlp_at:
            self._tlp_at = None
            self._tlp_due = True
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            self._ack_now = True
        if self._persist_at is not None and now >= self._persist_at:
            self._on_persist(now)
        ka = self._keepalive_due()
        if ka is not None and now >= ka:
            self._on_keepalive()

    def _give_up(self, reason: str) -> None:
        if self.state is not State.SYN_SENT:
            self._rst_out.append(self._make(self.sq.snd_max, RST | ACK))
        self._kill(reason)

    def _on_rto(self, now: float) -> None:
        self._rto_at = None
        cfg, sq = self.config, self.sq
        self._retries += 1
        self._rtt_seq = None
        if self.state is State.SYN_SENT or self.state is State.SYN_RCVD:
            if self._retries > cfg.syn_retries:
                self._give_up(ev.TIMED_OUT)
                return
            self.rtt.backoff()
            self._syn_due = True
            self._rto_at = now + self.rtt.rto
            return
        if sq.snd_una >= sq.snd_max:
            return
        self.stats.rtos += 1
        if self._retries > cfg.max_retries:
            self._give_up(ev.TIMED_OUT)
            return
        self.cc.on_timeout(sq.snd_max - sq.snd_una, now)
        self.rtt.backoff()
        sq.clear_sacks()  # RFC 2018 8: after a timeout the SACK information may be stale
        sq.mark_lost(sq.snd_max, restart=True)
        self._in_recovery = False
        self._recover = sq.snd_max
        self._dupacks = 0
        self._ts_sample_ok = True
        self._rto_at = now + self.rtt.rto

    def _on_persist(self, now: float) -> None:
        self._persist_at = None
        sq = self.sq
        if not (sq.snd_una == sq.snd_max < sq.data_end):
            return
        self._probes += 1
        if self._probes > self.config.max_retries:
            self._give_up(ev.TIMED_OUT)
            return
        if sq.snd_una + self.snd_wnd > sq.snd_max:
            self._sws_override = True  # a small window, not a shut one: send what fits (RFC 9293 3.8.6.2.1)
        else:
            self._probe_due = True
            self.stats.window_probes += 1
        self._persist_backoff += 1
        self._persist_at = now + self._persist_interval()

    def _persist_interval(self) -> float:
        return min(self.rtt.rto * (1 << min(self._persist_backoff, 16)), self.config.max_rto)

    def _keepalive_due(self) -> float | None:
        cfg = self.config
        if not cfg.keepalive or self.state not in _KEEPALIVE_STATES:
            return None
        sq = self.sq
        if sq.snd_una < sq.snd_max or sq.data_end > sq.snd_max:
            return None
        return self._last_recv + cfg.keepalive_idle + self._probes * cfg.keepalive_interval

    def _on_keepalive(self) -> None:
        if self._probes >= self.config.keepalive_count:
            self._give_up(ev.KEEPALIVE)
            return
        self._probes += 1
        self._probe_due = True
        self.stats.keepalive_probes += 1
