"""A receive burst in one C call (kbypass._fasttcp.rx_burst) against the same frames one by one through
rx_canned, the call the Python loop of TcpHost.receive makes: on rings in plain memory (tests/fakexsk.py, the
test playing the kernel), the same verdict for every frame (what Python must see, in order), the kept
answers on the TX ring byte for byte as rx_canned builds them, the same tally and the same run to take."""

from __future__ import annotations

import copy
import errno
import gc
from unittest import mock

import numpy as np
import pytest

from kbypass.endpoint.tcprx import TcpReceive
from kbypass.port import afxdp as afxdp_mod
from kbypass.proto import udp as udpp
from kbypass.proto.ipv4 import build_ipv4_header
from kbypass.proto.tcp.segment import ACK, ECE, FIN, RST, parse_segment
from kbypass.xsk import consts
from tests.fakexsk import FakeXsk
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

pytestmark = needs_c
MAC = bytes.fromhex("020000000002")


@pytest.fixture
def lane():
    """A C lane over fake rings, as TcpHost opens it (its UDP check for a port 0 nothing steers)."""
    with mock.patch.object(afxdp_mod, "XskSocket", FakeXsk):
        port = afxdp_mod.AfXdpPort("fake0", frames=256, fill_size=64, rx_size=64, tx_size=64, comp_size=64)
    made = port.message_lane(udpp.PlainUdp(MAC, SIP, 0, None), native=True)
    yield made
    made.close()
    port.close()


def armed(fast, conn):
    pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, "owner")
    pred.arm(*conn.prediction())
    can = fast.Canned()
    can.arm(ETH_OUT, ANSWERS, *conn.canned_state())
    run = conn.canned_run()
    if run is not None:
        can.arm_run(*run)
    return pred, can


def burst_frames(base, now: float) -> list[bytes]:
    """Keep-alive requests (each acking the answer before it), a pipelined pair, then a frame of another
    connection (the slow path) and more requests of the first, which the slow frame does not disarm."""
    ref = copy.deepcopy(base)
    frames = []
    for payload in (GET, GET, GET + HEAD, GET):
        frames.append(frame_in(client_seg(ref, payload)))
        exchange(ref, payload, b"".join(ANSWERS[h][0] for h in ([GET, HEAD] if payload != GET else [GET])), now)
    other = bytearray(frames[0])
    other[34 + 1] ^= 1  # another client port: nobody's prediction
    frames.insert(2, bytes(other))
    return frames


@pytest.mark.parametrize("stash", [True, False])
@pytest.mark.parametrize("which", range(0, len(BASES), 3))
def test_a_burst_in_c_gives_what_rx_canned_gives_frame_by_frame(fast, lane, which, stash):
    """stash: the lane has TX frames at hand (else every kept answer comes back to Python to send, (frame,),
    in order)."""
    base, now = BASES[which]
    if base.canned_state() is None:
        pytest.skip("this base is not armed for canned answers")
    now += 0.0002
    frames = burst_frames(base, now)
    # one by one, as the Python loop of TcpHost.receive calls it
    pred, can = armed(fast, base)
    tally, ident, want_items, want_sent = {}, 40, [], []
    for f in frames:
        hit = fast.rx_canned(f, {KEY: pred}, {KEY: can}, now, (ident + 1) & 0xFFFF, tally)
        if type(hit) is bytes:
            ident += 1
            want_sent.append(hit)
        else:
            if hit is not None and len(hit) == 10:
                ident += 1
            want_items.append(f if hit is None else hit)
    want_run = can.take_run()
    # the burst, off the ring
    pred, can = armed(fast, base)
    got_tally = {}
    if stash:
        lane.c.give(lane.port.alloc(lane.STASH).addr.tolist())
    assert lane.port.xsk.deliver(frames) == len(frames)
    core = lane.c.core
    n, kept, udp, got_ident, items, more, error = fast.rx_burst(core, core, {KEY: pred}, {KEY: can}, now, 40, got_tally, 64)
    assert (n, kept, udp, more, error) == (len(frames), len(want_sent), 0, 0, None)
    assert got_ident == ident
    lane.flush_tx()
    if stash:
        assert items == want_items
        assert lane.port.xsk.send_all() == want_sent
    else:
        assert [i for i in items if len(i) != 1] == want_items
        assert [i[0] for i in items if len(i) == 1] == want_sent and not lane.port.xsk.send_all()
    assert got_tally == tally
    assert can.take_run() == want_run
    if base.canned_run() is not None:
        assert kept >= 4, "the keep-alive requests were not kept in C"


