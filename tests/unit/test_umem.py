"""UMEM frame accounting: every frame in exactly one state, double hand-outs and leaks detected."""

import numpy as np
import pytest

from kbypass.errors import UsageError
from kbypass.xsk.umem import APP, FILL, FREE, TX, OwnershipError, Umem

# every test twice: per-batch bookkeeping in C (kbypass._fastbatch) and in numpy
pytestmark = pytest.mark.usefixtures("batch_impl")


@pytest.fixture
def umem():
    with Umem(frames=64, frame_size=2048) as u:
        yield u


def test_layout(umem):
    assert umem.size == 64 * 2048 and umem.array.dtype == np.uint8 and len(umem.array) == umem.size
    assert umem.address % 4096 == 0  # page aligned, as XDP_UMEM_REG requires
    umem.array[2048:2052] = [1, 2, 3, 4]  # writable
    assert umem.check() == {"free": 64, "fill": 0, "app": 0, "tx": 0}


@pytest.mark.parametrize("kw, match", [({"frame_size": 1500}, "2048 or 4096"), ({"frames": 0}, "at least one"),
                                       ({"headroom": 2000}, "headroom")])
def test_bad_parameters(kw, match):
    with pytest.raises(UsageError, match=match):
        Umem(**kw)


def test_full_cycle_keeps_accounting(umem):
    fill = umem.take_free(40, FILL)
    assert len(fill) == 40 and len(np.unique(fill)) == 40 and (fill % 2048 == 0).all()
    assert umem.check(fill=40, app=0)
    # the kernel delivers 10 frames with data past the headroom: any address inside the frame counts
    rx = fill[:10] + 256
    umem.move(rx, FILL, APP, "receive")
    assert umem.check(fill=30, app=10)
    umem.move(rx[:4], APP, TX, "transmit")
    umem.give_free(rx[4:], APP, "free")
    assert umem.check(fill=30, app=0, tx=4)
    umem.give_free(rx[:4], TX, "completion")  # completions
    counts = umem.check(fill=30, app=0, tx=0)
    assert counts["free"] == 34


def test_take_more_than_free_is_partial(umem):
    a = umem.take_free(100, APP)
    assert len(a) == 64 and umem.free_count == 0
    assert len(umem.take_free(1, APP)) == 0
    umem.give_free(a, APP)
    assert umem.free_count == 64


def test_double_free_is_refused(umem):
    a = umem.take_free(4, APP)
    umem.give_free(a[:2], APP)
    with pytest.raises(OwnershipError, match="is 'free', not 'app'"):
        umem.give_free(a[1:3], APP)
    assert umem.check(app=2)  # the refused call changed nothing
    with pytest.raises(OwnershipError, match="twice in one batch"):
        umem.give_free(np.array([a[2], a[2] + 100], dtype=np.uint64), APP)
    assert umem.check(app=2)


def test_outside_umem_is_refused(umem):
    with pytest.raises(OwnershipError, match="outside the UMEM"):
        umem.give_free(np.array([64 * 2048], dtype=np.uint64), APP)


def test_leak_is_detected(umem):
    umem.take_free(3, APP)
    with pytest.raises(OwnershipError, match="3 frames in state 'app', expected 0"):
        umem.check(app=0)


def test_corrupted_free_list_is_detected(umem):
    a = umem.take_free(2, APP)
    umem._free[umem._top] = umem._free[0]  # simulate a bug pushing a duplicate
    umem._top += 1
    umem.state[a[0] >> 11] = FREE
    with pytest.raises(OwnershipError):
        umem.check()


def test_hand_over_for_transmit_is_all_or_nothing(umem):
    from kbypass.port.batch import DESC

    a = umem.take_free(6, APP)
    descs = np.zeros(6, dtype=DESC)
    descs["addr"], descs["len"] = a + np.uint64(256), 60

    def refused(d, error, match, app=6):
        with pytest.raises(error, match=match):
            umem.hand_over(d["addr"], APP, TX, "transmit", descs=d)
        assert umem.check(app=app, tx=0)  # nothing moved

    crossing = descs.copy()
    crossing["len"][4] = 1793
    refused(crossing, UsageError, "crosses its 2048-byte frame")
    empty = descs.copy()
    empty["len"][5] = 0
    refused(empty, UsageError, "length 0")
    twice = descs.copy()
    twice["addr"][5] = twice["addr"][1] + np.uint64(8)  # same frame, other offset
    refused(twice, OwnershipError, "twice in one batch")
    umem.state[a[3] >> 11] = FILL  # as if the kernel held it
    refused(descs, OwnershipError, "is 'fill', not 'app'", app=5)
    umem.state[a[3] >> 11] = APP
    assert umem.hand_over(descs["addr"], APP, TX, "transmit", descs=descs) == 6 * 60  # bytes, for stats
    assert (umem.state[a >> np.uint64(11)] == TX).all() and umem.check(app=0, tx=6)


