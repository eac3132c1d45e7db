"""Waiting for a file descriptor to become readable, with the timeout kept to the microsecond.

poll() and epoll_wait() count whole milliseconds, and the ports used to pass them `int(timeout * 1000)`:
a 0.3 ms wait (a pacing timer, a tail loss probe due soon) became a 0 ms poll that returns at once, and a
caller that waits for its next timer in a loop spun on its core until the timer came due, taking the
core from the kernel's softirq that moves its own frames (on veth both ends share it). select() takes
its timeout as a timeval (microseconds) and sleeps on the same wait queue as poll(), so a sub-millisecond
wait really sleeps and still wakes at the first frame. It takes descriptors below FD_SETSIZE only; above
that the wait rounds up to whole milliseconds (it may sleep up to a millisecond longer, never spin).
"""

from __future__ import annotations

import math
import select

FD_SETSIZE = 1024


def wait_readable(fds: int | list[int], timeout: float | None) -> bool:
    """Block until one of `fds` (a descriptor or a list of them) is readable, or `timeout` seconds pass
    (None: no limit, <= 0: just look). True if one is readable."""
    fds = [fds] if isinstance(fds, int) else list(fds)
    if timeout is not None and timeout < 0:
        timeout = 0.0
    if max(fds) < FD_SETSIZE:
        return bool(select.select(fds, (), (), timeout)[0])
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else math.ceil(timeout * 1000)))
