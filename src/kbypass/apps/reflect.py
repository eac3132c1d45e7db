"""The reflector: send every received IPv4/UDP frame back with MACs, IPs and ports swapped.

The zero-copy forwarding loop: frames received from the RX ring go to the TX ring of the same UMEM
without a copy; swapping is one numpy gather per batch. Frames the TX ring does not accept are freed
(counted as tx_dropped), so nothing leaks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kbypass.apps.loop import Ticker, receive_batches
from kbypass.port.base import Port


@dataclass
class ReflectResult:
    packets: int = 0
    bytes: int = 0
    sent: int = 0
    tx_dropped: int = 0
    seconds: float = 0.0

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0


class Reflector:
    def __init__(self, port: Port, *, batch: int = 256, swap_l3: bool = True) -> None:
        self.port = port
        self.batch = batch
        self.swap_l3 = swap_l3

    def run(self, *, duration: float | None = None, count: int | None = None, report=None) -> ReflectResult:
        port, res = self.port, ReflectResult()
        ticker = Ticker(report)
        start = None
        tick = lambda: ticker.tick(res.packets, time.monotonic())
        for batch in receive_batches(port, self.batch, duration=duration, on_idle=tick,
                                     until=None if count is None else lambda: res.packets >= count):
            if start is None:
                start = time.monotonic()
            res.packets += len(batch)
            res.bytes += int(batch.lens.sum())
            batch.swap_macs()
            if self.swap_l3:
                batch.swap_ips_and_ports()
            sent = port.transmit(batch)
            res.sent += sent
            if sent < len(batch):
                res.tx_dropped += len(batch) - sent
                port.free(batch[sent:])
            tick()
        flush = getattr(port, "flush", None)
        if flush:
            flush()
        if start is not None:
            res.seconds = max(time.monotonic() - start, 1e-9)
        return res