def test_validate_descs(umem):
    ok = np.array([0, 2048 + 256, 63 * 2048], dtype=np.uint64)
    umem.validate_descs(ok, np.array([2048, 1792, 60]))
    with pytest.raises(UsageError, match="outside the UMEM"):
        umem.validate_descs(np.array([64 * 2048], dtype=np.uint64), np.array([60]))
    with pytest.raises(UsageError, match="crosses its 2048-byte frame"):
        umem.validate_descs(np.array([2048 + 256], dtype=np.uint64), np.array([1793]))
    with pytest.raises(UsageError, match="crosses"):
        umem.validate_descs(np.array([0], dtype=np.uint64), np.array([2049]))
    with pytest.raises(UsageError, match="length 0"):
        umem.validate_descs(np.array([0], dtype=np.uint64), np.array([0]))


def test_close_with_live_view_is_safe():
    u = Umem(frames=4, frame_size=4096)
    view = u.array[:10]
    u.close()  # a view still exists: the mapping lives on until it goes
    view[:] = 7
    assert view.sum() == 70
    u.close()  # idempotent


# ---- the port's frame accounting against a fake kernel (no socket, no root) ------------------------------

from kbypass.port import afxdp as afxdp_mod  # noqa: E402
from tests.fakexsk import FakeXsk  # noqa: E402



@pytest.fixture
def fake_port(monkeypatch):
    monkeypatch.setattr(afxdp_mod, "XskSocket", FakeXsk)
    port = afxdp_mod.AfXdpPort("fake0", frames=256, fill_size=64, rx_size=64, tx_size=64, comp_size=64)
    yield port
    port.close()


def test_port_accounting_through_receive_transmit_free(fake_port):
    port, k = fake_port, fake_port.xsk
    assert port.check(app=0)["fill"] == 64  # the fill quota is lent at once
    frames = [bytes([i]) * (60 + i) for i in range(50)]
    assert k.deliver(frames) == 50
    b = port.receive(64)
    assert len(b) == 50 and [b.tobytes(i) for i in range(50)] == frames
    assert (b.addr % 2048 == 256).all()  # data starts after the kernel's XDP headroom
    port.check(app=50)
    sent = port.transmit(b[:20])
    assert sent == 20 and k.kicks >= 1  # copy mode always kicks
    port.free(b[20:])
    port.check(app=0)  # 20 in TX until completed
    assert k.send_all() == frames[:20]
    assert port.reap() == 20
    counts = port.check(app=0)
    assert counts["tx"] == 0 and counts["free"] + counts["fill"] == 256
    with pytest.raises(OwnershipError):
        port.free(b[:1])  # transmitted: not yours any more
    s = port.stats
    assert (s["rx_packets"], s["tx_packets"], s["tx_completed"]) == (50, 20, 20)
    assert s["rx_bytes"] == sum(map(len, frames))


def test_port_receive_refills_in_batches_and_wraps(fake_port):
    port, k = fake_port, fake_port.xsk
    seq = 0
    for _ in range(40):  # 40 * 30 frames through 64-slot rings: many wraps of every ring
        k.deliver([seq.to_bytes(8, "big") + bytes(52) for seq in range(seq, seq + 30)])
        b = port.receive(64)
        assert b.payload_u64(0).tolist() == list(range(seq, seq + 30))
        seq += 30
        port.free(b)
        port.check(app=0)
    assert port.stats["rx_packets"] == 1200


def test_port_transmit_partial_when_tx_ring_full(fake_port):
    port, k = fake_port, fake_port.xsk
    b = port.alloc(100)
    assert len(b) == 100 and (b.addr % 2048 == 0).all() and (b.lens == 0).all()
    b.fill(b"\x01" * 64)
    k_sent = port.transmit(b)
    assert k_sent == 64  # TX ring of 64: the rest stays ours
    port.check(app=36)
    assert len(k.send_all()) == 64
    assert port.transmit(b[k_sent:]) == 36
    k.send_all()
    port.reap()
    port.check(app=0)


def test_port_alloc_is_bounded_by_free_frames(fake_port):
    port = fake_port
    got = port.alloc(1000)
    assert len(got) == 256 - 64  # the fill quota stays lent to the kernel
    assert len(port.alloc(1)) == 0
    port.free(got)
    port.check(app=0)


def test_a_umem_over_a_memfd_shares_its_frames_with_every_other_mapping_of_it():
    """What the control plane's open_socket relies on: the client's Umem and the memory the kernel was given
    are one (MAP_SHARED over the memfd), not a private copy."""
    import mmap
    import os

    fd = os.memfd_create("umem-test")
    try:
        os.ftruncate(fd, 64 * 2048)
        other = mmap.mmap(fd, 64 * 2048)  # the control plane's (or the kernel's) view of the same memory
        with Umem(frames=64, frame_size=2048, memfd=fd) as u:
            u.array[4096:4100] = [9, 8, 7, 6]
            assert other[4096:4100] == bytes([9, 8, 7, 6])
            other[0:2] = b"\x05\x04"
            assert list(u.array[:2]) == [5, 4]
        other.close()
        with pytest.raises(UsageError, match="holds 131072 bytes, not the 262144 of 128 frames"):
            Umem(frames=128, frame_size=2048, memfd=fd)
    finally:
        os.close(fd)