def test_a_burst_stops_at_max_and_counts_udp_to_the_lane(fast, lane):
    """UDP to the lane's own port (0: TcpHost's lanes steer none) is counted, not handed over; max bounds it."""
    body = (5000).to_bytes(2, "big") + (0).to_bytes(2, "big") + (12).to_bytes(2, "big") + b"\x00\x00" + b"ping"
    plain = ETH_OUT[6:12] + ETH_OUT[:6] + b"\x08\x00" + build_ipv4_header(CIP, SIP, 17, len(body)) + body
    assert lane.port.xsk.deliver([plain] * 3) == 3
    core = lane.c.core
    assert fast.rx_burst(core, core, {}, {}, 1.0, 0, None, 2) == (2, 0, 2, 0, [], 0, None)
    assert fast.rx_burst(core, core, {}, {}, 1.0, 0, None, 64) == (1, 0, 1, 0, [], 0, None)
    assert fast.rx_burst(core, core, {}, {}, 1.0, 0, None, 64)[0] == 0  # the ring is empty


def test_a_closed_lane_is_refused(fast, lane):
    core = lane.c.core
    lane.close()
    with pytest.raises(ValueError, match="closed"):
        fast.rx_burst(core, core, {}, {}, 1.0, 0, None, 64)


def rearm(fast, conn, pred, can) -> None:
    """TcpSocket.predict after the slow path: the prediction and canned answers from the connection as it is."""
    state = conn.prediction()
    if state is None:
        pred.disarm()
        can.disarm()
        return
    pred.arm(*state)
    if conn.canned_state() is None:
        can.disarm()
        return
    can.arm(ETH_OUT, ANSWERS, *conn.canned_state())
    if conn.canned_run() is not None:
        can.arm_run(*conn.canned_run())


def take(fast, conn, pred, can, item, now: float) -> None:
    """What TcpHost does with one verdict (TcpReceive._take), on the connection alone: the exchanges C kept
    first (TcpSocket.conn), then a slow frame, a HIT or a reported answer, the arming after each."""
    if type(item) is tuple and len(item) == 1:  # a kept answer to send: its exchange is in the run
        return
    if can.owed:
        conn.canned_run_taken(can.take_run())
    if type(item) is bytes:
        conn.receive(parse_segment(CIP, SIP, item[34:]), now)
        rearm(fast, conn, pred, can)
    elif len(item) == 8:
        _, sq, ack, flags, win, tsval, tsecr, pl = item
        if not conn.receive_hit(sq, ack, flags, win, tsval, tsecr, pl, now):
            pred.disarm()
    elif len(item) == 10:
        _, sq, ack, flags, win, tsval, tsecr, pl, values, _ = item
        conn.answer_hit(sq, ack, flags, win, tsval, tsecr, pl, b"".join(v[0] for v in values), now)
        rearm(fast, conn, pred, can)


def same_connection_burst(base, flags: int, now: float) -> list[bytes]:
    """A keep-alive request, then a segment of the same connection only Python takes (flags, at rcv_nxt), then
    requests at the same sequence number: what the slow segment does comes first in the Python loop."""
    ref = copy.deepcopy(base)
    frames = [frame_in(client_seg(ref, GET))]
    exchange(ref, GET, ANSWERS[GET][0], now)
    slow = client_seg(ref, b"")
    frames.append(frame_in(slow._replace(flags=flags)))
    frames += [frame_in(client_seg(ref, GET)), frame_in(client_seg(ref, GET))]
    return frames


