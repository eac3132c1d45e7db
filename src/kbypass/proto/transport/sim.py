"""Two endpoints over a pair of simulated FaultyLinks with a simulated clock: the test and demo harness.

The driver loop jumps time to the earliest of (either endpoint's timer, either link's next arrival), so a
transfer that would take minutes of wall time under loss runs in milliseconds, deterministically.
A loop that stops advancing time is reported as a livelock instead of spinning forever.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kbypass.proto.faults import FaultyLink

from .config import ConnConfig
from .connection import Connection, Role
from .events import Closed, Connected, ConnectionLost, DataReceived, MessageReceived, PeerClosed
from .listener import Listener


class Livelock(RuntimeError):
    """The simulation kept running without simulated time moving: a bug in the protocol's timers."""


@dataclass
class Side:
    """The application on one end: what it sends, whether it reads, what it got."""

    conn: Connection | None = None
    stream: bytes = b""  # stream mode: bytes to send
    messages: list[bytes] = field(default_factory=list)  # message mode: messages to send
    close_when_done: bool = True  # close() once everything is queued (stream/messages sent)
    close_on_peer_close: bool = True
    reads: bool = True  # take events each step (False: a receiver that never reads)
    sent_upto: int = 0  # stream bytes / messages accepted by the connection
    received: bytearray = field(default_factory=bytearray)
    received_messages: list[bytes] = field(default_factory=list)
    events: list = field(default_factory=list)  # non-data events, in order
    connected: bool = False
    peer_closed: bool = False
    closed: bool = False
    lost: str | None = None
    close_called: bool = False
    peak_send_buffer: int = 0
    peak_recv_buffer: int = 0

    @property
    def finished(self) -> bool:
        return self.closed or self.lost is not None


class PairSim:
    """client <-> server over `ab` (client to server) and `ba` links. The server comes from a Listener."""

    def __init__(self, ab: FaultyLink, ba: FaultyLink, client_cfg: ConnConfig | None = None,
                 server_cfg: ConnConfig | None = None, *, seed: int = 0, now: float = 0.0) -> None:
        self.ab, self.ba = ab, ba
        self.now = now
        rng = random.Random(seed)
        self.client = Side(Connection(Role.CLIENT, client_cfg or ConnConfig(), now, rng=rng))
        self.server = Side()
        self.listener = Listener(server_cfg or client_cfg or ConnConfig(), rng=rng)
        self.steps = 0

    def start(self) -> None:
        self.client.conn.connect(self.now)

    # ---------------------------------------------------------------- the application's side
    def _app(self, side: Side) -> None:
        conn = side.conn
        if conn is None:
            return
        if side.reads:
            while (ev := conn.next_event()) is not None:
                if isinstance(ev, DataReceived):
                    side.received += ev.data
                elif isinstance(ev, MessageReceived):
                    side.received_messages.append(ev.data)
                else:
                    side.events.append(ev)
                    if isinstance(ev, Connected):
                        side.connected = True
                    elif isinstance(ev, PeerClosed):
                        side.peer_closed = True
                    elif isinstance(ev, Closed):
                        side.closed = True
                    elif isinstance(ev, ConnectionLost):
                        side.lost = ev.reason
        else:
            # a non-reading app still learns of control events at the head of the queue
            ev = conn.peek_event()
            if isinstance(ev, Connected):
                conn.next_event()
                side.connected = True
                side.events.append(ev)
        if not side.connected or side.finished or conn.is_closed:
            return
        if conn.config.message_mode:
            while side.sent_upto < len(side.messages) and conn.send_space:
                if not conn.send_message(side.messages[side.sent_upto], self.now):
                    break
                side.sent_upto += 1
            done = side.sent_upto == len(side.messages)
        else:
            while side.sent_upto < len(side.stream) and conn.send_space:
                side.sent_upto += conn.send(side.stream[side.sent_upto : side.sent_upto + 65536], self.now)
            done = side.sent_upto == len(side.stream)
        if not side.close_called and done and (
            side.close_when_done or (side.close_on_peer_close and side.peer_closed)
        ):
            side.close_called = True
            conn.close(self.now)
        side.peak_send_buffer = max(side.peak_send_buffer, conn.sbuf.used)
        rb = conn.rbuf
        side.peak_recv_buffer = max(side.peak_recv_buffer, rb.unread + rb.ooo_bytes + len(rb.partial))

    # ---------------------------------------------------------------- the driver
    def step(self) -> bool:
        """One round: apps, outputs, jump time, inputs, timers. False when nothing is left to happen."""
        self.steps += 1
        if self.server.conn is None:
            self.server.conn = self.listener.accept()
        for side in (self.client, self.server):
            self._app(side)
        now = self.now
        for d in self.client.conn.datagrams_to_send(now):
            self.ab.send(d, now)
        for d in self.listener.datagrams_to_send(now):
            self.ba.send(d, now)
        times = [t for t in (self.client.conn.next_timer(), self.listener.next_timer(),
                             self.ab.next_time(), self.ba.next_time()) if t is not None]
        if not times:
            return False
        self.now = max(now, min(times))
        # all that arrived by now, as one batch each (what an endpoint's loop takes from its ring)
        self.listener.receive_datagrams(self.ab.deliver(self.now), self.now)
        self.client.conn.receive_datagrams(self.ba.deliver(self.now), self.now)
        self.client.conn.handle_timer(self.now)
        self.listener.handle_timer(self.now)
        if self.server.conn is None:
            self.server.conn = self.listener.accept()
        for side in (self.client, self.server):
            self._app(side)  # so `until` sees events at the time they happened
        return True

    def run(self, until, max_time: float = 600.0, max_stalled_steps: int = 10000) -> bool:
        """Step until `until(self)` is true (returns True) or simulated time passes `max_time` or nothing
        is left to do (returns False)."""
        stalled = 0
        while not until(self):
            before = self.now
            if not self.step() or self.now > max_time:
                for side in (self.client, self.server):
                    self._app(side)
                return until(self)
            stalled = stalled + 1 if self.now == before else 0
            if stalled > max_stalled_steps:
                raise Livelock(f"simulated time stuck at {self.now} for {stalled} steps")
        return True

    def both_finished(self) -> bool:
        return self.client.finished and self.server.finished


