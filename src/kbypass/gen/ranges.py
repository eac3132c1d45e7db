"""Port, size and address ranges as `kbypass gen` takes them ("1000-1999", "10.77.0.10-10.77.0.20"): plain
text to (lo, hi), cheap to import, as the CLI checks --size while it reads the options."""

from __future__ import annotations

import ipaddress

from kbypass.errors import UsageError


def parse_range(text: str, what: str, lo_ok: int, hi_ok: int) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise UsageError(f"{what} {text!r}: give a number or a range like 1000-1999") from None
    if not lo_ok <= a <= b <= hi_ok:
        raise UsageError(f"{what} {text!r}: must be within {lo_ok}-{hi_ok}, low end first")
    return a, b


def parse_ip_range(text: str, what: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        a = int(ipaddress.IPv4Address(lo))
        b = int(ipaddress.IPv4Address(hi)) if sep else a
    except ValueError:
        raise UsageError(f"{what} {text!r}: give an IPv4 address or a range like 10.77.0.10-10.77.0.20") from None
    if b < a:
        raise UsageError(f"{what} {text!r}: low end first")
    return a, b