@pytest.mark.parametrize("flags", [RST | ACK, FIN | ACK, ECE | ACK], ids=["rst", "fin", "ece"])
@pytest.mark.parametrize("which", range(0, len(BASES), 3))
def test_a_slow_segment_of_a_connection_holds_back_its_later_ones_as_the_python_loop_does(fast, lane, which, flags):
    base, now = BASES[which]
    if base.canned_state() is None:
        pytest.skip("this base is not armed for canned answers")
    now += 0.0002
    frames = same_connection_burst(base, flags, now)
    # the Python loop: rx_canned frame by frame, each verdict taken before the next frame
    loop = copy.deepcopy(base)
    pred, can = armed(fast, loop)
    want_sent, ident, before = [], 40, 0
    for i, f in enumerate(frames):
        if i == 1:
            before = len(want_sent)  # the answers before the slow segment
        hit = fast.rx_canned(f, {KEY: pred}, {KEY: can}, now, (ident + 1) & 0xFFFF, None)
        if type(hit) is bytes or (hit is not None and len(hit) == 10):
            ident += 1
            want_sent.append(hit if type(hit) is bytes else hit[9])
        if type(hit) is not bytes:
            take(fast, loop, pred, can, f if hit is None else hit, now)
    if can.owed:
        loop.canned_run_taken(can.take_run())
    # the burst, its verdicts taken after it
    burst = copy.deepcopy(base)
    pred, can = armed(fast, burst)
    lane.c.give(lane.port.alloc(lane.STASH).addr.tolist())
    assert lane.port.xsk.deliver(frames) == len(frames)
    core = lane.c.core
    n, kept, udp, got_ident, items, more, error = fast.rx_burst(core, core, {KEY: pred}, {KEY: can}, now, 40, None, 64)
    assert (n, error) == (len(frames), None)
    lane.flush_tx()
    sent = lane.port.xsk.send_all()
    for item in items:
        if type(item) is tuple and len(item) == 10:
            sent.append(item[9])
        take(fast, burst, pred, can, item, now)
    if can.owed:
        burst.canned_run_taken(can.take_run())
    assert sent[:before] == want_sent[:before] and len(sent) == before, \
        "an answer went out that the slow segment before it should have held back"
    assert all(type(i) is bytes for i in items[-2:]), "a request after the slow segment was predicted"
    if len(want_sent) == before:  # the loop answered nothing after it either: the same end
        assert got_ident == ident
        assert burst.state == loop.state
        assert snap(burst) == snap(loop)
    # else (ECE): the loop armed again after the slow segment, which the burst leaves to the flush after it


def test_a_lane_closed_in_the_middle_of_a_burst_ends_it_with_what_was_done(fast, lane):
    """A finalizer the collector runs while rx_burst makes Python objects may close the lane (its rings gone):
    the burst stops there and returns the frames it took (it crashed following the cleared ring pointers)."""
    base, now = BASES[0]
    pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, "owner")
    pred.arm(*base.prediction())
    ref, frames = copy.deepcopy(base), []
    for _ in range(20):
        frames.append(frame_in(client_seg(ref, b"data that is no canned request")))
        ref.rcv_nxt += 30
    assert lane.port.xsk.deliver(frames) == 20

    class Closer:
        def __del__(self):
            lane.close()

    core, table, canned = lane.c.core, {KEY: pred}, {}
    threshold = gc.get_threshold()
    gc.collect()
    c = Closer()
    c.me = c  # cyclic garbage with a finalizer, as any application may leave
    del c
    gc.set_threshold(1)  # collected at the burst's first allocations
    try:
        n, kept, udp, _, items, more, error = fast.rx_burst(core, core, table, canned, now, 0, None, 64)
    finally:
        gc.set_threshold(*threshold)
    assert n < 20 and error is None
    assert len(items) == n and all(type(i) is tuple and len(i) == 8 for i in items)


def test_a_lane_closed_by_a_tally_key_in_the_middle_of_a_burst_ends_it_with_what_was_done(fast, lane):
    """The tally's lookups hash the table's values, which may run any Python: here one closes the lane while
    the second request is answered. That answer is handed back to send (the TX ring is gone), nothing after
    it is read."""
    run = [(c, t) for c, t in BASES if c.canned_run() is not None]
    base, now = run[0]
    now += 0.0002

    class Closes:
        calls = 0

        def __hash__(self):
            Closes.calls += 1
            if Closes.calls == 3:  # tally_add hashes each answer twice: the second request's answer
                lane.close()
            return 1

    answers = {k: v + (Closes(),) for k, v in ANSWERS.items()}
    ref, frames = copy.deepcopy(base), []
    for _ in range(4):
        frames.append(frame_in(client_seg(ref, GET)))
        exchange(ref, GET, ANSWERS[GET][0], now)
    pred = fast.Prediction(SIP, SERVER_PORT, CIP, CLIENT_PORT, "owner")
    pred.arm(*base.prediction())
    can = fast.Canned()
    can.arm(ETH_OUT, answers, *base.canned_state())
    can.arm_run(*base.canned_run())
    lane.c.give(lane.port.alloc(lane.STASH).addr.tolist())
    assert lane.port.xsk.deliver(frames) == 4
    core = lane.c.core
    n, kept, udp, _, items, more, error = fast.rx_burst(core, core, {KEY: pred}, {KEY: can}, now, 40, {}, 64)
    assert (n, kept, error) == (2, 2, None)
    assert len(items) == 1 and len(items[0]) == 1  # the second answer, to send


