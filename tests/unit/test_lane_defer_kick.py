"""A message lane with defer_kick puts frames on the TX ring without a kick each, and flush_tx() kicks once for
them all, again while a copy-mode kick leaves frames (the kernel sends at most 32 a kick, then EAGAIN): what
TcpHost.batched uses to send a whole batch's segments with one syscall. Both lanes (C and Python)."""

from __future__ import annotations

import errno

import pytest

from kbypass.port import lane as lane_mod
from tests.unit.test_endpoint_lane import fake_port

NATIVE = [True, False] if lane_mod.native_default() else [False]
FRAME = b"\x02" * 60


def c_kicks(port) -> int:
    """The C lane kicks with sendto() on the fake socket's descriptor: count what reached the other end."""
    n = 0
    while True:
        try:
            port.xsk.peer.recv(1)
        except BlockingIOError:
            return n
        n += 1


def kicks(port) -> int:
    """Kicks since the last look, by either lane."""
    n, port.xsk.kicks = port.xsk.kicks, 0
    return n + c_kicks(port)


@pytest.mark.parametrize("native", NATIVE)
def test_deferred_sends_are_kicked_once_by_flush_tx(native):
    port = fake_port()
    try:
        lane = port.message_lane(native=native)
        assert all(lane.send_one(FRAME) for _ in range(3)) and kicks(port) == 3  # copy mode: a kick a frame
        port.xsk.send_all()
        lane.defer_kick = True
        assert lane.defer_kick and all(lane.send_one(FRAME) for _ in range(5))
        assert kicks(port) == 0  # on the ring, not kicked
        assert lane.flush_tx() == 1 and kicks(port) == 1
        assert port.xsk.send_all() == [FRAME] * 5
        assert lane.flush_tx() == 0 and kicks(port) == 0  # nothing left on the ring: no syscall
        lane.defer_kick = False
        assert lane.send_one(FRAME) and kicks(port) == 1
    finally:
        port.close()


@pytest.mark.parametrize("native", NATIVE)
def test_flush_tx_kicks_again_while_the_kernel_takes_frames(native, monkeypatch):
    port = fake_port()
    try:
        lane = port.message_lane(native=native)
        lane.defer_kick = True
        sent: list[bytes] = []

        def kick_two():  # a copy-mode kernel with a budget of 2 frames a kick
            port.xsk.kicks += 1
            _take(port, 2, sent)
            return errno.EAGAIN if port.xsk.k_tx.available() else 0

        monkeypatch.setattr(port.xsk, "kick_tx", kick_two)
        assert all(lane.send_one(FRAME) for _ in range(5))
        assert lane.flush_tx() == 3 and len(sent) == 5
        stuck = lambda: (setattr(port.xsk, "kicks", port.xsk.kicks + 1), errno.EAGAIN)[1]  # noqa: E731
        monkeypatch.setattr(port.xsk, "kick_tx", stuck)  # no progress (no completion room): stop, don't spin
        assert lane.send_one(FRAME) and lane.flush_tx() == 1
    finally:
        port.close()


def _take(port, k: int, sent: list) -> None:
    """The kernel's side sending only the first k frames on the TX ring (completions posted for them)."""
    x = port.xsk
    while k:
        idx, n = x.k_tx.peek(k)  # the consumer side may see fewer than there are at one look
        if not n:
            return
        descs = x.k_tx.read_slots(idx, n)
        x.k_tx.release(n)
        for d in descs:
            sent.append(x.umem.array[int(d["addr"]):int(d["addr"]) + int(d["len"])].tobytes())
        cidx, m = x.k_comp.reserve(n)
        x.k_comp.write_slots(cidx, descs["addr"].copy())
        x.k_comp.submit(n)
        k -= n


@pytest.mark.parametrize("native", NATIVE)
def test_retry_tx_reaps_completions_so_the_kernel_can_take_what_flush_tx_left(native, monkeypatch):
    port = fake_port()
    try:
        lane = port.message_lane(native=native)
        lane.defer_kick = True
        sent: list[bytes] = []
        comp = port.xsk.k_comp

        def kick_while_room():  # copy mode: a frame is taken only with a completion slot for it
            port.xsk.kicks += 1
            _take(port, comp.free(port.xsk.k_tx.available()), sent)
            return errno.EAGAIN if port.xsk.k_tx.available() else 0

        monkeypatch.setattr(port.xsk, "kick_tx", kick_while_room)
        assert all(lane.send_one(FRAME) for _ in range(comp.size)) and lane.flush_tx() == 1
        assert len(sent) == comp.size and comp.free(1) == 0  # the completion ring is full now
        assert all(lane.send_one(FRAME) for _ in range(5))
        assert lane.flush_tx() == 1 and lane.tx_pending == 5  # no room: the kick gave up
        assert lane.retry_tx() == 0 and len(sent) == comp.size + 5 and lane.tx_pending == 0
        assert lane.retry_tx() == 0  # nothing waiting: no syscall
    finally:
        port.close()
