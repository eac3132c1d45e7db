"""Round-trip time estimation and retransmission timeout, RFC 6298 (with Linux's floor: see sample).

Samples come from echoed timestamps (RFC 7323 style), so a retransmitted segment's ACK still gives a valid
sample: the echo names the transmission that was answered, which is what Karn's rule protects against.
"""

from __future__ import annotations


class RttEstimator:
    """SRTT / RTTVAR / RTO in seconds. `rto` is SRTT + max(4 RTTVAR, min_rto), at most max_rto; `backoff()`
    doubles it."""

    ALPHA = 1 / 8
    BETA = 1 / 4
    K = 4

    def __init__(self, initial_rto: float = 1.0, min_rto: float = 0.2, max_rto: float = 60.0,
                 granularity: float = 0.001) -> None:
        if not 0 < min_rto <= initial_rto <= max_rto:
            raise ValueError("need 0 < min_rto <= initial_rto <= max_rto")
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.min_rtt: float | None = None
        self.latest: float | None = None
        self.samples = 0
        self._base_rto = initial_rto  # RTO before backoff
        self.rto = initial_rto

    def sample(self, r: float) -> None:
        """Feed one RTT measurement (seconds). Also cancels any backoff (RFC 6298 5.7)."""
        if r < 0:
            return
        self.samples += 1
        self.latest = r
        self.min_rtt = r if self.min_rtt is None else min(self.min_rtt, r)
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = (1 - self.BETA) * self.rttvar + self.BETA * abs(self.srtt - r)
            self.srtt = (1 - self.ALPHA) * self.srtt + self.ALPHA * r
        self._set_rto()

    def _set_rto(self) -> None:
        # min_rto floors the variance term, as in Linux (tcp_rtt_estimator: mdev_max >= rto_min), not only
        # the sum (RFC 6298 2.4): on a steady path RTTVAR decays to nothing and an RTO of max(SRTT, min_rto)
        # fired while a retransmission that queued behind the flight was on its way (sim_flows, 16 ms RTT,
        # 20 ms min_rto, 5% loss: 11 RTOs in 4 s with the RTO re-armed at each retransmission of the head)
        base = self.srtt + max(self.granularity, self.K * self.rttvar, self.min_rto)
        self._base_rto = min(max(base, self.min_rto), self.max_rto)
        self.rto = self._base_rto

    def sampled(self, n: int, srtt: float, rttvar: float, min_rtt: float, latest: float) -> None:
        """What n samples made of the estimator elsewhere (the C twin of sample(): kb_http.c's, for the
        exchanges the TCP fast path answered itself), taken as sample() would have left it."""
        self.samples += n
        self.srtt, self.rttvar, self.min_rtt, self.latest = srtt, rttvar, min_rtt, latest
        self._set_rto()

    def backoff(self) -> None:
        """Exponential backoff after a retransmission timeout (RFC 6298 5.5)."""
        self.rto = min(self.rto * 2, self.max_rto)
