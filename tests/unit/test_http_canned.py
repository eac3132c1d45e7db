"""Canned answers on the TCP fast path (csrc/core/kb_http.c via kbypass._fasttcp.rx_canned) held to the reference.

Same verdict: for random request segments against server connections after random keep-alive exchanges, C
either leaves the segment to Python (None, or the plain prediction's HIT), or answers it, and then its frame is
byte for byte the segment the reference sends when it takes the segment through receive(), the application
reads the request and sends the table's answer, and segments_to_send runs; and the connection told of the
exchange (TcpConnection.answer_hit) ends in the reference's state, its prediction where C advanced it.
The HTTP side: learn_canned remembers only requests a fresh parser reads alone as the same keep-alive request
without a body, answered by respond_whole.
"""

import copy
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbypass.proto import tcp
from kbypass.proto.http import RequestParser, Site, learn_canned, respond_whole
from kbypass.proto.ipv4 import build_ipv4_header
from kbypass.proto.tcp import fastpath
from kbypass.proto.tcp.segment import (
    ACK,
    NO_OPTIONS,
    PSH,
    Options,
    Segment,
    parse_segment,
)
from kbypass.proto.tcp.sim import (
    CLIENT_IP,
    CLIENT_PORT,
    SERVER_IP,
    SERVER_PORT,
    App,
    TcpPair,
)
from tests.kb import needs_c
from tests.unit.test_tcp_fastpath import (
    snap,  # one snapshot of a connection for both same-verdict tests
)

ETH_IN = bytes.fromhex("020000000002" "020000000001" "0800")  # client -> server
ETH_OUT = bytes.fromhex("020000000001" "020000000002" "0800")  # the server's answers
CIP, SIP = socket.inet_aton(CLIENT_IP), socket.inet_aton(SERVER_IP)
KEY = (int.from_bytes(CIP, "big") << 32) | (CLIENT_PORT << 16) | SERVER_PORT
M = 0xFFFFFFFF
GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
HEAD = b"HEAD /b HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n"
ANSWERS = {GET: (b"A" * 300, 200, 200), HEAD: (b"H" * 90, 200, 0)}
BIG = {GET: (b"B" * 3000, 200, 2900)}  # more than one segment: never answered in C


def frame_in(seg: Segment) -> bytes:
    body = seg.encode(CIP, SIP)
    return ETH_IN + build_ipv4_header(CIP, SIP, 6, len(body), ident=3) + body


def client_seg(conn, payload: bytes, ack=None, window=None, tsd=1) -> Segment:
    opts = Options(timestamps=((conn.ts_recent + tsd) & M, 0)) if conn.ts_ok else NO_OPTIONS
    return Segment(CLIENT_PORT, SERVER_PORT, conn.rcv_nxt & M, (conn.sq.snd_max if ack is None else ack) & M,
                   ACK | PSH if payload else ACK, conn.snd_wnd >> conn.snd_wscale if window is None else window,
                   opts, payload)


def exchange(conn, payload: bytes, answer: bytes, now: float, **kw) -> list:
    """The reference: the request through receive(), read by the application, answered, sent."""
    conn.receive(parse_segment(CIP, SIP, frame_in(client_seg(conn, payload, **kw))[34:]), now)
    got = b""
    while (e := conn.next_event()) is not None:
        if type(e) is tcp.Data:
            got += e.data
    assert got == payload
    conn.send(answer)
    return conn.segments_to_send(now)


def _bases():
    out = []
    for seed, cfg in enumerate([None, tcp.TcpConfig(timestamps=False), tcp.TcpConfig(recv_buffer=20_000),
                                tcp.TcpConfig(delayed_ack=0.0, window_scaling=False)]):
        p = TcpPair(client=App(shutdown_when_sent=False), server=App(shutdown_when_sent=False), seed=seed + 5,
                    client_cfg=cfg, server_cfg=cfg)
        p.run(until=1, stop=lambda p: p.server.conn is not None and p.server.conn.state is tcp.State.ESTABLISHED)
        p.run(until=p.now + 0.01)
        conn, now = copy.deepcopy(p.server.conn), p.now
        for i in range(12):  # keep-alive exchanges: the answer acked by the next request, or by a pure ACK
            now += 0.0003
            exchange(conn, GET, b"x" * (100 + 97 * i), now)
            out.append((copy.deepcopy(conn), now))
            if i % 3 == 2:
                conn.receive(client_seg(conn, b""), now + 0.0001)
                out.append((copy.deepcopy(conn), now + 0.0001))
    return out


BASES = _bases()


def armed(fast, base, answers):
    pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, "owner")
    pred.arm(*base.prediction())
    can = fast.Canned()
    state = base.canned_state()
    if state is not None:
        can.arm(ETH_OUT, answers, *state)
    return pred, can


