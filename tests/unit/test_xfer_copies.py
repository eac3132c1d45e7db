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
