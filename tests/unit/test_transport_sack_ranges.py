"""ReceiveBuffer keeps its merged SACK ranges between ACKs through the usual changes (extend_run, the C
receive path's out-of-order runs, grows the highest one; a new hole opens above it; a repair delivers the
lowest) and merges them afresh after any other: the blocks are always those of the buffered segments."""

from __future__ import annotations

import random

import pytest

from kbypass.proto.transport.recvbuf import ReceiveBuffer


def fresh_blocks(rb: ReceiveBuffer, n: int) -> list[tuple[int, int]]:
    saved = rb._ranges
    rb._ranges = None  # the reference: merged from the segments now
    try:
        return rb.sack_blocks(n)
    finally:
        rb._ranges = saved


@pytest.mark.parametrize("seed", range(40))
def test_kept_ranges_always_match_the_buffered_segments(seed):
    rng = random.Random(seed)
    rb = ReceiveBuffer(200_000, message_mode=False)
    seg = 1000
    sent_up_to = 0
    for _ in range(300):
        op = rng.random()
        if op < 0.45 and rb.extendable_run_end() is not None:
            start = rb.extendable_run_end()
            k = rng.randrange(1, 6)
            if start + k * seg <= rb.rcv_nxt + rb.window and rb.ooo_bytes + k * seg <= rb.window:
                rb.extend_run([bytes(seg)] * k)
                sent_up_to = max(sent_up_to, start + k * seg)
        elif op < 0.8:
            # a new segment somewhere at or above rcv_nxt: a hole's repair, a new hole, a duplicate
            seq = rb.rcv_nxt + seg * rng.randrange(0, 40)
            rb.accept(seq, bytes(rng.choice([seg, seg // 2, 3 * seg])), False, False)
        else:
            rb.consumed(rb.unread)
        if rb.ooo:
            got = rb.sack_blocks(8)
            assert got == fresh_blocks(rb, 8)
            assert rb.sack_blocks(200) == fresh_blocks(rb, 200)


def test_extend_run_grows_the_kept_highest_range_without_a_recomputation():
    rb = ReceiveBuffer(1 << 20, message_mode=False)
    rb.accept(1000, bytes(1000), False, False)  # a hole at 0..1000
    assert rb.sack_blocks(4) == [(1000, 2000)]
    kept = rb._ranges
    rb.extend_run([bytes(1000), bytes(1000)])
    assert rb._ranges is kept and rb.sack_blocks(4) == [(1000, 4000)]
    rb.accept(5000, bytes(1000), False, False)  # a new hole below it: a range of its own, kept
    assert rb._ranges is kept and rb.sack_blocks(4) == [(5000, 6000), (1000, 4000)]
    rb.accept(0, bytes(1000), False, False)  # the first hole repaired: its range delivered, the rest kept
    assert rb._ranges is kept and rb.sack_blocks(4) == [(5000, 6000)] and rb.rcv_nxt == 4000
