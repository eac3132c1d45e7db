"""The reflector: send every received IPv4/UDP frame back with MACs, IPs and ports swapped.

The zero-copy forwarding loop: frames received from the RX ring go to the TX ring of the same UMEM
without a copy; swapping is one numpy gather per batch. Frames the TX ring does not accept are freed
(counted as tx_dropped), so nothing leaks.

Swapping addresses and ports is only right for untagged IPv4 with a 20-byte header carrying a whole
UDP or TCP datagram: the fields sit at fixed offsets there. Anything else the rules let through (IPv6,
a VLAN tag, IP options, a fragment, a short frame) would go back out with its bytes scrambled, so it is
freed instead and counted as `not_reflected` (--macs-only swaps MACs, which is right for any frame).
A multi-frame packet (multi-buffer, jumbo MTU) goes back as the same chain: its headers are in its first
frame, where the swaps act, and transmit sends every frame of it. A chain of more frames than the kernel
sends as one packet (a peer's jumbo datagram received in small frames: `port.sendable`) is freed and counted
as `not_reflected` too; `kbypass reflect` refuses up front a frame size that would let that happen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from kbypass.port.base import Port
from kbypass.port.loop import Ticker, receive_batches

# Bytes 12..23 of a frame: EtherType (2), IPv4 version/IHL, TOS, total length (2), id (2), flags and
# fragment offset (2), TTL, protocol. One gather of these decides whether the fixed-offset swap is right.
HEAD_AT, HEAD_LEN = 12, 12
L4_PORTS_END = 38  # Ethernet 14 + IPv4 20 + both ports 4


@dataclass
class ReflectResult:
    packets: int = 0
    bytes: int = 0
    sent: int = 0
    tx_dropped: int = 0
    not_reflected: int = 0  # packets freed: swapping their fixed offsets would scramble them, or too long to send
    seconds: float = 0.0

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0


class Reflector:
    def __init__(self, port: Port, *, batch: int = 256, swap_l3: bool = True) -> None:
        self.port = port
        self.batch = batch
        self.swap_l3 = swap_l3

    def run(self, *, duration: float | None = None, count: int | None = None, report=None) -> ReflectResult:
        port, res = self.port, ReflectResult()
        ticker = Ticker(report)
        start = last = None
        tick = lambda: ticker.tick(res.packets, time.monotonic())
        for batch in receive_batches(port, self.batch, duration=duration, on_idle=tick,
                                     until=None if count is None else lambda: res.packets >= count):
            last = time.monotonic()
            if start is None:
                start = last
            res.packets += len(batch)
            res.bytes += int(batch.total_lens().sum())
            if self.swap_l3 or batch.tails is not None:
                ok = reflectable(batch) if self.swap_l3 else np.ones(len(batch), dtype=bool)
                sendable = getattr(batch.owner, "sendable", None)  # a multi-buffer AfXdpPort's (module doc)
                if batch.tails is not None and sendable is not None:
                    ok &= sendable(batch)
                if not ok.all():
                    res.not_reflected += int(len(ok) - ok.sum())
                    port.free(batch[~ok])
                    batch = batch[ok]
            batch.swap_macs()
            if self.swap_l3:
                batch.swap_ips_and_ports()
            sent = port.transmit(batch)
            res.sent += sent
            if sent < len(batch):
                res.tx_dropped += len(batch) - sent
                port.free(batch[sent:])
            tick()
        flush = getattr(port, "flush", None)
        if flush:
            flush()
        if start is not None:  # from the first packet to the last, as the sink counts: idle time is not rate
            res.seconds = max(last - start, 1e-9)
        return res


def reflectable(batch) -> np.ndarray:
    """Which frames of `batch` swap_ips_and_ports() handles right: untagged IPv4, IHL 5, not a fragment,
    UDP or TCP, long enough for both ports."""
    ok = batch.lens >= L4_PORTS_END
    if not ok.all():  # a short frame cannot be gathered from: look at the long ones only
        idx = np.flatnonzero(ok)
        ok[idx] = reflectable(batch[idx]) if len(idx) else ok[idx]
        return ok
    h = batch.bytes_at(HEAD_AT, HEAD_LEN)
    return ((h[:, 0] == 0x08) & (h[:, 1] == 0x00) & (h[:, 2] == 0x45)  # IPv4, 20-byte header
            & ((h[:, 8] & 0x3F) == 0) & (h[:, 9] == 0)  # MF clear, offset 0: a whole datagram
            & ((h[:, 11] == 17) | (h[:, 11] == 6)))
