import pytest

from kbypass.errors import UsageError
from kbypass.gen.rate import RateLimiter, parse_rate


def test_parse_rate_units():
    assert parse_rate("100000", 60) == 100000
    assert parse_rate("100k", 60) == 100000
    assert parse_rate("1.5Mpps", 60) == 1.5e6
    # 10 Mbit/s of 60-byte frames: 84 bytes each on the wire (with preamble, FCS, gap).
    assert parse_rate("10Mbit", 60) == pytest.approx(10e6 / (84 * 8))
    for bad in ("0", "-5", "fast", "10 furlongs"):
        with pytest.raises(UsageError):
            parse_rate(bad, 60)


def test_limiter_holds_the_rate_on_a_simulated_clock():
    # A sender asking for 256 frames every 10 us, for one simulated second, at 100 kpps.
    now, sent = 0.0, 0
    lim = RateLimiter(100_000, now)
    while now < 1.0:
        k = min(256, lim.allowance(now))
        lim.sent(k)
        sent += k
        now += 10e-6
    assert abs(sent - 100_000) / 100_000 < 0.01


def test_limiter_does_not_flood_after_a_pause():
    lim = RateLimiter(100_000, 0.0)
    lim.sent(lim.allowance(0.0))
    assert lim.allowance(5.0) == lim.burst == 200  # 2 ms worth, not 5 s worth
    lim.sent(200)
    assert lim.wait_time(50) == pytest.approx(50 / 100_000)
