"""A client and a server over two simulated FaultyLinks with a simulated clock: the test and demo harness.

Every segment crosses the link as bytes (encoded with its checksum, parsed on arrival), so the codec is in
the loop and a corrupted segment is dropped the way an endpoint drops it. Time jumps to the earliest timer
or arrival, so minutes of retransmission backoff run in milliseconds, deterministically for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kbypass.proto.faults import FaultyLink

from . import events as ev
from .config import TcpConfig
from .connection import TcpConnection
from .errors import TcpError, TcpParseError
from .isn import IsnGenerator
from .listener import TcpListener
from .segment import Segment, parse_segment

CLIENT_IP, SERVER_IP = "10.0.0.1", "10.0.0.2"
CLIENT_PORT, SERVER_PORT = 40000, 80


class Livelock(RuntimeError):
    """The simulation kept stepping without simulated time moving: a timer bug."""


@dataclass
class App:
    """The application on one end: what it sends, whether and when it reads, what it got."""

    data: bytes = b""
    shutdown_when_sent: bool = True  # shutdown() once all of `data` is queued
    read_from: float = 0.0  # do not read events before this time (a stalled reader: zero window)
    conn: TcpConnection | None = None
    sent: int = 0
    received: bytearray = field(default_factory=bytearray)
    events: list = field(default_factory=list)  # non-Data events in order
    shut: bool = False
    error: Exception | None = None

    @property
    def done(self) -> bool:
        return any(isinstance(e, (ev.Closed, ev.Reset)) for e in self.events)

    def run(self, now: float) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            while self.sent < len(self.data) and not self.shut:
                n = conn.send(self.data[self.sent:self.sent + 65536])
                if n == 0:
                    break
                self.sent += n
            if self.sent >= len(self.data) and self.shutdown_when_sent and not self.shut:
                conn.shutdown()
                self.shut = True
        except TcpError as e:
            self.error = e
        if now < self.read_from:
            return
        while (e := conn.next_event()) is not None:
            if type(e) is ev.Data:
                self.received += e.data
            else:
                self.events.append(e)


class TcpPair:
    """CLIENT_IP:CLIENT_PORT (active open) <-> SERVER_IP:SERVER_PORT (a TcpListener), over links ab / ba."""

    def __init__(self, ab: FaultyLink | None = None, ba: FaultyLink | None = None, *,
                 client_cfg: TcpConfig | None = None, server_cfg: TcpConfig | None = None,
                 client: App | None = None, server: App | None = None, seed: int = 0, now: float = 0.0,
                 simultaneous: bool = False, isns: tuple[int, int] | None = None) -> None:
        """`simultaneous`: the server end also connects actively (simultaneous open); no listener then."""
        rng = random.Random(seed)
        self.ab = ab or FaultyLink(seed, delay=0.0005)
        self.ba = ba or FaultyLink(seed + 1, delay=0.0005)
        self.now = now
        gen = IsnGenerator(rng.randbytes(32))
        if isns is not None:  # pin both ISNs (to test sequence-number wrap-around)
            gen.isn = lambda *a: isns[1]
        self.listener = TcpListener(SERVER_IP, SERVER_PORT, server_cfg, gen)
        self.client = client or App()
        self.server = server or App()
        self.client.conn = TcpConnection.connect((CLIENT_IP, CLIENT_PORT), (SERVER_IP, SERVER_PORT), now,
                                                 client_cfg, iss=isns[0] if isns else rng.getrandbits(32))
        if simultaneous:
            self.server.conn = TcpConnection.connect((SERVER_IP, SERVER_PORT), (CLIENT_IP, CLIENT_PORT), now,
                                                     server_cfg, iss=isns[1] if isns else rng.getrandbits(32))
        self.parse_drops = 0
        self.path_mss = min((client_cfg or TcpConfig()).mss, (server_cfg or TcpConfig()).mss)
        self.steps = 0
        self.trace: list[tuple[float, str, Segment]] | None = None  # set to [] to record every segment
        self.drop = None  # drop(tag, segment) -> True: lose this segment ("c": client's, "s": server's)

    def _send(self, segs: list[Segment], link: FaultyLink, src: str, dst: str, tag: str) -> None:
        for seg in segs:
            if self.trace is not None:
                self.trace.append((self.now, tag, seg))
            if self.drop is not None and self.drop(tag, seg):
                continue
            raw = seg.encode(src, dst)
            if len(raw) > self.path_mss + 20:  # a TCP segment of MSS payload + 20 header bytes fits the MTU
                raise AssertionError(f"{tag} sent {len(raw)} TCP bytes; the path takes {self.path_mss + 20}")
            link.send(raw, self.now)

    def _arrive(self, raw: bytes, src: str, dst: str) -> Segment | None:
        try:
            return parse_segment(src, dst, raw)
        except TcpParseError:
            self.parse_drops += 1
            return None

    def step(self) -> None:
        now = self.now
        self.steps += 1
        for raw in self.ab.deliver(now):
            seg = self._arrive(raw, CLIENT_IP, SERVER_IP)
            if seg is None:
                continue
            if self.server.conn is not None:
                self.server.conn.receive(seg, now)
            else:
                out, conn = self.listener.receive(seg, CLIENT_IP, now)
                self._send(out, self.ba, SERVER_IP, CLIENT_IP, "s")
                if conn is not None:
                    self.server.conn = conn
        for raw in self.ba.deliver(now):
            seg = self._arrive(raw, SERVER_IP, CLIENT_IP)
            if seg is not None:
                self.client.conn.receive(seg, now)
        for conn in (self.client.conn, self.server.conn):
            if conn is not None and (t := conn.next_timer()) is not None and t <= now:
                conn.on_timer(now)
        t = self.listener.next_timer()
        if t is not None and t <= now:
            self._send([s for _ip, s in self.listener.on_timer(now)], self.ba, SERVER_IP, CLIENT_IP, "s")
        self.client.run(now)
        self.server.run(now)
        self._send(self.client.conn.segments_to_send(now), self.ab, CLIENT_IP, SERVER_IP, "c")
        if self.server.conn is not None:
            self._send(self.server.conn.segments_to_send(now), self.ba, SERVER_IP, CLIENT_IP, "s")

    def next_time(self) -> float | None:
        times = [self.ab.next_time(), self.ba.next_time(), self.client.conn.next_timer(), self.listener.next_timer(),
                 self.client.read_from if self.client.read_from > self.now else None,
                 self.server.read_from if self.server.read_from > self.now else None]
        if self.server.conn is not None:
            times.append(self.server.conn.next_timer())
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def run(self, until: float = 600.0, *, stop=None, max_steps: int = 2_000_000) -> None:
        """Step until both connections are finished (or `stop(pair)` is true, or simulated `until`)."""
        still = 0
        self.step()
        while self.steps < max_steps:
            if stop is not None and stop(self):
                return
            if self.client.conn.finished and (self.server.conn is None or self.server.conn.finished):
                return
            t = self.next_time()
            if t is None or t > until:
                return
            if t <= self.now:
                still += 1
                if still > 10_000:
                    raise Livelock(f"time stuck at {self.now}")
            else:
                still = 0
            self.now = max(self.now, t)
            self.step()
        raise Livelock(f"{max_steps} steps")
