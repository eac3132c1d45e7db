"""AF_XDP sockets the control plane makes for its clients (the `open_socket` request, kbypass.cp.protocol).

A process without CAP_NET_RAW cannot make an AF_XDP socket, nor pin its UMEM; the control plane (root) does
both and hands the client two fds by SCM_RIGHTS: the socket, set up and bound, and the UMEM's memory, a
memfd the client maps MAP_SHARED. The kernel's own AF_XDP sample splits privileges the same way.

The memfd is sealed against shrinking and growing: the kernel pinned its pages when the UMEM was
registered, and a client must not be able to cut the file under the frames the kernel writes. The locked
memory is charged to the control plane's user (root), so its size is bounded by the protocol.

Once the reply is sent the control plane closes its own copies (`MadeSocket.close`): the socket lives on
in the client's fd and in the XSKMAP (removed when the client goes), and goes with the last of them.
"""

from __future__ import annotations

import fcntl
import os

from kbypass.xsk.socket import XskSocket
from kbypass.xsk.umem import Umem

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class MadeSocket:
    """An AF_XDP socket and its UMEM memfd, made for a client; `fds` go with the reply, then close()."""

    def __init__(self, iface: str, queue: int, *, frames: int, frame_size: int, rx_size: int, tx_size: int,
                 fill_size: int, comp_size: int, headroom: int = 0, mode: str = "auto",
                 multi_buffer: bool = False) -> None:
        self.layout = {"frames": frames, "frame_size": frame_size, "headroom": headroom, "rx_size": rx_size,
                       "tx_size": tx_size, "fill_size": fill_size, "comp_size": comp_size,
                       "multi_buffer": multi_buffer}
        self.memfd = os.memfd_create(f"kbypass-umem-{iface}-{queue}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self.umem = self.xsk = None
        try:
            os.ftruncate(self.memfd, frames * frame_size)
            fcntl.fcntl(self.memfd, fcntl.F_ADD_SEALS, _SEALS)
            # the Umem's bookkeeping is the client's; here it is only the memory to register
            self.umem = Umem(frames, frame_size, headroom, memfd=self.memfd)
            self.xsk = XskSocket(self.umem, iface, queue, rx_size=rx_size, tx_size=tx_size, fill_size=fill_size,
                                 comp_size=comp_size, mode=mode, need_wakeup=True, multi_buffer=multi_buffer)
        except BaseException:
            self.close()
            raise

    @property
    def fd(self) -> int:
        return self.xsk.fd

    @property
    def fds(self) -> tuple[int, int]:
        """What the reply carries: the socket, then the UMEM's memory."""
        return (self.xsk.fd, self.memfd)

    def reply(self, group: int) -> dict:
        return {"group": group, "mode": self.xsk.mode, **self.layout}

    def close(self) -> None:
        if self.xsk is not None:
            self.xsk.close()
            self.xsk = None
        if self.umem is not None:
            self.umem.close()
            self.umem = None
        if self.memfd is not None:
            os.close(self.memfd)
            self.memfd = None
