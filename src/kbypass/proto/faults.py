"""A seeded, reproducible, simulated faulty link: loss, burst loss, reordering, duplication, corruption,
delay, a bottleneck rate with a bounded queue, and blackhole periods.

Pure simulation: no sockets, no sleeps, no clock. The caller passes `now` to `send` and asks `deliver(now)`
for whatever has arrived by then; `next_time()` says when the next datagram arrives, so a driver can jump
simulated time straight there. Same seed + same calls = same output, bit for bit (one random.Random drives
every decision, in a fixed order per datagram).

Order of fates for each datagram sent: blackhole period -> burst loss (Gilbert-Elliott) -> random loss ->
queue overflow (drop-tail at the bottleneck) -> corruption -> reordering (extra delay) -> duplication.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state burst-loss model. Per datagram: in GOOD move to BAD with p_bad, in BAD back with p_good;
    then lose it with loss_good / loss_bad. Mean burst length is 1 / p_good."""

    p_bad: float = 0.01
    p_good: float = 0.3
    loss_good: float = 0.0
    loss_bad: float = 1.0


@dataclass
class LinkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0  # random loss
    burst_lost: int = 0  # lost in a Gilbert-Elliott bad state
    blackholed: int = 0
    queue_drops: int = 0
    corrupted: int = 0
    reordered: int = 0
    duplicated: int = 0


