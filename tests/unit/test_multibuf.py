"""Multi-buffer AF_XDP (issue 17) without a kernel: chains of frames through the ring protocol, the Batch of
packets, the port's receive/transmit/free/alloc, and the C sink against its numpy reference, on the fake
socket of tests/fakexsk.py (the netns tests in tests/netns/test_jumbo.py run the same on a real kernel)."""

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kbypass import backend
from kbypass.errors import UsageError
from kbypass.gen.template import udp_template
from kbypass.port import afxdp as afxdp_mod
from kbypass.port.batch import DESC, Batch
from kbypass.proto.stamp import ETH_IPV4_UDP
from kbypass.xsk import multibuf
from kbypass.xsk.consts import XDP_DESC, XDP_PKT_CONTD
from kbypass.xsk.ring import ConsumerRing, ProducerRing, ring_layout
from tests.fakexsk import FakeXsk, run_sink

needs_c = pytest.mark.skipif(not backend.built("batch"), reason="kbypass._fastbatch is not built: make setup")
ROOM = 2048 - 256  # what a 2048-byte frame receives in copy mode


def _rings(size=16):
    lay = ring_layout(size, XDP_DESC)
    buf = bytearray(lay.pop("bytes"))
    return ProducerRing(buf, **lay), ConsumerRing(buf, **lay)


def _post(kernel, lengths_and_more):
    idx, n = kernel.reserve(len(lengths_and_more))
    d = np.zeros(n, dtype=XDP_DESC)
    d["len"] = [x for x, _ in lengths_and_more]
    d["options"] = [XDP_PKT_CONTD if more else 0 for _, more in lengths_and_more]
    kernel.write_slots(idx, d)
    kernel.submit(n)


def test_peek_packets_takes_whole_packets_only():
    kernel, rx = _rings()
    # packets of 1, 3 and 2 frames
    _post(kernel, [(1, False), (2, True), (3, True), (4, False), (5, True), (6, False)])
    assert rx.peek_packets(3) == (0, 1)  # a budget ending inside the 3-frame packet is cut back to the 1st
    rx.release(1)
    assert rx.peek_packets(2) == (1, 3)  # the packet alone is longer than the budget: all of it
    rx.release(3)
    assert rx.peek_packets(64) == (4, 2)
    rx.release(2)
    assert rx.peek_packets(8) == (6, 0)
    _post(kernel, [(7, True)])  # half a packet (a kernel never publishes one): not taken
    assert rx.peek_packets(8) == (6, 0)


def test_peek_packets_across_the_wrap():
    kernel, rx = _rings(8)
    for _ in range(3):
        _post(kernel, [(1, True), (1, True), (1, False)])
        idx, n = rx.peek_packets(2)
        assert n == 3
        rx.release(n)


def _frames(n, size, first=0):
    base = udp_template("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", 9, "10.0.0.2", 4321, size)
    out = []
    for i in range(first, first + n):
        body = (np.arange(size, dtype=np.uint32) * 3 + i).astype(np.uint8).tobytes()
        out.append(base[:ETH_IPV4_UDP] + struct.pack("!QQ", i, 0) + body[ETH_IPV4_UDP + 16 : size])
    return out


def _port(monkeypatch, ops=None, **kw):
    monkeypatch.setattr(afxdp_mod, "XskSocket", FakeXsk)
    return afxdp_mod.AfXdpPort("fake0", frames=1024, fill_size=512, rx_size=512, tx_size=512, comp_size=512,
                               batch_ops=ops, multi_buffer=True, **kw)


