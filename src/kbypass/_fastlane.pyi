"""UdpEndpoint's per-message ring path in C (csrc/fastlane.c over the C core's kb_lane)."""

from collections.abc import Sequence
from types import NotImplementedType

from _typeshed import ReadableBuffer, WriteableBuffer

PORT_STATS: tuple[str, ...]
"""Names of the port counters array's indexes, in csrc/core/kb_port.h's order."""
RING_LAYOUT: dict[str, int]
"""struct kb_ring's member offsets, and its size under "sizeof"."""

class Lane:
    """One AF_XDP socket's rings, one UDP message at a time (see kbypass.port.lane.MessageLane, its Python twin)."""

    def __init__(self, rx: WriteableBuffer, fill: WriteableBuffer, tx: WriteableBuffer, comp: WriteableBuffer,
                 umem: WriteableBuffer, state: WriteableBuffer, stats: WriteableBuffer, frame_size: int, fd: int,
                 mac: bytes, ip: bytes, udp_port: int, bcast: bytes | None, copy: bool, busy: bool,
                 busy_every: int = 16, stash: int = 32, chains: bool = False, tx_room: int = 0,
                 max_frames: int = 0) -> None:
        """Rings' KbRing structs, the UMEM, its frame states and the port's counters, held until close().
        chains: a multi-buffer socket (recv gathers a chain; a send longer than tx_room goes as a chain of at
        most max_frames frames)."""
    @property
    def stashed(self) -> int:
        """Frames held in the stash (state APP)."""
    @property
    def core(self) -> object:
        """The lane's C struct as a capsule (it holds the lane), for kbypass._fasttcp.rx_burst."""
    @property
    def defer_kick(self) -> bool:
        """Sends leave the kick to the owner's flush_tx (one for a batch); a full TX ring still kicks."""
    @defer_kick.setter
    def defer_kick(self, on: bool) -> None: ...
    def recv(self) -> None | tuple[bytes, bytes, int] | bytes | NotImplementedType:
        """None (empty), (payload, src_ip4, src_port), the whole frame, or NotImplemented (fill ring full)."""
    def wake(self) -> None:
        """Nothing on the ring: let the kernel make progress."""
    def send_udp(self, template: ReadableBuffer, payload: ReadableBuffer, ident: int, /) -> int:
        """One datagram from a flow's 42-byte template: 1 sent, 0 no TX slot, -1 stash empty."""
    def send_frame(self, frame: ReadableBuffer, /) -> int:
        """One whole frame: 1 sent, 0 no TX slot, -1 stash empty."""
    def give(self, addrs: Sequence[int], /) -> int:
        """Application-held frames for the stash; returns how many it took."""
    def take_stash(self) -> list[int]:
        """Empty the stash, returning its frame addresses (state APP)."""
    def reclaim(self) -> int:
        """Completed TX frames into the stash; returns how many."""
    def close(self) -> None:
        """Let go of the port's memory."""

def spin(lanes: tuple[Lane, ...], seconds: float, /) -> bool:
    """Busy polling's wait: read the lanes' RX rings until a frame is on one (True) or `seconds` passed (False),
    waking them at wake()'s cadence (csrc/core/kb_lane.c kb_lanes_spin)."""
