"""One reliable connection, sans-IO: datagrams and time in, datagrams and events out.

Theory of operation
-------------------
* Handshake: the client picks a random 32-bit id and sends SYN (dst_id 0); the server answers SYN|ACK with
  its own id; the client's first ACKing datagram (pure ACK or data) completes it. SYN and SYN|ACK are
  retransmitted on the RTO; a duplicate SYN|ACK is re-acknowledged, a duplicate SYN re-answered.
* Data: 64-bit stream offsets from 0. Every datagram after the handshake carries the cumulative ack, the
  receive window and as many SACK blocks as fit (up to wire.MAX_SACK_BLOCKS). We acknowledge every batch
  of arrivals once, the next time the caller asks `datagrams_to_send` (so a burst of N segments processed
  together costs one ACK). We echo the peer's timestamp as RFC 7323 4.3 says: the newest tsval of data at
  or below rcv_nxt, so a late duplicate or data above a hole never sets the echo.
* Loss detection: a segment is lost if `dupack_threshold` segments above it were SACKed, if that many
  duplicate ACKs arrived, or (RACK-like, catches lost retransmissions) if a datagram we sent more than a
  quarter RTT after it was delivered (a SACKed segment's send time, or the echoed timestamp). Each lost
  segment is retransmitted once, as soon as the pipe allows, without waiting for a timer. The SACK
  blocks of an ACK put the latest arrival's first, then those of the arrivals before it (RFC 2018), so a
  lost ACK does not make received data look lost.
* Tail loss probe (RFC 8985): if no ACK told us anything for 2 SRTT (at least 1 ms) while data is in
  flight, we send one probe: a new segment if the peer's window allows, else the highest un-SACKed one
  again. Its ACK brings the SACK news that repairs a lost tail, a lost retransmission or a lost ACK of a
  whole flight through the path above, instead of an RTO. Only if that fails too does the RTO (RFC 6298)
  fire: everything unSACKed is retransmitted in slow start and the RTO backs off exponentially. An RTO
  that the next ACK shows premature (Eifel: it echoes a transmission older than the RTO) is undone.
* Congestion control: LossTolerantReno (congestion.py): Reno growth; a window cut (beta 0.7, once per
  recovery episode) only when the recent loss rate passes 2%, so random loss on a LAN costs only its
  retransmissions. RFC 6675 "pipe" (bytes in flight that are neither SACKed nor deemed lost) limits what
  we send; the window is capped at `ConnConfig.max_window` (half the send buffer by default), so that the
  buffers have room to keep sending while a hole is repaired.
* Flow control: we never send past the peer's advertised right edge; at a zero window we probe with PING
  (persist timer) so a lost window update cannot deadlock us.
* Liveness: any valid datagram from the peer resets the idle clock; a silent peer is pinged every
  `keepalive_interval`; after `idle_timeout` of silence, or `max_retransmits` RTOs in a row, or
  `max_syn_retransmits` for the handshake, the connection reports ConnectionLost.
* Blame: LocalProtocolError for API misuse (raised); anything wrong with a received datagram is counted in
  `stats.drops[reason]` and never raised.

Sending is bounded by `send_buffer`: `send()` accepts what fits and returns the count (like a non-blocking
socket); `send_message()` takes a whole message or returns False; poll `send_space` and retry.
Receiving is bounded by `recv_buffer`: unread events count against the window we advertise.
"""

from __future__ import annotations

import enum
import random
from collections import Counter, deque
from dataclasses import dataclass, field

from kbypass.native import xfer as _native  # C encoding of segment runs; None: wire.encode_fields each

from . import wire
from .config import ConnConfig
from .congestion import LossTolerantReno
from .errors import LocalProtocolError, RemoteProtocolError
from .events import Closed, Connected, ConnectionLost, DataReceived, Event, MessageReceived, PeerClosed
from .recvbuf import ReceiveBuffer
from .rtt import RttEstimator
from .sendbuf import SendBuffer
from .states import CAN_SEND, CLEAN_END, PEER_OPEN, SYNCHRONIZED, Input, State, next_state


def _byte_view(data):
    """`data` as something whose len() counts bytes, without copying it: bytes as they are, any other
    bytes-like object as a byte view (the send buffer copies what it keeps, once)."""
    if type(data) is bytes:
        return data
    mv = memoryview(data)
    return mv.cast("B") if mv.c_contiguous else mv.tobytes()