def test_receive_gives_packets_and_transmit_gathers_them(monkeypatch):
    with _port(monkeypatch) as port:
        sent = _frames(3, 9014) + _frames(2, 60) + _frames(1, 60042)
        port.xsk.deliver_chains(sent, ROOM)
        batch = port.receive(512)
        assert len(batch) == 6 and batch.tails is not None
        assert batch.frame_counts().tolist() == [6, 6, 6, 1, 1, 34]
        assert batch.total_lens().tolist() == [len(f) for f in sent]
        assert [batch.tobytes(i) for i in range(6)] == sent
        assert port.stats["rx_packets"] == 6 and port.stats["rx_bytes"] == sum(map(len, sent))
        # selections carry their tails: a mask, a slice, an index array
        assert [batch[batch.total_lens() > 100].tobytes(i) for i in range(4)] == sent[:3] + sent[5:]
        assert batch[2:4].frame_counts().tolist() == [6, 1] and batch[2:4].tobytes(0) == sent[2]
        assert batch[np.array([5, 0])].tobytes(0) == sent[5]
        assert batch[3:5].tails is None  # one-frame packets only: the fast path again
        ring = batch[:3].ring_descs()
        assert len(ring) == 18 and (ring["options"][5::6] == 0).all() and ring["options"].sum() == 15
        # headers are read from the first frame, for every packet at once
        assert (batch.u16be(36) == 4321).all()
        batch.swap_macs()
        # the 34-frame packet stays with the caller: more than the kernel sends as one (transmit_leaves... below)
        assert port.transmit(batch) == 5 and port.stats["tx_too_long"] == 1
        out = port.xsk.send_all()
        assert out == [f[6:12] + f[0:6] + f[12:] for f in sent[:5]]
        port.free(batch[5:])
        port.reap()
        port.check(app=0)


def test_alloc_sized_packets_fill_and_send(monkeypatch):
    with _port(monkeypatch) as port:
        data = _frames(1, 9000)[0]
        batch = port.alloc(4, size=len(data))
        assert batch.frame_counts().tolist() == [5] * 4 and batch.total_lens().tolist() == [9000] * 4
        batch.fill(data)
        other = _frames(1, 9000, first=7)[0]
        batch.write_packet(3, other)
        assert port.transmit(batch) == 4
        assert port.xsk.send_all() == [data] * 3 + [other]
        with pytest.raises(UsageError, match="allocate it with size"):
            b = port.alloc(1, size=9000)
            try:
                b.write_packet(0, data[:3000])  # 2 frames' worth in a chain of 5
            finally:
                port.free(b)
        limit = multibuf.tx_frame_limit()
        with pytest.raises(UsageError, match="more than the kernel sends as one packet"):
            port.alloc(1, size=limit * 2048 + 1)
        port.reap()
        port.check(app=0)


def test_a_port_without_multi_buffer_refuses_chains(monkeypatch):
    monkeypatch.setattr(afxdp_mod, "XskSocket", FakeXsk)
    with afxdp_mod.AfXdpPort("fake0", frames=256, fill_size=64, rx_size=64, tx_size=64, comp_size=64,
                             multi_buffer=False) as port:
        assert port.max_tx_frames == 1
        with pytest.raises(UsageError, match="not multi-buffer"):
            port.alloc(1, size=5000)
        port.xsk.deliver([b"y" * 100])
        batch = port.receive(64)
        assert batch.tails is None and batch.total_lens().tolist() == [100]  # the one-frame path, untouched
        port.free(batch)


@pytest.mark.parametrize("native", [True, False] if backend.built("lane") else [False])
def test_the_message_lane_moves_whole_chains(monkeypatch, native):
    with _port(monkeypatch) as port:
        lane = port.message_lane(native=native)  # C too: kb_lane_rx_copy and kb_lane_send take chains
        assert lane.native is native and lane.max_frame == 2048 * multibuf.tx_frame_limit()
        sent = _frames(1, 60042) + _frames(1, 100, first=1) + _frames(1, 9014, first=2)
        port.xsk.deliver_chains(sent, ROOM)
        assert [lane.receive_one() for _ in range(4)] == sent + [None]
        assert port.stats["rx_packets"] == 3 and port.stats["rx_bytes"] == sum(map(len, sent))
        out = _frames(1, 30000) + sent[1:]
        assert not lane.send_one(sent[0])  # 30 frames of 2048 bytes: more than the kernel sends as one
        for f in out:
            assert lane.send_one(f)
        assert port.xsk.send_all() == out
        assert not lane.send_one(b"z" * (lane.max_frame + 1))  # longer than the kernel sends: not sent
        assert port.xsk.send_all() == []
        lane.reclaim()
        port.check(app=0)