class FaultyLink:
    """One direction of a link. All probabilities are per datagram in [0, 1]; times are seconds.

    delay / jitter: propagation delay plus a uniform extra in [0, jitter) (jitter alone can reorder).
    rate_bps: bottleneck rate (None = infinite); datagrams queue behind each other at that rate.
    queue_limit: datagrams waiting for the bottleneck (or in flight when rate is None) beyond this are
        dropped, so the link itself never holds unbounded memory.
    reorder / reorder_delay: this fraction is held back by an extra uniform [0, reorder_delay).
    corrupt: flip 1..3 random bits (or, one time in four, overwrite a random byte).
    blackholes: (start, end) periods in which every datagram sent is dropped.
    """

    def __init__(self, seed: int, *, loss: float = 0.0, burst: GilbertElliott | None = None,
                 reorder: float = 0.0, reorder_delay: float = 0.01, duplicate: float = 0.0,
                 corrupt: float = 0.0, delay: float = 0.0, jitter: float = 0.0, rate_bps: float | None = None,
                 queue_limit: int = 1000, blackholes: tuple[tuple[float, float], ...] = ()) -> None:
        check_link_args(dict(loss=loss, burst=burst, reorder=reorder, reorder_delay=reorder_delay,
                             duplicate=duplicate, corrupt=corrupt, delay=delay, jitter=jitter, rate_bps=rate_bps,
                             queue_limit=queue_limit, blackholes=blackholes))
        self.seed = seed
        self._rng = random.Random(seed)
        self.loss, self.burst, self.reorder, self.reorder_delay = loss, burst, reorder, reorder_delay
        self.duplicate, self.corrupt, self.delay, self.jitter = duplicate, corrupt, delay, jitter
        self.rate_bps, self.queue_limit = rate_bps, queue_limit
        self.blackholes = tuple(blackholes)
        self.stats = LinkStats()
        self._bad = False  # Gilbert-Elliott state
        self._heap: list[tuple[float, int, bytes]] = []  # (arrival time, order, datagram)
        self._order = 0
        self._tx_free = 0.0  # when the bottleneck finishes its current backlog
        self._backlog: deque[float] = deque()  # finish times of datagrams still queued at the bottleneck

    def _queued(self, now: float) -> int:
        if self.rate_bps is None:
            return len(self._heap)
        while self._backlog and self._backlog[0] <= now:
            self._backlog.popleft()
        return len(self._backlog)

    def send(self, datagram: bytes, now: float) -> bool:
        """Offer one datagram at time `now`. Returns False if it was dropped (it is counted either way)."""
        rng = self._rng
        st = self.stats
        st.sent += 1
        if any(a <= now < b for a, b in self.blackholes):
            st.blackholed += 1
            return False
        if self.burst is not None:
            ge = self.burst
            self._bad = (rng.random() >= ge.p_good) if self._bad else (rng.random() < ge.p_bad)
            if rng.random() < (ge.loss_bad if self._bad else ge.loss_good):
                st.burst_lost += 1
                return False
        if self.loss and rng.random() < self.loss:
            st.lost += 1
            return False
        if self._queued(now) >= self.queue_limit:
            st.queue_drops += 1
            return False
        depart = now
        if self.rate_bps is not None:
            self._tx_free = max(self._tx_free, now) + len(datagram) * 8 / self.rate_bps
            self._backlog.append(self._tx_free)
            depart = self._tx_free
        data = bytes(datagram)
        if self.corrupt and rng.random() < self.corrupt and data:
            data = self._damage(data)
            st.corrupted += 1
        arrival = depart + self.delay + (rng.random() * self.jitter if self.jitter else 0.0)
        if self.reorder and rng.random() < self.reorder:
            arrival += rng.random() * self.reorder_delay
            st.reordered += 1
        self._push(arrival, data)
        if self.duplicate and rng.random() < self.duplicate:
            st.duplicated += 1
            self._push(arrival + rng.random() * max(self.reorder_delay, 1e-6), data)
        return True

    def _damage(self, data: bytes) -> bytes:
        rng = self._rng
        buf = bytearray(data)
        if rng.random() < 0.25:
            i = rng.randrange(len(buf))
            buf[i] = (buf[i] + 1 + rng.randrange(255)) & 0xFF  # a different byte, never the same one
        else:
            bits = rng.sample(range(len(buf) * 8), min(len(buf) * 8, rng.randint(1, 3)))
            for b in bits:
                buf[b // 8] ^= 1 << (b % 8)
        return bytes(buf)

    def _push(self, t: float, data: bytes) -> None:
        self._order += 1
        heapq.heappush(self._heap, (t, self._order, data))

    def deliver(self, now: float) -> list[bytes]:
        """Every datagram that has arrived by `now`, in arrival order."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        self.stats.delivered += len(out)
        return out

    def next_time(self) -> float | None:
        """Arrival time of the next datagram, or None if nothing is in flight."""
        return self._heap[0][0] if self._heap else None

    @property
    def in_flight(self) -> int:
        """Datagrams sent and not yet delivered (not __len__: an empty link must still be truthy)."""
        return len(self._heap)


PROBABILITIES = ("loss", "reorder", "duplicate", "corrupt")
SECONDS = ("delay", "jitter", "reorder_delay")


def check_link_args(kw: dict) -> None:
    """Check FaultyLink keyword arguments (as parse_spec returns them) against their ranges. Raises
    ValueError naming the bad key, its value and the allowed range, in the key=value words of a spec."""
    for name in PROBABILITIES:
        p = kw.get(name, 0.0)
        if not 0.0 <= p <= 1.0:  # also refuses NaN
            raise ValueError(f"{name}={p}: give a probability 0 <= {name} <= 1")
    for name in SECONDS:
        t = kw.get(name, 0.0)
        if not (0.0 <= t and math.isfinite(t)):
            raise ValueError(f"{name}={t}: give a finite number of seconds >= 0")
    rate = kw.get("rate_bps")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate_bps={rate}: give a finite rate > 0 in bit/s (leave it out for an infinitely "
                         "fast link)")
    limit = kw.get("queue_limit", 1)
    if not limit >= 1:
        raise ValueError(f"queue_limit={limit}: give a whole number of datagrams >= 1")
    ge = kw.get("burst")
    if ge is not None:
        for name in ("p_bad", "p_good", "loss_good", "loss_bad"):
            p = getattr(ge, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"burst {name}={p}: give probabilities 0 <= p <= 1 (burst=P_BAD/P_GOOD, "
                                 "e.g. burst=0.01/0.3)")
    for hole in kw.get("blackholes", ()):
        a, b = hole
        if not (0.0 <= a <= b and math.isfinite(a)):
            raise ValueError(f"blackhole={a}-{b}: give START-END seconds with 0 <= START <= END, e.g. "
                             "blackhole=2-4")


def parse_spec(spec: str) -> dict:
    """Parse a command-line fault spec such as "loss=0.05,delay=0.01,burst=0.01/0.3,blackhole=2-4" into
    FaultyLink keyword arguments (for `kbypass xfer --faults ...`). Raises ValueError naming the bad part:
    bad syntax, an unknown key, or a value out of its range (check_link_args)."""
    floats = {"loss", "reorder", "reorder_delay", "duplicate", "corrupt", "delay", "jitter", "rate_bps"}
    kw: dict = {}
    holes = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, val = part.partition("=")
        try:
            if not sep:
                raise ValueError
            if key in floats:
                kw[key] = float(val)
            elif key == "queue_limit":
                kw[key] = int(val)
            elif key == "burst":  # p_bad/p_good
                p_bad, p_good = (float(x) for x in val.split("/"))
                kw["burst"] = GilbertElliott(p_bad=p_bad, p_good=p_good)
            elif key == "blackhole":  # start-end, seconds
                a, b = (float(x) for x in val.split("-"))
                holes.append((a, b))
            else:
                raise KeyError(key)
        except KeyError:
            raise ValueError(
                f"unknown fault {key!r}: use {', '.join(sorted(floats | {'queue_limit', 'burst', 'blackhole'}))}"
            ) from None
        except ValueError:
            raise ValueError(f"bad fault {part!r}: write key=value, e.g. loss=0.05, burst=0.01/0.3, "
                             "blackhole=2-4") from None
    if holes:
        kw["blackholes"] = tuple(holes)
    check_link_args(kw)
    return kw
