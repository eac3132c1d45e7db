"""Congestion control: NewReno-style AIMD (RFC 5681 slow start / congestion avoidance, RFC 6582 recovery
that halves the window once per loss event, not once per lost segment), driven by SACK-based loss
detection in the connection (RFC 6675 "pipe" accounting). All quantities are bytes.
"""

from __future__ import annotations


class NewReno:
    paced = False  # (bbr.Bbr paces)

    def __init__(self, mss: int, initial_window: int | None = None, max_window: int = 1 << 30) -> None:
        self.mss = mss
        # RFC 6928 allows ten segments; four keeps the first burst gentle on short queues.
        self.cwnd = min(initial_window if initial_window is not None else 4 * mss, max_window)
        self.ssthresh = max_window
        self.max_window = max_window
        self.recover = 0  # RFC 6582 "recover": no new loss event until snd_una passes this
        self.in_recovery = False  # fast recovery: hold cwnd until the full ack
        self.loss_events = 0
        self._ca_acc = 0  # bytes acked since the last congestion-avoidance increment

    def on_ack(self, acked: int, snd_una: int) -> None:
        """`acked` new bytes were cumulatively acknowledged; `snd_una` is the new left edge."""
        if self.in_recovery:
            if snd_una >= self.recover:
                self.in_recovery = False  # full ack: recovery over, cwnd stays at ssthresh
            return
        if self.cwnd < self.ssthresh:
            self.cwnd = min(self.cwnd + acked, self.ssthresh, self.max_window)  # slow start
        else:
            self._ca_acc += acked  # congestion avoidance: one MSS per window acknowledged
            if self._ca_acc >= self.cwnd:
                self._ca_acc -= self.cwnd
                self.cwnd = min(self.cwnd + self.mss, self.max_window)

    def on_loss(self, flight: int, snd_una: int, snd_nxt: int) -> bool:
        """Loss detected by SACK or duplicate ACKs. Returns True if this began a new loss event (and the
        window was halved); losses of the same window (snd_una below `recover`) do not cut it again."""
        if self.in_recovery or snd_una < self.recover:
            return False
        self.loss_events += 1
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.ssthresh
        self._ca_acc = 0
        self.recover = snd_nxt
        self.in_recovery = True
        return True

    def on_timeout(self, flight: int, snd_nxt: int) -> None:
        """Retransmission timeout: collapse to one segment and slow-start again (RFC 5681 3.1)."""
        self.loss_events += 1
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self._ca_acc = 0
        self.recover = snd_nxt
        self.in_recovery = False


class LossTolerantReno(NewReno):
    """NewReno that cuts only for a loss *rate*, the controller connections use.

    Why: on the paths this transport is for (one L2 segment, RTT well under a millisecond, endpoints that
    are CPU-bound in Python) loss is mostly random (a sampling drop, a ring overrun), not a full queue, and
    per-loss AIMD cannot keep a useful window at even 1% random loss: a cut per loss event settles at
    ~sqrt(2 / (p (1 - beta^2))) segments (16 at beta 0.5, 20 at beta 0.7: CUBIC's concave growth is
    seconds away at these RTTs, so it is Reno here), while the pipeline of two Python loops needs the whole
    flow-control window in flight. So, as BBRv2 does (BBRLossThresh), loss is a congestion signal only when
    the recent loss rate exceeds `loss_thresh` (2%):

    * the rate is lost / (lost + delivered) bytes over a sliding horizon of the last 32 windows (at least
      512, at most 4096 segments; both counts are halved when it is full: at 1% random loss and a full
      window that is 2000-4000 segments, and the estimate passes 2% by chance well under once in 100
      checks; small windows are noisier, but they grow back fast), primed with 2 / loss_thresh
      segments of delivery, so one or two early losses are not a rate, but a burst of them (a slow-start
      overshoot into a queue: a large share of a window) cuts at once;
    * a cut is CUBIC's multiplicative decrease, beta 0.7 (RFC 9438): gentler than Reno's half because a
      cut here already means persistent, not incidental, loss; at most one per recovery episode (RFC 6582
      `recover`); floor two segments;
    * tolerated losses do not stop window growth (no recovery hold), so random loss costs only the
      retransmissions;
    * a retransmission timeout still collapses the window to one segment (NewReno.on_timeout).

    The price: against a drop-tail bottleneck we keep a loss rate up to ~2% instead of Reno's ~2/W^2, i.e.
    we are more aggressive than Reno on a shared congested path, as BBR is. The flow-control window bounds
    what we put in any queue.
    """

    BETA = 0.7

    def __init__(self, mss: int, initial_window: int | None = None, max_window: int = 1 << 30,
                 loss_thresh: float = 0.02) -> None:
        super().__init__(mss, initial_window, max_window)
        self.loss_thresh = loss_thresh
        self.delivered = 2 * mss / loss_thresh  # the prior: see the class docstring
        self.lost = 0.0
        self.tolerated = 0  # loss reports that did not cut the window

    @property
    def loss_rate(self) -> float:
        return self.lost / (self.lost + self.delivered)

    def _decay(self) -> None:
        horizon = min(max(32 * self.cwnd, 512 * self.mss), 4096 * self.mss)
        while self.lost + self.delivered > horizon:
            self.lost /= 2
            self.delivered /= 2

    def on_ack(self, acked: int, snd_una: int) -> None:
        self.delivered += acked
        self._decay()
        super().on_ack(acked, snd_una)

    def on_loss(self, flight: int, snd_una: int, snd_nxt: int, lost: int = 0) -> bool:
        """`lost` bytes were just deemed lost. Returns True if this cut the window."""
        self.lost += lost
        self._decay()
        if self.in_recovery or snd_una < self.recover:
            return False
        if self.lost <= self.loss_thresh * (self.lost + self.delivered):
            self.tolerated += 1
            return False
        self.loss_events += 1
        # of the smaller of cwnd and FlightSize: behind a long-standing hole the flight (SACKed bytes
        # included) can grow well past cwnd, and a "cut" of it would raise the window
        self.ssthresh = max(int(min(flight, self.cwnd) * self.BETA), 2 * self.mss)
        self.cwnd = min(self.ssthresh, self.max_window)
        self._ca_acc = 0
        self.recover = snd_nxt
        self.in_recovery = True
        return True


def make_controller(name: str, mss: int, initial_window: int | None, max_window: int, rng=None, now: float = 0.0):
    """The congestion controller ConnConfig.congestion names (config.CONTROLLERS)."""
    if name == "bbr":
        from .bbr import Bbr

        return Bbr(mss, initial_window, max_window, rng=rng, now=now)
    return LossTolerantReno(mss, initial_window, max_window)
