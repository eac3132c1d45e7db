"""`kbypass xfer`'s end-to-end integrity check of the stream (--digest): SHA-256 on a thread of its own (the
default: what `sha256sum FILE` prints), CRC-64/XZ in C (crc64: the check `xz` stores; ~20 GB/s against
SHA-256's ~1.2 GB/s with SHA-NI on the testbed's CPU) or none. Each end prints its digest; equal digests say
the receiver got the sender's bytes, in order. The transport's per-datagram CRC32 catches corruption on the
wire; the stream digest also catches what no datagram check can (a segment delivered twice, out of place or
not at all).

Which one. SHA-256 is the default because it is what a user checks a file against (sha256sum, a published
checksum) and no corruption pattern escapes it. It costs ~0.8 CPU s/GB at each end, a third of a jumbo
transfer's CPU. A CRC-64 detects every error burst up to 64 bits and all but 2^-64 of the rest: enough to
catch a transport bug or a corrupted buffer (not an attacker: use sha256 for that), at ~0.05 s/GB, hashed
inline (a thread would cost more in hand-offs than the hash). none leaves the check out (kernel TCP tools
such as iperf3 have none).

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

DIGESTS = ("sha256", "crc64", "none")


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


class Crc64:
    """CRC-64/XZ of a stream, inline (kbypass._fastxfer.crc64 at ~20 GB/s: 50 us a MiB); the same
    update/hexdigest/close as BackgroundSha256. hexdigest: 16 hex digits, the CRC as a big-endian number
    (xz -lvv prints it so)."""

    def __init__(self, crc64) -> None:
        self._crc64 = crc64
        self._crc = 0

    def update(self, chunk) -> None:
        self._crc = self._crc64(self._crc, chunk)

    def hexdigest(self) -> str:
        return f"{self._crc:016x}"

    def close(self) -> None:
        pass


class NoDigest:
    """--digest none: nothing computed; hexdigest() is None."""

    def update(self, chunk) -> None:
        pass

    def hexdigest(self) -> None:
        return None

    def close(self) -> None:
        pass


def open_digest(name: str, lane: str | None = None):
    """The digest `name` (one of DIGESTS) of a stream fed by update(); close() it on every exit. crc64 is
    computed by the C core (kbypass._fastxfer): UsageError with the fix on the python lane (`lane`, a
    tool's --lane; None: the lane in force), NativeMissing when the module is not built."""
    from kbypass import backend
    from kbypass.errors import UsageError

    if name == "sha256":
        return BackgroundSha256()
    if name == "crc64":
        if (lane or backend.lane()) == "python":
            raise UsageError("--digest crc64 is computed by the C core, which the python lane leaves out: give "
                             "--digest sha256 or none, or --lane c")
        return Crc64(backend.native_module("xfer").crc64)
    if name == "none":
        return NoDigest()
    raise UsageError(f"--digest {name!r}: use one of {', '.join(DIGESTS)}")
