"""The shared shape of a receive loop: run until the duration ends, a packet count is reached, the
traffic stops or a signal arrives; report packets per second once a second."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator


class Stopper:
    """Turns SIGINT/SIGTERM into a flag the loop checks between batches, so the summary still prints and
    everything is closed in order.

    `absorb_late` (set by the CLI, kbypass.cli.main, for the commands whose loop is their last phase: sink,
    gen, top...): a Ctrl-C that comes after the loop ended, while the command closes and prints its summary
    (a timed run ending as the user presses Ctrl-C), is noted instead of raised, so the summary still
    prints and the exit status stays 0; a second one goes to the handler as usual. A later loop starts
    already stopped by a noted one. Commands with more to do after a loop (bench, demo: their next trial)
    and a library user's process keep Python's own handling."""

    absorb_late = False

    def __init__(self) -> None:
        self.stopped = LateInterrupt.take() if Stopper.absorb_late else False
        self._old = {}

    def __enter__(self) -> Stopper:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._stop)
            except ValueError:  # not the main thread: the caller stops us another way
                pass
        return self

    def _stop(self, signum, frame) -> None:
        self.stopped = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            if sig == signal.SIGINT and Stopper.absorb_late and not isinstance(old, LateInterrupt):
                old = LateInterrupt(old)
            signal.signal(sig, old)


class LateInterrupt:
    """SIGINT's handler after a loop ended under the CLI (Stopper.absorb_late): the first Ctrl-C is noted,
    the next goes to the handler it replaced (KeyboardInterrupt)."""

    pending = False  # a noted Ctrl-C no loop has taken yet

    def __init__(self, replaced) -> None:
        self.replaced = replaced

    def __call__(self, signum, frame) -> None:
        if not LateInterrupt.pending:
            LateInterrupt.pending = True
            return
        signal.signal(signum, self.replaced)
        if callable(self.replaced):  # Python's default raises KeyboardInterrupt; SIG_IGN: nothing
            self.replaced(signum, frame)

    @classmethod
    def take(cls) -> bool:
        """Whether a Ctrl-C was noted since the last loop (and forget it): the next loop starts stopped."""
        pending, cls.pending = cls.pending, False
        return pending


class Ticker:
    """Calls `report(packets_in_last_interval, seconds)` about once a second."""

    def __init__(self, report: Callable[[int, float], None] | None, interval: float = 1.0) -> None:
        self.report = report
        self.interval = interval
        self.last_time = time.monotonic()
        self.last_count = 0

    def tick(self, count: int, now: float) -> None:
        if self.report is not None and now - self.last_time >= self.interval:
            self.report(count - self.last_count, now - self.last_time)
            self.last_time, self.last_count = now, count


def receive_batches(port, size: int, *, duration: float | None = None, until: Callable[[], bool] | None = None,
                    idle_timeout: float | None = None, on_idle: Callable[[], None] | None = None,
                    take: Callable[[], object] | None = None) -> Iterator:
    """Yield non-empty batches from `port` (each yours until transmitted or freed) until `duration` seconds
    pass, `until()` is true, `idle_timeout` seconds pass without a frame (counted from the start, then from
    the last frame: a run that never sees a packet ends too), or SIGINT/SIGTERM. Waits in port.wait() when
    nothing is there, calling `on_idle` after each wait. take: what gets a batch (default port.receive(size));
    a false result means nothing was there."""
    take = take if take is not None else lambda: port.receive(size)
    begin = time.monotonic()
    last = begin
    with Stopper() as stop:
        while not stop.stopped:
            now = time.monotonic()
            if duration is not None and now - begin >= duration:
                return
            if until is not None and until():
                return
            if idle_timeout is not None and now - last >= idle_timeout:
                return
            batch = take()
            if not batch:
                port.wait(0.05)
                if on_idle is not None:
                    on_idle()
                continue
            last = now
            yield batch
