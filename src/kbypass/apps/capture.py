"""The capture loop: steered frames to a pcap file, every one or one in N, each with its own time stamp.

Time stamps. AF_XDP hands frames over without a receive time (the kernel offers one per frame only through
driver-specific XDP metadata, which veth and most copy-mode drivers lack), and reading the clock once per
batch gave a whole batch one stamp. So the stamp is the time the frame was read from the ring, spread over
the interval it can have arrived in: the frames a receive returns arrived after the previous receive
returned (the ring was empty then, or held only what that batch left) and before this one did, so the N
frames of a batch are stamped evenly across that interval, the last at the read itself. Order is kept and
stamps are distinct (nanosecond pcap); the error is at most the time between two reads of the ring.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from kbypass.apps.pcap import PcapWriter
from kbypass.port.loop import Ticker, receive_batches


def spread(prev_ns: int, now_ns: int, n: int) -> np.ndarray:
    """n stamps evenly in (prev_ns, now_ns], the last at now_ns."""
    span = max(now_ns - prev_ns, 0)
    return prev_ns + (span * np.arange(1, n + 1, dtype=np.int64)) // n


class StampedPort:
    """A port whose receive() also notes the interval the batch's frames arrived in (see the module doc):
    `stamps(n)` gives the last batch's stamps. Everything else goes to the port."""

    def __init__(self, port) -> None:
        self.port = port
        self._prev = self._now = time.time_ns()

    def receive(self, max_frames: int):
        batch = self.port.receive(max_frames)
        now = time.time_ns()
        if batch:
            self._prev, self._now = self._now, now
        else:
            self._now = now  # the ring was empty now: later frames arrived after this
        return batch

    def stamps(self, n: int) -> np.ndarray:
        return spread(self._prev, self._now, n)

    def __getattr__(self, name):
        return getattr(self.port, name)


@dataclass
class CaptureResult:
    packets: int = 0  # written to the file
    seen: int = 0  # received from the port (all of them taken from the kernel)
    seconds: float = 0.0


def capture(port, pcap: PcapWriter, *, batch: int = 256, every: int = 1, duration: float | None = None,
            count: int | None = None, report=None) -> CaptureResult:
    """Write what `port` receives to `pcap` (one frame in `every`, by running number) until `duration`,
    `count` frames written, or SIGINT/SIGTERM. The frames not kept are freed, not given to the kernel."""
    res = CaptureResult()
    stamped = StampedPort(port)
    ticker = Ticker(report)
    start = time.monotonic()
    until = None if count is None else lambda: pcap.packets >= count
    for b in receive_batches(stamped, batch, duration=duration, until=until):
        times = stamped.stamps(len(b))
        # Keep packets whose running number is a multiple of N: sampling without a per-packet loop.
        keep = (res.seen + np.arange(len(b))) % every == 0
        res.seen += len(b)
        chosen, times = b[keep], times[keep]
        if count is not None:
            chosen, times = chosen[: count - pcap.packets], times[: count - pcap.packets]
        pcap.write_batch(chosen, times_ns=times)
        port.free(b)
        ticker.tick(res.seen, time.monotonic())
    res.packets = pcap.packets
    res.seconds = time.monotonic() - start
    return res
