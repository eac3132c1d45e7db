"""PoolLock: the lock the processes sharing one queue's UMEM take around its fill and completion rings.

AF_XDP lets several sockets receive on one queue only if they share one UMEM (XDP_SHARED_UMEM), and then
they share its fill and completion rings too, which are single-producer/single-consumer rings (ring.py):
two processes that refill at once would hand the kernel the same slot twice. So every refill and every
reap of a shared queue happens under this lock, and re-reads the ring's indexes first (the cached copies
are stale: another member moved them).

It is glibc's process-shared robust mutex in a small shared memory file (a memfd the control plane makes
and hands to each member with SCM_RIGHTS): no syscall when uncontended, and when a member dies holding it
(kill -9 between reserve and submit) the next member gets EOWNERDEAD, marks it consistent and goes on.
Nothing the dead member half-did is visible: slots it wrote but did not submit are not the kernel's, and
the survivor's re-read of the indexes starts from what was published. A member that holds it and does not
die (stopped with Ctrl-Z, in a debugger) would block the others for good, so a wait longer than PATIENCE
is an error naming that cause; the wait is taken in short slices, so Ctrl-C still stops a waiting member.
The file is sealed against resizing: a member cannot cut the page under the others' mutex.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import time
from dataclasses import dataclass

from kbypass.errors import KbypassError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ptr, _int = ctypes.c_void_p, ctypes.c_int


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.pthread_mutex_timedlock.argtypes = [_ptr, ctypes.POINTER(_Timespec)]
_libc.pthread_mutex_trylock.argtypes = [_ptr]
for _name, _args in (("pthread_mutex_lock", [_ptr]), ("pthread_mutex_unlock", [_ptr]),
                     ("pthread_mutex_consistent", [_ptr]), ("pthread_mutex_init", [_ptr, _ptr]),
                     ("pthread_mutexattr_init", [_ptr]), ("pthread_mutexattr_setpshared", [_ptr, _int]),
                     ("pthread_mutexattr_setrobust", [_ptr, _int])):
    getattr(_libc, _name).argtypes = _args

PTHREAD_PROCESS_SHARED = 1
PTHREAD_MUTEX_ROBUST = 1
LOCK_FILE_SIZE = mmap.PAGESIZE  # the mutex (40 bytes on x86-64 glibc) sits at its start
PATIENCE = 2.0  # seconds a member waits for the lock before calling the holder stuck (module doc)
_SLICE = 0.1  # seconds of one wait, between which Python runs its signal handlers
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_MUTEX_SIZE = 64  # room for pthread_mutex_t on every glibc ABI we run on


@dataclass(frozen=True)
class SharedQueue:
    """A member's part of a shared queue (kbypass.cp.pool): the lock's file (an fd its holder owns) and the
    slice of the UMEM's frames it starts with."""

    lock_fd: int
    first: int
    count: int


class PoolLockError(KbypassError):
    """The shared queue's lock could not be taken or made."""


def make_lock_file(name: str) -> int:
    """A new memfd holding an initialised process-shared robust mutex; the caller owns the fd."""
    fd = os.memfd_create(f"kbypass-pool-lock-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, LOCK_FILE_SIZE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        with mmap.mmap(fd, LOCK_FILE_SIZE, flags=mmap.MAP_SHARED) as m:
            mutex = (ctypes.c_char * _MUTEX_SIZE).from_buffer(m)
            attr = ctypes.create_string_buffer(64)  # pthread_mutexattr_t is 4 bytes; room to spare
            for call, args in ((_libc.pthread_mutexattr_init, (attr,)),
                               (_libc.pthread_mutexattr_setpshared, (attr, PTHREAD_PROCESS_SHARED)),
                               (_libc.pthread_mutexattr_setrobust, (attr, PTHREAD_MUTEX_ROBUST)),
                               (_libc.pthread_mutex_init, (ctypes.addressof(mutex), attr))):
                err = call(*args)
                if err:
                    raise PoolLockError(f"making the shared queue's lock failed: {os.strerror(err)}")
            del mutex
    except BaseException:
        os.close(fd)
        raise
    return fd


def stuck(patience: float = PATIENCE) -> PoolLockError:
    """The error of a lock held past the patience, by the Python or the C waiter (kb_pool_lock.h)."""
    return PoolLockError(f"another program on this shared queue has held its lock for over {patience:g} s: is it "
                         "stopped (Ctrl-Z, a debugger)? resume or end it")


class PoolLock:
    """The lock in `fd` (a file from make_lock_file), mapped; `with lock:` around ring work. The fd stays
    the caller's. Keep this object (its mapping) while the lock is held: when the holder dies the kernel
    marks it dead through the holder's own mapping, and one already unmapped leaves the lock held."""

    def __init__(self, fd: int) -> None:
        if os.fstat(fd).st_size < LOCK_FILE_SIZE:
            raise PoolLockError(f"fd {fd} is not a shared queue's lock file (too small)")
        self._map = mmap.mmap(fd, LOCK_FILE_SIZE, flags=mmap.MAP_SHARED)
        self._mutex = (ctypes.c_char * _MUTEX_SIZE).from_buffer(self._map)
        self.address = ctypes.addressof(self._mutex)
        self.recovered = 0  # times a member died holding it and we took over

    @property
    def memory(self) -> mmap.mmap:
        """The mutex's mapping, for C to take it (kbypass._fastbatch.drain; csrc/core/kb_pool_lock.h)."""
        return self._map

    def acquire(self, patience: float = PATIENCE) -> None:
        err = _libc.pthread_mutex_trylock(self.address)  # the usual case: free, no clock read
        if err == errno.EBUSY:
            err = self._wait(patience)
        if err == errno.EOWNERDEAD:
            # the holder died mid-refill: what it published stands, what it did not is not the kernel's
            _libc.pthread_mutex_consistent(self.address)
            self.recovered += 1
        elif err:
            raise PoolLockError(f"taking the shared queue's lock failed: {os.strerror(err)}")

    def _wait(self, patience: float) -> int:
        deadline = time.monotonic() + patience
        until = _Timespec()
        while True:
            wake = time.time() + _SLICE  # the mutex's clock is CLOCK_REALTIME
            until.tv_sec, until.tv_nsec = int(wake), int(wake % 1 * 1e9)
            err = _libc.pthread_mutex_timedlock(self.address, ctypes.byref(until))
            if err != errno.ETIMEDOUT:
                break
            if time.monotonic() >= deadline:
                raise stuck(patience)
        return err

    def release(self) -> None:
        _libc.pthread_mutex_unlock(self.address)

    def __enter__(self) -> "PoolLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def close(self) -> None:
        if self._map is None:
            return
        self._mutex = None
        try:
            self._map.close()
        except BufferError:
            pass
        self._map = None
