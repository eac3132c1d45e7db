"""sockperf's answers on the TCP fast path (csrc/core/kb_sockperf.c via kbypass._fasttcp.rx_canned armed with
SOCKPERF) held to the reference: kbypass.apps.pingpong.answer for the bytes, the reference connection for the
segment (test_http_canned's agree: the frame C sent is byte for byte the segment the reference sends when the
application reads the messages and sends their answers, and the connection told of it ends in its state).

Same verdict: C answers a segment only when it is whole messages that all ask for an answer, with
answer()'s bytes for each; anything else (a partial message, one answer() leaves unanswered, a length field
out of range) is left to Python, as the plain prediction's HIT or None.

The client's side, NEXT_SEND: rx_canned keeps the arming over a segment with payload (the application takes
it at once, kbypass.endpoint.tcp.TcpSocket.take_early) and send_canned sends the application's next data as
the answer to it: its frame is the reference's segment after it read the payload and sent the data, and the
connection told (answer_hit) ends in the reference's state; when send_canned declines, the connection told
of the segment as taken (receive_hit taken=True) then sending the data through its own path does too.
"""

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbypass.apps import pingpong
from kbypass.proto.tcp import fastpath
from kbypass.proto.tcp.fastpath import NEXT_SEND, SOCKPERF
from tests.kb import needs_c
from tests.unit.test_http_canned import (
    BASES,
    CIP,
    ETH_OUT,
    KEY,
    SIP,
    agree,
    armed,
    client_seg,
    exchange,
    frame_in,
)
from tests.unit.test_http_run import RUN_BASES, chain
from tests.unit.test_tcp_fastpath import snap


def msg(seq: int, size: int = 64, flags: int = pingpong.FLAG_CLIENT | pingpong.FLAG_PONG) -> bytes:
    return pingpong.HEADER.pack(seq, flags, size) + bytes((i * 7) & 0xFF for i in range(size - pingpong.HEADER_LEN))


def frame_messages(payload: bytes) -> list[bytes] | None:
    """payload cut into messages by their length fields (kbypass.apps.tcpmsg's framing), None when it is not
    whole messages."""
    out = []
    while payload:
        n = int.from_bytes(payload[10:14], "big") if len(payload) >= pingpong.HEADER_LEN else 0
        if n < pingpong.HEADER_LEN or n > len(payload):
            return None
        out.append(payload[:n])
        payload = payload[n:]
    return out


@st.composite
def cases(draw):
    base, now = BASES[draw(st.integers(0, len(BASES) - 1))]
    parts = []
    for seq in range(draw(st.integers(1, 4))):
        flags = draw(st.sampled_from([3, 3, 3, 1, 2, 0, 7, 0x103]))
        m = msg(seq + 1, draw(st.sampled_from([14, 15, 64, 300])), flags)
        cut = draw(st.sampled_from([None, None, None, 5, 13, -1]))  # a partial message, or a bad length field
        if cut == -1:
            m = m[:10] + draw(st.sampled_from([0, 13, 5000])).to_bytes(4, "big") + m[14:]
        elif cut is not None:
            m = m[:cut]
        parts.append(m)
    una, smax = base.sq.snd_una, base.sq.snd_max
    ack = draw(st.sampled_from([smax, smax, una]))
    later = now + draw(st.sampled_from([0.0, 0.0001, 5.0]))
    return base, client_seg(base, b"".join(parts), ack=ack), later


def check(fast, base, seg, now):
    """agree(), and when C answered: every message asked for an answer and got answer()'s bytes."""
    told = agree(fast, base, seg, now, SOCKPERF)
    if told is None:
        return None
    msgs = frame_messages(seg.payload)
    assert msgs is not None and all(pingpong.answer(m) is not None for m in msgs)
    return told


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases())
def test_c_leaves_the_segment_or_answers_as_the_reference(fast, case):
    check(fast, *case)


@needs_c
def test_values_are_answer_s_bytes_one_per_message(fast):
    """The values C reports (and sends, agree() holds the frame to them) are answer()'s, in order."""
    base, now = BASES[4]
    msgs = [msg(1), msg(2, 14), msg(3, 300)]
    hit = rx(fast, base, b"".join(msgs), now)
    assert hit is not None and len(hit) == 10
    assert hit[8] == tuple((pingpong.answer(m),) for m in msgs)


def rx(fast, base, payload: bytes, now: float):
    pred, can = armed(fast, base, SOCKPERF)
    return fast.rx_canned(frame_in(client_seg(base, payload)), {KEY: pred}, {KEY: can}, now, 1)


@needs_c
def test_ping_pong_messages_are_answered_in_c(fast):
    """The common case is answered on every base (the fuzz above would pass with a C side that answers none)."""
    answered = 0
    for base, now in BASES:
        for payload in (msg(1), msg(7, 14) + msg(8, 1000)):
            answered += check(fast, base, client_seg(base, payload), now + 0.0001) is not None
    assert answered == 2 * len(BASES)


