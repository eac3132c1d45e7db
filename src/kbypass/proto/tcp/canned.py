"""Canned answers (csrc/core/kb_http.h): what the C fast path needs to answer a request itself, and the
reference's state change for the exchanges it answered (a mixin of TcpConnection; the state lives in
connection.py).

An exchange C answered is reported one of two ways. One by one (answer_hit: the reference takes it as
receive_hit, the application's read and send, and segments_to_send would). Or kept in C (a "run": while
canned_run's conditions hold, kb_http_run_step makes the state change of each exchange itself) and taken
here in one call for any number of them (canned_run_taken), when the endpoint next looks at the connection.
tests/unit/test_http_canned.py and tests/unit/test_http_run.py hold both to the reference.
"""

from __future__ import annotations

from .congestion import Cubic, NewReno
from .segment import Segment
from .seqnum import unwrap
from .states import PREDICTABLE, State

_C_TWINS = (NewReno, Cubic)  # the controllers whose on_ack kb_http.c has a twin of (cc_on_ack)


class CannedAnswers:
    """TcpConnection's canned-answer methods (see the module doc)."""

    def canned_state(self) -> tuple | None:
        """What the C fast path needs to answer the next predicted segment itself with one segment of data as
        segments_to_send would send it (kb_http.h struct kb_http_pred: snd_wscale, rcv_wscale, the receive
        buffer's room, the SWS threshold, the right edge last advertised (wire value), the timestamp offset,
        then canned_refresh's), or None when the send path would not simply send new data now (_canned_ok)."""
        if not self._canned_ok():
            return None
        cfg = self.config
        return (self.snd_wscale, self.rcv_wscale, self._rcv_wnd(), min(cfg.recv_buffer // 2, cfg.mss),
                self._adv_right & 0xFFFFFFFF, self._ts_offset & 0xFFFFFFFF) + self.canned_refresh()

    def _canned_ok(self) -> bool:
        """canned_state's conditions: ESTABLISHED, nothing unsent, lost, SACKed, probed or owed, no FIN, no
        Nagle, no data the application has not taken, no recovery or duplicate ACKs counted."""
        sq = self.sq
        return not (self.state is not State.ESTABLISHED or self._events or self._unread
                    or self._peer_fin_seq is not None or self.rq.ooo_bytes or sq.snd_max != sq.data_end
                    or self._fin_seq is not None or sq.sacked or sq.relost or sq.rexmit_next < sq.lost_high
                    or self._in_recovery or self._dupacks or self._tlp_due or self._probe_due or self._rst_out
                    or self._ack_now or self._dupacks_owed or self._blocked or not self.config.nodelay)

    def canned_refresh(self) -> tuple:
        """canned_state's fields an answered exchange moves (the most payload one answer may have, cwnd, the
        time from which a timer or the idle restart may change what is sent; kb_http_run_step moves them as
        this computes them)."""
        until = self.next_timer()
        if until is None:
            until = float("inf")
        if self.config.slow_start_after_idle:
            until = min(until, self._last_data_at + self.rtt.rto)
        return min(self._payload_mss(), self.send_room), self.cc.cwnd, until

    def answer_hit(self, seq_wire: int, ack: int, flags: int, window: int, tsval: int | None, tsecr: int | None,
                   payload: bytes, answer: bytes, now: float) -> bool:
        """A predicted segment the fast path answered itself (kbypass._fasttcp.rx_canned, armed from
        canned_state; its fields as rx_canned returns them): its payload was taken by the application there,
        and `answer` left as one segment. The reference's work for that exchange, as receive_hit, the
        application's read and send, and segments_to_send would do it: the ACK processing, the payload taken,
        the answer queued (kept for retransmission) and sent (send_now: timed, timers armed, no Segment made;
        the segment the reference makes is the frame C sent, which tests/unit/test_http_canned.py holds byte
        for byte). Returns whether the connection is still predictable."""
        seq = self._take_hit(seq_wire, ack, flags, window, tsval, tsecr, len(payload), now)
        out = self.rq.add(seq, payload)
        self.rcv_nxt = self.rq.rcv_nxt
        self.stats.bytes_in += len(out)
        if self.send_now(answer, now) is None:
            # the arming went stale (canned_state's conditions no longer hold): the whole send path. Only the
            # answer C sent is dropped; anything else it made (a retransmission) must still go out: queued for
            # the next segments_to_send, and the connection reported unpredictable so the endpoint flushes it.
            answer_seq = self.sq.snd_max
            self.sq.append(answer)
            made: list[Segment] = []
            self._send_data(now, made)
            extra = [s for s in made if unwrap(s.seq, answer_seq) != answer_seq]
            if extra:
                self._rst_out.extend(extra)
                return False
        return self.state in PREDICTABLE and self._peer_fin_seq is None and not self.rq.ooo_bytes

    def canned_run(self) -> tuple | None:
        """After canned_state, what lets C keep the exchanges it answers (kb_http.h struct kb_http_run, in
        Canned.arm_run's order), or None: a controller C has no twin of (only NewReno's and CUBIC's), no RTT
        measured yet, our answer in flight not timed, or a window update an exchange would not make (the
        peer's last window came from a segment beyond the next one)."""
        cc, rtt = self.cc, self.rtt
        if (type(cc) not in _C_TWINS or rtt.srtt is None or self._rtt_seq is None or self.snd_wl1 > self.rcv_nxt):
            return None
        return (self.snd_mss, self.config.send_buffer, self.max_snd_wnd, cc.cwnd, cc.ssthresh, rtt.srtt,
                rtt.rttvar, rtt.min_rtt, rtt.min_rto, rtt.max_rto, rtt.granularity, self._rtt_time) + cc.run_state()

    def canned_run_taken(self, run: tuple) -> None:
        """The state after the exchanges C kept (Canned.take_run's tuple: their count, the bytes each way, the
        last one's seq and window fields and time, the RTT estimator, cwnd, max_snd_wnd, ts_recent and
        the advertised right edge after them, the answer in flight, the controller's run_taken fields): what
        answer_hit would have left after
        each. Every exchange acked all we had sent, so what the last one leaves does not depend on the ones
        before but through the estimator, cwnd and the counts, which C carried."""
        (n, bytes_in, bytes_out, seq_w, window, now, srtt, rttvar, min_rtt, latest, cwnd, max_snd_wnd,
         ts_recent, adv_right, answer, *controller) = run
        rcv_nxt = self.rcv_nxt + bytes_in
        sq = self.sq
        una = sq.snd_max + bytes_out - len(answer)  # the last request acked everything before its answer
        sq.acked(una)
        sq.data_start, sq.buf = una, bytearray(answer)
        sq.snd_max = una + len(answer)
        self.rcv_nxt = self.rq.rcv_nxt = rcv_nxt
        stats = self.stats
        stats.segs_in += n
        stats.segs_out += n
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out
        self._now = self._last_recv = self._last_data_at = self._rtt_time = now
        self._probes = self._retries = self._dupacks = self._dupacks_owed = self._segs_unacked = 0
        if self.ts_ok:
            self.ts_recent = ts_recent
        self.rtt.sampled(n, srtt, rttvar, min_rtt, latest)
        self.cc.run_taken(cwnd, *controller)
        self.snd_wnd = window << self.snd_wscale
        self.max_snd_wnd = max_snd_wnd
        self.snd_wl1, self.snd_wl2 = unwrap(seq_w, rcv_nxt), una
        self._persist_at = None
        self._persist_backoff = 0
        self._rtt_seq = sq.snd_max - 1
        self._rto_at = now + self.rtt.rto
        self._tlp_out = False
        self._tlp_at = None
        self._arm_tlp(now)
        self._last_ack_sent = rcv_nxt
        self._adv_right = unwrap(adv_right, rcv_nxt)
        self._ack_now = self._rexmit_force = self._sws_override = False
        self._delack_at = None