def test_a_closed_multi_buffer_port_says_so(monkeypatch):
    port = _port(monkeypatch)
    port.close()
    with pytest.raises(UsageError, match="closed"):
        port.receive()


def test_from_ring_refuses_half_a_packet():
    d = np.zeros(2, dtype=DESC)
    d["options"] = XDP_PKT_CONTD
    with pytest.raises(UsageError, match="middle of a packet"):
        Batch.from_ring(d, np.zeros(16, dtype=np.uint8))


def _split(ops, ring):
    n = len(ring)
    heads, tails, kept = (np.full(n, 0xAB, dtype=DESC) for _ in range(3))
    ntails = np.full(n, 7, dtype=np.uint32)
    k = ops.split_chains(ring, heads, tails, ntails, kept)
    if k < 0:
        return k
    return k, heads[:k].tobytes(), tails[:n - k].tobytes(), ntails[:k].tolist(), kept.tobytes()


@needs_c
def test_split_chains_c_gives_the_numpy_verdict():
    """kbypass._fastbatch.split_chains (what Batch.from_ring runs on every multi-buffer receive and on the
    transport's every send of jumbo chains) against the numpy reference (backend.PyBatch): random chain
    layouts, any options bits besides XDP_PKT_CONTD, strided input, half a packet at the end."""
    rng = np.random.default_rng(11)
    c, py = backend.batch("c"), backend.PyBatch()
    for trial in range(300):
        n = int(rng.integers(0, 40))
        ring = np.zeros(2 * n, dtype=DESC)[::2] if trial % 3 == 0 else np.zeros(n, dtype=DESC)
        ring["addr"] = rng.integers(0, 1 << 40, n, dtype=np.uint64)
        ring["len"] = rng.integers(0, 5000, n, dtype=np.uint32)
        ring["options"] = rng.integers(0, 16, n, dtype=np.uint32)
        if n and trial % 5:
            ring["options"][-1] &= ~np.uint32(XDP_PKT_CONTD)  # mostly whole packets
        assert _split(c, ring) == _split(py, ring)
    ring = np.zeros(3, dtype=DESC)
    for ops in (c, py):
        with pytest.raises(ValueError, match="room"):
            ops.split_chains(ring, ring[:2], ring.copy(), np.zeros(3, dtype=np.uint32), ring.copy())


def _ends(ops, ring, most):
    ends = np.full(len(ring), -7, dtype=np.int64)
    k, stopped = ops.chain_ends(ring, ends, most)
    return k, stopped, ends[:k].tolist()


@needs_c
def test_chain_ends_c_gives_the_numpy_verdict():
    """kbypass._fastbatch.chain_ends (where each packet of a jumbo send ends, and the first the kernel would
    not send: AfXdpPort.transmit_ring) against the numpy reference: random layouts and limits."""
    rng = np.random.default_rng(12)
    c, py = backend.batch("c"), backend.PyBatch()
    for trial in range(300):
        n = int(rng.integers(0, 40))
        ring = np.zeros(2 * n, dtype=DESC)[::2] if trial % 3 == 0 else np.zeros(n, dtype=DESC)
        ring["options"] = rng.integers(0, 16, n, dtype=np.uint32) & rng.integers(0, 2, n, dtype=np.uint32) * 15
        if n and trial % 5:
            ring["options"][-1] &= ~np.uint32(XDP_PKT_CONTD)
        most = int(rng.integers(1, 8))
        assert _ends(c, ring, most) == _ends(py, ring, most)
    ring = np.zeros(3, dtype=DESC)
    assert _ends(c, ring, 1) == (3, 0, [1, 2, 3])
    for ops in (c, py):
        with pytest.raises(ValueError, match="room"):
            ops.chain_ends(ring, np.zeros(2, dtype=np.int64), 4)


