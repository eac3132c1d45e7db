"""kbypass._fastxfer.lane_chains: a jumbo sender's datagrams written as chains of the message lane's stash frames
and put on its TX ring in one C call (datapath._send_lane_chains). Held to the reference: the packets that leave
the (fake) multi-buffer socket are byte for byte those the Python codec's write_chains makes of the encoded
datagrams; it stops where the stash runs short (the caller stocks it and goes on); the port's accounting holds;
a datagram no chain carries is refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from kbypass import backend
from kbypass.port.batch import DESC, Batch
from kbypass.xfer.datapath import EncodeInFrames, Unencoded
from kbypass.xsk.consts import XDP_PKT_CONTD
from tests.unit.test_multibuf import _port
from tests.unit.test_transport_fastpath import PY, fx
from tests.unit.test_xfer_chains import _new_data_out, jumbo_encaps

pytestmark = pytest.mark.skipif(not (backend.built("xfer") and backend.built("lane")),
                                reason="kbypass._fastxfer / _fastlane are not built: make setup")
FS = 2048  # the fake port's frames


def reference_packets(enc, grams: list) -> list[bytes]:
    """The packets write_chains of the Python codec makes of the encoded datagrams, each chain joined."""
    n = 40 * len(grams)
    batch = Batch(np.zeros(n, DESC), np.zeros(FS * n, np.uint8), None, FS)
    batch.descs["addr"] = np.arange(n, dtype=np.uint64) * FS
    used, wrote = enc.write_chains(PY, batch, [bytes(g) for g in grams], 0, 40)
    assert wrote == len(grams)
    out, cur = [], b""
    for d in batch.descs[:used]:
        cur += batch.mem[int(d["addr"]):int(d["addr"]) + int(d["len"])].tobytes()
        if not d["options"] & XDP_PKT_CONTD:
            out.append(cur)
            cur = b""
    return out


@pytest.mark.parametrize("kind", ["udp", "eth"])
def test_lane_chains_sends_what_the_reference_writes_and_stops_where_the_stash_runs_short(monkeypatch, kind):
    grams = _new_data_out(EncodeInFrames(fx), 12)
    grams = grams[:6] + [bytes(g) for g in grams[6:8]] + grams[8:]  # encoded bytes go the same way
    assert sum(type(g) is Unencoded for g in grams) >= 10
    enc = jumbo_encaps(kind, 9000)[0]
    expected = reference_packets(copy.deepcopy(enc), grams)
    with _port(monkeypatch) as port:
        lane = port.message_lane(native=True, stash=64)
        lane.defer_kick = True
        core = lane.c.core
        assert enc.lane_chains(fx.lane_chains, core, grams, 0) == 0  # an empty stash: nothing goes
        per = -(-len(expected[0]) // lane.tx_room)
        assert lane.stock(2 * per + 1) == 2 * per + 1
        assert enc.lane_chains(fx.lane_chains, core, grams, 0) == 2  # the stash held two chains
        assert lane.c.stashed == 1
        sent = 2
        while sent < len(grams):
            lane.flush_tx()
            lane.stock(64)
            k = enc.lane_chains(fx.lane_chains, core, grams, sent)
            assert k > 0
            sent += k
        lane.flush_tx()
        assert port.xsk.send_all() == expected
        assert port.stats["tx_packets"] == len(grams) and port.stats["tx_bytes"] == sum(map(len, expected))
        lane.reclaim()  # the completions come back into the stash, in C
        assert port.check(app=0)["app"] == lane.held > 0


def test_lane_chains_refuses_a_datagram_no_chain_carries(monkeypatch):
    enc = jumbo_encaps("udp", 9000)[0]
    with _port(monkeypatch) as port:
        lane = port.message_lane(native=True, stash=64)
        lane.stock(64)
        with pytest.raises(ValueError, match="fits no chain"):
            enc.lane_chains(fx.lane_chains, lane.c.core, [bytes(100), bytes(9500)], 0)
        with pytest.raises(TypeError, match="bytes"):
            enc.lane_chains(fx.lane_chains, lane.c.core, [3], 0)
        with pytest.raises(ValueError, match="not a chains lane|bad kind"):
            fx.lane_chains(lane.c.core, 9000, 7, bytes(14), 0, [], 0)
        lane.flush_tx()
        port.xsk.send_all()  # the first datagram, sent before the refusal, stays sent
        lane.reclaim()
        assert port.check(app=0)["app"] == lane.held
