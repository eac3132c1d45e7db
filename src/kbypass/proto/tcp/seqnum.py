"""Sequence numbers. Inside a connection every sequence number is an unbounded integer ("absolute"), so
comparisons are plain `<`; the wire carries them mod 2**32. `unwrap` brings a 32-bit number from the wire
back next to a reference absolute number (the nearest one, RFC 1982 style), which is exact as long as the
two are within 2**31 of each other, which the windows guarantee.
"""

MASK = 0xFFFFFFFF
HALF = 1 << 31


def unwrap(wire: int, ref: int) -> int:
    """The absolute sequence number nearest `ref` whose low 32 bits are `wire`."""
    d = (wire - ref) & MASK
    return ref + d - (1 << 32) if d >= HALF else ref + d


def seq_lt(a: int, b: int) -> bool:
    """a < b in 32-bit sequence space (for wire numbers; absolute numbers compare with <)."""
    return ((a - b) & MASK) >= HALF
