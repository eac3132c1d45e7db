"""The sink's one-call-per-batch C path (AfXdpPort.consume over kb_sink_drain, the sequence check in
kb_seq_update) against its reference, the numpy path (receive, SeqChecker in numpy, free): the same counts
and the same sequence verdict on the same frames, on a fake kernel (tests/fakexsk.py)."""

import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from kbypass import backend
from kbypass.apps.seqcheck import FIELDS, SeqChecker
from kbypass.errors import UsageError
from kbypass.gen.template import udp_template
from kbypass.port import afxdp as afxdp_mod
from kbypass.proto.stamp import ETH_IPV4_UDP
from kbypass.xsk.pool_lock import PoolLock, PoolLockError, SharedQueue, make_lock_file
from tests.fakexsk import FakeXsk, run_sink

needs_c = pytest.mark.skipif(not backend.built("batch"), reason="kbypass._fastbatch is not built: make setup")


def _streams():
    """Numbered streams with what a receiver meets: order, gaps, late and twice-seen numbers, numbers
    before the first, a jump past the window, and numbers that are negative as int64 (u64 >= 2**63)."""
    rng = np.random.default_rng(19)
    yield [np.arange(0, 300)]
    for _ in range(40):
        n = int(rng.integers(1, 600))
        s = rng.integers(0, n, size=int(n * 1.3)) + int(rng.choice([0, 5000, -40, 2**62]))
        if rng.random() < 0.3:
            s = np.concatenate([np.arange(s[0], s[0] + 50), s, [s.max() + 100]])
        yield np.array_split(s.astype(np.int64), int(rng.integers(1, 12)))
    yield [np.array([-3, -2, -1, 0, 1], dtype=np.int64), np.array([-5, 2], dtype=np.int64)]
    # the ends of int64 (a hostile stamp can be any u64: 2**63 is INT64_MIN), where s - 1, highest + 1 and
    # highest - window overflowed in C
    lo, hi = -2**63, 2**63 - 1
    for batches in ([[lo, lo + 1, lo + 2, 5]], [[lo], [5], [lo, lo + 3]], [[lo + 1, lo, lo + 2], [hi]],
                    [[hi - 2, hi, hi - 1], [hi, lo, 0]], [[hi], [hi, hi - 1, lo]], [[0, hi, lo, 2**62]],
                    [[hi - 5000, hi - 10, hi], [lo + 3, hi - 4000, hi - 7]], [[lo + 100, lo + 2, lo + 50], [lo]],
                    [[-1, 0, 1], [hi], [lo], [0]], [[lo + 7]] * 3):
        yield [np.array(b, dtype=np.uint64 if any(v > hi for v in b) else np.int64).astype(np.int64)
               for b in batches]
    yield [np.array([2**63, 2**63 + 1, 5, 2**64 - 1], dtype=np.uint64).view(np.int64)]  # stamps as read


@needs_c
@pytest.mark.parametrize("window", [8, 64, 1 << 12])
def test_seq_update_c_and_numpy_reach_the_same_verdict_batch_by_batch(window):
    for batches in _streams():
        c = SeqChecker(window=window, ops=backend.batch("c"))
        py = SeqChecker(window=window, ops=backend.batch("python"))
        for b in batches:
            c.update(b)
            py.update(b)
            assert dict(zip(FIELDS, c.state.tolist())) == dict(zip(FIELDS, py.state.tolist()))
            assert (c.seen == py.seen).all()
        assert c.summary() == py.summary()


