"""pyroute2's synchronous API runs an asyncio loop of its own in the calling thread, which asyncio refuses
while the thread already runs one ("This event loop is already running"): kbypass.socket and kbypass.aio
open endpoints from inside asyncio and uvloop programs. `outside_loop` runs such a call in a short-lived
thread then (it starts in the caller's network namespace, which a new thread inherits)."""

from __future__ import annotations

import asyncio
import threading


def outside_loop(fn, *args, **kwargs):
    """fn(*args, **kwargs) here, or in a helper thread when this thread runs an asyncio loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args, **kwargs)
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="kbypass-netlink")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