# ==================================================================== CPU-bound endpoints
@dataclass
class GoodputReport:
    """What `measure_goodput` saw (all times simulated seconds)."""

    loss: float
    completed: bool
    seconds: float  # from Connected to the last byte handed to the receiving application
    goodput_bps: float
    timeouts: int  # RTO firings at the sender
    retransmits: int
    fast_retransmits: int
    tail_probes: int
    loss_events: int  # congestion window reductions
    idle_seconds: float  # nothing in flight: no data datagram on the forward link or waiting at the receiver
    sender_idle_seconds: float  # the sender's loop asleep
    data_lost: int  # datagrams the forward link lost
    acks_lost: int  # datagrams the return link lost
    duplicates: int  # segments the receiver already had: spurious retransmissions
    acks_sent: int  # datagrams the receiver sent (its CPU spent on them is CPU not spent on data)
    ring_drops: int = 0  # datagrams either endpoint's full RX ring dropped (measure_goodput's `ring`)


class _Host:
    """One endpoint's loop, modelled after TransportEndpoint.pump: take up to `batch` arrived datagrams,
    feed them (each costs `cost`), run due timers, then send everything due as one batch, which leaves when
    its cost (`cost` per datagram) is paid. With nothing to do it sleeps; a datagram wakes it `wake` after
    its arrival, a timer wakes it on time."""

    def __init__(self, machine, inlink: FaultyLink, outlink: FaultyLink, cost: float, wake: float,
                 batch: int, ring: int | None = None) -> None:
        self.m, self.inlink, self.outlink = machine, inlink, outlink
        self.cost, self.wake, self.batch, self.ring = cost, wake, batch, ring
        self.ring_drops = 0
        self.t = 0.0
        self.asleep = False
        self.inbox: list[bytes] = []
        self.busy = 0.0

    def next_action(self) -> float | None:
        if not self.asleep:
            return self.t
        cand = [self.t] if self.inbox else []
        if (a := self.inlink.next_time()) is not None:
            cand.append(max(self.t, a + self.wake))
        if (tm := self.m.next_timer()) is not None:
            cand.append(max(self.t, tm))
        return min(cand) if cand else None

    def pump(self, app) -> int:
        start = self.t
        self.inbox += self.inlink.deliver(self.t)
        if self.ring is not None and len(self.inbox) > self.ring:
            # a full RX ring: what arrived while the loop was busy and found no slot is dropped (tail drop)
            self.ring_drops += len(self.inbox) - self.ring
            del self.inbox[self.ring:]
        take, self.inbox = self.inbox[: self.batch], self.inbox[self.batch :]
        sent = 0
        for d in take:
            self.m.receive_datagram(d, self.t)
            self.t += self.cost
            if self.m.ack_due:  # as TransportEndpoint does between runs: the ACK goes out mid-batch
                sent += self._send(self.m.datagrams_to_send(self.t))
        tm = self.m.next_timer()
        if tm is not None and self.t >= tm:
            self.m.handle_timer(self.t)
        app(self.t)
        sent += self._send(self.m.datagrams_to_send(self.t))
        self.busy += self.t - start
        moved = len(take) + sent
        self.asleep = moved == 0
        return moved

    def _send(self, out: list[bytes]) -> int:
        """One batch out: it leaves when its cost is paid."""
        self.t += self.cost * len(out)
        for d in out:
            self.outlink.send(d, self.t)
        return len(out)


