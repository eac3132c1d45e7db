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
* Congestion control, as ConnConfig.congestion says: LossTolerantReno (congestion.py): Reno growth; a
  window cut (beta 0.7, once per recovery episode) only when the recent loss rate passes 2%, so random
  loss on a LAN costs only its retransmissions; or Bbr (bbr.py): a model of the bottleneck's rate and
  the path's RTT sets the window and the pacing rate, and loss does not move it. A paced controller's
  allowance (Bbr.budget) limits every datagram of data, and its next send time is one of our timers. RFC 6675 "pipe" (bytes in flight that are neither SACKed nor deemed lost) limits what
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

from . import wire
from .codec import PythonCodec
from .config import ConnConfig
from .congestion import make_controller
from .errors import LocalProtocolError, RemoteProtocolError
from .events import Closed, Connected, ConnectionLost, DataReceived, Event, MessageReceived, PeerClosed
from .output import Output
from .recovery import LossRecovery
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
_PYTHON_CODEC = PythonCodec()


class Connection(Output, LossRecovery):
    """See the module docstring. All methods take `now` (seconds, any monotonic origin) where time matters.
    The input side and the state are here; what goes out is output.py's, ACKs, loss recovery and timers
    recovery.py's.

    codec: what encodes our datagrams (codec.py's API; kbypass.backend.codec() gives the C one to a caller
    that wants it). Default: the reference Python codec; the protocol itself never imports C."""

    def __init__(self, role: Role, config: ConnConfig | None = None, now: float = 0.0,
                 *, rng: random.Random | None = None, codec=None) -> None:
        self.role = role
        self.codec = codec if codec is not None else _PYTHON_CODEC
        self.config = config or ConnConfig()
        self._rng = rng if rng is not None else random.Random()
        self.local_id = self._rng.randrange(1, 1 << 32)
        self.peer_id = 0
        self.state = State.IDLE if role is Role.CLIENT else State.LISTEN
        self.stats = ConnectionStats()
        cfg = self.config
        self.mss = cfg.mss
        self.rtt = RttEstimator(cfg.initial_rto, cfg.min_rto, cfg.max_rto)
        self.cc = make_controller(cfg.congestion, self.mss, cfg.initial_window, cfg.window_limit, self._rng, now)
        self._pace_at: float | None = None  # a paced controller's next send time, while it holds data back
        self.sbuf = SendBuffer(cfg.send_buffer)
        self.rbuf = ReceiveBuffer(cfg.recv_buffer, cfg.message_mode)
        self._events: deque = deque()  # Event objects, or _Chunks of coalesced stream data
        self._created = now
        self._last_recv = now
        self._last_send = now
        self._ts_recent = 0  # latest tsval from the peer, echoed in tsecr
        self._ack_pending = False
        self._ack_now = False  # the pending ACK may not wait (ConnConfig.ack_delay): it tells more than in-order data
        self._ack_at: float | None = None  # when a delayed ACK goes at the latest (_ack_waits)
        self._unacked_bytes = 0  # payload bytes arrived since our last datagram (each carries the ACK)
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
        self._sack_known: dict[int, int] = {}  # the blocks of the last SACK processed, start -> end
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

    def send(self, data: bytes, now: float, lent: bool = False) -> int:
        """Byte-stream mode: queue as much of `data` as the send buffer takes; return that count (may be 0).
        lent: `data` is handed over uncopied (SendBuffer.write says on what terms)."""
        self._now = now
        if self.config.message_mode:
            raise LocalProtocolError("this connection is in message mode: use send_message()")
        self._check_can_send()
        return self.sbuf.write(_byte_view(data), lent)

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

    def take_chunks(self) -> list | None:
        """The next event if it is stream data, taken as next_event takes it (the window opens), as the
        pieces it arrived in (bytes each, in order) instead of one DataReceived: no join, which copied every
        byte once more for an application that keeps pieces anyway (TransportEndpoint.recv_chunk; the join
        was 5% of a jumbo receiver's time). None when the next event is anything else, or there is none."""
        events = self._events
        if not events or type(events[0]) is not _Chunks:
            return None
        chunks = events.popleft()
        self.rbuf.consumed(sum(map(len, chunks)))
        self._maybe_window_update()
        return chunks

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
            # an update may ride a delayed ACK (ConnConfig.ack_delay) while the peer still sees half the
            # buffer open: a jumbo receiver's every read of 128 KiB made one, most of its ACKs
            if self._adv_right - self.rbuf.rcv_nxt < self.config.recv_buffer // 2:
                self._ack_now = True

    @property
    def ack_due(self) -> bool:
        """ConnConfig.ack_bytes of payload arrived since we last sent anything: call datagrams_to_send now,
        before taking more of the batch (the ACK it returns lets the sender's clock and loss recovery run
        while we work through the rest)."""
        return 0 < self.config.ack_bytes <= self._unacked_bytes

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

    # rx_run_params' last field: what kind of run (the codec's rx_run modes: RUN_* in csrc/fastxfer.c)
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
        receive_datagrams'. The codec's rx_run finds such runs in a batch of frames."""
        sb = self.sbuf
        rb = self.rbuf
        if self.state is not State.ESTABLISHED or rb.fin_seq is not None or sb.inflight or sb.fin_seq is not None:
            return None
        window = rb.window
        room = window
        if self.config.ack_bytes:
            # the run ends where an ACK is due (ack_due), and at least one datagram fits: the caller
            # acknowledges, then takes the next run. In whole segments, so the run takes the one that makes
            # the ACK due: cut at ack_bytes, a run of 64 KiB datagrams under a 512 KiB budget stopped one
            # short, and that ninth datagram went through the general path in Python (one in 21 of a jumbo
            # transfer's, 40% of its receiver's datapath time)
            mss = self.config.mss
            due_in = -(-(self.config.ack_bytes - self._unacked_bytes) // mss) * mss
            room = min(room, max(due_in, self.config.max_datagram_size))
        if not rb.ooo:
            return self.local_id, self.peer_id, rb.rcv_nxt, sb.snd_una, self._peer_right, rb.rcv_nxt + window, \
                room, self.RUN_MESSAGES if rb.message_mode else self.RUN_IN_ORDER
        run_end = None if rb.message_mode else rb.extendable_run_end()
        if run_end is None:
            return None  # the latest arrival did not extend the highest run: leave it to the general path
        # (unread + ooo_bytes never exceed the buffer, so the room is never negative; max() says so to C)
        return self.local_id, self.peer_id, run_end, sb.snd_una, self._peer_right, rb.rcv_nxt + window, \
            max(0, min(room, window - rb.ooo_bytes)), self.RUN_OUT_OF_ORDER

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
            self._ack_now = True  # data above a hole: as _on_data, the ACK (its SACK) does not wait
            self._unacked_bytes += sum(map(len, data))
            rb.extend_run(data)
            return
        self._unacked_bytes += len(data)
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
                self._ack_pending = self._ack_now = True
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
                self._ack_pending = self._ack_now = True
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
            self._ack_pending = self._ack_now = True

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

    def _on_data(self, pkt: wire.Packet) -> None:
        self._ack_pending = True  # duplicates too: our earlier ACK may have been lost
        self._unacked_bytes += len(pkt.payload)
        flags = pkt.flags
        # (ESTABLISHED, the usual state, is in PEER_OPEN: tested first, it spares the set lookup)
        if self.state is not State.ESTABLISHED and self.state not in PEER_OPEN and not flags & wire.FIN:
            if pkt.seq + pkt.seq_len <= self.rbuf.rcv_nxt:
                self.stats.duplicates += 1
                return
            raise RemoteProtocolError("data_after_fin")
        had_hole = bool(self.rbuf.ooo)
        out, fin_now, reason = self.rbuf.accept(pkt.seq, pkt.payload, bool(flags & wire.MSG_END),
                                                bool(flags & wire.FIN))
        if had_hole or reason is not None:
            # a hole (being) filled, a duplicate, a drop: the sender's recovery waits on this ACK (RFC 5681 4.2)
            self._ack_now = True
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
