"""Several bulk transfers sharing one bottleneck, in simulated time: how a congestion controller shares a
link and what it does to the bottleneck's queue.

N clients send endless streams to one Listener (N connections) through one FaultyLink with a rate and a
drop-tail queue (the bottleneck, optionally with random loss before it); the ACKs come back over an
unlimited link and are routed to their client by connection id. Time jumps to the next event (a timer
of any connection, a pacing deadline, an arrival), so ten simulated seconds of a 20 Mbit/s link run in
a few seconds of CPU, deterministically for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kbypass.proto.faults import FaultyLink

from .config import ConnConfig
from .connection import Connection, Role
from .events import DataReceived
from .listener import Listener
from .states import State


@dataclass
class FlowsReport:
    """What `run_flows` measured; times in simulated seconds, rates in bit/s."""

    seconds: float
    rate_bps: float
    delivered: list[int]  # bytes each flow's receiver got
    bins: list[list[int]]  # bytes each flow's receiver got in each `bin_seconds` interval
    bin_seconds: float
    queue_max: int  # datagrams waiting at the bottleneck, largest seen at a send
    queue_mean: float  # ... averaged over the sends
    queue_drops: int
    random_lost: int
    sent: int  # datagrams offered to the bottleneck
    timeouts: list[int] = field(default_factory=list)

    @property
    def total_bps(self) -> float:
        return sum(self.delivered) * 8 / self.seconds

    def shares(self, since: float = 0.0) -> list[float]:
        """Each flow's share of what all delivered from `since` to the end."""
        first = int(since / self.bin_seconds)
        per = [sum(b[first:]) for b in self.bins]
        total = sum(per) or 1
        return [p / total for p in per]


def run_flows(n: int = 2, *, rate_bps: float = 20e6, delay: float = 0.005, queue_limit: int = 100,
              loss: float = 0.0, seconds: float = 10.0, starts: list[float] | None = None,
              config: ConnConfig | None = None, seed: int = 0, bin_seconds: float = 0.5) -> FlowsReport:
    """`n` flows (client i starts at starts[i], default all at 0) through one bottleneck of `rate_bps`
    with `queue_limit` datagrams of drop-tail queue and `delay` one way (both ways), `loss` random loss
    on the forward path, for `seconds`."""
    config = config or ConnConfig(max_datagram_size=1472, send_buffer=1 << 20, recv_buffer=1 << 20,
                                  max_window=1 << 19, initial_rto=0.25, min_rto=0.02, max_rto=2.0)
    starts = list(starts) if starts is not None else [0.0] * n
    rng = random.Random(seed)
    ab = FaultyLink(seed, loss=loss, delay=delay, rate_bps=rate_bps, queue_limit=queue_limit)
    ba = FaultyLink(seed ^ 0x5A5A5A, delay=delay, queue_limit=1 << 30)
    listener = Listener(config, rng=rng, backlog=n, max_connections=n)
    clients = [Connection(Role.CLIENT, config, 0.0, rng=rng) for _ in range(n)]
    by_id = {c.local_id: i for i, c in enumerate(clients)}
    started = [False] * n
    servers: dict = {}  # server Connection -> flow index
    nbins = int(seconds / bin_seconds + 0.999999)
    bins = [[0] * nbins for _ in range(n)]
    block = memoryview(random.Random(seed).randbytes(1 << 16))
    qsum = qn = qmax = 0
    now = 0.0
    while now < seconds:
        for i, c in enumerate(clients):
            if not started[i] and now >= starts[i]:
                started[i] = True
                c.connect(now)
            if started[i] and c.state is State.ESTABLISHED:
                while c.next_event() is not None:
                    pass
                while c.send_space:
                    c.send(block[:c.send_space], now)
        while (s := listener.accept()) is not None:
            servers[s] = by_id[s.peer_id]
        for s, i in servers.items():
            while (ev := s.next_event()) is not None:
                if isinstance(ev, DataReceived):
                    bins[i][min(int(now / bin_seconds), nbins - 1)] += len(ev.data)
        for i, c in enumerate(clients):
            if started[i]:
                for d in c.datagrams_to_send(now):
                    q = ab._queued(now)
                    qsum, qn, qmax = qsum + q, qn + 1, max(qmax, q)
                    ab.send(d, now)
        for d in listener.datagrams_to_send(now):
            ba.send(d, now)
        times = [t for t in [*(c.next_timer() for i, c in enumerate(clients) if started[i]),
                             *(t for i, t in enumerate(starts) if not started[i]),
                             listener.next_timer(), ab.next_time(), ba.next_time()] if t is not None]
        if not times:
            break
        now = max(now, min(times))
        listener.receive_datagrams(ab.deliver(now), now)
        for d in ba.deliver(now):
            i = by_id.get(int.from_bytes(d[8:12], "big"))
            if i is not None:
                clients[i].receive_datagrams([d], now)
        for i, c in enumerate(clients):
            if started[i]:
                c.handle_timer(now)
        listener.handle_timer(now)
    return FlowsReport(
        seconds=seconds, rate_bps=rate_bps, delivered=[sum(b) for b in bins], bins=bins, bin_seconds=bin_seconds,
        queue_max=qmax, queue_mean=qsum / max(qn, 1), queue_drops=ab.stats.queue_drops,
        random_lost=ab.stats.lost, sent=ab.stats.sent, timeouts=[c.stats.timeouts for c in clients],
    )
