"""Small pieces the command modules share: JSON output, CPU pinning, partial output files."""

from __future__ import annotations

import contextlib
import os
import stat

from kbypass.errors import KbypassError, UsageError
from kbypass.tools._output import console, print_json  # noqa: F401  (re-exported for the tools)


def pin_cpu(cpu: int | None) -> None:
    """Pin this process to one core, so generator and system under test do not share one."""
    if cpu is None:
        return
    # Check against the machine's CPUs, not our inherited mask: a parent pinned elsewhere may start us.
    cpus = os.cpu_count() or 1
    if not 0 <= cpu < cpus:
        raise UsageError(f"--cpu {cpu}: this machine has CPUs 0-{cpus - 1}; pick one of those")
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as e:
        raise UsageError(f"--cpu {cpu}: cannot run there ({e.strerror}); pick another CPU") from None


def written_in_place(path: str) -> bool:
    """An output path that is a device or FIFO (/dev/null, a terminal, a named pipe) is written as it is, as
    tcpdump -w does: a partial file renamed over it would replace the device node or FIFO itself with a
    regular file (xfer recv -w /dev/null once left /dev/null a file, and every later writer of /dev/null
    filled it). A directory is not: it is refused as before."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)  # not a directory: refused as before


def partial_path(path: str) -> str:
    """Where a command writes `path` until it has something worth keeping: beside it (one file system, so
    os.replace is atomic), hidden, per process. A command that fails leaves an existing `path` untouched."""
    head, name = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{name}.kbypass-partial-{os.getpid()}")


@contextlib.contextmanager
def peer_errors(what: str):
    """A peer that refuses, resets or goes silent is one line `kbypass: error: WHAT: why`, not a traceback."""
    try:
        yield
    except (ConnectionError, TimeoutError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise KbypassError(f"{what}: {why}") from None