def measure_goodput(loss: float, seed: int = 0, *, size: int = 4_000_000, cost: float = 28e-6,
                    delay: float = 25e-6, wake: float = 10e-6, batch: int = 64, config: ConnConfig | None = None,
                    max_time: float = 60.0, ring: int | None = None) -> GoodputReport:
    """Bulk transfer of `size` bytes between two CPU-bound endpoints over a short lossy link (both
    directions lose `loss` of their datagrams at random), in simulated time.

    The defaults model the AF_XDP veth path: each datagram handled (received or sent, data or ACK) costs
    its endpoint `cost` of Python CPU, so a flow moves at most 1/cost datagrams a second (28 us: ~35.7k/s,
    ~400 Mbit/s of 1426-byte payloads; measured over veth: 352 Mbit/s); one-way delay 25 us; an idle loop
    wakes 10 us after a datagram lands. Before the fixes of 2026-11 this model gave 0.35-0.43 of the
    loss-free goodput at 1% loss, as the real path did (0.31-0.34). Only the protocol's timers and the
    link's randomness decide the outcome, so a seed gives the same report every time. The config
    defaults to kbypass.xfer's (default_config) for UDP on a 1500-byte MTU. `ring`: each endpoint's RX
    ring holds that many datagrams waiting for its loop, and drops what arrives beyond (None: unbounded);
    the testbed's shallow queue (an AF_XDP fill ring of 2048 4 KiB frames holds 128 datagrams of 64 KiB)."""
    if config is None:
        config = ConnConfig(max_datagram_size=1472, send_buffer=1 << 20, recv_buffer=1 << 20, max_window=1 << 19,
                            initial_rto=0.25, min_rto=0.02, max_rto=2.0, time_wait=0.001)
    ab = FaultyLink(seed, loss=loss, delay=delay, queue_limit=1 << 30)
    ba = FaultyLink(seed ^ 0x5A5A5A, loss=loss, delay=delay, queue_limit=1 << 30)
    rng = random.Random(seed)
    client = Connection(Role.CLIENT, config, 0.0, rng=rng)
    listener = Listener(config, rng=rng)
    hc = _Host(client, ba, ab, cost, wake, batch, ring)
    hs = _Host(listener, ab, ba, cost, wake, batch, ring)
    data = random.Random(seed).randbytes(size)
    st = dict(sent=0, received=0, t_conn=None, t_done=None, server=None)

    def client_app(now: float) -> None:
        while (ev := client.next_event()) is not None:
            if isinstance(ev, Connected):
                st["t_conn"] = now
            elif isinstance(ev, ConnectionLost):
                st["t_done"] = -1.0
        if st["t_conn"] is not None:
            while st["sent"] < size and client.send_space:
                st["sent"] += client.send(data[st["sent"] : st["sent"] + 65536], now)

    def server_app(now: float) -> None:
        if st["server"] is None:
            st["server"] = listener.accept()
        srv = st["server"]
        if srv is None:
            return
        while (ev := srv.next_event()) is not None:
            if isinstance(ev, DataReceived):
                st["received"] += len(ev.data)
        if st["received"] >= size and st["t_done"] is None:
            st["t_done"] = now

    client.connect(0.0)
    idle = 0.0
    last = 0.0
    while st["t_done"] is None:
        cand = [(t, i) for i, h in enumerate((hc, hs)) if (t := h.next_action()) is not None]
        if not cand:
            break
        t, i = min(cand)
        if t > max_time:
            break
        if st["t_conn"] is not None and ab.in_flight == 0 and not hs.inbox and t > last:
            idle += t - last  # nothing of the sender's was on its way since the previous event
        last = max(last, t)
        h = (hc, hs)[i]
        h.t = max(h.t, t)
        h.pump(client_app if h is hc else server_app)
    done = st["t_done"] is not None and st["t_done"] >= 0
    t_conn = st["t_conn"] or 0.0
    seconds = (st["t_done"] if done else max(hc.t, hs.t)) - t_conn
    cs = client.stats
    srv = st["server"]
    return GoodputReport(
        loss=loss, completed=done, seconds=seconds,
        goodput_bps=st["received"] * 8 / seconds if seconds > 0 else 0.0,
        timeouts=cs.timeouts, retransmits=cs.retransmits, fast_retransmits=cs.fast_retransmits,
        tail_probes=getattr(cs, "tail_probes", 0), loss_events=cs.loss_events, idle_seconds=idle,
        sender_idle_seconds=seconds - hc.busy, data_lost=ab.stats.lost, acks_lost=ba.stats.lost,
        duplicates=srv.stats.duplicates if srv is not None else 0,
        acks_sent=srv.stats.datagrams_sent if srv is not None else 0, ring_drops=hc.ring_drops + hs.ring_drops,
    )