class _Chunks(list):
    """Stream data delivered in order and not yet taken by next_event(): the pieces, joined once when the
    application takes them (appending each to a bytearray copied it again at every reallocation)."""

    __slots__ = ()


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass
class ConnectionStats:
    """Counters; read them at any time."""

    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0  # payload bytes put on the wire, retransmissions included
    bytes_acked: int = 0  # payload bytes the peer acknowledged cumulatively: in order in its connection
    # (queued as events for its application, which may not have read them yet)
    bytes_delivered: int = 0  # payload bytes we handed to our application
    retransmits: int = 0  # segments sent again (fast + timeout)
    fast_retransmits: int = 0  # segments retransmitted because SACK/dupacks/RACK said lost
    tail_probes: int = 0  # tail loss probes sent (PTO expiries with data in flight)
    timeouts: int = 0  # RTO expiries
    spurious_timeouts: int = 0  # RTOs the next ACK showed premature (window restored, see _on_ack)
    loss_events: int = 0  # congestion window reductions
    duplicates: int = 0  # received segments we already had
    pings_sent: int = 0
    fin_presumed_acked: int = 0  # closes that gave up waiting for the ack of our FIN (see _lose)
    drops: Counter = field(default_factory=Counter)  # reason -> datagrams dropped
    rtt_ms: float | None = None
    rto_ms: float = 0.0
    cwnd: int = 0


_TS_MASK = 0xFFFFFFFF
# Floor of the tail loss probe timer: below a millisecond a probe would mostly race the ACK that is already
# on its way (an event loop's wake-up jitter), and a spurious probe costs a datagram, no window cut.
_PTO_MIN = 0.001