def agree(fast, base, seg: Segment, now: float, answers=ANSWERS):
    """seg through rx_canned armed from base: None if C left it to Python, else the connection told of C's
    answer, checked against the reference."""
    pred, can = armed(fast, base, answers)
    raw = frame_in(seg)
    hit = fast.rx_canned(raw, {KEY: pred}, {KEY: can}, now, 77)
    if hit is None or len(hit) == 8:
        assert hit == fast.rx(raw, {KEY: armed(fast, base, answers)[0]})  # rx's verdict, unchanged
        return None
    owner, sq, ack, flags, window, tsval, tsecr, payload, values, frame = hit
    assert owner == "owner" and payload == seg.payload and not can.armed
    answer = b"".join(v[0] for v in values)
    ref = copy.deepcopy(base)
    sent = exchange(ref, seg.payload, answer, now, ack=seg.ack, window=seg.window,
                    tsd=0 if tsval is None else (tsval - ref.ts_recent) & M)
    assert len(sent) == 1 and sent[0].payload == answer
    s = sent[0]
    assert frame == fastpath.frame(ETH_OUT, SIP, CIP, 77, s.src_port, s.dst_port, s.seq, s.ack, s.flags, s.window,
                                   s.options.timestamps, s.payload)
    told = copy.deepcopy(base)
    walked = []  # answer_hit sends the answer by send_now's fields: the whole send path is for stale armings
    told._send_data = lambda t, out: walked.append(t) or tcp.TcpConnection._send_data(told, t, out)
    still = told.answer_hit(sq, ack, flags, window, tsval, tsecr, payload, answer, now)
    del told._send_data
    assert not walked, "a fresh arming's answer took the whole send path"
    assert snap(told) == snap(ref)
    assert still and pred.state() == told.prediction()
    assert told.segments_to_send(now) == [] and told.next_event() is None  # TcpSocket.answered skips flush()
    state = told.canned_state()  # TcpSocket.answered arms it afresh: the fields C moved (adv_right) are these
    assert state is not None and can.state()[:6] == state[:6]
    return told


