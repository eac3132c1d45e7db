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
    """A queue of a network interface that moves batches of frames.

    batch_ops: the batch backend (kbypass.backend.batch(): C or the reference Python) that this port's
    batches and frame accounting use, chosen when the port is opened (its `batch_ops=` option) and kept."""

    batch_ops = None  # set by the subclass

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
        """Up to n empty frames (length 0) to fill and transmit; yours until transmitted or freed. (AfXdpPort
        also takes `size=S`: packets of S bytes, chains of frames on a multi-buffer port.)"""

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


class UmemPort(Port):
    """A Port whose frames live in a kbypass.xsk.umem.Umem (`self.umem`), as the AF_XDP and socket ports'
    do: one frame hand-out and one ownership check for both."""

    umem = None  # set by the subclass

    @property
    def batch_ops(self):
        """The UMEM's batch backend (given to it when the port was opened)."""
        return self.umem.ops

    def _take_frames(self, n: int, offset: int = 0) -> Batch:
        """Up to n free frames as an application-owned Batch of empty frames starting `offset` bytes in."""
        import numpy as np

        from kbypass.xsk.umem import APP

        from .batch import DESC

        addrs = self.umem.take_free(max(0, n), APP)
        descs = np.zeros(len(addrs), dtype=DESC)
        descs["addr"] = addrs + np.uint64(offset)
        return Batch(descs, self.umem.array, self)

    def _own(self, batch: Batch, what: str) -> None:
        if batch.owner is not self and batch.mem is not self.umem.array:
            from kbypass.xsk.umem import OwnershipError  # here, not per call: this runs on every transmit

            raise OwnershipError(f"{what}: this batch belongs to another port; give frames back to the port "
                                 "they came from")
