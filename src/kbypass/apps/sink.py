"""The sink: receive steered flows, count them, optionally check sequence numbers and one-way latency.

One numpy pass per batch; no Python per packet. Frames are freed right after counting (they are ours
from receive() until free()). Where the port can (AfXdpPort.consume: the C lane; a shared queue too), one C
call per batch does all of it instead, the sequence check included: receive, read the stamps, give the
frames straight back to the fill ring. The numpy path stays the reference (the same-verdict test in
tests/unit/test_sink_consume.py holds the two to the same result).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kbypass.apps.seqcheck import SeqChecker
from kbypass.port.base import Port
from kbypass.port.loop import Ticker, receive_batches
from kbypass.proto.stamp import ETH_IPV4_UDP

# The C path's call (AfXdpPort.consume): up to this many frames, or this long, per return to Python. Each
# return costs the interpreter's loop (~5-10 us here); returning once per wakeup of the kernel (a NAPI poll
# of 64 frames or fewer) cost the sink a quarter of its core at 2 Mpps.
CONSUME_FRAMES = 4096
CONSUME_WAIT = 0.05


@dataclass
class SinkResult:
    packets: int = 0
    bytes: int = 0
    seconds: float = 0.0
    seq: dict | None = None
    latency_us: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0


class Sink:
    def __init__(self, port: Port, *, batch: int = 256, check_seq: bool = False,
                 stamp_offset: int = ETH_IPV4_UDP) -> None:
        self.port = port
        self.batch = batch
        self.stamp_offset = stamp_offset
        self.seq = SeqChecker() if check_seq else None
        self._latency_ns: list[np.ndarray] = []

    def run(self, *, duration: float | None = None, count: int | None = None, idle_timeout: float | None = None,
            report=None) -> SinkResult:
        """Receive until `duration` seconds pass, `count` packets arrived, `idle_timeout` seconds pass with
        nothing (counted from the start, then from the last packet), or SIGINT/SIGTERM. The rate's clock
        runs from the first packet to the last."""
        port, res = self.port, SinkResult()
        ticker = Ticker(report)
        start = last = None
        tick = lambda: ticker.tick(res.packets, time.monotonic())
        loop = dict(duration=duration, idle_timeout=idle_timeout, on_idle=tick,
                    until=None if count is None else lambda: res.packets >= count)
        if self._consumes():
            seq, off = self.seq, self.stamp_offset

            def take():  # up to CONSUME_FRAMES (never past `count`), waiting in C between the kernel's wakeups
                want = CONSUME_FRAMES if count is None else max(1, min(CONSUME_FRAMES, count - res.packets))
                return _some(port.consume(max(want, 1), seq, off, wait=CONSUME_WAIT))

            for n, nbytes, lat, first, last in receive_batches(port, self.batch, **loop, take=take):
                if start is None:  # the frames' own times: a call may wait in C past its last frame
                    start = first
                res.packets += n
                res.bytes += nbytes
                if len(lat):
                    self._latency_ns.append(lat.copy())
                ticker.tick(res.packets, last)
            return self._finish(res, start, last)
        for batch in receive_batches(port, self.batch, **loop):
            last = time.monotonic()
            if start is None:
                start = last
            res.packets += len(batch)
            res.bytes += int(batch.total_lens().sum())  # every frame of a multi-frame packet
            if self.seq is not None:
                stamped = batch[batch.lens >= self.stamp_offset + 16]
                if len(stamped):
                    self.seq.update(stamped.payload_u64(self.stamp_offset))
                    sent = stamped.payload_u64(self.stamp_offset + 8).astype(np.int64)
                    sent = sent[sent != 0]  # a sampling generator (gen --time-every N) leaves the time zero
                    self._latency_ns.append(time.monotonic_ns() - sent)
            port.free(batch)
            ticker.tick(res.packets, last)
        return self._finish(res, start, last)

    def _consumes(self) -> bool:
        """Whether the one-call-per-batch path runs: the port has it, and the stamps (if checked) are past
        the frame's start (consume reads none at offset 0)."""
        return getattr(self.port, "can_consume", False) and (self.seq is None or self.stamp_offset > 0)

    def _finish(self, res: SinkResult, start: float | None, last: float | None) -> SinkResult:
        if start is not None:  # from the first packet to the last: idle time before or after is not rate
            res.seconds = max(last - start, 1e-9)
        if self.seq is not None:
            res.seq = self.seq.summary()
            res.latency_us = latency_summary(self._latency_ns)
        return res


def _some(consumed: tuple):
    """consume()'s result, or None when it took nothing (receive_batches waits then)."""
    return consumed if consumed[0] else None


def latency_summary(chunks: list[np.ndarray]) -> dict | None:
    if not chunks:
        return None
    lat = np.concatenate(chunks) / 1e3
    lat = lat[lat >= 0]  # a stamp from another clock domain would be nonsense; drop it
    if len(lat) == 0:
        return None
    p = np.percentile(lat, [50, 90, 99, 99.9])
    return {"p50": round(float(p[0]), 2), "p90": round(float(p[1]), 2), "p99": round(float(p[2]), 2),
            "p999": round(float(p[3]), 2), "max": round(float(lat.max()), 2), "samples": int(len(lat))}
