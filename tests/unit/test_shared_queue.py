"""The pieces of a shared queue (kbypass.cp.pool) that need no network: the pool's lock across processes
(exclusion, and a holder killed with the lock held), a member's slice of the UMEM, the rings' re-read of
indexes another producer moved, and the port's refusals. The working path is tests/netns/test_cp.py
(test_*shared_queue*, test_two_sinks_on_one_queue_*)."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal

import numpy as np
import pytest

from kbypass.errors import UsageError
from kbypass.port.afxdp import AfXdpPort
from kbypass.xsk.consts import UMEM_ADDR
from kbypass.xsk.pool_lock import PoolLock, PoolLockError, SharedQueue, make_lock_file
from kbypass.xsk.ring import ProducerRing, ring_layout
from kbypass.xsk.umem import FILL, FREE, Umem
from tests.kb import fd_closed


def _child(work) -> int:
    """Run work() in a forked child; its exit status (work's return value), or -signal."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(work() or 0)
        except BaseException:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_holder_killed_with_the_lock_held_does_not_block_the_others():
    fd = make_lock_file("test")
    try:
        def die_holding():
            lock = PoolLock(fd)
            lock.acquire()
            os.kill(os.getpid(), signal.SIGKILL)

        assert _child(die_holding) == -signal.SIGKILL
        lock = PoolLock(fd)
        with lock:  # would hang for good with a plain process-shared mutex
            pass
        assert lock.recovered == 1
        with lock:
            pass
        assert lock.recovered == 1  # consistent again: a normal lock from then on
        lock.close()
    finally:
        os.close(fd)


def test_a_holder_that_is_stopped_is_named_after_the_patience_and_its_death_frees_the_lock():
    fd = make_lock_file("test")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        held = PoolLock(fd)  # kept: its mapping is where the kernel marks the owner dead
        held.acquire()
        os.write(ready_w, b"x")
        os.kill(os.getpid(), signal.SIGSTOP)  # Ctrl-Z with the lock held
        os._exit(0)
    try:
        os.read(ready_r, 1)
        lock = PoolLock(fd)
        with pytest.raises(PoolLockError, match="held its lock for over 0.3 s: is it stopped"):
            lock.acquire(patience=0.3)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with lock:
            assert lock.recovered == 1
        lock.close()
    finally:
        for f in (fd, ready_r, ready_w):
            os.close(f)


def test_the_lock_file_cannot_be_cut_under_the_others():
    import fcntl

    fd = make_lock_file("test")
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SEAL
    finally:
        os.close(fd)


def test_the_lock_excludes_another_process():
    """Two processes each add 1 to a shared counter 3000 times by read, yield, write: without the lock
    they lose updates; with it none."""
    fd = make_lock_file("test")
    counter = os.memfd_create("counter")
    os.ftruncate(counter, 4096)
    mem = mmap.mmap(counter, 4096, flags=mmap.MAP_SHARED)
    value = ctypes.c_uint64.from_buffer(mem)

    def bump():
        lock = PoolLock(fd)
        for _ in range(3000):
            with lock:
                v = value.value
                os.sched_yield()
                value.value = v + 1
        return 0

    try:
        pid = os.fork()
        if pid == 0:
            os._exit(bump())
        bump()
        os.waitpid(pid, 0)
        assert value.value == 6000
    finally:
        os.close(counter)  # the mapping goes with the test's process
        os.close(fd)


def test_a_file_that_is_not_a_lock_is_refused():
    fd = os.memfd_create("small")
    try:
        with pytest.raises(PoolLockError, match="not a shared queue's lock file"):
            PoolLock(fd)
    finally:
        os.close(fd)


def test_a_member_owns_its_slice_and_the_rest_is_the_others():
    with Umem(frames=256) as umem:
        umem.keep_slice(64, 64)
        assert umem.free_count == 64
        assert (umem.state[64:128] == FREE).all() and (umem.state[:64] == FILL).all() and (umem.state[128:] == FILL).all()
        got = umem.take_free(64, FILL) >> np.uint64(umem.shift)
        assert sorted(got.tolist()) == list(range(64, 128))
        with pytest.raises(UsageError, match="does not fit a fresh UMEM"):
            umem.keep_slice(0, 64)  # frames were handed out already
    with Umem(frames=256) as umem, pytest.raises(UsageError, match="does not fit"):
        umem.keep_slice(200, 64)


def test_a_producer_re_reads_what_another_producer_published():
    layout = ring_layout(8, UMEM_ADDR)
    buf = bytearray(layout.pop("bytes"))
    one, two = ProducerRing(buf, **layout, name="fill"), ProducerRing(buf, **layout, name="fill")
    idx, n = one.reserve(3)
    one.write_slots(idx, np.array([1, 2, 3], dtype=np.uint64))
    one.submit(3)
    two.resync()
    idx, n = two.reserve(2)
    assert (idx, n) == (3, 2)  # not slot 0, which `one` filled: without resync it would overwrite it
    two.write_slots(idx, np.array([4, 5], dtype=np.uint64))
    two.submit(2)
    assert one.slots[:5].tolist() == [1, 2, 3, 4, 5]
    assert two.outstanding() == 5


def test_a_shared_queue_port_adopts_the_cp_made_socket_only_and_closes_the_lock_fd_when_refused():
    lock_fd = make_lock_file("test")
    with pytest.raises(UsageError, match="pass xsk_fd and umem_fd too"):
        AfXdpPort("eth0", 0, shared_queue=SharedQueue(lock_fd, 0, 64))
    assert fd_closed(lock_fd)


def test_a_pool_refuses_a_member_whose_multi_buffer_differs_naming_the_fix():
    """A pool is bound with multi-buffer (XDP_USE_SG, at a jumbo MTU) or without, for all its members (they
    take it from the anchor's UMEM): a joiner asking otherwise is refused with what to change."""
    from kbypass.cp.pool import QueuePool
    from kbypass.cp.protocol import ProtocolError

    pool = QueuePool.__new__(QueuePool)  # the layout only: no socket
    pool.iface, pool.queue, pool.slice_frames, pool.frame_size, pool.headroom = "veth0", 0, 4096, 4096, 0
    pool.mode, pool.multi_buffer = "copy", True
    pool.check_layout(4096, 4096, 0, "auto", multi_buffer=True)
    with pytest.raises(ProtocolError, match="shared with multi-buffer.*same MTU and --frame-size"):
        pool.check_layout(4096, 4096, 0, "auto", multi_buffer=False)
    pool.multi_buffer = False
    with pytest.raises(ProtocolError, match="shared without multi-buffer"):
        pool.check_layout(4096, 4096, 0, "auto", multi_buffer=True)