def test_from_ring_splits_chains_and_keeps_ring_order():
    d = np.zeros(6, dtype=DESC)
    d["addr"] = np.arange(6) * 4096
    d["len"] = [4096, 100, 50, 4096, 4096, 7]
    d["options"] = [XDP_PKT_CONTD | 4, 0, 0, XDP_PKT_CONTD, XDP_PKT_CONTD, 0]
    batch = Batch.from_ring(d, np.zeros(6 * 4096, dtype=np.uint8), None, 4096)
    assert len(batch) == 3 and batch.ntails.tolist() == [1, 0, 2]
    assert batch.descs["addr"].tolist() == [0, 2 * 4096, 3 * 4096]
    assert batch.tails["addr"].tolist() == [4096, 4 * 4096, 5 * 4096]
    assert batch.total_lens().tolist() == [4196, 50, 8199]
    assert batch.ring_descs()["options"].tolist() == [XDP_PKT_CONTD, 0, 0, XDP_PKT_CONTD, XDP_PKT_CONTD, 0]
    one = Batch.from_ring(d[1:3], batch.mem)  # no chains: the one-frame batch, its descriptors as they are
    assert one.tails is None and one.descs is not None and len(one) == 2


@needs_c
def test_sink_c_path_counts_chains_as_the_numpy_path_does(monkeypatch):
    rng = np.random.default_rng(3)
    rounds = []
    for r in range(3):
        sizes = rng.choice([60, 1500, 1900, 9014, 20000], size=40)
        order = rng.permutation(40)
        rounds.append([_frames(1, int(sizes[i]), first=r * 100 + int(i))[0] for i in order])
    c_res, c_stats, c_consumed = run_sink(monkeypatch, backend.batch("c"), rounds, chains_room=ROOM, multi_buffer=True)
    py_res, py_stats, py_consumed = run_sink(monkeypatch, backend.batch("python"), rounds, chains_room=ROOM,
                                                      multi_buffer=True)
    assert (c_consumed, py_consumed) == (True, False)
    assert c_res == py_res and c_stats == py_stats
    assert c_res[0][0] == 40 and c_res[0][2]["received"] == 40 and c_res[0][2]["reordered"] > 0


_PEEK_HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "kb_ring.h"
/* stdin: ring size, then ops: "p LEN MORE" (the kernel posts one descriptor; MORE: XDP_PKT_CONTD), "k N"
 * (kb_ring_cons_peek_packets of N, printed as "IDX COUNT", then released) */
