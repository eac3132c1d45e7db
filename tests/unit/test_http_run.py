"""Canned answers kept in C (a run: csrc/core/kb_http.c kb_http_run_step) held to the reference.

Same state: a chain of keep-alive exchanges goes through rx_canned armed with a run (Canned.arm_run, from
TcpConnection.canned_run) and, side by side, through the reference (the request through receive(), read by
the application, answered, segments_to_send). Each answer C sends is byte for byte the reference's segment;
after each exchange C kept, its arming is what canned_state would arm afresh from the reference (the MSS,
cwnd and the time the next timer may change things included); and the connection that takes the kept
exchanges in one call (canned_run_taken, interleaved with the exchanges C reported one by one, answer_hit,
as the endpoint interleaves them) ends in the reference's state, floats (RTT estimator, timers) included.
"""

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbypass.proto.tcp import congestion, fastpath
from tests.kb import needs_c
from tests.unit.test_http_canned import (
    ANSWERS,
    BASES,
    CIP,
    CLIENT_PORT,
    ETH_OUT,
    GET,
    HEAD,
    KEY,
    SERVER_PORT,
    SIP,
    client_seg,
    exchange,
    frame_in,
)
from tests.unit.test_tcp_fastpath import snap


def arm(fast, pred, can, conn, answers=ANSWERS) -> None:
    """TcpSocket.predict and _arm_canned: the prediction, the canned answers, and the run when it may keep."""
    pred.arm(*conn.prediction())
    can.arm(ETH_OUT, answers, *conn.canned_state())
    run = conn.canned_run()
    if run is not None:
        can.arm_run(*run)


def chain(fast, base, now: float, steps, answers=ANSWERS, requests=None, reply=None) -> dict:
    """The exchanges `steps` ((payload, seconds later, window field or None) each) through C and through the
    reference; returns how each went ({"kept": n, "reported": n, "python": n}). answers: Canned.arm's (the
    table, or a rule such as SOCKPERF with requests(payload) -> the requests, reply(request) -> its answer)."""
    requests = requests or _heads
    reply = reply or (lambda head: ANSWERS[head][0])
    ref, told = copy.deepcopy(base), copy.deepcopy(base)
    pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, "owner")
    can = fast.Canned()
    arm(fast, pred, can, told, answers)
    tally: dict = {}
    ways = {"kept": 0, "reported": 0, "python": 0}
    for i, (payload, later, window) in enumerate(steps):
        now += later
        seg = client_seg(ref, payload, window=window)
        hit = fast.rx_canned(frame_in(seg), {KEY: pred}, {KEY: can}, now, i, tally)
        if hit is None or (type(hit) is tuple and len(hit) == 8):
            ways["python"] += 1  # left to Python: the chain ends here (test_http_canned covers that way)
            if can.owed:  # the endpoint takes what C kept before the segment (TcpSocket.conn): the same state
                told.canned_run_taken(can.take_run())
            assert snap(told) == snap(ref), "the exchanges C kept end elsewhere than the reference's"
            break
        # the same segment, rebuilt from ref as it is still (client_seg's defaults)
        sent = exchange(ref, payload, b"".join(reply(r) for r in requests(payload)), now, window=window)
        assert len(sent) == 1
        s = sent[0]
        frame = hit if type(hit) is bytes else hit[9]
        assert frame == fastpath.frame(ETH_OUT, SIP, CIP, i, s.src_port, s.dst_port, s.seq, s.ack, s.flags, s.window,
                                       s.options.timestamps, s.payload)
        if type(hit) is bytes:
            ways["kept"] += 1
            assert can.owed and can.armed
            assert can.state() == ref.canned_state(), "C re-armed itself unlike a fresh arming"
        else:
            ways["reported"] += 1
            assert not can.armed
            if can.owed:  # the endpoint's order: what C kept first (TcpSocket.conn), then the report
                told.canned_run_taken(can.take_run())
            _, sq, ack, flags, win, tsval, tsecr, pl, values, _ = hit
            assert told.answer_hit(sq, ack, flags, win, tsval, tsecr, pl, b"".join(v[0] for v in values), now)
            assert snap(told) == snap(ref)
            arm(fast, pred, can, told, answers)  # TcpSocket.answered
    if can.owed:
        told.canned_run_taken(can.take_run())
    assert not can.owed and can.take_run() is None
    if ways["python"] == 0:
        assert snap(told) == snap(ref)
        assert pred.state() == told.prediction()
    answered = ways["kept"] + ways["reported"]
    assert sum(tally.values()) == sum(len(requests(p)) for p, _, _ in steps[:answered])
    return ways


def _heads(payload: bytes) -> list[bytes]:
    out = []
    while payload:
        n = payload.index(b"\r\n\r\n") + 4
        out.append(payload[:n])
        payload = payload[n:]
    return out


RUN_BASES = [(c, t) for c, t in BASES if c.canned_state() is not None]


@st.composite
def chains(draw):
    base, now = RUN_BASES[draw(st.integers(0, len(RUN_BASES) - 1))]
    base = copy.deepcopy(base)
    controller(base, draw(st.sampled_from(["slow start", "cubic", "cubic below w_max", "newreno",
                                           "newreno slow start"])))
    steps = draw(st.lists(st.tuples(st.sampled_from([GET, HEAD, GET + HEAD, GET]),
                                    st.sampled_from([0.0001, 0.0003, 0.002, 0.0001, 0.3]),
                                    st.sampled_from([None, None, None, 1, 0xFFFF])),
                          min_size=1, max_size=8))
    return base, now, steps


@needs_c
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(chains())
def test_the_exchanges_c_keeps_end_in_the_reference_state(fast, case):
    base, now, steps = case
    chain(fast, base, now, steps)


