"""The accept path: turn handshake datagrams into server Connections and route later datagrams to them.

Sans-IO like Connection: the caller feeds datagrams from one peer address (or keeps one Listener per
address; ids are random 32-bit, so two peers behind one Listener collide with probability ~n²/2**33).
"""

from __future__ import annotations

import random
from collections import Counter, deque

from . import wire
from .config import ConnConfig
from .connection import Connection, Role
from .errors import RemoteProtocolError


class Listener:
    """Creates a server Connection for each new SYN (up to `max_connections`) and queues it for accept()."""

    def __init__(self, config: ConnConfig | None = None, *, rng: random.Random | None = None,
                 backlog: int = 64, max_connections: int = 1024, codec=None) -> None:
        self.config = config or ConnConfig()
        self.codec = codec  # given to each Connection it makes (None: the reference Python codec)
        self._rng = rng if rng is not None else random.Random()
        self.backlog = backlog
        self.max_connections = max_connections
        self.connections: dict[int, Connection] = {}  # our local id -> connection
        self._by_peer: dict[int, Connection] = {}  # peer id -> connection (to spot SYN retransmits)
        self._pending: deque[Connection] = deque()
        self.drops: Counter = Counter()

    def receive_datagram(self, data: bytes, now: float) -> Connection | None:
        """Route one datagram. Returns the connection that took it (new or existing), or None if it was
        dropped (counted in `drops`). Never raises for bad input."""
        try:
            pkt = wire.decode(data)
        except RemoteProtocolError as e:
            self.drops[e.reason] += 1
            return None
        return self._route(pkt, now)

    def receive_datagrams(self, datagrams, now: float) -> None:
        """Route a batch of datagrams that arrived by `now`, in order: what receive_datagram does for each,
        with the routing of the common datagram (no SYN, for a known connection) done inline, and each run
        of consecutive packets for one connection handed to it in one receive_packets call (a run ends
        before anything else is routed, so every connection sees its packets in arrival order)."""
        decode = wire.decode
        connections = self.connections
        run: list = []  # consecutive packets for one connection, handed over in one call
        run_conn = None
        for data in datagrams:
            try:
                pkt = decode(data)
            except RemoteProtocolError as e:
                self.drops[e.reason] += 1
                continue
            conn = None if pkt.flags & wire.SYN else connections.get(pkt.dst_id)
            if conn is not None and conn is run_conn:
                run.append(pkt)
                continue
            if run:
                run_conn.receive_packets(run, now)
            if conn is not None:
                run, run_conn = [pkt], conn
            else:
                run, run_conn = [], None
                self._route(pkt, now)
        if run:
            run_conn.receive_packets(run, now)

    def _route(self, pkt: wire.Packet, now: float) -> Connection | None:
        if pkt.has(wire.SYN) and not pkt.has(wire.ACK) and pkt.dst_id == 0:
            conn = self._by_peer.get(pkt.src_id)
            if conn is None:
                if len(self._pending) >= self.backlog or len(self.connections) >= self.max_connections:
                    self.drops["listener_full"] += 1
                    return None
                if pkt.has(wire.MSG_MODE) != self.config.message_mode:
                    self.drops["mode_mismatch"] += 1
                    return None
                conn = Connection(Role.SERVER, self.config, now, rng=self._rng, codec=self.codec)
                while conn.local_id in self.connections:  # vanishingly rare; keep ids unique here
                    conn.local_id = self._rng.randrange(1, 1 << 32)
                conn.receive_packet(pkt, now)
                self.connections[conn.local_id] = conn
                self._by_peer[pkt.src_id] = conn
                self._pending.append(conn)
                return conn
            conn.receive_packet(pkt, now)
            return conn
        conn = self.connections.get(pkt.dst_id)
        if conn is None:
            self.drops["unknown_connection"] += 1
            return None
        conn.receive_packet(pkt, now)
        return conn

    def accept(self) -> Connection | None:
        """The next connection created since the last call (it may still be finishing its handshake)."""
        return self._pending.popleft() if self._pending else None

    def reap(self) -> list[Connection]:
        """Forget connections that reached CLOSED; return them."""
        dead = [c for c in self.connections.values() if c.is_closed]
        for c in dead:
            del self.connections[c.local_id]
            self._by_peer.pop(c.peer_id, None)
        return dead

    @property
    def ack_due(self) -> bool:
        """Some connection's ack_due (Connection.ack_due)."""
        return any(c.ack_due for c in self.connections.values())

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        for c in self.connections.values():
            out.extend(c.datagrams_to_send(now))
        return out

    def next_timer(self) -> float | None:
        ts = [t for c in self.connections.values() if (t := c.next_timer()) is not None]
        return min(ts) if ts else None

    def handle_timer(self, now: float) -> None:
        for c in list(self.connections.values()):
            c.handle_timer(now)
