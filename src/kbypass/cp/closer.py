"""Closing the fds clients send (and the proof sockets rules hold) off the control plane's loop.

Closing the last reference to a TCP socket whose owner set SO_LINGER {1, N} with unsent data blocks the
closing thread up to N seconds. The socket's options are the app's (they belong to the open file description
it shares with us: resetting SO_LINGER here would change how the app's own close ends its connection), so the
control plane leaves them and closes such fds on a thread of their own: the single-threaded loop never waits.
"""

from __future__ import annotations

import os
import queue
import threading


class Closer:
    def __init__(self) -> None:
        self._fds: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def close(self, fd: int) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kbypass-cp-closer", daemon=True)
            self._thread.start()
        self._fds.put(fd)

    def _run(self) -> None:
        while True:
            fd = self._fds.get()
            try:
                os.close(fd)
            except OSError:
                pass
