"""PortGroup: several ports (one per queue) behind the one Port API.

A flow lands on whichever queue the NIC (or veth's flow hash) picks; a tool that wants "the steered flows"
rather than "queue 3" opens a socket per queue and reads them as one. receive() takes from the ports in
turn so no queue starves; a Batch still belongs to the port it came from (`batch.owner`), so transmit and
free go back to that port: reflecting on the queue a packet arrived on, like any RSS forwarder.
"""

from __future__ import annotations

import numpy as np

from kbypass.net.wait import wait_readable
from kbypass.port.base import Port
from kbypass.port.batch import Batch


class PortGroup(Port):
    def __init__(self, ports: list[Port]) -> None:
        if not ports:
            raise ValueError("a PortGroup needs at least one port")
        self.ports = ports
        self.batch_ops = ports[0].batch_ops  # every member's: they are opened together (SteeredPort)
        self._next = 0
        self._fds = [p.fd for p in ports]

    def receive(self, max_frames: int = 64) -> Batch:
        n = len(self.ports)
        for i in range(n):
            port = self.ports[(self._next + i) % n]
            batch = port.receive(max_frames)
            if batch:
                self._next = (self._next + i + 1) % n
                return batch
        return batch  # an empty batch of the last port

    def transmit(self, batch: Batch) -> int:
        return batch.owner.transmit(batch)

    def free(self, batch: Batch) -> None:
        if batch:
            batch.owner.free(batch)

    def alloc(self, n: int, **size) -> Batch:
        return self.ports[0].alloc(n, **size)

    def wait(self, timeout: float | None = None) -> bool:
        if any(getattr(p, "poll_mode", "wakeup") == "busy" for p in self.ports):
            return any(p.wait(0) for p in self.ports)
        return wait_readable(self._fds, timeout)  # (a sub-ms timeout sleeps: kbypass.net.wait)

    def flush(self) -> None:
        for p in self.ports:
            flush = getattr(p, "flush", None)
            if flush:
                flush()

    def check(self, *, app: int | None = None) -> dict:
        """The Port API's accounting check over every port: each port's own check (a leak or double
        hand-out in any of them raises OwnershipError), counts summed; `app`: frames you hold in all."""
        from kbypass.xsk.umem import OwnershipError

        total: dict = {}
        for p in self.ports:
            for k, v in p.check().items():
                total[k] = total.get(k, 0) + v
        if app is not None and total.get("app") != app:
            raise OwnershipError(f"UMEM: {total.get('app')} frames in state 'app', expected {app} (a leak: some "
                                 "frame was neither transmitted nor freed)")
        return total

    @property
    def fd(self) -> int:
        """The first port's descriptor (each port has its own; `wait()` polls them all)."""
        return self.ports[0].fd

    @property
    def mode(self) -> str:
        return self.ports[0].mode

    @property
    def stats(self) -> dict:
        """Counters summed over the ports, plus `per_queue` with each port's own."""
        total: dict = {}
        for p in self.ports:
            for k, v in p.stats.items():
                if isinstance(v, (int, np.integer)):
                    total[k] = total.get(k, 0) + int(v)
        total["per_queue"] = {str(getattr(p, "queue", i)): p.stats for i, p in enumerate(self.ports)}
        return total

    def close(self) -> None:
        for p in self.ports:
            p.close()
