"""The Port API every backend shares (afxdp, packet_mmap, socket).

Ownership rule (from Snabb): a frame you receive is yours until you transmit it or free it. `receive()`
and `alloc()` hand frames to you; `transmit()` takes back the frames it accepts (the first `k` of the batch,
k returned) and `free()` takes back frames you drop. Frames not accepted by transmit() stay yours: free them
or transmit them again (`batch[k:]`). Using a frame after giving it back, or giving it back twice, is a bug
the UMEM accounting catches.
"""

from __future__ import annotations

import abc

from .batch import Batch


class Port(abc.ABC):
    """A queue of a network interface that moves batches of frames."""

    @abc.abstractmethod
    def receive(self, max_frames: int = 64) -> Batch:
        """Up to max_frames received frames (maybe none). They are yours until transmitted or freed."""

    @abc.abstractmethod
    def transmit(self, batch: Batch) -> int:
        """Queue the frames for sending; returns how many (a prefix of the batch) were accepted.

        Accepted frames go back to the port once sent; the rest (batch[k:]) stay yours.
        """

    @abc.abstractmethod
    def free(self, batch: Batch) -> None:
        """Give frames back without sending them."""

    @abc.abstractmethod
    def alloc(self, n: int) -> Batch:
        """Up to n empty frames (length 0) to fill and transmit; yours until transmitted or freed."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> bool:
        """Block until frames may be received or the timeout (seconds) passes; True if something is ready."""

    @property
    @abc.abstractmethod
    def stats(self) -> dict:
        """Counters: at least rx_packets, rx_bytes, tx_packets, tx_bytes."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release everything (sockets, memory); idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
