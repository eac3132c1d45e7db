"""Two endpoints over a pair of simulated FaultyLinks with a simulated clock: the test and demo harness.

The driver loop jumps time to the earliest of (either endpoint's timer, either link's next arrival), so a
transfer that would take minutes of wall time under loss runs in milliseconds, deterministically.
A loop that stops advancing time is reported as a livelock instead of spinning forever.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kbypass.faults import FaultyLink

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
        for d in self.ab.deliver(self.now):
            self.listener.receive_datagram(d, self.now)
        for d in self.ba.deliver(self.now):
            self.client.conn.receive_datagram(d, self.now)
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