class Connection:
    """See the module docstring. All methods take `now` (seconds, any monotonic origin) where time matters."""

    def __init__(self, role: Role, config: ConnConfig | None = None, now: float = 0.0,
                 *, rng: random.Random | None = None) -> None:
        self.role = role
        self.config = config or ConnConfig()
        self._rng = rng if rng is not None else random.Random()
        self.local_id = self._rng.randrange(1, 1 << 32)
        self.peer_id = 0
        self.state = State.IDLE if role is Role.CLIENT else State.LISTEN
        self.stats = ConnectionStats()
        cfg = self.config
        self.mss = cfg.mss
        self.rtt = RttEstimator(cfg.initial_rto, cfg.min_rto, cfg.max_rto)
        self.cc = LossTolerantReno(self.mss, cfg.initial_window, max_window=cfg.window_limit)
        self.sbuf = SendBuffer(cfg.send_buffer)
        self.rbuf = ReceiveBuffer(cfg.recv_buffer, cfg.message_mode)
        self._events: deque = deque()  # Event objects, or _Chunks of coalesced stream data
        self._created = now
        self._last_recv = now
        self._last_send = now
        self._ts_recent = 0  # latest tsval from the peer, echoed in tsecr
        self._ack_pending = False
        self._syn_due = False  # (re)send SYN or SYN|ACK on the next datagrams_to_send
        self._syn_retries = 0
        self._rto_deadline: float | None = None
        self._retries = 0  # consecutive RTOs without forward progress
        self._pto_deadline: float | None = None  # tail loss probe timer (see _arm_pto)
        self._tlp_allowed = True  # one probe per flight: re-allowed by the next ACK that tells us something
        self._probe_due = False
        self._rto_undo: tuple[int, int, float] | None = None  # (cwnd, ssthresh, time) before the first RTO
        self._persist_deadline: float | None = None
        self._persist_backoff = 0
        self._fill_due = False  # send a segment that fills the peer's too-small window (_fill_window)
        self._ping_due = False
        self._last_ping: float | None = None
        self._linger_deadline: float | None = None
        self._peer_right = 0  # highest right edge (ack + window) the peer advertised
        # the window of the peer's handshake datagram, sent with nothing buffered: its whole receive buffer
        self._peer_buffer: int | None = None
        self._adv_right = 0  # right edge we last advertised
        self._dupacks = 0
        self._rack_xmit = -1.0  # send time of the latest datagram the peer answered
        self._lost_reason: str | None = None
        self._rst_due = False
        self._now = now

    # ------------------------------------------------------------------ state
    def _go(self, inp: Input) -> None:
        new = next_state(self.state, inp)
        if new is None:
            raise LocalProtocolError(f"{inp.value} is not allowed in state {self.state.value}")
        old, self.state = self.state, new
        if new is State.ESTABLISHED and old in (State.SYN_SENT, State.SYN_RCVD):
            self._events.append(Connected(self.local_id, self.peer_id))
        if new in CLEAN_END and inp not in (Input.LOST, Input.ABORT, Input.LINGER_DONE):
            self._events.append(Closed())
            self._rto_deadline = self._pto_deadline = None
        if new is State.TIME_WAIT:
            self._linger_deadline = self._now + self.config.time_wait
        if new is State.CLOSED:
            self._rto_deadline = self._pto_deadline = self._persist_deadline = self._linger_deadline = None

    def _lose(self, reason: str) -> None:
        if self.state in CLEAN_END:
            return  # closed, or TIME_WAIT: Closed was reported, and nothing can be lost after it
        sb = self.sbuf
        if self.state in (State.LAST_ACK, State.CLOSING) and sb.fin_seq is not None and sb.snd_una >= sb.fin_seq:
            # The peer's FIN arrived and all our data was acknowledged; only the ack of our FIN is missing
            # (the peer is most likely done and gone). Nothing of ours or theirs is lost: a clean close.
            self.stats.fin_presumed_acked += 1
            self._go(Input.FIN_ACKED)
            return
        self._lost_reason = reason
        self._go(Input.LOST)
        self._events.append(ConnectionLost(reason))

    @property
    def is_closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def lost_reason(self) -> str | None:
        """Why the connection died (what its ConnectionLost says), or None: it did not, or not yet."""
        return self._lost_reason

    # ------------------------------------------------------------------ local API
    def connect(self, now: float) -> None:
        """Client: start the handshake (a SYN goes out with the next datagrams_to_send)."""
        self._now = now
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("connect() is for client connections; servers come from a Listener")
        self._go(Input.CONNECT)
        self._syn_due = True

    @property
    def send_space(self) -> int:
        """Bytes send()/send_message() can take right now."""
        return self.sbuf.space if self.state in CAN_SEND else 0

    def send(self, data: bytes, now: float) -> int:
        """Byte-stream mode: queue as much of `data` as the send buffer takes; return that count (may be 0)."""
        self._now = now
        if self.config.message_mode:
            raise LocalProtocolError("this connection is in message mode: use send_message()")
        self._check_can_send()
        return self.sbuf.write(_byte_view(data))

    def send_message(self, msg: bytes, now: float) -> bool:
        """Message mode: queue `msg` whole and return True, or return False if the send buffer is too full
        now (retry when send_space >= len(msg)). Raises LocalProtocolError if it can never fit."""
        self._now = now
        if not self.config.message_mode:
            raise LocalProtocolError("this connection is in byte-stream mode: use send()")
        self._check_can_send()
        if not 0 < len(msg) <= self.config.max_message_size:
            raise LocalProtocolError(
                f"message of {len(msg)} bytes: messages must be 1..{self.config.max_message_size} bytes "
                "(raise max_message_size in ConnConfig, or split it)"
            )
        if self._peer_buffer is not None and len(msg) > self._peer_buffer:
            # the peer holds a message whole until its end arrives: this one would fill its buffer and stop
            raise LocalProtocolError(
                f"message of {len(msg)} bytes is larger than the peer's receive buffer ({self._peer_buffer} "
                "bytes) and could never be delivered: raise recv_buffer at the peer, or lower max_message_size"
            )
        return self.sbuf.write_message(_byte_view(msg))

    def _check_can_send(self) -> None:
        if self.state not in CAN_SEND:
            raise LocalProtocolError(
                f"cannot send in state {self.state.value}: the connection is closing or closed"
                + ("" if self.state is not State.IDLE else "; call connect() first")
            )

    def close(self, now: float) -> None:
        """Graceful close: a FIN follows all queued data. Events continue until Closed/ConnectionLost."""
        self._now = now
        if self.state in (State.SYN_SENT, State.SYN_RCVD, State.IDLE, State.LISTEN):
            raise LocalProtocolError("close() before Connected: wait for Connected, or use abort()")
        self._go(Input.CLOSE)
        self.sbuf.queue_fin()

    def abort(self, now: float) -> None:
        """Drop the connection at once; the peer is told with RST (best effort)."""
        self._now = now
        if self.state is State.CLOSED:
            return
        self._rst_due = self.state in SYNCHRONIZED or self.state is State.SYN_RCVD
        self._go(Input.ABORT)

    def next_event(self) -> Event | None:
        """The next event, or None. Taking data events opens our receive window."""
        if not self._events:
            return None
        ev = self._events.popleft()
        if type(ev) is _Chunks:
            ev = DataReceived(b"".join(ev))
        if isinstance(ev, (DataReceived, MessageReceived)):
            self.rbuf.consumed(len(ev.data))
            self._maybe_window_update()
        return ev

    def peek_event(self) -> Event | None:
        """The next event without taking it (a data event peeked does not open the window)."""
        if not self._events:
            return None
        ev = self._events[0]
        if type(ev) is _Chunks:
            data = b"".join(ev)
            ev[:] = [data]  # joined once: next_event's join of one bytes object returns it, no copy
            return DataReceived(data)
        return ev

    def _maybe_window_update(self) -> None:
        # Tell the peer when the window grew enough to be worth a datagram (avoids silly-window chatter).
        grown = self.rbuf.right_edge - self._adv_right
        if self.state in PEER_OPEN and grown >= min(2 * self.mss, self.config.recv_buffer // 2):
            self._ack_pending = True

    # ------------------------------------------------------------------ input
    def receive_datagram(self, data: bytes, now: float) -> None:
        """Feed one datagram from the wire. Never raises for bad input: drops are counted by reason."""
        self._now = now
        try:
            pkt = wire.decode(data)
        except RemoteProtocolError as e:
            self.stats.drops[e.reason] += 1
            return
        self.receive_packet(pkt, now)

    def receive_datagrams(self, datagrams, now: float) -> None:
        """Feed a batch of datagrams that arrived by `now`, in arrival order: exactly what calling
        receive_datagram on each in turn does, with the per-call work paid once per batch. As before,
        the whole batch is acknowledged by one ACK at the next datagrams_to_send."""
        self._now = now
        decode = wire.decode
        on_packet = self._on_packet
        for data in datagrams:
            try:
                on_packet(decode(data), now)
            except RemoteProtocolError as e:
                self.stats.drops[e.reason] += 1

    def receive_packets(self, pkts, now: float) -> None:
        """receive_packet for each of a batch of decoded packets, in order (the Listener's batch path)."""
        self._now = now
        on_packet = self._on_packet
        for pkt in pkts:
            try:
                on_packet(pkt, now)
            except RemoteProtocolError as e:
                self.stats.drops[e.reason] += 1

    # rx_run_params' last field: what kind of run (kbypass._fastxfer's RUN_* values)
    RUN_IN_ORDER, RUN_OUT_OF_ORDER, RUN_MESSAGES = 0, 1, 2

    def rx_run_params(self) -> tuple[int, int, int, int, int, int, int, int] | None:
        """The conditions under which a run of arriving datagrams may skip the general path, or None when
        none may now: (local_id, peer_id, seq, ack, right, room_end, room_bytes, mode).

        A datagram qualifies when it has flags exactly ACK (in message mode ACK or ACK|MSG_END), no SACK
        blocks, our ids (src_id == peer_id, dst_id == local_id), a non-empty payload starting at the
        running `seq` and ending by `room_end`, ack == `ack` and ack + window <= `right`; the run's
        payloads must add up to at most `room_bytes`. Nothing of ours is in flight, so such a datagram
        tells our sender side nothing. `mode` RUN_IN_ORDER or RUN_MESSAGES: `seq` is rcv_nxt, the next
        in-order bytes, delivered at once (as stream data, or as messages at their MSG_END boundaries);
        RUN_OUT_OF_ORDER (stream mode only): `seq` is the end of the out-of-order run the latest arrival
        extended, the highest data we hold, so the segments that keep arriving while a hole below waits
        for its retransmission are buffered. Either way receive_run's effects are all of
        receive_datagrams'. kbypass._fastxfer.rx_run finds such runs in a batch of frames."""
        sb = self.sbuf
        rb = self.rbuf
        if self.state is not State.ESTABLISHED or rb.fin_seq is not None or sb.inflight or sb.fin_seq is not None:
            return None
        window = rb.window
        if not rb.ooo:
            return self.local_id, self.peer_id, rb.rcv_nxt, sb.snd_una, self._peer_right, rb.rcv_nxt + window, \
                window, self.RUN_MESSAGES if rb.message_mode else self.RUN_IN_ORDER
        run_end = None if rb.message_mode else rb.extendable_run_end()
        if run_end is None:
            return None  # the latest arrival did not extend the highest run: leave it to the general path
        # (unread + ooo_bytes never exceed the buffer, so the room is never negative; max() says so to C)
        return self.local_id, self.peer_id, run_end, sb.snd_una, self._peer_right, rb.rcv_nxt + window, \
            max(0, window - rb.ooo_bytes), self.RUN_OUT_OF_ORDER

    def receive_run(self, data, count: int, tsval: int, now: float, mode: int, ends=()) -> None:
        """Take `count` datagrams that met rx_run_params() (checked by the caller; `mode` as it said),
        their payloads in `data` (joined in one bytes object, or for RUN_OUT_OF_ORDER a list of one per
        datagram), `ends` the message boundaries in data (RUN_MESSAGES) and `tsval` the last one's
        timestamp: exactly what receive_datagrams does with them."""
        self._now = now
        stats = self.stats
        stats.datagrams_received += count
        self._last_recv = now
        # _accept_valid's rule, applied to the run: in-order datagrams all start at rcv_nxt as they
        # arrive, so only the tsval test applies (to the last one's tsval, the one rx_run returns: a run
        # whose tsvals go backwards, which needs a retransmission inside it, echoes that one, not the
        # newest); datagrams above a hole never set the echo.
        if mode != self.RUN_OUT_OF_ORDER and self._ts_newer(tsval):
            self._ts_recent = tsval
        self._ack_pending = True
        rb = self.rbuf
        if mode == self.RUN_OUT_OF_ORDER:
            rb.extend_run(data)
            return
        events = self._events
        if mode == self.RUN_MESSAGES:
            for msg in rb.take_messages(data, ends):
                stats.bytes_delivered += len(msg)
                events.append(MessageReceived(msg))
            if len(rb.partial) >= rb.limit:
                self._message_too_large()
            return
        n = len(data)
        rb.rcv_nxt += n
        rb.unread += n
        stats.bytes_delivered += n
        if events and type(events[-1]) is _Chunks:
            events[-1].append(data)
        else:
            events.append(_Chunks((data,)))

    def receive_packet(self, pkt: wire.Packet, now: float) -> None:
        """Like receive_datagram, for a packet already decoded (the Listener decodes once to route)."""
        self._now = now
        try:
            self._on_packet(pkt, now)
        except RemoteProtocolError as e:
            self.stats.drops[e.reason] += 1

    def _on_packet(self, pkt: wire.Packet, now: float) -> None:
        st = self.state
        flags = pkt.flags
        if (st is State.ESTABLISHED and not flags & (wire.SYN | wire.RST) and pkt.dst_id == self.local_id
                and pkt.src_id == self.peer_id):
            # Nearly every datagram of a transfer: the general path below, minus the tests that cannot
            # succeed for an established connection and a packet without SYN or RST.
            self._accept_valid(pkt, now)
            if flags & wire.ACK:
                # the ACK riding on a receiver's data changes nothing when it does not widen the window
                if not self._quiet_ack(pkt) or pkt.ack + pkt.window > self._peer_right:
                    self._on_ack(pkt, now)
            if pkt.payload or flags & wire.FIN:
                self._on_data(pkt)
            if flags & wire.PING:
                self._ack_pending = True
            return
        if st in (State.CLOSED, State.IDLE):
            raise RemoteProtocolError("not_connected")
        if st is State.LISTEN:
            if not (pkt.has(wire.SYN) and not pkt.has(wire.ACK) and pkt.dst_id == 0):
                raise RemoteProtocolError("not_connected", "expected a SYN")
            if pkt.has(wire.MSG_MODE) != self.config.message_mode:
                raise RemoteProtocolError("mode_mismatch", "peer and listener disagree on message mode")
            self.peer_id = pkt.src_id
            self._accept_valid(pkt, now)
            self._peer_right = self._peer_buffer = pkt.window
            self._go(Input.SYN_IN)
            self._syn_due = True
            self._rto_deadline = None
            return
        if pkt.dst_id == 0 and pkt.flags & (wire.SYN | wire.ACK) == wire.SYN and pkt.src_id == self.peer_id:
            # the peer's SYN again: our SYN|ACK was lost or is slow. Answer again while that can help.
            self._accept_valid(pkt, now)
            if st is State.SYN_RCVD:
                self._syn_due = True
            else:
                self.stats.duplicates += 1
            return
        if pkt.dst_id != self.local_id:
            raise RemoteProtocolError("wrong_connection", f"dst id {pkt.dst_id:#x}")
        if st is State.SYN_SENT:
            if not (pkt.has(wire.SYN) and pkt.has(wire.ACK)):
                raise RemoteProtocolError("unexpected", f"flags {pkt.flags:#x} during handshake")
            if pkt.has(wire.MSG_MODE) != self.config.message_mode:
                raise RemoteProtocolError("mode_mismatch", "peer and we disagree on message mode")
            self.peer_id = pkt.src_id
        elif pkt.src_id != self.peer_id:
            raise RemoteProtocolError("wrong_connection", f"src id {pkt.src_id:#x}")
        self._accept_valid(pkt, now)

        if pkt.has(wire.RST):
            if st is State.TIME_WAIT:
                # RFC 1337: a reset cannot take anything from a connection that closed cleanly (the peer
                # aborted in LAST_ACK because our final ACK was lost, or an old duplicate). Keep lingering.
                self.stats.drops["reset_in_time_wait"] += 1
                return
            self._lose("reset by peer")
            return
        if st is State.SYN_SENT:
            self._rtt_sample(pkt.tsecr, now)
            self._peer_right = self._peer_buffer = pkt.window
            self._rto_deadline = None
            self._syn_retries = 0
            self._ack_pending = True
            self._go(Input.SYNACK_IN)
            return
        if pkt.has(wire.SYN):
            # a retransmitted SYN (our SYN|ACK was lost) or SYN|ACK (our ACK was lost): answer again
            if st is State.SYN_RCVD and not pkt.has(wire.ACK):
                self._syn_due = True
            else:
                self._ack_pending = True
            return
        if st is State.SYN_RCVD:
            if not pkt.has(wire.ACK):
                raise RemoteProtocolError("unexpected", "no ACK after SYN|ACK")
            self._rto_deadline = None
            self._syn_retries = 0
            self._go(Input.ACK_IN)
        if pkt.has(wire.ACK):
            self._on_ack(pkt, now)
        if pkt.payload or pkt.has(wire.FIN):
            self._on_data(pkt)
        if pkt.has(wire.PING):
            self._ack_pending = True

    def _accept_valid(self, pkt: wire.Packet, now: float) -> None:
        self.stats.datagrams_received += 1
        self._last_recv = now
        if pkt.seq <= self.rbuf.rcv_nxt and self._ts_newer(pkt.tsval):
            self._ts_recent = pkt.tsval

    def _ts_newer(self, tsval: int) -> bool:
        """RFC 7323 4.3: echo a tsval only if it is not older than the one we echo now (32-bit serial
        comparison: our timestamps are microseconds mod 2**32). The caller also requires the datagram to
        start at or below rcv_nxt, not above a hole. Otherwise a network duplicate of an old datagram,
        or one that waited in a queue, would make us echo its send time: the peer would take an RTT
        sample as old as that datagram (seconds, and an RTO to match) and its Eifel check would see an
        old transmission answered and undo an RTO that was needed."""
        return not self._ts_recent or (tsval - self._ts_recent) & _TS_MASK < 0x80000000

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
            self._rtt_sample(pkt.tsecr, now)
            self.cc.on_ack(max(acked, 1), sb.snd_una)
            self._retries = 0
            self._dupacks = 0
            self._rto_deadline = now + self.rtt.rto if sb.inflight else None
            news = True
        elif sb.inflight and pkt.sacks and not pkt.payload and not pkt.flags & (wire.FIN | wire.PING):
            # only ACKs that report out-of-order data count: window updates and ping answers do not
            self._dupacks += 1
        if pkt.sacks and sb.inflight:
            # one pass over the flight, blocks in order (a receiver sends disjoint blocks; an overlapping
            # one from a broken peer may go unused, which costs it a retransmission, nothing more)
            blocks = sorted(pkt.sacks)
            bi, nb = 0, len(blocks)
            # RACK (RFC 8985 6.2) takes the send time of each newly SACKed segment: the echoed timestamp
            # cannot tell it, as the peer echoes only data at or below its rcv_nxt (RFC 7323 4.3), never
            # the data above a hole that SACKs report. A retransmitted segment SACKed sooner than min_rtt
            # after its latest transmission was the original's arrival: its send time is unknown.
            rack = self._rack_xmit
            min_rtt = self.rtt.min_rtt
            for seg in sb.inflight:
                while bi < nb and blocks[bi][1] <= seg.seq:
                    bi += 1
                if bi == nb:
                    break
                if not seg.sacked and seg.seq >= blocks[bi][0] and seg.end <= blocks[bi][1]:
                    seg.sacked = True
                    sb.sacked_segments += 1
                    seg.lost = False
                    news = True
                    if seg.sent_at > rack and (seg.tx_count == 1 or (
                            min_rtt is not None and now - seg.sent_at >= min_rtt)):
                        rack = seg.sent_at
            self._rack_xmit = rack
        if news and pkt.tsecr:
            self._rack_xmit = max(self._rack_xmit, self._ts_to_time(pkt.tsecr, now))
        if news:
            self._tlp_allowed = True
            self._pto_deadline = None
            self._arm_pto(now)
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
        if newly_lost:
            # FlightSize (RFC 5681) counts SACKed bytes too: cutting the pipe would cut twice as hard
            if self.cc.on_loss(sb.inflight_bytes, sb.snd_una, sb.snd_nxt, newly_lost):
                self.stats.loss_events += 1

    def _on_data(self, pkt: wire.Packet) -> None:
        self._ack_pending = True  # duplicates too: our earlier ACK may have been lost
        flags = pkt.flags
        # (ESTABLISHED, the usual state, is in PEER_OPEN: tested first, it spares the set lookup)
        if self.state is not State.ESTABLISHED and self.state not in PEER_OPEN and not flags & wire.FIN:
            if pkt.seq + pkt.seq_len <= self.rbuf.rcv_nxt:
                self.stats.duplicates += 1
                return
            raise RemoteProtocolError("data_after_fin")
        out, fin_now, reason = self.rbuf.accept(pkt.seq, pkt.payload, bool(flags & wire.MSG_END),
                                                bool(flags & wire.FIN))
        if reason == "duplicate":
            self.stats.duplicates += 1
        elif reason is not None:
            self.stats.drops[reason] += 1
        events = self._events
        for chunk in out:
            self.stats.bytes_delivered += len(chunk)
            if self.config.message_mode:
                events.append(MessageReceived(chunk))
            elif events and type(events[-1]) is _Chunks:
                events[-1].append(chunk)  # stream data coalesces into one DataReceived
            else:
                events.append(_Chunks((chunk,)))
        if len(self.rbuf.partial) >= self.rbuf.limit:
            self._message_too_large()
            return
        if fin_now:
            self._events.append(PeerClosed())
            self._go(Input.PEER_FIN)
        if self.state is State.TIME_WAIT and not fin_now:
            # the peer retransmits: it missed our ack of its data or FIN. Linger on, so that we are still
            # here to answer its next try (a closed endpoint could not, and the peer would report loss).
            self._linger_deadline = self._now + self.config.time_wait

    def _message_too_large(self) -> None:
        """Message mode: the unfinished message fills the whole receive buffer. Its end can never fit, and
        the window stays shut for good while keepalives keep both ends alive: fail now, and reset the
        peer so its sender stops too (it sees "reset by peer"; if the RST is lost, its persist pings go
        unanswered and it reports the silence)."""
        self._rst_due = True
        self._lose(f"a message larger than the receive buffer ({self.config.recv_buffer} bytes) is arriving: "
                   "raise recv_buffer to at least the peer's max_message_size")

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
        self._ack_pending = False
        return wire.encode_fields(flags, self.local_id, self.peer_id, seq, ack, window,
                                  (int(now * 1e6) & _TS_MASK) or 1, self._ts_recent, sacks, payload, max_size)

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
        if self._ack_pending:
            out.append(self._packet(wire.ACK, now))
        self.stats.rtt_ms = None if self.rtt.srtt is None else self.rtt.srtt * 1e3
        self.stats.rto_ms = self.rtt.rto * 1e3
        self.stats.cwnd = self.cc.cwnd
        return out

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
        self._ack_pending = False
        if ack + window > self._adv_right:
            self._adv_right = ack + window  # (only when a datagram tells the peer: see _maybe_window_update)
        out.append(wire.encode_fields(flags, self.local_id, self.peer_id, seg.seq, ack, window, tsval,
                                      self._ts_recent, sacks, seg.data, self.config.max_datagram_size))
        if self._rto_deadline is None:
            self._rto_deadline = now + self.rtt.rto
        if self._pto_deadline is None:  # (already armed for nearly every segment of a flight)
            self._arm_pto(now)

    def _emit_new(self, segs: list, now: float, out: list[bytes], fields: tuple) -> None:
        """_emit for a run of new segments from SendBuffer.cut_run (already marked sent at `now`): the
        per-segment effects summed, the datagrams encoded in one C call when there are no SACK blocks to
        carry (kbypass._fastxfer.encode_segments), else one by one as _emit does."""
        ack, window, tsval, sacks = fields
        stats = self.stats
        stats.bytes_sent += segs[-1].seq + len(segs[-1].data) - segs[0].seq
        stats.datagrams_sent += len(segs)
        self._last_send = now
        self._ack_pending = False
        if ack + window > self._adv_right:
            self._adv_right = ack + window
        if sacks or _native is None:
            max_size = self.config.max_datagram_size
            for seg in segs:
                out.append(wire.encode_fields(wire.ACK | (wire.MSG_END if seg.msg_end else 0), self.local_id,
                                              self.peer_id, seg.seq, ack, window, tsval, self._ts_recent, sacks,
                                              seg.data, max_size))
        else:
            _native.encode_segments(self.local_id, self.peer_id, ack, window, tsval, self._ts_recent, segs, out)
        if self._rto_deadline is None:
            self._rto_deadline = now + self.rtt.rto
        if self._pto_deadline is None:
            self._arm_pto(now)

    def _pto(self) -> float | None:
        """Tail loss probe timeout (RFC 8985 7.2): 2 SRTT. We acknowledge every batch of arrivals at once
        (no delayed-ACK timer), so no delayed-ACK allowance is added. None: no RTT yet, or the RTO is due
        first anyway."""
        if self.rtt.srtt is None:
            return None
        pto = max(2 * self.rtt.srtt, _PTO_MIN)
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
        sb = self.sbuf
        cwnd = self.cc.cwnd
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
        # 1. retransmit what is deemed lost, lowest first (may go up to the old snd_nxt whatever the window)
        for seg in sb.inflight if any_lost else ():
            if pipe >= cwnd:
                return
            if seg.lost:
                self.stats.retransmits += 1
                if self._retries == 0:  # no RTO since the last progress: SACK/dupack/RACK found it
                    self.stats.fast_retransmits += 1
                self._emit(seg, now, out, fields)
                pipe += len(seg.data) or 1
        # 2. new data within cwnd and the peer's window: cut in one run, then emitted together
        mss = self.mss
        if pipe < cwnd and sb.unsent:
            segs = sb.cut_run(mss, cwnd - pipe, self._peer_right, now)
            if segs:
                self._emit_new(segs, now, out, fields)
                pipe += segs[-1].seq + len(segs[-1].data) - segs[0].seq
            n = sb.next_length(mss)
            if pipe < cwnd and n and self._peer_right - sb.unsent_seq < n:  # blocked by the peer's window
                if not sb.inflight and self._persist_deadline is None:
                    self._persist_deadline = now + self.rtt.rto
                return
        # 3. the FIN, once all data is cut (it needs no window: it occupies no buffer space)
        if sb.fin_queued and not sb.unsent and pipe < cwnd:
            self._emit(sb.cut_fin(), now, out, fields)

    # ------------------------------------------------------------------ timers
    def next_timer(self) -> float | None:
        """The earliest time handle_timer() has work to do, or None (closed)."""
        if self.state is State.CLOSED:
            return None
        if self.state in (State.IDLE, State.LISTEN):
            return None
        cand = [] if self.state is State.TIME_WAIT else [self._last_recv + self.config.idle_timeout]
        for t in (self._rto_deadline, self._pto_deadline, self._persist_deadline, self._linger_deadline):
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