int main(void) {
    unsigned size;
    if (scanf("%u", &size) != 1) return 2;
    struct kb_desc *slots = calloc(size, sizeof *slots);
    uint32_t prod = 0, cons = 0, flags = 0;
    struct kb_ring r = {0, 0, size - 1, size, &prod, &cons, slots, &flags};
    char op;
    unsigned a, b;
    while (scanf(" %c", &op) == 1) {
        if (op == 'p') {
            if (scanf("%u %u", &a, &b) != 2) return 2;
            slots[prod & (size - 1)] = (struct kb_desc){0, a, b ? KB_PKT_CONTD : 0};
            prod++;
        } else {
            uint32_t idx;
            if (scanf("%u", &a) != 1) return 2;
            uint32_t n = kb_ring_cons_peek_packets(&r, a, &idx);
            printf("%u %u\n", n ? idx : 0, n);
            kb_ring_cons_release(&r, n);
        }
    }
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_peek_packets_c_twin_gives_the_same_answers(tmp_path):
    """kb_ring_cons_peek_packets (C, kb_ring.h) and ConsumerRing.peek_packets (Python) on the same random
    posts and budgets, chains cut by the budget and by the wrap included: the same (index, count) each time."""
    core = Path(__file__).resolve().parents[2] / "csrc/core"
    (tmp_path / "h.c").write_text(_PEEK_HARNESS)
    exe = tmp_path / "h"
    subprocess.run(["gcc", "-O1", "-fsanitize=undefined", "-fno-sanitize-recover=all", f"-I{core}",
                    str(tmp_path / "h.c"), "-o", str(exe)], check=True)
    rng = np.random.default_rng(17)
    size = 64
    kernel, rx = _rings(size)
    ops, want = [str(size)], []
    posted = 0
    for _ in range(400):
        if rng.random() < 0.6 and posted < size - 20:  # a whole packet of 1 to 18 frames
            k = int(rng.integers(1, 19))
            chain = [(int(rng.integers(1, 2048)), m < k - 1) for m in range(k)]
            _post(kernel, chain)
            ops += [f"p {n} {int(more)}" for n, more in chain]
            posted += k
        else:
            budget = int(rng.integers(1, 40))
            idx, n = rx.peek_packets(budget)
            rx.release(n)
            posted -= n
            ops.append(f"k {budget}")
            want.append(f"{idx & 0xFFFFFFFF if n else 0} {n}")
    r = subprocess.run([str(exe)], input="\n".join(ops), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == want
    assert any(w.split()[1] != "0" for w in want) and any(int(w.split()[1]) > 1 for w in want)


# --- the reviewer's findings (issue 17 follow-up) -----------------------------------------------------------

def test_transmit_leaves_a_too_long_chain_with_the_caller_and_counts_it(monkeypatch):
    """A peer's 40,000-byte datagram arrives in 23 frames of 2048 bytes, more than the kernel sends as one
    packet (18): transmit raised a UsageError for the whole batch (reflect died with rc 2). Now the packets
    before it go, it and the rest stay the caller's (the accepted prefix, as when the TX ring is full), and
    stats["tx_too_long"] counts it; `sendable` says beforehand which packets would go."""
    with _port(monkeypatch) as port:
        sent = _frames(1, 9014) + _frames(1, 40000, first=1) + _frames(1, 60, first=2)
        port.xsk.deliver_chains(sent, ROOM)
        batch = port.receive(512)
        assert batch.frame_counts().tolist() == [6, 23, 1]
        assert port.sendable(batch).tolist() == [True, False, True]
        assert port.transmit(batch) == 1 and port.stats["tx_too_long"] == 1
        assert port.transmit(batch[1:]) == 0 and port.stats["tx_too_long"] == 2  # nothing before it: 0
        assert port.xsk.send_all() == [sent[0]]
        assert port.transmit(batch[2:]) == 1
        assert port.xsk.send_all() == [sent[2]]
        port.free(batch[1:2])
        port.reap()
        port.check(app=0)


def test_transmit_ring_sends_ring_order_packets_as_transmit_does(monkeypatch):
    """transmit_ring (the transport's jumbo sends: frames written as chains in ring order, no Batch made of
    them) sends what transmit() sends of the same packets: whole packets, a too-long chain and what follows
    left with the caller and counted, half a packet refused."""
    with _port(monkeypatch) as port:
        sent = _frames(1, 9014) + _frames(1, 60, first=1) + _frames(1, 40000, first=2) + _frames(1, 60, first=3)
        port.xsk.deliver_chains(sent, ROOM)
        ring = port.receive(512).ring_descs()  # 6 + 1 + 23 + 1 frames, in ring order
        assert port.transmit_ring(ring) == (2, 7) and port.stats["tx_too_long"] == 1
        assert port.xsk.send_all() == sent[:2]
        with pytest.raises(UsageError, match="middle of a packet"):
            port.transmit_ring(ring[7:29])
        assert port.transmit_ring(ring[7:]) == (0, 0) and port.stats["tx_too_long"] == 2
        assert port.transmit_ring(ring[30:]) == (1, 1) and port.xsk.send_all() == sent[3:]
        port.free(Batch.from_ring(ring[7:30], port.umem.array, port))
        port.reap()
        port.check(app=0)


def test_the_reflector_frees_and_counts_what_it_cannot_send_back(monkeypatch):
    from kbypass.apps.reflect import Reflector

    with _port(monkeypatch) as port:
        sent = _frames(2, 9014) + _frames(1, 40000, first=2) + _frames(1, 100, first=3)
        port.xsk.deliver_chains(sent, ROOM)
        res = Reflector(port, batch=512).run(count=4, duration=5)
        assert (res.packets, res.sent, res.not_reflected, res.tx_dropped) == (4, 3, 1, 0)
        assert len(port.xsk.send_all()) == 3
        port.reap()
        port.check(app=0)


def test_return_limit_names_the_frames_and_the_largest_mtu():
    assert multibuf.rx_frames_for(65535, 2048) == 37 and multibuf.rx_frames_for(65535, 4096) == 18
    assert multibuf.return_limit(65535, 4096) is None and multibuf.return_limit(9000, 2048) is None
    why = multibuf.return_limit(65535, 2048)
    assert "arrives in up to 37 frames" in why and f"at most {18 * ROOM - 14}" in why
    assert multibuf.return_limit(18 * ROOM - 14, 2048) is None and multibuf.return_limit(18 * ROOM - 13, 2048)


def test_alloc_with_no_whole_chain_free_is_an_empty_batch_every_method_takes(monkeypatch):
    """alloc(n, size=big) with fewer free frames than one chain returned an empty *chained* Batch on which
    fill() raised ValueError (min of an empty array)."""
    with _port(monkeypatch) as port:
        hold = port.alloc(port.umem.free_count)  # every free frame
        assert port.umem.free_count == 0
        empty = port.alloc(4, size=9000)
        assert len(empty) == 0
        empty.fill(_frames(1, 9000)[0])
        assert port.transmit(empty) == 0 and port.sendable(empty).tolist() == []
        port.free(empty)
        chained = Batch(np.zeros(0, dtype=DESC), port.umem.array, port, tails=np.zeros(0, dtype=DESC),
                        ntails=np.zeros(0, dtype=np.uint32))
        chained.fill(b"x" * 9000)  # an empty Batch of chains (a selection of none) too
        assert chained.total_lens().tolist() == [] and len(chained.ring_descs()) == 0
        assert port.transmit(chained) == 0
        port.free(hold)
        port.check(app=0)


def test_alloc_refuses_a_size_above_the_mtu(monkeypatch):
    with _port(monkeypatch) as port:
        port.mtu = 9000
        with pytest.raises(UsageError, match="9015-byte packet is longer than fake0's MTU 9000"):
            port.alloc(1, size=9015)
        b = port.alloc(1, size=9014)
        assert b.total_lens().tolist() == [9014]
        port.free(b)
        port.check(app=0)


def _post_continuations(xsk, n):
    """A buggy kernel: n lent frames posted as continuation descriptors with no packet end."""
    idx, got = xsk.k_fill.peek(n)
    addrs = xsk.k_fill.read_slots(idx, got)
    xsk.k_fill.release(got)
    d = np.zeros(got, dtype=XDP_DESC)
    d["addr"], d["len"], d["options"] = addrs + 256, 100, XDP_PKT_CONTD
    k, m = xsk.k_rx.reserve(got)
    xsk.k_rx.write_slots(k, d)
    xsk.k_rx.submit(m)


@pytest.mark.parametrize("impl", ["receive", "consume"])
def test_a_ring_of_continuations_alone_is_counted_and_does_not_stall(monkeypatch, impl):
    """The kernel publishes a packet's descriptors together, so continuation descriptors with no end can
    never complete: receive (and the C sink) took nothing forever, silently. Now their frames go back to
    the kernel, stats["rx_broken_chains"] counts them, and the packets after them arrive."""
    if impl == "consume" and not backend.built("batch"):
        pytest.skip("kbypass._fastbatch is not built: make setup")
    with _port(monkeypatch, ops=backend.batch("c" if impl == "consume" else "python")) as port:
        port.receive(1)  # lends the fill ring its frames
        _post_continuations(port.xsk, 5)
        take = (lambda: port.receive(64)) if impl == "receive" else (lambda: port.consume(64))
        got = take()
        assert (len(got) if impl == "receive" else got[0]) == 0
        assert port.stats["rx_broken_chains"] == 5 and port.xsk.rx.pending() == 0
        good = _frames(2, 3000)
        port.xsk.deliver_chains(good, ROOM)
        got = take()
        if impl == "receive":
            assert [got.tobytes(i) for i in range(len(got))] == good
            port.free(got)
        else:
            assert got[0] == 2
        port.check(app=0)


def test_peek_broken_only_when_no_descriptor_ends_a_packet():
    kernel, rx = _rings(8)
    assert rx.peek_broken() == (0, 0)
    _post(kernel, [(1, True), (2, True)])
    assert rx.peek_packets(8) == (0, 0) and rx.peek_broken() == (0, 2)
    rx.release(2)
    _post(kernel, [(3, True), (4, False), (5, True)])
    assert rx.peek_broken() == (2, 0)  # a packet ends there: a whole packet, then "not yet"


def test_rx_descriptor_bounds_are_its_own_frame():
    """kb_sink, the lanes' receive_one and _receive_chain checked a descriptor against the whole UMEM, so
    one crossing into the next frame was read (and truncated to a frame) rather than refused. The twins
    desc_in_frame (Python) and kb_desc_in_frame (C) give one verdict (the lanes and the sink on the same
    descriptors: tests/unit/test_endpoint_lane.py, tests/unit/test_sink_consume.py)."""
    from kbypass.xsk.umem import desc_in_frame

    size, fs = 1 << 20, 2048
    cases = [(256, 1792, True), (256, 1793, False), (2047, 1, True), (2047, 2, False), (size - 100, 100, True),
             (size, 0, False), (4096 + 2000, 60, False), (0, 2048, True), (0, 2049, False)]
    for addr, n, ok in cases:
        assert desc_in_frame(addr, n, size, fs) is ok, (addr, n)


def _ring_of(counts, other_bits=0):
    """Ring-order descriptors of packets of `counts` frames (XDP_PKT_CONTD on all but each one's last)."""
    d = np.zeros(sum(counts), dtype=DESC)
    d["addr"] = np.arange(len(d)) * 4096 + 256
    d["len"] = np.arange(len(d)) + 100
    d["options"] = XDP_PKT_CONTD | other_bits
    d["options"][np.cumsum(counts) - 1] = other_bits
    return d


def _rebuilt(batch):
    """ring_descs() as computed from heads and tails (a Batch that from_ring did not make)."""
    return Batch(batch.descs, batch.mem, None, 4096, tails=batch.tails, ntails=batch.ntails).ring_descs()


def test_ring_descs_of_a_batch_from_the_ring_is_kept_not_rebuilt(monkeypatch):
    d = _ring_of([3, 1, 17, 2], other_bits=0x10)  # bits other than XDP_PKT_CONTD are not the ring order's
    batch = Batch.from_ring(d, np.zeros(1 << 20, dtype=np.uint8), None, 4096)
    want = _rebuilt(batch)
    assert set(want["options"].tolist()) == {0, XDP_PKT_CONTD}
    monkeypatch.setattr(Batch, "frame_counts", lambda self: pytest.fail("ring_descs rebuilt the order"))
    got = batch.ring_descs()
    assert got.tobytes() == want.tobytes()
    got["len"] = 0  # the caller's copy: the batch's own stays as it was
    assert batch.ring_descs().tobytes() == want.tobytes()


@pytest.mark.parametrize("change", ["head_len", "tail_len", "set_len", "new_tails"])
def test_ring_descs_follows_any_change_to_a_batch_from_the_ring(change):
    d = _ring_of([2, 3, 1])
    batch = Batch.from_ring(d, np.zeros(1 << 20, dtype=np.uint8), None, 4096)
    if change == "head_len":
        batch.lens[1] = 7  # written in place through the view
    elif change == "tail_len":
        batch.tails["len"][2] = 9
    elif change == "set_len":
        batch.set_len(11)
    else:
        batch.tails = batch.tails.copy()
        batch.tails["addr"][0] = 1 << 19
    assert batch.ring_descs().tobytes() == _rebuilt(batch).tobytes() != d.tobytes()