def test_a_failed_kick_after_the_answer_went_out_is_raised_not_sent_again(fast, lane):
    """kb_lane_send's KB_LANE_E_SYS: the frame is on the TX ring, only the kick failed. The burst counts it
    sent (nothing handed back to send again) and returns the error (errno kept) with what it did."""
    run = [(c, t) for c, t in BASES if c.canned_run() is not None]
    base, now = run[0]
    now += 0.0002
    ref = copy.deepcopy(base)
    frames = []
    for _ in range(2):
        frames.append(frame_in(client_seg(ref, GET)))
        exchange(ref, GET, ANSWERS[GET][0], now)
    pred, can = armed(fast, base)
    lane.c.give(lane.port.alloc(lane.STASH).addr.tolist())
    assert lane.port.xsk.deliver(frames) == 2
    core = lane.c.core
    lane.port.xsk.peer.close()  # the kick's sendto now fails (ECONNREFUSED), after the frame is on the ring
    n, kept, udp, _, items, more, error = fast.rx_burst(core, core, {KEY: pred}, {KEY: can}, now, 40, None, 64)
    assert isinstance(error, OSError) and error.errno == errno.ECONNREFUSED
    assert n == 1 and kept == 1 and items == []  # stopped at the error: the second request is still on the ring
    assert len(lane.port.xsk.send_all()) == 1


def test_an_error_in_the_middle_of_a_burst_returns_what_was_done_with_it(fast, lane):
    """A lookup that raises on the third frame (a key's __eq__): the two answers before it went out and moved
    the prediction; the burst returns them counted, with the error, for Python to take before it raises
    (it raised at once before, and Python never counted the answers on the wire)."""
    run = [(c, t) for c, t in BASES if c.canned_run() is not None]
    base, now = run[0]
    now += 0.0002
    ref, frames = copy.deepcopy(base), []
    for _ in range(4):
        frames.append(frame_in(client_seg(ref, GET)))
        exchange(ref, GET, ANSWERS[GET][0], now)
    pred, can = armed(fast, base)

    class Raises:
        calls = 0

        def __hash__(self):
            return hash(KEY)

        def __eq__(self, other):
            Raises.calls += 1
            if Raises.calls == 3:
                raise LookupError("a key that raises")
            return False

    table = {Raises(): None}
    table[KEY] = pred
    Raises.calls = 0
    lane.c.give(lane.port.alloc(lane.STASH).addr.tolist())
    assert lane.port.xsk.deliver(frames) == 4
    core = lane.c.core
    n, kept, udp, ident, items, more, error = fast.rx_burst(core, core, table, {KEY: can}, now, 40, None, 64)
    assert isinstance(error, LookupError)
    assert (n, kept, ident, items) == (3, 2, 42, [])
    lane.flush_tx()
    assert len(lane.port.xsk.send_all()) == 2
    assert lane.port.xsk.rx.available() == 1  # the fourth frame is still on the ring


class _BurstHost(TcpReceive):
    """TcpReceive's state as TcpHost keeps it, one lane whose C burst returns `burst` (the verdicts a burst
    gave and the error that ended it); the verdicts taken are recorded."""

    def __init__(self, burst):
        self._burst = lambda *a: burst
        self._lanes, self._cores, self._tx_backlog = [object()], [object()], []
        self._predict, self._predictions, self._canned, self._tally, self._tallied = None, {}, {}, {}, 0
        self._ident, self.late, self._dirty, self.defer_tx = 0, [], set(), False
        self.counters = dict.fromkeys(("rx_not_tcp", "rx_segments", "rx_predicted", "tx_segments",
                                       "rx_canned_kept", "rx_canned"), 0)
        self.taken: list = []

    def _take(self, item, now, answered):
        self.taken.append(item)


def test_the_host_takes_what_a_burst_did_before_it_raises_the_error_that_ended_it():
    """TcpReceive.receive: the verdicts before the error are taken, the ident and the kept answers counted,
    then the error raised as the Python send path raises it."""
    frame = b"\x00" * 60
    host = _BurstHost((2, 1, 0, 7, [frame], 0, OSError(errno.ECONNREFUSED, "kick")))
    with pytest.raises(OSError) as e:
        host.receive()
    assert e.value.errno == errno.ECONNREFUSED
    assert host.taken == [frame] and host._ident == 7 and host.counters["rx_canned_kept"] == 1
    assert _BurstHost((1, 0, 0, 3, [frame], 0, None)).receive() is True


