"""The AF_XDP generator: frames built once in UMEM from a template, varying fields rewritten per batch,
completed frames recycled from the completion ring, an optional rate limit.

Every UMEM frame is written with the template (at its largest size) once, up front; after that a frame
coming back from the completion ring still holds the template, so a batch costs only the vectorized
rewrite of its varying fields (kbypass.gen.flows) and one transmit.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kbypass.errors import UsageError
from kbypass.gen.rate import RateLimiter
from kbypass.gen.result import GenResult
from kbypass.port.loop import Stopper

if TYPE_CHECKING:  # numpy and the port stack load when a generator runs, not when `kbypass gen` reads --batch
    from kbypass.gen.flows import FlowSpec
    from kbypass.port.base import Port

MAX_BATCH = 4096  # frames per transmit: `kbypass gen`'s AF_XDP TX ring holds 4096, so no call takes more


class PortGenerator:
    """Send the flows of `spec` through `port` (any Port with alloc/transmit/free)."""

    def __init__(self, port: Port, template: bytes, spec: FlowSpec, *, batch: int = 256, first_seq: int = 0) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            raise UsageError(f"--batch {batch}: give 1 to {MAX_BATCH} frames per transmit")
        if len(template) < spec.size[1]:
            raise UsageError(f"template of {len(template)} bytes is shorter than --size {spec.size[1]}")
        self.port, self.spec, self.batch, self.seq = port, spec, batch, first_seq
        self.template = template[: spec.size[1]]
        # Packets larger than a frame (multi-buffer): each batch is allocated as chains of that size and
        # filled whole, since frames come back from the completion ring in any order, not as chains.
        self.chained = spec.size[1] > _frame_room(port)
        if self.chained and spec.size[0] != spec.size[1]:
            raise UsageError(f"--size {spec.size[0]}-{spec.size[1]}: a size range goes up to one frame "
                             f"({_frame_room(port)} bytes); above it give one size")
        if not self.chained:
            self._prefill(self.template)

    def _prefill(self, template: bytes) -> None:
        """Write the template into every frame the port can hand out, then give them back."""
        got = []
        while True:
            b = self.port.alloc(4096)
            if not b:
                break
            b.fill(template)
            got.append(b)
        for b in got:
            self.port.free(b)

    def run(self, *, count: int | None = None, duration: float | None = None, rate: float | None = None,
            report=None) -> GenResult:
        import numpy as np

        from kbypass.gen.flows import stamp_batch

        if count is None and duration is None:
            raise UsageError("say how much to send: --count N or --duration SECONDS")
        port, sent, nbytes = self.port, 0, 0
        start = time.perf_counter()
        limiter = RateLimiter(rate, start) if rate else None
        with Stopper() as stop:
            while not stop.stopped:
                now = time.perf_counter()
                if (count is not None and sent >= count) or (duration is not None and now - start >= duration):
                    break
                want = self.batch if count is None else min(self.batch, count - sent)
                if limiter:
                    # Send in quanta of up to half the bucket: waiting for a whole quantum keeps batches
                    # (and so the per-batch cost) from shrinking to a frame or two at low rates, and the
                    # other half of the bucket keeps what a late wake-up earned.
                    quantum = max(1, min(want, limiter.burst // 2))
                    if limiter.allowance(now) < quantum:
                        _pause(limiter.wait_time(quantum))
                        continue
                    want = quantum
                b = port.alloc(want, size=self.spec.size[1]) if self.chained else port.alloc(want)
                if not b:  # every frame is in flight: push the TX ring and collect completions
                    self._flush()
                    continue
                if self.chained:
                    b.fill(self.template)
                seq = np.arange(self.seq, self.seq + len(b), dtype=np.uint64)
                stamp_batch(b, self.spec, seq, time.monotonic_ns())
                k = port.transmit(b)
                if k < len(b):
                    port.free(b[k:])
                if limiter:
                    limiter.sent(k)
                self.seq += k
                sent += k
                nbytes += int(b[:k].total_lens().sum())
                if report:
                    report(sent, time.perf_counter() - start)
        self._flush()
        return GenResult(sent, nbytes, time.perf_counter() - start)

    def _flush(self) -> None:
        flush = getattr(self.port, "flush", None)
        if flush:
            flush()


def _frame_room(port) -> int:
    """Bytes one frame of the port sends (a UMEM frame less headroom; PACKET_MMAP: its slot's room)."""
    umem = getattr(port, "umem", None)
    if umem is not None:
        return umem.frame_size - umem.headroom
    return getattr(port, "tx_max", 1 << 16)


def _pause(seconds: float) -> None:
    """Sleep when the wait is long enough for the scheduler to be precise, else spin."""
    if seconds > 0.002:
        time.sleep(seconds - 0.001)
    else:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
