"""The sink: receive steered flows, count them, optionally check sequence numbers and one-way latency.

One numpy pass per batch; no Python per packet. Frames are freed right after counting (they are ours
from receive() until free()).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kbypass.apps.seqcheck import SeqChecker
from kbypass.port.base import Port
from kbypass.port.loop import Ticker, receive_batches
from kbypass.proto.stamp import ETH_IPV4_UDP


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
        for batch in receive_batches(port, self.batch, duration=duration, idle_timeout=idle_timeout,
                                     until=None if count is None else lambda: res.packets >= count,
                                     on_idle=tick):
            last = time.monotonic()
            if start is None:
                start = last
            res.packets += len(batch)
            res.bytes += int(batch.lens.sum())
            if self.seq is not None:
                stamped = batch[batch.lens >= self.stamp_offset + 16]
                if len(stamped):
                    self.seq.update(stamped.payload_u64(self.stamp_offset))
                    sent = stamped.payload_u64(self.stamp_offset + 8).astype(np.int64)
                    sent = sent[sent != 0]  # a sampling generator (gen --time-every N) leaves the time zero
                    self._latency_ns.append(time.monotonic_ns() - sent)
            port.free(batch)
            ticker.tick(res.packets, last)
        if start is not None:  # from the first packet to the last: idle time before or after is not rate
            res.seconds = max(last - start, 1e-9)
        if self.seq is not None:
            res.seq = self.seq.summary()
            res.latency_us = latency_summary(self._latency_ns)
        return res


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
