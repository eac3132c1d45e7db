"""Congestion control, pluggable and sans-IO: NewReno (RFC 5681 / RFC 6582) and CUBIC (RFC 9438).

The connection decides *when* a loss event begins (once per window, see recovery in connection.py) and calls
`on_loss`; an RTO calls `on_timeout`; every cumulative ACK outside recovery calls `on_ack`. All in bytes.
Another controller plugs in by registering a class with this interface (constructor (mss, initial_cwnd),
attributes cwnd and ssthresh) in CONTROLLERS and naming it in TcpConfig(congestion=...).
"""

from __future__ import annotations


class NewReno:
    name = "newreno"

    def __init__(self, mss: int, initial_cwnd: int) -> None:
        self.mss = mss
        self.cwnd = initial_cwnd * mss
        self.ssthresh = 1 << 62
        self._acc = 0  # bytes acked toward the next congestion-avoidance increment
        self.loss_events = 0

    def on_ack(self, acked: int, now: float, srtt: float | None) -> None:
        if self.cwnd < self.ssthresh:
            # slow start by the bytes acknowledged (RFC 3465 ABC without the per-ACK cap, as Linux does): an
            # endpoint that takes segments in batches sends one ACK per batch, which must not slow the growth
            self.cwnd = min(self.cwnd + acked, max(self.ssthresh, self.cwnd))
            return
        self._acc += acked
        if self._acc >= self.cwnd:
            self._acc -= self.cwnd
            self.cwnd += self.mss

    def on_loss(self, flight: int, now: float) -> None:
        self.loss_events += 1
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.ssthresh
        self._acc = 0

    def run_state(self) -> tuple:
        """What the C twin of on_ack needs (csrc/core/kb_http.c cc_on_ack, for the exchanges the TCP fast path
        keeps): whether it is CUBIC, mss, the acked bytes not yet turned into growth, then CUBIC's W_max, K,
        epoch and W_est (NewReno: zeros and None)."""
        return False, self.mss, self._acc, 0.0, 0.0, None, 0.0

    def run_taken(self, cwnd: int, acc: int, w_max: float, k: float, w_est: float, epoch: float | None) -> None:
        """The state the C twin of on_ack left (run_state's fields moved)."""
        self.cwnd, self._acc = cwnd, acc

    def on_timeout(self, flight: int, now: float) -> None:
        self.loss_events += 1
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self._acc = 0


class Cubic(NewReno):
    """RFC 9438: W_cubic(t) = C*(t-K)^3 + W_max in segments, with the Reno-friendly region and fast
    convergence; beta 0.7, C 0.4."""

    name = "cubic"
    C = 0.4
    BETA = 0.7

    def __init__(self, mss: int, initial_cwnd: int) -> None:
        super().__init__(mss, initial_cwnd)
        self.w_max = 0.0  # segments
        self.k = 0.0
        self.epoch: float | None = None
        self.w_est = 0.0  # Reno-friendly estimate, segments

    def on_ack(self, acked: int, now: float, srtt: float | None) -> None:
        if self.cwnd < self.ssthresh:
            NewReno.on_ack(self, acked, now, srtt)
            return
        seg = self.mss
        cwnd_seg = self.cwnd / seg
        if self.epoch is None:
            self.epoch = now
            if cwnd_seg < self.w_max:
                self.k = ((self.w_max - cwnd_seg) / self.C) ** (1 / 3)
            else:
                self.k, self.w_max = 0.0, cwnd_seg
            self.w_est = cwnd_seg
        t = now - self.epoch + (srtt or 0.0)
        target = self.C * (t - self.k) ** 3 + self.w_max
        alpha = 3 * (1 - self.BETA) / (1 + self.BETA)
        self.w_est += alpha * (acked / seg) / cwnd_seg
        target = max(target, self.w_est)
        if target > cwnd_seg:  # grow toward target: (target - cwnd) / cwnd segments per segment acked
            inc = min(target - cwnd_seg, cwnd_seg / 2) / cwnd_seg * (acked / seg)
            self._acc += int(inc * seg)
            if self._acc >= 1:
                self.cwnd += self._acc
                self._acc = 0

    def on_loss(self, flight: int, now: float) -> None:
        self.loss_events += 1
        cwnd_seg = self.cwnd / self.mss
        # fast convergence: a flow whose W_max keeps falling leaves room for newcomers
        self.w_max = cwnd_seg * (1 + self.BETA) / 2 if cwnd_seg < self.w_max else cwnd_seg
        self.ssthresh = max(int(self.cwnd * self.BETA), 2 * self.mss)
        self.cwnd = self.ssthresh
        self.epoch = None
        self._acc = 0

    def on_timeout(self, flight: int, now: float) -> None:
        self.on_loss(flight, now)  # W_max, K and ssthresh as for a loss; then slow start from one segment
        self.cwnd = self.mss

    def run_state(self) -> tuple:
        return True, self.mss, self._acc, self.w_max, self.k, self.epoch, self.w_est

    def run_taken(self, cwnd: int, acc: int, w_max: float, k: float, w_est: float, epoch: float | None) -> None:
        self.cwnd, self._acc, self.w_max, self.k, self.w_est, self.epoch = cwnd, acc, w_max, k, w_est, epoch

CONTROLLERS = {"newreno": NewReno, "cubic": Cubic}


def make_controller(name: str, mss: int, initial_cwnd: int) -> NewReno:
    return CONTROLLERS[name](mss, initial_cwnd)