@needs_c
def test_a_keep_alive_run_is_kept_in_c(fast):
    """The common case is kept (the fuzz above would pass with a C side that keeps nothing): after one
    exchange reported (a base whose answer is acked already has no timed answer in flight), the rest of a
    run of requests, each acking the answer before it, stays in C."""
    kept = 0
    for base, now in RUN_BASES:
        ways = chain(fast, base, now, [(GET, 0.0002, None)] * 6 + [(GET + HEAD, 0.0002, None)] * 2)
        assert ways["python"] == 0
        kept += ways["kept"]
        assert ways["kept"] >= 7
    assert kept


@needs_c
@pytest.mark.parametrize("kind", ["cubic", "cubic below w_max", "newreno"])
def test_past_slow_start_the_exchanges_are_kept_too(fast, kind):
    """Congestion avoidance: C's twin of the controller's on_ack (CUBIC's curve from a new epoch, below or
    at W_max; NewReno's one MSS per window) over a long run, the window growing meanwhile."""
    for base, now in RUN_BASES[:6]:
        base = copy.deepcopy(base)
        controller(base, kind)
        ways = chain(fast, base, now, [(GET, 0.0002 * (1 + i % 3), None) for i in range(40)])
        assert ways["python"] == 0 and ways["kept"] >= 39


@needs_c
def test_a_controller_without_a_c_twin_is_reported(fast):
    class Other(congestion.NewReno):
        name = "other"

    base, now = RUN_BASES[0]
    base = copy.deepcopy(base)
    cc = Other(base.cc.mss, 10)
    cc.cwnd, cc.ssthresh = base.cc.cwnd, base.cc.ssthresh
    base.cc = cc
    assert base.canned_run() is None
    assert chain(fast, base, now, [(GET, 0.0002, None)] * 4) == {"kept": 0, "reported": 4, "python": 0}


def controller(conn, kind: str) -> None:
    """Put conn's controller in the state `kind` names (the bases are CUBIC in slow start)."""
    cc = conn.cc
    if kind.startswith("newreno"):
        nr = congestion.NewReno(cc.mss, 10)
        nr.cwnd = cc.cwnd
        conn.cc = cc = nr
    if kind in ("cubic", "cubic below w_max", "newreno"):
        cc.ssthresh = cc.cwnd  # congestion avoidance from here
    if kind == "cubic below w_max":
        cc.w_max = cc.cwnd / cc.mss * 1.4  # after a loss: K from the cube root, the concave part of the curve
    if kind == "newreno":
        cc._acc = cc.cwnd - 3000  # an increase a few exchanges away


@needs_c
def test_arming_over_kept_exchanges_not_taken_is_refused(fast):
    """The endpoint takes a run before it arms again (TcpSocket.conn); arming over it would lose them."""
    base, now = next((c, t) for c, t in RUN_BASES if c.canned_run() is not None)
    pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, "owner")
    can = fast.Canned()
    arm(fast, pred, can, base)
    assert type(fast.rx_canned(frame_in(client_seg(base, GET)), {KEY: pred}, {KEY: can}, now + 0.0002, 1)) is bytes
    with pytest.raises(RuntimeError, match="take_run"):
        can.arm(ETH_OUT, ANSWERS, *base.canned_state())
    with pytest.raises(RuntimeError, match="take_run"):  # the run alone, over the kept one, neither
        can.arm_run(*base.canned_run())
    assert can.take_run() is not None


@st.composite
def controller_states(draw):
    """A connection in congestion avoidance with any controller state the C twin may be armed with: CUBIC's
    epoch long past (the cube of hours), W_max above or below cwnd, K, the Reno-friendly estimate and the
    accumulator anywhere, an MSS of the controller's own; NewReno's accumulator near a whole window."""
    base, now = RUN_BASES[draw(st.integers(0, len(RUN_BASES) - 1))]
    base = copy.deepcopy(base)
    cubic = draw(st.booleans())
    if not cubic:
        controller(base, "newreno")
    cc = base.cc
    cc.mss = draw(st.sampled_from([536, 1000, 1448, 1460, 8948, cc.mss]))
    cc.cwnd = draw(st.integers(2 * cc.mss, 400 * cc.mss))
    cc.ssthresh = draw(st.integers(cc.mss, cc.cwnd))
    cc._acc = draw(st.integers(0, cc.cwnd))
    if cubic:
        seg = cc.cwnd / cc.mss
        cc.w_max = draw(st.floats(0.0, 3 * seg))
        cc.k = draw(st.floats(0.0, 50.0))
        cc.epoch = draw(st.one_of(st.none(), st.floats(now - 2.0, now), st.floats(now - 20000.0, now)))
        cc.w_est = draw(st.floats(1.0, 3 * seg))
        cc._acc = draw(st.integers(0, 2))
    if base.rtt.srtt is not None:  # a path of any length: t = now - epoch + srtt weighs it
        base.rtt.srtt = draw(st.floats(0.0005, 1.0))
        base.rtt.rttvar = draw(st.floats(0.0, base.rtt.srtt))
    steps = draw(st.lists(st.tuples(st.sampled_from([GET, HEAD, GET + HEAD]),
                                    st.sampled_from([0.0001, 0.0003, 0.002, 0.01]),
                                    st.sampled_from([None, 0xFFFF, 7])),
                          min_size=2, max_size=6))
    return base, now, steps


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(controller_states())
def test_c_twins_of_the_controllers_and_rtt_estimator_agree_over_any_state(fast, case):
    """Differential: cc_on_ack and rtt_sample (kb_http.c) against Cubic.on_ack / NewReno.on_ack and
    RttEstimator.sample, through the exchanges C keeps, over states the same-state chains above do not reach."""
    base, now, steps = case
    chain(fast, base, now, steps)