@st.composite
def cases(draw):
    base, now = BASES[draw(st.integers(0, len(BASES) - 1))]
    pieces = draw(st.lists(st.sampled_from([GET, HEAD, GET[:-2], b"GET /zz HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n"]),
                           min_size=1, max_size=4))
    una, smax = base.sq.snd_una, base.sq.snd_max
    ack = draw(st.sampled_from([smax, una, (una + smax) // 2]))
    window = base.snd_wnd >> base.snd_wscale
    window = draw(st.sampled_from([window, window, 0, 1, 100, 0xFFFF]))
    later = now + draw(st.sampled_from([0.0, 0.0001, 0.01, 0.3, 5.0]))
    answers = draw(st.sampled_from([ANSWERS, ANSWERS, BIG, {}]))
    return base, client_seg(base, b"".join(pieces), ack=ack, window=window), later, answers


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases())
def test_c_leaves_the_segment_or_answers_as_the_reference(fast, case):
    base, seg, now, answers = case
    agree(fast, base, seg, now, answers)


@needs_c
def test_the_keep_alive_request_and_pipelined_ones_are_answered_in_c(fast):
    """The common cases are answered (the fuzz above would pass with a C side that answers nothing)."""
    answered = 0
    for base, now in BASES:
        for payload in (GET, HEAD, GET + HEAD + GET):
            answered += agree(fast, base, client_seg(base, payload), now + 0.0001) is not None
    assert answered == 3 * len(BASES)


@needs_c
def test_what_c_must_not_answer(fast):
    """A partial head, an unknown one, an answer past one segment, a connection with data unsent or a FIN
    queued: the Python way."""
    base, now = BASES[3]
    for payload, answers in ((GET[:-1], ANSWERS), (GET + GET[:5], ANSWERS), (b"GET /q HTTP/1.1\r\n\r\n", ANSWERS),
                             (GET, BIG), (GET, {})):
        assert agree(fast, base, client_seg(base, payload), now, answers) is None
    unsent = copy.deepcopy(BASES[0][0])  # its last answer in flight
    unsent.cc.cwnd = 1  # the next would wait for the congestion window
    assert unsent.canned_state() is not None
    assert agree(fast, unsent, client_seg(unsent, GET, ack=unsent.sq.snd_una), now) is None
    fin = copy.deepcopy(base)
    fin.shutdown()
    assert fin.canned_state() is None  # TcpSocket.answered hands it to Python


@needs_c
def test_a_segment_left_to_python_disarms_the_canned_answers_for_the_rest_of_the_burst(fast):
    """One arming, two segments of a burst: the first goes to Python (an unknown request, or the start of a
    head), so the second, though a known request, must not be answered in C: its answer would overtake the
    first's, or answer bytes that end the first's head. The prediction still takes it (a plain HIT)."""
    for first in (b"GET /zz HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /secret HTTP/1.1\r\nX-Pad: "):
        for base, now in (BASES[3], BASES[5]):
            pred, can = armed(fast, base, ANSWERS)
            assert can.armed
            h1 = fast.rx_canned(frame_in(client_seg(base, first)), {KEY: pred}, {KEY: can}, now, 1)
            assert h1 is not None and len(h1) == 8  # to Python
            assert not can.armed
            after = copy.deepcopy(base)
            after.rcv_nxt += len(first)
            h2 = fast.rx_canned(frame_in(client_seg(after, GET)), {KEY: pred}, {KEY: can}, now, 2)
            assert h2 is not None and len(h2) == 8, "answered in C past a segment Python has not seen to"


def test_an_exchange_that_leaves_a_retransmission_hands_it_to_the_next_send():
    """answer_hit on a connection C should not have been armed for (three duplicate ACKs put it in
    recovery since the arming): the send path makes the fast retransmission besides the answer C sent. It
    must still go out (at the next segments_to_send), and the connection says it is no longer predictable
    so the endpoint flushes it."""
    tried = 0
    for base, now in BASES:
        if base.sq.snd_una == base.sq.snd_max:
            continue  # nothing in flight to retransmit
        conn = copy.deepcopy(base)
        t = now + 0.0001
        una = conn.sq.snd_una
        for _ in range(3):
            seg = client_seg(conn, b"", ack=una, tsd=0)
            ts = seg.options.timestamps
            conn.receive_hit(seg.seq, seg.ack, seg.flags, seg.window, ts and ts[0], ts and ts[1], b"", t)
        if not conn._in_recovery:
            continue
        tried += 1
        answer_seq = conn.sq.snd_max
        seg = client_seg(conn, GET, ack=una, tsd=0)
        ts = seg.options.timestamps
        still = conn.answer_hit(seg.seq, seg.ack, seg.flags, seg.window, ts and ts[0], ts and ts[1], GET,
                                ANSWERS[GET][0], t)
        rest = conn.segments_to_send(t)
        assert still is False
        assert [s.seq for s in rest if s.payload] and all(s.seq != answer_seq & 0xFFFFFFFF for s in rest)
        assert any(s.seq == una & 0xFFFFFFFF for s in rest), "the fast retransmission was lost"
    assert tried, "no base state with data in flight"


def test_learn_canned_keeps_only_requests_read_alone_as_themselves():
    site, date = Site(body_size=64), "Sun, 06 Dec 2026 17:00:00 GMT"
    canned: dict = {}

    def learn(data: bytes) -> None:
        learn_canned(canned, data, RequestParser().feed(data), site, date)

    learn(GET + HEAD)
    assert set(canned) == {GET, HEAD}
    assert canned[GET] == respond_whole(RequestParser().feed(GET)[0], site, date)
    for data in (b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # not kept alive
                 b"GET /d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",  # a body
                 b"POST /e HTTP/1.1\r\nHost: x\r\n\r\n",  # 405, not a whole answer
                 b"GET /f HTTP/1.1\nHost: x\n\n",  # bare LF: no CRLF CRLF head
                 b"GET /100000 HTTP/1.1\r\nHost: x\r\n\r\n"):  # past WHOLE_MAX
        learn(data)
    assert set(canned) == {GET, HEAD}
    learn_canned(canned, GET, RequestParser().feed(GET), Site(root="/tmp"), date)  # files: no whole answers
    assert set(canned) == {GET, HEAD}


def test_the_python_side_answers_nothing():
    can = fastpath.Canned()
    can.arm(ETH_OUT, ANSWERS, 0, 0, 1000, 10000, 10000, 500, 0, 0, 1.0)
    can.arm_run(*range(12))
    assert not can.armed and not can.owed and can.take_run() is None
    assert fastpath.rx_canned(b"x" * 80, {}, {}, 0.0, 1) is None


@needs_c
def test_a_key_that_arms_again_while_looked_up_leaves_the_table_held(fast):
    """canned_match looks each head up in the table, which may run a key's __eq__; one that arms the Canned
    again drops the table C is looking in: C holds it for the lookups (it read freed memory before)."""
    base, now = BASES[3]
    pred, can = armed(fast, base, ANSWERS)

    class Rearms:
        active = False

        def __hash__(self):
            return hash(HEAD)

        def __eq__(self, other):
            if Rearms.active:
                Rearms.active = False
                can.arm(ETH_OUT, {}, *base.canned_state())  # the old table's last reference goes
            return False

    table = {Rearms(): (b"never",), **{k: (bytes(v[0]),) + v[1:] for k, v in ANSWERS.items()}}
    can.arm(ETH_OUT, table, *base.canned_state())
    del table
    Rearms.active = True
    hit = fast.rx_canned(frame_in(client_seg(base, GET + HEAD)), {KEY: pred}, {KEY: can}, now, 1)
    assert not Rearms.active, "the key was not looked at"
    assert hit is not None and len(hit) == 10  # answered from the table as it was when the lookups began