@needs_c
def test_ping_pong_exchanges_are_kept_in_c(fast):
    """A ping-pong run is an HTTP keep-alive run with sockperf's rule for the table: after one exchange
    reported, C keeps the rest (kb_http_run_step), each answer the reference's segment byte for byte, and
    the connection that takes them in one call (canned_run_taken) ends in the reference's state; the tally
    counts messages, under SOCKPERF."""
    for base, now in RUN_BASES:
        steps = [(msg(i), 0.0002, None) for i in range(6)] + [(msg(6, 14) + msg(7, 900), 0.0002, None)]
        ways = chain(fast, base, now, steps, SOCKPERF, frame_messages, pingpong.answer)
        assert ways["python"] == 0 and ways["kept"] >= 6


@needs_c
def test_what_c_must_not_answer(fast):
    """answer()'s None (no pong flag, or an answer: no client flag), a partial message, a length field that
    cannot frame: the Python way (where tcpmsg frames the stream and answer() decides)."""
    base, now = BASES[2]
    bad_len = msg(1)[:10] + (13).to_bytes(4, "big") + msg(1)[14:]
    for payload in (msg(1, flags=1), msg(1, flags=2), msg(1) + msg(2, flags=1), msg(1)[:40], msg(1) + msg(2)[:20],
                    bad_len, msg(1)[:10]):
        assert check(fast, base, client_seg(base, payload), now) is None


def agree_next_send(fast, base, seg, data: bytes, now: float):
    """seg through rx_canned armed with NEXT_SEND, then data through send_canned, held to the reference; the
    frame C sent (None: it left the send to the connection)."""
    pred, can = armed(fast, base, NEXT_SEND)
    raw = frame_in(seg)
    hit = fast.rx_canned(raw, {KEY: pred}, {KEY: can}, now, 77)
    assert hit == fast.rx(raw, {KEY: armed(fast, base, NEXT_SEND)[0]})  # the plain prediction's verdict
    if hit is None or not can.armed:
        return None
    assert seg.payload and base.canned_state() is not None
    ref = copy.deepcopy(base)
    tsval = hit[5]
    sent = exchange(ref, seg.payload, data, now, ack=seg.ack, window=seg.window,
                    tsd=0 if tsval is None else (tsval - ref.ts_recent) & 0xFFFFFFFF)
    told = copy.deepcopy(base)
    frame = fast.send_canned(pred, can, data, now, 77)
    if frame is None:  # the connection's own path: told of the segment as taken, then sending
        assert can.armed  # nothing moved
        told.receive_hit(*hit[1:], now, True)
        told.send(data)
        assert told.segments_to_send(now) == sent
        assert snap(told) == snap(ref)
        return None
    assert len(sent) == 1 and sent[0].payload == data and not can.armed
    s = sent[0]
    assert frame == fastpath.frame(ETH_OUT, SIP, CIP, 77, s.src_port, s.dst_port, s.seq, s.ack, s.flags, s.window,
                                   s.options.timestamps, s.payload)
    assert told.answer_hit(*hit[1:], data, now)
    assert snap(told) == snap(ref) and pred.state() == told.prediction()
    return frame


@st.composite
def next_send_cases(draw):
    base, now = BASES[draw(st.integers(0, len(BASES) - 1))]
    payload = draw(st.binary(min_size=0, max_size=300))
    una, smax = base.sq.snd_una, base.sq.snd_max
    window = base.snd_wnd >> base.snd_wscale
    seg = client_seg(base, payload, ack=draw(st.sampled_from([smax, smax, una])),
                     window=draw(st.sampled_from([window, window, 0, 1, 0xFFFF])))
    data = bytes(draw(st.sampled_from([1, 64, 1000, 3000])))
    return base, seg, data, now + draw(st.sampled_from([0.0, 0.0001, 5.0]))


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(next_send_cases())
def test_next_send_answers_as_the_reference_or_leaves_it(fast, case):
    agree_next_send(fast, *case)


@needs_c
def test_next_send_sends_the_common_case_from_c(fast):
    """A client's next message after an answer leaves from C on every base (the fuzz would pass without)."""
    sent = sum(agree_next_send(fast, base, client_seg(base, msg(1)), msg(2), now + 0.0001) is not None
               for base, now in BASES)
    assert sent == len(BASES)


@needs_c
def test_next_send_arming_holds_for_one_segment(fast):
    """A second segment before the send: the arming is spent (the connection's path for both)."""
    base, now = BASES[1]
    pred, can = armed(fast, base, NEXT_SEND)
    first = client_seg(base, msg(1))
    assert len(fast.rx_canned(frame_in(first), {KEY: pred}, {KEY: can}, now, 1)) == 8 and can.armed
    after = copy.deepcopy(base)
    after.receive(first, now)
    assert fast.rx_canned(frame_in(client_seg(after, msg(2))), {KEY: pred}, {KEY: can}, now, 1) is not None
    assert not can.armed and fast.send_canned(pred, can, msg(3), now, 1) is None
