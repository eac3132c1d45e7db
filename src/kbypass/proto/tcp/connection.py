"""One TCP connection, sans-IO: the receive path (RFC 9293 3.10.7 segment arrives, RFC 5961 checks, RFC 7323
PAWS, SACK and loss detection) and the application's API. The send path and the timers are in output.py
(a mixin of the same class); the state machine's table is in states.py and `_go` is its only caller.

Sequence numbers inside are absolute integers (seqnum.py); segments carry them mod 2**32.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from kbypass.proto.transport.rtt import RttEstimator

from . import events as ev
from .canned import CannedAnswers
from .config import TcpConfig
from .congestion import make_controller
from .errors import (
    TcpRefusedError,
    TcpResetError,
    TcpStateError,
    TcpTimeoutError,
    TcpUsageError,
)
from .isn import IsnGenerator, default_generator
from .output import Output
from .recvq import Reassembly
from .segment import ACK, FIN, NO_OPTIONS, RST, SYN, Options, Segment
from .sendq import SendQueue
from .seqnum import seq_lt, unwrap
from .states import (
    CAN_SEND,
    PEER_OPEN,
    PREDICTABLE,
    SYNCHRONIZED,
    Input,
    State,
    next_state,
)

OOW_ACK_INTERVAL = 0.5  # seconds (Linux's net.ipv4.tcp_invalid_ratelimit)
DEFAULT_MSS = 536  # RFC 9293 3.7.1: the MSS to assume when the peer's SYN has none
_ERRORS = {ev.REFUSED: TcpRefusedError, ev.TIMED_OUT: TcpTimeoutError, ev.KEEPALIVE: TcpTimeoutError}


@dataclass
class TcpStats:
    segs_in: int = 0
    segs_out: int = 0
    bytes_in: int = 0  # payload delivered in order
    bytes_out: int = 0  # new payload sent (not retransmissions)
    retransmits: int = 0  # segments
    tail_probes: int = 0  # RFC 8985 TLP
    window_probes: int = 0  # zero-window probes sent (persist timer)
    keepalive_probes: int = 0
    fast_recoveries: int = 0
    rtos: int = 0
    dup_acks: int = 0
    challenge_acks: int = 0
    out_of_window: int = 0
    paws_drops: int = 0
    bad_acks: int = 0  # ACK of something we never sent
    ooo_drops: int = 0  # out-of-order segments dropped for the range limit


class TcpConnection(Output, CannedAnswers):
    """Create with `TcpConnection.connect(...)` (active open) or from a `TcpListener` (passive open).

    Drive it with `receive(seg, now)` and `on_timer(now)`; after any call (and after `send`, `shutdown`,
    `abort`, `next_event`) put `segments_to_send(now)` on the wire and sleep until `next_timer()`."""

    def __init__(self, local: tuple[str, int], remote: tuple[str, int], now: float, iss: int,
                 config: TcpConfig | None = None, isn: IsnGenerator | None = None) -> None:
        self.config = cfg = config or TcpConfig()
        self.local, self.remote = local, remote
        self.state = State.CLOSED
        self.iss = iss & 0xFFFFFFFF
        self.sq = SendQueue(self.iss)
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.irs = 0
        self.rcv_nxt = 0
        self.rq: Reassembly | None = None
        self.snd_mss = DEFAULT_MSS
        self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = self.ts_ok = self.wscale_ok = False
        self.ts_recent = 0
        # RFC 7323 5.4: a per-connection offset, from the 4-tuple (isn.py), not from the ISN
        self._ts_offset = (isn or default_generator()).ts_offset(local[0], local[1], remote[0], remote[1])
        self.rtt = RttEstimator(cfg.initial_rto, cfg.min_rto, cfg.max_rto)
        self.cc = make_controller(cfg.congestion, DEFAULT_MSS, cfg.initial_cwnd)
        self.stats = TcpStats()
        self.reset_reason: str | None = None
        self.passive = False  # opened by a listener (from_syn, from_cookie): TCP_INFO counts its bytes so
        self._events: deque[ev.Event] = deque()
        self._unread = 0  # bytes in Data events the application has not taken (app_reads: has not read)
        # A host that queues Data for its application outside the connection (the shim's host and C queue) sets
        # this and says consumed(n) as the application reads: the receive window then counts those bytes too,
        # as the kernel's receive buffer does, so a peer cannot fill the host's memory past recv_buffer
        self.app_reads = False
        self._fin_seq: int | None = None  # absolute sequence number of our FIN, once shutdown() queued it
        self._peer_fin_seq: int | None = None  # a peer FIN that arrived ahead of missing data
        self._shutdown_pending = False  # shutdown() before the handshake finished: FIN once established
        self._blocked = False  # send() accepted less than offered: emit WindowOpened when room returns
        self._syn_due = False  # (re)send our SYN or SYN-ACK
        self._ack_now = False
        self._probe_due = False  # zero-window or keepalive probe (seq = snd_una - 1)
        self._segs_unacked = 0
        self._dupacks_owed = 0  # out-of-order segments since our last ACK: each gets its duplicate ACK
        self._last_ack_sent = 0
        self._adv_right = 0  # right edge of the window we last advertised
        self._rst_out: list[Segment] = []
        self._in_recovery = False
        self._recover = self.iss
        self._dupacks = 0
        self._rexmit_force = False  # the fast retransmission goes out whatever cwnd says (RFC 6675 5 step 4)
        self._rtt_seq: int | None = None  # Karn: the segment being timed (its last byte), or None
        self._rtt_time = 0.0
        self._ts_sample_ok = False  # after a retransmission, take one RTT sample from the echoed timestamp
        self._retries = 0
        self._probes = 0  # keepalive / zero-window probes unanswered
        self._persist_backoff = 0  # zero-window probes sent since the window last opened
        self._sws_override = False  # the persist timer found a small window: fill it despite SWS avoidance
        self._last_recv = now
        self._last_data_at = now  # when we last sent new data (restart after idle)
        self._ch_start = -1.0
        self._oow_at = -1.0  # when we last answered an empty out-of-window segment
        self._ch_count = 0
        self._rto_at: float | None = None
        self._tlp_at: float | None = None  # tail loss probe (RFC 8985 7), armed while data is in flight
        self._tlp_due = False
        self._tlp_out = False  # one probe per tail, until an ACK moves snd_una
        self._delack_at: float | None = None
        self._persist_at: float | None = None
        self._timewait_at: float | None = None
        self._orphaned = False  # the application closed its socket (orphan()): FIN_WAIT_2 then times out
        self._fin2_at: float | None = None  # when an orphaned FIN_WAIT_2 is given up

    # ------------------------------------------------------------------ construction
    @classmethod
    def connect(cls, local: tuple[str, int], remote: tuple[str, int], now: float,
                config: TcpConfig | None = None, iss: int | None = None) -> TcpConnection:
        """Active open: the SYN is in the next `segments_to_send(now)`."""
        gen = default_generator()
        if iss is None:
            iss = gen.isn(local[0], local[1], remote[0], remote[1], now)
        conn = cls(local, remote, now, iss, config, gen)
        conn._go(Input.OPEN)
        conn._syn_due = True
        return conn

    @classmethod
    def from_syn(cls, local: tuple[str, int], remote: tuple[str, int], syn: Segment, now: float, iss: int,
                 config: TcpConfig | None = None, isn: IsnGenerator | None = None) -> TcpConnection:
        """Passive open (for TcpListener): the SYN-ACK is in the next `segments_to_send(now)`."""
        conn = cls(local, remote, now, iss, config, isn)
        conn.passive = True
        conn._take_syn(syn, syn.seq)
        conn._go(Input.PEER_SYN)
        conn._syn_due = True
        return conn

    @classmethod
    def from_cookie(cls, local: tuple[str, int], remote: tuple[str, int], syn: Segment, now: float, cookie: int,
                    config: TcpConfig | None = None, isn: IsnGenerator | None = None) -> TcpConnection:
        """Passive open whose SYN-ACK already went out statelessly (a SYN cookie, TcpListener): `syn` is the
        SYN the cookie stands for, rebuilt; the connection waits in SYN_RCVD for the handshake's ACK."""
        conn = cls(local, remote, now, cookie, config, isn)
        conn.passive = True
        conn._take_syn(syn, syn.seq)
        conn._go(Input.PEER_SYN)
        conn.sq.snd_max = conn.iss + 1  # our SYN was sent (nothing to send again, nothing timed)
        return conn

    # ------------------------------------------------------------------ the application's API
    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue bytes; returns how many fit in the send buffer (the rest: offer again after WindowOpened)."""
        if self.state not in CAN_SEND or self._shutdown_pending:
            self._raise_closed()
        room = self.config.send_buffer - self.sq.queued()
        n = min(room, len(data))
        if n:
            self.sq.append(bytes(data[:n]))
        if n < len(data):
            self._blocked = True
        return n

    def shutdown(self) -> None:
        """Half close: a FIN follows the queued data. Idempotent. Data from the peer still arrives."""
        st = self.state
        if st is State.SYN_SENT or st is State.SYN_RCVD:
            self._shutdown_pending = True  # the FIN follows the handshake (abort() to give up instead)
        elif st in (State.ESTABLISHED, State.CLOSE_WAIT):
            self._fin_seq = self.sq.data_end
            self._go(Input.CLOSE)

    def orphan(self, now: float) -> None:
        """The application closed its socket (after shutdown(), or with abort()): nobody waits for the peer's
        FIN any more, so FIN_WAIT_2 lasts config.fin_timeout at most, then the connection ends quietly as
        Linux's (tcp_fin_timeout: no RST; a peer that sends later gets one, from no socket). A half close
        without it waits as long as the peer wants, as Linux's shutdown(SHUT_WR)."""
        self._orphaned = True
        if self.state is State.FIN_WAIT_2 and self._fin2_at is None:
            self._fin2_at = now + self.config.fin_timeout

    def abort(self) -> None:
        """Reset the connection now (RST to the peer, queued data dropped): SO_LINGER 0 close."""
        if self.state is State.CLOSED:
            return
        if self.state is not State.SYN_SENT:
            self._rst_out.append(self._make(self.sq.snd_max, RST | ACK))
        self._kill(ev.ABORTED)

    def next_event(self) -> ev.Event | None:
        if not self._events:
            return None
        e = self._events.popleft()
        if type(e) is ev.Data and not self.app_reads:
            self._unread -= len(e.data)
            if self.state in PEER_OPEN and self._window_update_due():
                self._ack_now = True
        return e

    def consumed(self, n: int) -> bool:
        """The application read n bytes of Data this connection gave (app_reads hosts): window room again.
        True when the reopened window is worth a segment of its own (_window_update_due: a window update)."""
        self._unread = max(0, self._unread - n)
        if self.state in PEER_OPEN and self._window_update_due():
            self._ack_now = True
            return True
        return False

    def _raise_closed(self):
        if self.reset_reason is not None:
            raise _ERRORS.get(self.reset_reason, TcpResetError)(f"connection {self.reset_reason}")
        if self.state is State.CLOSED and self.sq.snd_max == self.iss:
            raise TcpUsageError("the connection was never opened: use TcpConnection.connect")
        raise TcpStateError("send after shutdown: the connection no longer accepts data to send")

    @property
    def send_room(self) -> int:
        return self.config.send_buffer - self.sq.queued()

    @property
    def send_blocked(self) -> bool:
        """send() took less than offered and WindowOpened has not been emitted since (it may still wait in
        the event queue behind Data the application has not taken)."""
        return self._blocked

    @property
    def finished(self) -> bool:
        """CLOSED: the endpoint may forget this connection (TIME_WAIT still answers retransmitted FINs)."""
        return self.state is State.CLOSED

    # ------------------------------------------------------------------ the state machine's one door
    def _go(self, inp: Input) -> State:
        old = self.state
        new = self.state = next_state(old, inp)
        if new is State.TIME_WAIT:
            self._clear_timers()
            self._timewait_at = self._now + self.config.time_wait
            self._events.append(ev.Closed())
        elif new is State.FIN_WAIT_2 and self._orphaned:
            self._fin2_at = self._now + self.config.fin_timeout
        elif new is State.CLOSED and inp is Input.FIN_ACKED:
            self._clear_timers()
            self._events.append(ev.Closed())
        elif new is State.ESTABLISHED:
            # The SYN's 16-bit window grows with the next ACK we send anyway: no window update just for it.
            self._adv_right = self.rcv_nxt + (self._wnd_field() << self.rcv_wscale)
            self.cc = make_controller(self.config.congestion, self.snd_mss, self.config.initial_cwnd)
            self._events.append(ev.Connected(self.snd_mss, self.wscale_ok, self.sack_ok, self.ts_ok))
            if self._shutdown_pending:
                self._shutdown_pending = False
                self._fin_seq = self.sq.data_end
                self.state = next_state(new, Input.CLOSE)
        return self.state

    def _kill(self, reason: str) -> None:
        self.reset_reason = reason
        self._go(Input.KILL)
        self._clear_timers()
        self._events.append(ev.Reset(reason))

    def _clear_timers(self) -> None:
        self._rto_at = self._delack_at = self._persist_at = self._timewait_at = self._tlp_at = self._fin2_at = None

    # ------------------------------------------------------------------ segment arrives
    _now = 0.0

    def receive(self, seg: Segment, now: float) -> None:
        """Process one segment from the peer (already parsed and checksum-verified, addressed to this 4-tuple)."""
        self._now = now
        self.stats.segs_in += 1
        st = self.state
        if st is State.CLOSED:
            return
        if st is State.SYN_SENT:
            self._rx_syn_sent(seg, now)
            return
        flags = seg.flags
        if st is State.SYN_RCVD and flags & SYN and unwrap(seg.seq, self.rcv_nxt) == self.irs:
            if not flags & ACK:  # the peer's SYN again: our SYN-ACK was lost
                self._syn_due = True
                return
            ack = unwrap(seg.ack, self.sq.snd_una)  # simultaneous open: the peer's SYN-ACK
            if ack == self.iss + 1:
                self._established_by(seg, ack)
                self._ack_now = True
            return
        seq = unwrap(seg.seq, self.rcv_nxt)
        if st is State.TIME_WAIT and flags & SYN and not flags & (ACK | RST) and seq > self.rcv_nxt:
            self._go(Input.TIMEWAIT_DONE)  # a new incarnation (RFC 9293 3.10.7.4 note, Linux TCP_TW_SYN):
            return  # we are CLOSED now; the endpoint hands this same SYN to its listener
        ts = seg.options.timestamps if self.ts_ok else None
        if ts is not None and not flags & RST and seq_lt(ts[0], self.ts_recent):
            self.stats.paws_drops += 1  # RFC 7323 5.3: an old duplicate; acknowledge and drop
            self._ack_now = True
            return
        wnd = self._rcv_wnd()
        seg_len = seg.seg_len
        if not self._acceptable(seq, seg_len, wnd):
            self.stats.out_of_window += 1
            if not flags & RST:
                # Answer with an ACK (RFC 9293); for an empty segment at most one per OOW_ACK_INTERVAL, as
                # Linux does (tcp_invalid_ratelimit): two stacks that disagree must not ping-pong ACKs.
                if seg_len or now - self._oow_at >= OOW_ACK_INTERVAL:
                    self._oow_at = now
                    self._ack_now = True
                if st is State.TIME_WAIT and flags & FIN:
                    self._timewait_at = now + self.config.time_wait  # RFC 9293: restart the 2MSL timeout
            return
        self._last_recv = now
        self._probes = 0
        if flags & RST:
            if seq == self.rcv_nxt:  # RFC 5961 3.2: only an exact RST resets
                self._kill(ev.PEER_RESET)
            else:
                self._challenge_ack(now)
            return
        if flags & SYN:  # RFC 5961 4.2: any SYN in a synchronized state gets a challenge ACK
            self._challenge_ack(now)
            return
        if not flags & ACK:
            return
        if ts is not None and seq <= self._last_ack_sent:
            self.ts_recent = ts[0]  # RFC 7323 4.3
        if st is State.SYN_RCVD:
            ack = unwrap(seg.ack, self.sq.snd_una)
            if not self.sq.snd_una < ack <= self.sq.snd_max:
                self._rst_out.append(Segment(self.local[1], self.remote[1], seg.ack, 0, RST, 0))
                return
            self._established_by(seg, ack)
        if not self._rx_ack(seg, seq, now):
            return
        if seg.payload and self.state in PEER_OPEN:
            self._rx_data(seq, seg.payload, now)
        if flags & FIN:
            self._rx_fin(seq + len(seg.payload), now)

    def _acceptable(self, seq: int, seg_len: int, wnd: int) -> bool:
        """RFC 9293 3.10.7.4 table, plus: at a zero window a segment at rcv_nxt is taken for its ACK and FIN."""
        nxt = self.rcv_nxt
        if seg_len == 0 or wnd == 0:
            return seq == nxt if wnd == 0 else nxt <= seq < nxt + wnd
        return nxt <= seq < nxt + wnd or nxt < seq + seg_len <= nxt + wnd

    def _challenge_ack(self, now: float) -> None:
        if now - self._ch_start >= 1.0:
            self._ch_start, self._ch_count = now, 0
        if self._ch_count < self.config.challenge_ack_limit:
            self._ch_count += 1
            self.stats.challenge_acks += 1
            self._ack_now = True

    def _rx_syn_sent(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        ack = None
        if flags & ACK:
            ack = unwrap(seg.ack, self.iss)
            if not self.iss < ack <= self.sq.snd_max:
                if not flags & RST:
                    self._rst_out.append(Segment(self.local[1], self.remote[1], seg.ack, 0, RST, 0))
                return
        if flags & RST:
            if ack is not None:  # RFC 5961 3.2 in SYN_SENT: the ACK must acknowledge our SYN
                self._kill(ev.REFUSED)
            return
        if not flags & SYN:
            return
        self._take_syn(seg, seg.seq)
        self._last_recv = now
        if ack is not None:
            self._established_by(seg, ack)
            self._ack_now = True
        else:
            self._go(Input.PEER_SYN)  # simultaneous open: answer with SYN-ACK of our own ISN
            self._syn_due = True

    def _take_syn(self, seg: Segment, seq: int) -> None:
        """Record the peer's ISN and negotiate the options (RFC 7323 / RFC 2018 / MSS) from its SYN."""
        cfg, o = self.config, seg.options
        self.irs = seq
        self.rcv_nxt = seq + 1
        self.rq = Reassembly(seq + 1, cfg.max_ooo_ranges)
        self.ts_ok = cfg.timestamps and o.timestamps is not None
        self.sack_ok = cfg.sack and o.sack_permitted
        if cfg.window_scaling and o.wscale is not None:
            self.wscale_ok = True
            self.snd_wscale, self.rcv_wscale = o.wscale, cfg.rcv_wscale
        if self.ts_ok:
            self.ts_recent = o.timestamps[0]
        self.snd_mss = max(64, min(o.mss or DEFAULT_MSS, cfg.mss) - (12 if self.ts_ok else 0))
        self.snd_wnd = seg.window  # never scaled in a SYN
        self.max_snd_wnd = self.snd_wnd
        self.snd_wl1 = seq

    def _established_by(self, seg: Segment, ack: int) -> None:
        self.sq.acked(ack)
        self.snd_wl1, self.snd_wl2 = unwrap(seg.seq, self.rcv_nxt), ack
        if not seg.flags & SYN:
            self.snd_wnd = seg.window << self.snd_wscale
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        if self._rtt_seq is not None:
            self.rtt.sample(self._now - self._rtt_time)
            self._rtt_seq = None
        self._rto_at = None
        self._retries = 0
        self._go(Input.SYN_ACKED)

    def _rx_ack(self, seg: Segment, seq: int, now: float) -> bool:
        """ACK processing; returns False when the segment must be dropped."""
        ts = seg.options.timestamps
        return self._ack_fields(seq, seg.ack, seg.window, seg.flags, len(seg.payload), seg.options.sack,
                                None if ts is None else ts[1], now)

    def _ack_fields(self, seq: int, ack_wire: int, window: int, flags: int, payload_len: int, sack, tsecr,
                    now: float) -> bool:
        """_rx_ack on the segment's fields (the fast path has no Segment): tsecr is the echoed timestamp or None."""
        sq = self.sq
        una = sq.snd_una
        ack = unwrap(ack_wire, una)
        if ack > sq.snd_max:
            self.stats.bad_acks += 1
            self._ack_now = True  # RFC 9293: acknowledges something not yet sent: ACK and drop
            return False
        if ack < una - max(self.max_snd_wnd, 1):
            self.stats.bad_acks += 1
            self._challenge_ack(now)  # RFC 5961 5.2: too old to be a duplicate
            return False
        win = window << self.snd_wscale
        news = False
        if self.sack_ok and sack:
            for left, right in sack:
                news |= sq.sack(unwrap(left, una), unwrap(right, una))
        if ack > una:
            self._new_ack(ack, tsecr, now)
        elif (not payload_len and not flags & (SYN | FIN) and win == self.snd_wnd and una < sq.snd_max):
            self._dupacks += 1
            self.stats.dup_acks += 1
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            self.snd_wnd = win
            self.max_snd_wnd = max(self.max_snd_wnd, win)
            self.snd_wl1, self.snd_wl2 = seq, ack
            if win:
                self._persist_at = None
                self._persist_backoff = 0
        if self._in_recovery or self._recover <= sq.snd_una < sq.snd_max:  # else _detect_loss has nothing to do
            self._detect_loss(news, now)
        if self._fin_seq is not None and sq.snd_una > self._fin_seq and self.state in (
                State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK):
            self._go(Input.FIN_ACKED)
        return True

    def _new_ack(self, ack: int, tsecr: int | None, now: float) -> None:
        sq = self.sq
        acked = ack - sq.snd_una
        sq.acked(ack)
        if self._rtt_seq is not None and ack > self._rtt_seq:
            self.rtt.sample(now - self._rtt_time)
            self._rtt_seq = None
        elif self._ts_sample_ok and tsecr:
            ms = (self._tsval(now) - tsecr) & 0xFFFFFFFF
            if ms < 60_000:
                self.rtt.sample(ms / 1000)
                self._ts_sample_ok = False
        self._retries = 0
        self._dupacks = 0
        if self._in_recovery:
            if ack >= self._recover:
                self._in_recovery = False
            elif not self.sack_ok:  # RFC 6582 partial ACK: the next segment is lost too
                sq.mark_lost(min(ack + self.snd_mss, sq.snd_max), restart=True)
        else:
            self.cc.on_ack(acked, now, self.rtt.srtt)
        self._rto_at = now + self.rtt.rto if sq.snd_una < sq.snd_max else None
        self._tlp_out = False
        self._tlp_at = None
        if sq.snd_una < sq.snd_max:  # else _arm_tlp has nothing to arm
            self._arm_tlp(now)
        if self._blocked and self.send_room >= min(self.config.send_buffer // 2, 64 * 1024):
            self._blocked = False
            self._events.append(ev.WindowOpened(self.send_room))

    def _detect_loss(self, sack_news: bool, now: float) -> None:
        """Fast retransmit (RFC 5681 3 dupacks) or SACK loss detection (RFC 6675 IsLost(snd_una)), once per
        window (RFC 6582 recover); in recovery, new SACK blocks mark the holes below them lost."""
        sq = self.sq
        if self._in_recovery:
            if sack_news:
                sq.mark_lost(sq.high_sacked)
                sq.find_lost_rexmits()
            return
        if sq.snd_una >= sq.snd_max or sq.snd_una < self._recover:
            return
        # after a tail loss probe, any SACK means the holes below it were lost: they left at least a PTO
        # (two SRTTs) before the probe, RACK's time-based rule (RFC 8985 6.2), here by the probe's position
        if self._dupacks >= 3 or (self.sack_ok and (sq.sacked_bytes > 2 * self.snd_mss
                                                    or (self._tlp_out and sq.sacked_bytes))):
            self._in_recovery = True
            self._recover = sq.snd_max
            self.stats.fast_recoveries += 1
            self.cc.on_loss(sq.pipe(), now)
            self._rexmit_force = True
            first = min(sq.snd_una + self.snd_mss, sq.snd_max)
            sq.mark_lost(max(sq.high_sacked, first), restart=True)

    def _rx_data(self, seq: int, payload: bytes, now: float, taken: bool = False) -> None:
        right = self.rcv_nxt + self._rcv_wnd()
        if seq + len(payload) > right:  # past the window: dropped, and the peer told at once (RFC 9293 3.10.7.4)
            payload = payload[:max(0, right - seq)]
            self._ack_now = True
        rq = self.rq
        if not payload:
            self._ack_now = True
            return
        in_order = seq <= self.rcv_nxt and not rq.ooo_bytes
        dropped = rq.dropped
        out = rq.add(seq, payload)
        self.stats.ooo_drops += rq.dropped - dropped
        if out:
            self.rcv_nxt = rq.rcv_nxt
            self.stats.bytes_in += len(out)
            if not taken:
                self._unread += len(out)
                self._events.append(ev.Data(out))
        if not in_order or not out:
            self._ack_now = True  # RFC 5681 4.2: out of order, or filling a hole: ACK at once
            if not out:
                self._dupacks_owed += 1  # one duplicate ACK per out-of-order segment (the peer counts them)
        else:
            self._segs_unacked += 1
            if self._segs_unacked >= 2 or self.config.delayed_ack <= 0:
                self._ack_now = True
            elif self._delack_at is None:
                self._delack_at = now + self.config.delayed_ack
        if self._peer_fin_seq is not None and self._peer_fin_seq == self.rcv_nxt:
            self._rx_fin(self._peer_fin_seq, now)

    def _rx_fin(self, fin_seq: int, now: float) -> None:
        if self.state not in PEER_OPEN:
            self._ack_now = True  # a retransmitted FIN: acknowledge it again
            return
        if fin_seq > self.rcv_nxt:
            self._peer_fin_seq = fin_seq  # ahead of missing data: take it when the hole fills
            self._ack_now = True
            return
        if fin_seq < self.rcv_nxt:
            return
        self._peer_fin_seq = None
        self.rcv_nxt += 1
        self.rq.rcv_nxt = self.rcv_nxt
        self._ack_now = True
        self._events.append(ev.EndOfStream())
        self._go(Input.PEER_FIN)

    def _rcv_wnd(self) -> int:
        return max(0, self.config.recv_buffer - self._unread)

    def _wnd_field(self) -> int:
        """The window field we send now (scaled down, capped at 16 bits). Receiver SWS avoidance (RFC 9293
        3.8.6.2.2): the right edge moves only by min(half the buffer, one MSS) or more, so a reader that
        falls behind shows the sender a zero window, not a trickle of tiny ones."""
        cfg = self.config
        avail = cfg.recv_buffer - self._unread  # _rcv_wnd(), inline: this runs for every segment sent
        if avail < 0:
            avail = 0
        edge = self._adv_right - self.rcv_nxt
        if edge >= 0 and avail - edge < min(cfg.recv_buffer // 2, cfg.mss):
            avail = edge
        return min(avail >> self.rcv_wscale, 0xFFFF)

    def _window_update_due(self) -> bool:
        """A reopened window is worth a segment of its own (the threshold is _wnd_field's). With app_reads (the
        application reads in steps, each may reopen it) only as Linux's tcp_cleanup_rbuf sends one: the window
        shown is at most half the buffer and the new one at least twice it (a read of each request must not cost
        a pure ACK; the next segment carries the window anyway)."""
        wnd = self._wnd_field() << self.rcv_wscale
        shown = self._adv_right - self.rcv_nxt
        if self.rcv_nxt + wnd <= self._adv_right:
            return False
        return not self.app_reads or (2 * shown <= self.config.recv_buffer and wnd >= 2 * shown)

    @property
    def sync(self) -> bool:
        return self.state in SYNCHRONIZED

    # ------------------------------------------------------------------ header prediction (csrc/core/kb_tcp.h)
    def prediction(self) -> tuple | None:
        """What the next segment of an established connection is expected to look like, as the C fast path
        arms it (kb_tcp.h struct kb_tcp_pred, in that order: rcv_nxt, snd_una, snd_max, the receive window,
        ts_ok, ts_recent, the rcv_nxt of our last ACK; wire values), or None when
        nothing may be predicted: a state that is not synchronized (or TIME_WAIT), data held out of order (a segment filling the hole moves
        rcv_nxt past its own end), or a peer FIN waiting for it.

        This connection stays the one source of truth: the prediction is a copy, made after every change on
        the Python side (the endpoint arms it after a flush or a slow segment and clears it before any
        other change), advanced by C on each predicted segment exactly as receive_predicted advances the fields
        it copies."""
        if self.state not in PREDICTABLE or self._peer_fin_seq is not None or self.rq.ooo_bytes:
            return None
        sq = self.sq
        wnd = self._rcv_wnd() if self.state in PEER_OPEN else 0  # after the peer's FIN: predict its ACKs only
        return (self.rcv_nxt & 0xFFFFFFFF, sq.snd_una & 0xFFFFFFFF, sq.snd_max & 0xFFFFFFFF, wnd, self.ts_ok,
                self.ts_recent, self._last_ack_sent & 0xFFFFFFFF)

    def receive_predicted(self, seg: Segment, now: float) -> bool:
        """receive(seg, now) for a segment the fast path predicted (kb_tcp_predict said HIT against the fields
        prediction() gave: a synchronized state other than TIME_WAIT, so ESTABLISHED, FIN_WAIT_1/2, CLOSING,
        CLOSE_WAIT or LAST_ACK; flags ACK or ACK|PSH; seq == rcv_nxt; PAWS passed; the payload inside the
        receive window (none after the peer's FIN); the ACK in [snd_una, snd_max], a duplicate ACK
        (ack == snd_una) included, which _rx_ack counts and answers as receive() does; checksums right), so
        none of receive()'s other branches can be taken: the same ACK and data processing, without the
        checks. A connection no longer predictable (closed or aborted while a stale prediction was armed)
        takes the segment through receive() instead. Returns whether the connection is still predictable
        (else the endpoint clears the prediction)."""
        if self.state not in PREDICTABLE or self._peer_fin_seq is not None or self.rq.ooo_bytes:
            self.receive(seg, now)
            return False
        ts = seg.options.timestamps
        return self.receive_hit(seg.seq, seg.ack, seg.flags, seg.window, None if ts is None else ts[0],
                                None if ts is None else ts[1], seg.payload, now)

    def receive_hit(self, seq_wire: int, ack: int, flags: int, window: int, tsval: int | None, tsecr: int | None,
                    payload: bytes, now: float, taken: bool = False) -> bool:
        """receive_predicted on the fields kbypass._fasttcp.rx returns for a HIT (no Segment built: the
        endpoint's per-segment path). The connection must be predictable (receive_predicted checks it). taken:
        the payload went to the application at the HIT (TcpSocket.take_early, while no event waits): no Data."""
        if self.state not in PREDICTABLE or self._peer_fin_seq is not None or self.rq.ooo_bytes:
            self.receive(Segment(self.remote[1], self.local[1], seq_wire, ack, flags, window,
                                 NO_OPTIONS if tsval is None else Options(timestamps=(tsval, tsecr)), payload), now)
            return False
        seq = self._take_hit(seq_wire, ack, flags, window, tsval, tsecr, len(payload), now)
        if payload and self.state in PEER_OPEN:
            self._rx_data(seq, payload, now, taken)
        return self.state in PREDICTABLE and self._peer_fin_seq is None and not self.rq.ooo_bytes

    @property
    def takes_early(self) -> bool:
        """No event waits for the application: a HIT's bytes may be handed over before receive_hit(taken=True)."""
        return not self._events

    def _take_hit(self, seq_wire: int, ack: int, flags: int, window: int, tsval: int | None, tsecr: int | None,
                  payload_len: int, now: float) -> int:
        """receive()'s work for a predicted segment up to its payload: the ACK processing; its seq (absolute)."""
        self._now = now
        self.stats.segs_in += 1
        seq = unwrap(seq_wire, self.rcv_nxt)
        self._last_recv = now
        self._probes = 0
        if self.ts_ok and seq <= self._last_ack_sent:
            self.ts_recent = tsval
        self._ack_fields(seq, ack, window, flags, payload_len, (), tsecr, now)
        return seq
