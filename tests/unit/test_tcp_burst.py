"""A receive burst in one C call (kbypass._fasttcp.rx_burst) against the same frames one by one through
rx_canned, the call the Python loop of TcpHost.receive makes: on rings in plain memory (tests/fakexsk.py, the
test playing the kernel), the same verdict for every frame (what Python must see, in order), the kept
answers on the TX ring byte for byte as rx_canned builds them, the same tally and the same run to take."""

from __future__ import annotations

import copy
from unittest import mock

import pytest

from kbypass import backend
from kbypass.port import afxdp as afxdp_mod
from kbypass.proto import udp as udpp
from kbypass.proto.ipv4 import build_ipv4_header
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

pytestmark = needs_c
MAC = bytes.fromhex("020000000002")


@pytest.fixture
def fast():
    try:
        return backend.native_module("tcp")
    except backend.NativeMissing as e:
        pytest.skip(str(e))


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
    n, kept, udp, got_ident, items, more = fast.rx_burst(core, core, {KEY: pred}, {KEY: can}, now, 40, got_tally, 64)
    assert (n, kept, udp, more) == (len(frames), len(want_sent), 0, 0)
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
    assert fast.rx_burst(core, core, {}, {}, 1.0, 0, None, 2) == (2, 0, 2, 0, [], 0)
    assert fast.rx_burst(core, core, {}, {}, 1.0, 0, None, 64) == (1, 0, 1, 0, [], 0)
    assert fast.rx_burst(core, core, {}, {}, 1.0, 0, None, 64)[0] == 0  # the ring is empty


def test_a_closed_lane_is_refused(fast, lane):
    core = lane.c.core
    lane.close()
    with pytest.raises(ValueError, match="closed"):
        fast.rx_burst(core, core, {}, {}, 1.0, 0, None, 64)
