"""Enter a network namespace from the current thread, the way `ip netns exec` does, without a subprocess.

`setns(CLONE_NEWNET)` changes only the calling thread, so a socket created inside `entered(name)` lives in
that namespace for good while the rest of the process stays where it was. Python 3.11 has no `os.setns`,
hence the one libc call.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

from kbypass.errors import KbypassError, TestbedError

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise KbypassError(f"setns failed: {os.strerror(err)} (needs root)")


def path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body with this thread in namespace `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    target = _open(name, "bring the testbed up with 'kbypass testbed up'")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    if _same(os.fstat(target), os.fstat(home)):
        os.close(target)
        os.close(home)
        yield  # there already: nothing to switch (and an unprivileged process may not setns at all)
        return
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def switch(name: str) -> None:
    """Move this thread into namespace `name` for good (a process that serves one namespace: call it
    before starting threads, which inherit the namespace of the thread that starts them)."""
    target = _open(name, "see 'ip netns list'")
    try:
        _setns(target)
    finally:
        os.close(target)


def _open(name: str, fix: str) -> int:
    try:
        return os.open(path(name), os.O_RDONLY)
    except FileNotFoundError:
        raise TestbedError(f"network namespace {name!r} does not exist: {fix}") from None
