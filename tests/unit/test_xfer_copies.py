"""Copies a bulk transfer no longer makes (issue 17: CPU per byte at both ends): the receiver hands the stream
on in the pieces it arrived in (Connection.take_chunks, no join), and the generated stream's blocks are lent,
not copied, when nothing else holds them."""

from __future__ import annotations

import copy
import random

from kbypass.proto.transport import DataReceived
from tests.unit.test_transport_fastpath import CFG, MSS, stream_datagrams


def _arrived(n_bytes: int, seed: int = 3):
    c, s, grams = stream_datagrams(CFG, n_bytes, seed)
    while s.next_event() is not None:  # Connected
        pass
    for d in grams:
        s.receive_datagram(d, 0.6)
    return c, s, random.Random(seed).randbytes(n_bytes)


def test_take_chunks_gives_the_stream_unjoined_and_opens_the_window_as_next_event_does():
    c, s, want = _arrived(40 * MSS)
    s_ref = copy.deepcopy(s)
    chunks = s.take_chunks()
    ev = s_ref.next_event()
    assert isinstance(ev, DataReceived) and ev.data == want
    assert type(chunks) is not bytes and len(chunks) > 1 and b"".join(chunks) == want
    assert (s.rbuf.unread, s.rbuf.right_edge, s._ack_pending) == (s_ref.rbuf.unread, s_ref.rbuf.right_edge,
                                                                   s_ref._ack_pending)
    assert s.take_chunks() is None and s.next_event() is None  # taken once


def test_take_chunks_leaves_other_events_to_next_event():
    c, s = stream_datagrams(CFG, 0)[:2]
    c.close(0.7)
    for d in c.datagrams_to_send(0.7):
        s.receive_datagram(d, 0.7)
    assert s.take_chunks() is None and s.next_event() is not None


def test_the_generated_stream_is_its_seeded_block_stamped_with_each_index():
    from kbypass.tools.xfer import BLOCK, _stream

    template = random.Random(5).randbytes(BLOCK)
    g = _stream(5)
    for i in range(6):
        assert next(g) == i.to_bytes(8, "big") + template[8:]


def test_a_lent_block_is_reused_only_once_nothing_holds_it_or_a_view_of_it():
    from kbypass.tools.xfer import _stream

    g = _stream(7)
    held = next(g)
    view = memoryview(held)[100:200]  # what the send buffer keeps: views in its segments
    first, want = bytes(held[:8]), bytes(view)
    seen = []
    for _ in range(10):
        b = next(g)
        assert b is not held
        seen.append(id(b))
        del b  # released at once: the next call may reuse it
    assert bytes(held[:8]) == first and bytes(view) == want  # never restamped while held
    assert len(set(seen)) == 1  # one other block, reused: no copy per block
    del held
    for _ in range(4):  # blocks taken again while only the view holds the first one
        b = next(g)
        assert bytes(view) == want  # a view alone still holds it: never restamped
        del b
    pool = g.gi_frame.f_locals["pool"]
    assert len(pool.blocks) == 2


def test_the_pool_copies_past_its_cap():
    from kbypass.tools.xfer import _LentBlocks

    pool = _LentBlocks(b"x" * 64, cap=2)
    kept = [pool.take(b"%02d" % i) for i in range(4)]
    assert [type(k) for k in kept] == [bytearray, bytearray, bytes, bytes]
    assert [bytes(k[:2]) for k in kept] == [b"00", b"01", b"02", b"03"] and len(pool.blocks) == 2


def test_a_lent_buffer_is_kept_uncopied_and_read_only():
    from kbypass.proto.transport.sendbuf import SendBuffer

    buf = bytearray(b"abcdefgh" * 2048)
    sb = SendBuffer(1 << 20)
    assert sb.write(buf, lent=True) == len(buf)
    kept = sb._chunks[0]
    assert isinstance(kept, memoryview) and kept.readonly and kept.obj is buf
    seg = sb.cut(9000)
    assert bytes(seg.data) == bytes(buf[:9000])
    sb2 = SendBuffer(1 << 20)
    sb2.write(buf)  # not lent: copied
    assert type(sb2._chunks[0]) is bytes