def test_a_bad_completion_while_sending_an_answer_is_raised_not_handed_over(fast, lane):
    """kb_lane_send's KB_LANE_E_COMP_ADDR (a completed address outside the UMEM, found reclaiming TX frames for
    the answer): the burst ends with the error (the Python send path raises it too), not with the answer
    handed back to a send path that would raise the same (it was handed over, the error unseen)."""
    run = [(c, t) for c, t in BASES if c.canned_run() is not None]
    base, now = run[0]
    now += 0.0002
    frames = [frame_in(client_seg(copy.deepcopy(base), GET))]
    pred, can = armed(fast, base)
    xsk = lane.port.xsk
    idx, m = xsk.k_comp.reserve(1)
    xsk.k_comp.write_slots(idx, np.array([1 << 60], dtype=consts.UMEM_ADDR))
    xsk.k_comp.submit(1)
    assert xsk.deliver(frames) == 1
    core = lane.c.core
    n, kept, udp, _, items, more, error = fast.rx_burst(core, core, {KEY: pred}, {KEY: can}, now, 40, None, 64)
    assert isinstance(error, IndexError) and "outside the UMEM" in str(error)
    assert (n, kept, items) == (1, 1, [])


class _LaneHost(TcpReceive):
    """TcpReceive's state as TcpHost keeps it over one real lane (fake rings): the C burst when native, else the
    Python loop alone (the reference); the verdicts taken and the answers handed to Python to send recorded."""

    def __init__(self, fast, lane, pred, can, native: bool):
        self._burst = fast.rx_burst
        self._lanes, self._cores, self._tx_backlog = [lane], [lane.c.core if native else None], []
        self._predict, self._predictions, self._canned, self._tally, self._tallied = (fast.rx_canned, {KEY: pred},
                                                                                     {KEY: can}, {}, 0)
        self._ident, self.late, self._dirty, self.defer_tx = 40, [], set(), False
        self.counters = dict.fromkeys(("rx_not_tcp", "rx_segments", "rx_predicted", "tx_segments",
                                       "rx_canned_kept", "rx_canned"), 0)
        self.taken, self.sent = [], []

    def _take(self, item, now, answered):
        if type(item) is tuple and len(item) in (1, 10):
            self.sent.append(item[-1])  # a kept answer Python sends, or a reported one's frame
        if type(item) is bytes or len(item) != 1:
            self.taken.append(item)


@pytest.mark.parametrize("c_takes", [0, 2])
def test_a_burst_that_stops_for_want_of_a_fill_slot_is_finished_by_the_python_loop(fast, lane, c_takes, monkeypatch):
    """rx_burst's `more`: the fill ring has room for c_takes frames given back, so kb_lane_rx_copy says FILL_FULL
    at the next one and the burst stops there; TcpReceive.receive takes the rest frame by frame through the
    Python lane (MessageLane.receive_one keeps a frame it has no fill slot for), with rx_canned: the same
    verdicts in the same order, the same answers sent, ident, counters, tally and run as the Python loop alone."""
    base, now = next((c, t) for c, t in BASES if c.canned_run() is not None)
    now += 0.0002
    frames = burst_frames(base, now)
    monkeypatch.setattr("time.monotonic", lambda: now)
    results = []
    for native in (False, True):
        pred, can = armed(fast, base)
        host = _LaneHost(fast, lane, pred, can, native)
        lane.c.give(lane.port.alloc(lane.STASH).addr.tolist())
        xsk = lane.port.xsk
        assert xsk.deliver(frames) == len(frames)
        if native:  # the fill ring full but for c_takes slots
            extra = lane.port.alloc(len(frames) - c_takes).addr
            idx, got = xsk.fill.reserve(len(extra))
            assert got == len(extra)
            xsk.fill.write_slots(idx, extra.astype(consts.UMEM_ADDR))
            xsk.fill.submit(got)
            burst = fast.rx_burst
            seen = []
            host._burst = lambda *a: seen.append(burst(*a)) or seen[-1]
        assert host.receive() is True
        if native:
            assert seen[0][0] == c_takes and seen[0][5] == 1  # the C burst's frames, and `more`
        lane.flush_tx()
        results.append((host.taken, xsk.send_all() + host.sent, host._ident, host.counters, host._tally,
                        can.take_run()))
        assert xsk.rx.available() == 0
    assert results[0] == results[1]
    assert results[0][1], "no answer was sent"
