"""The control plane's lock, seen from outside: who holds it, and ending that process.

A control plane holds an exclusive flock on /run/kbypass/cp-NAME.lock for its whole life and writes its
pid into the file (kbypass.cp.server.Server.start). The flock, not the file's text, says whether one runs:
a control plane killed with SIGKILL leaves the file behind, but the kernel released its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time

from . import paths


def _free(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)  # a shared lock kept here would hold off the next control plane
    return True


def _holder(fd: int) -> int | None:
    """The pid in the lock file, if that process is a control plane (a new one may not have written its
    pid yet: the file then still names its dead predecessor, maybe a pid reused by something else)."""
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except (ValueError, OSError):
        return None
    return pid if b"cp" in words and b"serve" in words else None


def terminate(name: str, timeout: float = 3.0, *, forget: bool = False) -> int | None:
    """End the control plane of namespace NAME (its control-plane name) whatever its clients say: for
    `kbypass testbed down`, which is about to delete the namespace (a control plane left in it would keep
    the namespace alive, unnamed). SIGTERM, then SIGKILL after `timeout`. Returns its pid, or None when none
    ran. `forget`: also remove its files once it is gone (the namespace goes away for good)."""
    try:
        fd = os.open(paths.lock_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    pid = None
    gone = True
    if fd is not None:
        try:
            sig, deadline = signal.SIGTERM, time.monotonic() + timeout
            while not _free(fd):
                holder = _holder(fd)
                if holder is not None:
                    pid = holder
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(holder, sig)
                now = time.monotonic()
                if now > deadline:
                    sig = signal.SIGKILL
                if now > deadline + timeout:
                    gone = False  # a holder we cannot name or end: leave its files alone
                    break
                time.sleep(0.02)
        finally:
            os.close(fd)
    if forget and gone:
        for path in (paths.socket_path(name), paths.lock_path(name), paths.start_lock_path(name),
                     paths.log_path(name), paths.log_path(name) + ".1"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return pid
