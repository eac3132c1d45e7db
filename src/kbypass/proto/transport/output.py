"""Connection's output: what goes on the wire at each datagrams_to_send (handshake, retransmissions, new
data within the congestion and peer windows, FIN, probes, pings, ACKs), encoded through the connection's
codec (codec.py, or the C one kbypass.backend gives the endpoint). A mixin of Connection (connection.py).
"""

from __future__ import annotations

from . import wire
from .states import SYNCHRONIZED, State

_TS_MASK = 0xFFFFFFFF


class Output:
    """Connection's methods that build datagrams (state in Connection.__init__)."""

    __slots__ = ()

    # ------------------------------------------------------------------ output
    def _ts(self, now: float) -> int:
        return (int(now * 1e6) & _TS_MASK) or 1

    def _window_room(self) -> int:
        return self._peer_right - self.sbuf.snd_nxt

    def _packet(self, flags: int, now: float, seq: int = 0, payload: bytes = b"") -> bytes:
        ack = 0
        sacks: tuple | list = ()
        rbuf = self.rbuf
        window = rbuf.window
        max_size = self.config.max_datagram_size
        st = self.state
        if (st is not State.IDLE and st is not State.SYN_SENT) or flags & wire.ACK:
            flags |= wire.ACK
            ack = rbuf.rcv_nxt
            if rbuf.ooo and max_size - wire.OVERHEAD - len(payload) >= wire.SACK_SIZE:
                # only when a block fits: a full-sized data segment has no room for one (encode drops them)
                sacks = rbuf.sack_blocks(wire.MAX_SACK_BLOCKS)
            if ack + window > self._adv_right:
                self._adv_right = ack + window
        if flags & wire.SYN and self.config.message_mode:
            flags |= wire.MSG_MODE
        self.stats.datagrams_sent += 1
        self._last_send = now
        self._ack_pending = self._ack_now = False
        self._ack_at = None
        self._unacked_bytes = 0
        return self._encode(flags, seq, ack, window, (int(now * 1e6) & _TS_MASK) or 1, sacks, payload, max_size)

    def _encode(self, flags: int, seq: int, ack: int, window: int, tsval: int, sacks, payload,
                max_size: int) -> bytes:
        """One datagram of ours: through the codec when it carries no SACK block (none given, or none fits
        beside the payload), else wire.encode_fields, which also names a field out of range."""
        if (not sacks or max_size - wire.OVERHEAD - len(payload) < wire.SACK_SIZE) and \
                wire.OVERHEAD + len(payload) <= max_size:
            try:
                return self.codec.encode(flags, self.local_id, self.peer_id, seq, ack, window, tsval,
                                         self._ts_recent, payload)
            except OverflowError:
                pass  # (the C codec) a field out of range: wire.encode_fields says which
        return wire.encode_fields(flags, self.local_id, self.peer_id, seq, ack, window, tsval, self._ts_recent,
                                  sacks, payload, max_size)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Everything due to go on the wire now (handshake, data, retransmissions, ACKs, probes)."""
        self._now = now
        out: list[bytes] = []
        st = self.state
        if self._rst_due:
            self._rst_due = False
            out.append(self._packet(wire.RST, now))
        if st is State.CLOSED:
            return out
        if self._syn_due and st in (State.SYN_SENT, State.SYN_RCVD):
            self._syn_due = False
            out.append(self._packet(wire.SYN | (wire.ACK if st is State.SYN_RCVD else 0), now))
            if self._rto_deadline is None:
                self._rto_deadline = now + self.rtt.rto
            return out
        if st not in SYNCHRONIZED:
            return out
        before = len(out)
        self._send_segments(now, out)
        if self._fill_due:
            self._fill_due = False
            self._fill_window(now, out)
        if self._probe_due:
            self._probe_due = False
            if len(out) == before:  # whatever _send_segments sent would have served as the probe
                self._send_probe(now, out)
        if self._ping_due:
            self._ping_due = False
            self.stats.pings_sent += 1
            out.append(self._packet(wire.PING, now))
        if self._ack_pending and not self._ack_waits(now):
            out.append(self._packet(wire.ACK, now))
        self.stats.rtt_ms = None if self.rtt.srtt is None else self.rtt.srtt * 1e3
        self.stats.rto_ms = self.rtt.rto * 1e3
        self.stats.cwnd = self.cc.cwnd
        return out

    def _ack_waits(self, now: float) -> bool:
        """May the pending ACK wait (ConnConfig.ack_delay)? Only one for in-order data alone, below ack_bytes,
        in ESTABLISHED with no hole, until its deadline (set at the first call that lets it wait: about when
        its first datagram arrived, as the caller asks after every batch)."""
        delay = self.config.ack_delay
        if not delay or self._ack_now or self.state is not State.ESTABLISHED or self.rbuf.ooo:
            return False
        unacked = self._unacked_bytes
        if not unacked or 0 < self.config.ack_bytes <= unacked:
            return False
        if self._ack_at is None:
            self._ack_at = now + delay
            return True
        return now < self._ack_at

    def _ack_fields(self, now: float) -> tuple[int, int, int, list]:
        """(ack, window, tsval, sacks) for the segments of one datagrams_to_send call, which all carry the
        same acknowledgement (nothing arrives in between): what _packet works out for each datagram, worked
        out once. Only in synchronized states, where every datagram carries ACK."""
        rbuf = self.rbuf
        sacks = rbuf.sack_blocks(wire.MAX_SACK_BLOCKS) if rbuf.ooo else []
        return rbuf.rcv_nxt, rbuf.window, (int(now * 1e6) & _TS_MASK) or 1, sacks

    def _emit(self, seg, now: float, out: list[bytes], fields: tuple | None = None) -> None:
        """Put `seg` on the wire; `fields` from _ack_fields(now), when the caller sends several."""
        ack, window, tsval, sacks = fields or self._ack_fields(now)
        flags = wire.ACK | (wire.MSG_END if seg.msg_end else 0) | (wire.FIN if seg.fin else 0)
        seg.sent_at = now
        if seg.tx_count == 1:
            self.sbuf.resent_segments += 1
        seg.tx_count += 1
        seg.lost = False
        stats = self.stats
        stats.bytes_sent += len(seg.data)
        stats.datagrams_sent += 1
        self._last_send = now
        self._ack_pending = self._ack_now = False
        self._ack_at = None
        self._unacked_bytes = 0
        if ack + window > self._adv_right:
            self._adv_right = ack + window  # (only when a datagram tells the peer: see _maybe_window_update)
        out.append(self._encode(flags, seg.seq, ack, window, tsval, sacks, seg.data, self.config.max_datagram_size))
        if self._rto_deadline is None or (seg.tx_count > 1 and seg.seq == self.sbuf.snd_una):
            # a retransmission of the first unacknowledged segment gets a whole RTO of its own (Linux re-arms
            # it so too): timed from the ack that last moved, the RTO fired while a hole's repair was on its
            # way, two round trips after the original (one to detect the loss, one for the retransmission),
            # wherever the RTT is steady and the RTO near it (sim_flows at 1% loss, 10 ms RTT: 14 RTOs in 4 s)
            self._rto_deadline = now + self.rtt.rto
        if self._pto_deadline is None:  # (already armed for nearly every segment of a flight)
            self._arm_pto(now)

    def _emit_new(self, segs: list, now: float, out: list[bytes], fields: tuple) -> None:
        """_emit for a run of new segments from SendBuffer.cut_run (already marked sent at `now`): the
        per-segment effects summed, the datagrams encoded in one C call when there are no SACK blocks to
        carry (codec.encode_segments), else one by one as _emit does."""
        ack, window, tsval, sacks = fields
        stats = self.stats
        stats.bytes_sent += segs[-1].seq + len(segs[-1].data) - segs[0].seq
        stats.datagrams_sent += len(segs)
        self._last_send = now
        self._ack_pending = self._ack_now = False
        self._ack_at = None
        self._unacked_bytes = 0
        if ack + window > self._adv_right:
            self._adv_right = ack + window
        if sacks:
            max_size = self.config.max_datagram_size
            for seg in segs:
                out.append(self._encode(wire.ACK | (wire.MSG_END if seg.msg_end else 0), seg.seq, ack, window,
                                        tsval, sacks, seg.data, max_size))
        else:
            self.codec.encode_segments(self.local_id, self.peer_id, ack, window, tsval, self._ts_recent, segs, out)
        if self._rto_deadline is None:
            self._rto_deadline = now + self.rtt.rto
        if self._pto_deadline is None:
            self._arm_pto(now)

    def _fill_window(self, now: float, out: list[bytes]) -> None:
        """The peer's window stayed smaller than our next segment for a whole persist period, though not
        shut: send what fits (RFC 9293 3.8.6.2.1, the sender's SWS override). Waiting for it to grow hangs
        for ever when it never can: in message mode, a message larger than the peer's receive buffer.
        Filled, that buffer holds an unfinished message and nothing else, and the peer fails the
        connection (_message_too_large) instead of both ends pinging each other for ever."""
        sb = self.sbuf
        room = self._window_room()
        if not sb.inflight and 0 < room < sb.next_length(self.mss):
            self._emit(sb.cut(room), now, out)

    def _send_segments(self, now: float, out: list[bytes]) -> None:
        cc = self.cc
        if not cc.paced:
            self._send_within(now, out, cc.cwnd)
            return
        # a paced controller: its allowance bounds the window's room too, and what holds data back sets
        # our next send time (a timer), or marks the flight app-limited for the model's rate samples
        self._pace_at = None
        if cc.pacing_rate <= 0:
            cc.start_pacing(now, self.rtt.srtt)
        before = self.stats.bytes_sent
        pipe, held = self._send_within(now, out, cc.cwnd, cc.budget(now))
        cc.spend(self.stats.bytes_sent - before)
        if held:
            self._pace_at = cc.next_send_time(now)  # the pacer holds data back until then
        elif pipe < cc.cwnd:
            cc.app_limited(pipe)  # nothing to send, or the peer's window holds it back

    def _send_within(self, now: float, out: list[bytes], cwnd: int, budget: float | None = None) -> tuple[int, bool]:
        """Send what the congestion window (and a pacer's `budget` of bytes) allows. Returns the pipe, and
        whether the budget, not the window, held back data that could go (a retransmission or new data)."""
        sb = self.sbuf
        fields = self._ack_fields(now)
        # the pipe (RFC 6675: bytes in flight neither SACKed nor deemed lost; a FIN counts one), and whether
        # anything waits for retransmission, in one pass over the flight
        pipe = 0
        any_lost = False
        for seg in sb.inflight:
            if seg.sacked:
                continue
            if seg.lost:
                any_lost = True
            else:
                pipe += len(seg.data) or 1
        limit = cwnd if budget is None else min(cwnd, pipe + int(budget))
        # 1. retransmit what is deemed lost, lowest first (may go up to the old snd_nxt whatever the window)
        for seg in sb.inflight if any_lost else ():
            if pipe >= limit:
                return pipe, limit < cwnd
            if seg.lost:
                self.stats.retransmits += 1
                if self._retries == 0:  # no RTO since the last progress: SACK/dupack/RACK found it
                    self.stats.fast_retransmits += 1
                self._emit(seg, now, out, fields)
                pipe += len(seg.data) or 1
        # 2. new data within cwnd and the peer's window: cut in one run, then emitted together
        mss = self.mss
        if sb.unsent:
            if pipe < limit:
                segs = sb.cut_run(mss, limit - pipe, self._peer_right, now)
                if segs:
                    self._emit_new(segs, now, out, fields)
                    pipe += segs[-1].seq + len(segs[-1].data) - segs[0].seq
            n = sb.next_length(mss)
            if pipe < limit and n and self._peer_right - sb.unsent_seq < n:  # blocked by the peer's window
                if not sb.inflight and self._persist_deadline is None:
                    self._persist_deadline = now + self.rtt.rto
                return pipe, False
            if pipe >= limit and limit < cwnd and n:
                return pipe, True
        # 3. the FIN, once all data is cut (it needs no window: it occupies no buffer space)
        if sb.fin_queued and not sb.unsent and pipe < cwnd:
            self._emit(sb.cut_fin(), now, out, fields)
        return pipe, False
