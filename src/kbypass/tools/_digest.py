"""A SHA-256 of a stream, computed on a thread of its own: `kbypass xfer`'s integrity check off the data path.

Why a thread. Hashing the stream inline cost each end about a nanosecond a byte (1.7 s of a 10 s transfer
on the sender, 2.4 s on the receiver, at MTU 65535 on a busy machine): on the receiver, a 4 MiB run took
~4 ms to hash before the loop came back to the ring, so its ACKs, and the sender's next flight, waited
behind the hash. hashlib lets go of the GIL while it hashes a large buffer, so a hashing thread runs
while the transport's thread waits in poll for frames, and the kernel's scheduler hands the core back to
the transport's thread as soon as its frames arrive (the waker runs first). Same bytes, same order, same
digest as hashing inline.

Memory stays bounded: update() waits while more than `limit` bytes are queued (a hash slower than the
transfer slows the transfer down, as inline hashing did). The chunks given must not change after update()
(bytes, or views of bytes): the thread reads them later.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque


class BackgroundSha256:
    """update(chunk) queues, hexdigest() waits for the thread and returns the digest; close() stops it."""

    def __init__(self, limit: int = 64 << 20) -> None:
        self._h = hashlib.sha256()
        self._queue: deque = deque()
        self._queued = 0
        self._limit = limit
        self._done = False
        self._error: BaseException | None = None
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def update(self, chunk) -> None:
        """Queue chunk; raises the thread's error once it failed (chunks would pile up unhashed, unbounded)
        and ValueError after close() (it would never be hashed: the digest would silently miss it)."""
        n = len(chunk)
        with self._cv:
            while self._queued and self._queued + n > self._limit and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error
            if self._done:
                raise ValueError("BackgroundSha256.update() after close()")
            self._queue.append(chunk)
            self._queued += n
            self._cv.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._queue and not self._done:
                        self._cv.wait()
                    if not self._queue:
                        return
                    chunk = self._queue.popleft()
                self._h.update(chunk)  # the GIL is free while it hashes (hashlib, buffers over 2 KiB)
                with self._cv:
                    self._queued -= len(chunk)
                    self._cv.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the caller at update() or hexdigest()
            with self._cv:
                self._error = e
                self._queue.clear()
                self._queued = 0
                self._cv.notify_all()

    def close(self) -> None:
        """Hash what is queued and stop the thread (idempotent)."""
        with self._cv:
            self._done = True
            self._cv.notify_all()
        self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        if self._error is not None:
            raise self._error
        return self._h.hexdigest()