_UB_HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "kb_seq.h"
int main(void) { /* window, then per stream: batches (n s...), each followed by the state; 0 ends a stream */
    unsigned long long w;
    if (scanf("%llu", &w) != 1) return 2;
    uint8_t *seen = calloc(w, 1);
    struct kb_seq q = {0};
    long long n, buf[4096];
    while (scanf("%lld", &n) == 1) {
        if (n < 0 || n > 4096) return 2;
        if (n == 0) { q = (struct kb_seq){0}; for (unsigned long long i = 0; i < w; i++) seen[i] = 0; continue; }
        for (long long i = 0; i < n; i++) if (scanf("%lld", &buf[i]) != 1) return 2;
        kb_seq_update(&q, seen, w, (const int64_t *)buf, (size_t)n);
        printf("%lld %lld %lld %lld %lld %lld %lld %lld\n", (long long)q.received, (long long)q.reordered,
               (long long)q.duplicates, (long long)q.too_old, (long long)q.distinct, (long long)q.first,
               (long long)q.highest, (long long)q.started);
    }
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_kb_seq_has_no_undefined_behaviour_and_matches_numpy(tmp_path):
    """kb_seq.c under UBSan (any signed overflow aborts: the build has no -fwrapv) on every stream, each
    state equal to the numpy reference's: runs without the _fastbatch module too."""
    core = Path(__file__).resolve().parents[2] / "csrc/core"
    (tmp_path / "h.c").write_text(_UB_HARNESS)
    exe = tmp_path / "h"
    subprocess.run(["gcc", "-O1", "-fsanitize=undefined", "-fno-sanitize-recover=all", f"-I{core}",
                    str(tmp_path / "h.c"), str(core / "kb_seq.c"), "-o", str(exe)], check=True)
    feed, want = ["64"], []
    for batches in _streams():
        py = SeqChecker(window=64, ops=backend.batch("python"))
        for b in batches:
            feed.append(f"{len(b)} " + " ".join(map(str, b.tolist())))
            py.update(b)
            want.append(py.state.tolist())
        feed.append("0")
    r = subprocess.run([str(exe)], input="\n".join(feed), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert [list(map(int, line.split())) for line in r.stdout.splitlines()] == want


def _seq_backends():
    """numpy always (the pure-Python lane runs it alone), and C where it is built."""
    return [backend.batch("python")] + ([backend.batch("c")] if backend.built("batch") else [])


def test_seq_update_at_int64_min_gives_a_sane_verdict():
    """A stream starting at INT64_MIN (a datagram stamped 0x8000000000000000): C ended with highest
    INT64_MAX, 2 too old and ~1.8e19 lost."""
    for ops in _seq_backends():
        q = SeqChecker(window=64, ops=ops)
        q.update(np.array([2**63, 2**63 + 1, 2**63 + 3], dtype=np.uint64).view(np.int64))
        q.update(np.array([2**63 + 2], dtype=np.uint64).view(np.int64))
        assert q.summary() == {"received": 4, "expected": 4, "lost": 0, "reordered": 1, "duplicates": 0,
                               "too_old": 0, "first_seq": -2**63, "last_seq": -2**63 + 3}, ops


@pytest.mark.parametrize("dtype", [np.float64, np.uint64, np.int32])
def test_seq_update_refuses_an_array_that_is_not_int64_in_c_and_numpy(dtype):
    for ops in _seq_backends():
        q = SeqChecker(window=8, ops=ops)
        with pytest.raises(TypeError, match="seqs must be an int64 array"):
            ops.seq_update(q.state, q.seen, np.arange(4, dtype=dtype))
        assert not q.state[FIELDS.index("started")] and not q.seen.any()  # nothing counted


def _frames(seqs, times, short_every=0):
    base = udp_template("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", 9, "10.0.0.2", 4321, 64)
    out = []
    for i, (q, t) in enumerate(zip(seqs, times)):
        f = base[:ETH_IPV4_UDP] + struct.pack("!QQ", q % 2**64, t) + base[ETH_IPV4_UDP + 16:]
        out.append(f[:50] if short_every and i % short_every == 0 else f)  # too short to carry a stamp
    return out


@needs_c
def test_sink_consume_gives_the_numpy_paths_result(monkeypatch):
    rng = np.random.default_rng(7)
    now = time.monotonic_ns()
    rounds = []
    for r in range(3):
        seqs = np.arange(r * 2000, r * 2000 + 1500)  # under the Python refill's low-water mark
        seqs = np.delete(seqs, rng.choice(len(seqs), 40, replace=False))  # lost
        seqs = np.insert(seqs, rng.choice(len(seqs), 20), rng.choice(seqs, 20))  # duplicated
        rng.shuffle(seqs[300:340])  # reordered
        times = np.where(rng.random(len(seqs)) < 0.5, now - 5000, 0)  # a sampling generator: half zero
        rounds.append(_frames(seqs.tolist(), times.tolist(), short_every=97))
    c_res, c_stats, c_consumed = run_sink(monkeypatch, backend.batch("c"), rounds)
    py_res, py_stats, py_consumed = run_sink(monkeypatch, backend.batch("python"), rounds)
    assert (c_consumed, py_consumed) == (True, False)  # the two paths ran
    assert c_res == py_res and c_stats == py_stats
    assert c_res[0][2]["lost"] > 0 and c_res[0][2]["duplicates"] > 0 and c_res[0][2]["reordered"] > 0
    assert c_res[0][3] > 0  # the latencies of the time-stamped frames


@needs_c
def test_consume_without_sequence_check_counts_and_gives_frames_back(monkeypatch):
    monkeypatch.setattr(afxdp_mod, "XskSocket", FakeXsk)
    with afxdp_mod.AfXdpPort("fake0", frames=256, fill_size=64, rx_size=64, tx_size=64, comp_size=64,
                             batch_ops=backend.batch("c")) as port:
        for _ in range(5):  # 5 x 60 frames through a fill quota of 64: only if each comes back
            assert port.xsk.deliver([b"x" * 60] * 60) == 60
            t0 = time.monotonic()
            n, nbytes, lat, first, last = port.consume(256)
            assert (n, nbytes, len(lat)) == (60, 3600, 0) and t0 <= first <= last <= time.monotonic()
        assert port.consume(256)[0] == 0
        t0 = time.monotonic()
        assert port.consume(256, wait=0.03)[::3] == (0, 0.0)  # waited in poll() for a quiet 30 ms
        assert time.monotonic() - t0 >= 0.025
        assert port.stats["rx_packets"] == 300
        assert port.check(app=0)["fill"] == 64


def test_consume_is_refused_where_it_is_not(monkeypatch):
    monkeypatch.setattr(afxdp_mod, "XskSocket", FakeXsk)
    with afxdp_mod.AfXdpPort("fake0", frames=256, fill_size=64, rx_size=64, tx_size=64, comp_size=64,
                             batch_ops=backend.batch("python")) as port:
        assert not port.can_consume
        with pytest.raises(UsageError, match="receive\\(\\) and free\\(\\)"):
            port.consume(64)


def _post_bad_rx(xsk, addr: int, length: int = 60) -> None:
    """The kernel's side gone wrong: it takes a lent frame, as for any received one, and posts an RX
    descriptor at addr, outside the UMEM."""
    _, n = xsk.k_fill.peek(1)
    xsk.k_fill.release(n)
    idx, n = xsk.k_rx.reserve(1)
    d = np.zeros(1, dtype=xsk.k_rx.read_slots(idx, 0).dtype)
    d[0] = (addr, length, 0)
    xsk.k_rx.write_slots(idx, d)
    xsk.k_rx.submit(1)


@needs_c
@pytest.mark.parametrize("wait", [0.0, 0.03])
def test_a_bad_rx_descriptor_leaves_rings_and_counts_consistent(monkeypatch, wait):
    """Frames before an RX descriptor outside its UMEM frame are given back, counted and returned (once the whole
    peek was refused); the descriptor stays on the RX ring and the next call, taking nothing, raises."""
    monkeypatch.setattr(afxdp_mod, "XskSocket", FakeXsk)
    with afxdp_mod.AfXdpPort("fake0", frames=256, fill_size=64, rx_size=64, tx_size=64, comp_size=64,
                             batch_ops=backend.batch("c")) as port:
        seq = SeqChecker(window=64, ops=backend.batch("c"))
        assert port.xsk.deliver(_frames(range(10), [0] * 10)) == 10
        _post_bad_rx(port.xsk, port.umem.size + 4096)
        n, nbytes, lat, *_ = port.consume(256, seq=seq, stamp_offset=ETH_IPV4_UDP, wait=wait)
        assert (n, port.stats["rx_packets"], seq.received, len(lat)) == (10, 10, 10, 0)
        assert nbytes == port.stats["rx_bytes"] == 10 * len(_frames([0], [0])[0])
        assert port.xsk.fill.outstanding() == 63  # all ten back on the fill ring: none lost
        for _ in range(2):  # the descriptor stays at the head: each call refuses it, taking nothing
            with pytest.raises(RuntimeError, match=f"RX descriptor outside its UMEM frame \\(addr {port.umem.size + 4096:#x}"):
                port.consume(256, seq=seq, stamp_offset=ETH_IPV4_UDP, wait=wait)
            assert (port.stats["rx_packets"], seq.received, port.xsk.rx.pending()) == (10, 10, 1)
            assert port.xsk.fill.outstanding() == 63


@needs_c
def test_an_rx_descriptor_crossing_into_the_next_frame_is_refused_as_the_lanes_refuse_it(monkeypatch):
    """kb_sink checked a descriptor against the whole UMEM: one inside it but past its own frame's end was
    read and given back. Now kb_desc_in_frame refuses it, as the lanes do (test_endpoint_lane)."""
    monkeypatch.setattr(afxdp_mod, "XskSocket", FakeXsk)
    with afxdp_mod.AfXdpPort("fake0", frames=256, fill_size=64, rx_size=64, tx_size=64, comp_size=64,
                             batch_ops=backend.batch("c")) as port:
        port.receive(1)  # lend the fill ring its frames
        _post_bad_rx(port.xsk, 4096 + 256, 2048 - 256 + 1)
        with pytest.raises(RuntimeError, match=f"RX descriptor outside its UMEM frame \\(addr {4096 + 256:#x}, len 1793"):
            port.consume(64)
        assert port.stats["rx_packets"] == 0 and port.xsk.rx.pending() == 1


def _shared_port(lock_fd: int):
    """An AfXdpPort over the fake kernel that is a member of a shared queue: its slice is frames 64-127."""
    umem_fd = os.memfd_create("umem-test")
    os.ftruncate(umem_fd, 256 * 2048)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    return afxdp_mod.AfXdpPort("fake0", frames=256, fill_size=64, rx_size=64, tx_size=64, comp_size=64,
                               batch_ops=backend.batch("c"), xsk_fd=sock.detach(), umem_fd=umem_fd,
                               shared_queue=SharedQueue(os.dup(lock_fd), 64, 64))


@needs_c
def test_consume_on_a_shared_queue_gives_back_under_the_pool_lock_and_names_a_stopped_holder(monkeypatch):
    monkeypatch.setattr(afxdp_mod, "XskSocket", FakeXsk)
    lock_fd = make_lock_file("test")
    try:
        with _shared_port(lock_fd) as port:
            assert port.can_consume and port.shared
            for _ in range(3):  # frames come back through the pool's fill ring, taken under its lock
                assert port.xsk.deliver([b"x" * 60] * 30) == 30
                assert port.consume(64)[:2] == (30, 1800)
            # another member lent 4 frames meanwhile (the ring's producer moved, not this port's cached copy):
            # the C path starts from the ring's own indexes, or it would write over the other's 4 slots
            ring = port._fill
            prod = ring._producer.value
            marks = [0xABC000 + i for i in range(4)]
            for i, mark in enumerate(marks):
                ring.slots[(prod + i) & ring.mask] = mark
            ring._producer.value = (prod + 4) & 0xFFFFFFFF
            assert port.xsk.deliver([b"x" * 60] * 2) == 2  # the fake kernel takes lent frames from the old end
            assert port.consume(64)[0] == 2
            assert [int(ring.slots[(prod + i) & ring.mask]) for i in range(4)] == marks
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # a member stopped while it holds the lock (Ctrl-Z)
                held = PoolLock(lock_fd)
                held.acquire()
                os.write(ready_w, b"x")
                os.kill(os.getpid(), signal.SIGSTOP)
                os._exit(0)
            try:
                os.read(ready_r, 1)
                assert port.xsk.deliver([b"x" * 60] * 5) == 5
                t0, calls = time.monotonic(), 0
                with pytest.raises(PoolLockError, match="held its lock for over 2 s: is it stopped"):
                    while True:  # each call waits one slice (0.1 s) and comes back: the caller's Ctrl-C runs
                        assert port.consume(64)[0] == 0
                        calls += 1
                assert time.monotonic() - t0 >= 1.9 and calls >= 10
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(ready_r)
                os.close(ready_w)
            assert port.consume(64)[0] == 5  # the holder died: its lock is taken over, nothing was lost
            assert port.stats["rx_packets"] == 97
    finally:
        os.close(lock_fd)
