"""A token-bucket rate limiter driven by the caller's clock (sans-IO: no sleeping inside).

`allowance(now)` says how many packets may go now; `sent(n)` records what went. The bucket holds at most
`burst` packets, so a pause (a busy CPU, a full ring) is not followed by a catch-up flood. Rates in packets
per second, or bits per second converted with the frame size (plus the 24 bytes of preamble, start delimiter,
FCS and inter-frame gap that a wire would also carry, as pktgen and MoonGen count).
"""

from __future__ import annotations

import re

from kbypass.errors import UsageError

WIRE_OVERHEAD = 24  # preamble 7 + SFD 1 + FCS 4 + inter-frame gap 12
MAX_PPS = 1e9  # a thousand Mpps: far beyond one core (or 100GbE at 64 bytes); larger is a typo
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_rate(text: str, frame_size: float) -> float:
    """'100000', '100k', '1.5M' or '100kpps' are packets/s; '10Mbit', '1Gbit', '500kbit' are bits/s on the
    wire for frames of `frame_size` bytes. Returns packets per second."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*(pps|bit|bps|b/s)?\s*", text)
    if not m:
        raise UsageError(f"--rate {text!r}: give packets/s (e.g. 100000, 100k, 1.5Mpps) or bits/s (e.g. 10Mbit)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise UsageError(f"--rate {text!r}: give a rate above zero")
    pps = value / ((frame_size + WIRE_OVERHEAD) * 8) if m.group(3) in ("bit", "bps", "b/s") else value
    if pps > MAX_PPS:
        raise UsageError(f"--rate {text!r}: above {MAX_PPS / 1e6:.0f} Mpps, more than any generator here sends; "
                         "give a lower rate, or leave --rate out for full speed")
    return pps


class RateLimiter:
    def __init__(self, pps: float, now: float, burst: int | None = None) -> None:
        if pps <= 0:
            raise UsageError(f"rate {pps}: give a rate above zero")
        self.pps = pps
        self.burst = burst if burst is not None else max(2, int(pps / 500))  # about 2 ms worth
        self.tokens = float(self.burst)
        self.last = now

    def allowance(self, now: float) -> int:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.pps)
        self.last = now
        return int(self.tokens)

    def sent(self, n: int) -> None:
        self.tokens -= n

    def wait_time(self, want: int = 1) -> float:
        """Seconds until `want` packets are allowed."""
        return max(0.0, (min(want, self.burst) - self.tokens) / self.pps)
