"""What varies from packet to packet in generated traffic, MoonGen style: the frame is built once from a
template and each packet rewrites only its varying fields, for a whole batch at once with numpy.

Packet k of the stream (k = its sequence number) takes
    source port       sport_lo + k % (sport span)        destination port  likewise
    source address    src_lo + k % (src span)            frame size        size_lo + k % (size span)
so every value of every range is used in turn, reproducibly. The payload starts with the stamp
(kbypass.proto.stamp: sequence number, send time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kbypass.errors import UsageError
from kbypass.port.batch import Batch
from kbypass.proto import checksum
from kbypass.proto.stamp import ETH_IPV4_UDP, STAMP_SIZE
from kbypass.proto.udp import write_lengths_batch

IP_SRC, UDP_SPORT, UDP_DPORT = 26, 34, 36


@dataclass(frozen=True)
class FlowSpec:
    """Ranges are inclusive (lo, hi); a fixed value is (v, v)."""

    sport: tuple[int, int]
    dport: tuple[int, int]
    src_ip: tuple[int, int]
    size: tuple[int, int]
    max_size: int  # frame or MTU limit
    max_size_why: str = "MTU + Ethernet header, or the UMEM frame size"  # which limit max_size is

    def __post_init__(self) -> None:
        lo, hi = self.size
        if lo < ETH_IPV4_UDP + STAMP_SIZE:
            raise UsageError(f"--size {lo}: a stamped UDP frame needs at least {ETH_IPV4_UDP + STAMP_SIZE} bytes")
        if hi > self.max_size:
            raise UsageError(f"--size {hi}: above the limit of {self.max_size} bytes ({self.max_size_why}); "
                             "use a smaller size")

    @property
    def varies_l3(self) -> bool:
        return self.src_ip[0] != self.src_ip[1] or self.size[0] != self.size[1]


def _cycle(seq: np.ndarray, lo_hi: tuple[int, int]) -> np.ndarray:
    lo, hi = lo_hi
    return lo + seq % (hi - lo + 1)


def stamp_batch(batch: Batch, spec: FlowSpec, seq: np.ndarray, now_ns: int) -> None:
    """Write the varying fields of packets `seq` (consecutive numbers, one per frame) into frames that
    already hold the template."""
    if spec.size[0] != spec.size[1]:
        batch.lens = _cycle(seq, spec.size).astype(np.uint32)
        write_lengths_batch(batch.mem, batch.addr, batch.lens)
    elif batch.tails is None:  # a chain's lengths are its frames', set when it was allocated
        batch.lens = np.full(len(batch), spec.size[0], dtype=np.uint32)
    if spec.sport[0] != spec.sport[1]:
        batch.set_u16be(UDP_SPORT, _cycle(seq, spec.sport))
    if spec.dport[0] != spec.dport[1]:
        batch.set_u16be(UDP_DPORT, _cycle(seq, spec.dport))
    if spec.src_ip[0] != spec.src_ip[1]:
        batch.set_u32be(IP_SRC, _cycle(seq, spec.src_ip))
    # The stamp (sequence number, send time): seq is consecutive, so its first number says it all.
    if len(batch):
        batch.stamp(ETH_IPV4_UDP, int(seq[0]), now_ns)
    if spec.varies_l3:
        checksum.ipv4_fill_batch(batch.mem, batch.addr, batch.lens)
