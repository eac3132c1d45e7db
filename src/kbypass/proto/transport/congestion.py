"""Congestion control: NewReno-style AIMD (RFC 5681 slow start / congestion avoidance, RFC 6582 recovery
that halves the window once per loss event, not once per lost segment), driven by SACK-based loss
detection in the connection (RFC 6675 "pipe" accounting). All quantities are bytes.
"""

from __future__ import annotations


class NewReno:
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
