"""Connection configuration: sizes, timers and mode, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from . import wire
from .errors import LocalProtocolError

CONTROLLERS = ("bbr", "reno")


@dataclass(frozen=True)
class ConnConfig:
    """Everything a Connection is tuned by. Both ends must agree on `message_mode` (checked at handshake).

    max_datagram_size: the largest datagram we emit, header and CRC included; make it fit the
        encapsulation's MTU (UDP over a 1500 MTU: 1472; raw Ethernet with our EtherType: 1500).
    send_buffer / recv_buffer: hard byte limits. The send buffer holds unsent plus unacknowledged bytes;
        the receive buffer holds out-of-order plus delivered-but-unread bytes and is what we advertise.
    max_message_size: largest message in message mode. It must fit the peer's receive buffer too: once the
        handshake told us that size, send_message refuses a larger message; one queued before it makes the
        peer fail the connection when the unfinished message fills its buffer.
    """

    message_mode: bool = False
    max_datagram_size: int = 1472
    send_buffer: int = 256 * 1024
    recv_buffer: int = 256 * 1024
    max_message_size: int = 64 * 1024
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 10.0
    max_retransmits: int = 15  # consecutive RTOs without progress before ConnectionLost
    max_syn_retransmits: int = 8
    idle_timeout: float = 30.0  # no valid datagram from the peer for this long -> ConnectionLost
    keepalive_interval: float = 5.0  # ping a silent peer this often
    # Linger after a clean close to re-ack the peer's retransmissions (restarted by each one). Keep it a few
    # times max_rto: the peer retries at most every max_rto, and if all its tries in one linger period are
    # lost it reports ConnectionLost for data that did arrive.
    time_wait: float = 30.0
    dupack_threshold: int = 3
    initial_window: int | None = None  # congestion window at start, bytes (default: reno 4 MSS, bbr 10 (RFC 6928))
    # Largest congestion window, bytes (default: half the send buffer). Keep it well below both buffers:
    # while a hole is repaired (about one flight later), SACKed bytes still fill our send buffer and the
    # peer's window stays pinned at the hole, so a flight as large as a buffer stalls the sender.
    max_window: int | None = None
    # The congestion controller (CONTROLLERS): "bbr" (bbr.py: a model of the bottleneck's rate and the
    # path's RTT, paced; random loss does not slow it) or "reno" (congestion.LossTolerantReno: a window cut
    # when the recent loss rate passes 2%).
    congestion: str = "bbr"
    # Acknowledge at the latest after this many payload bytes arrived (0: once per batch of arrivals, at the
    # next datagrams_to_send). A receiver handing a batch of 64 jumbo datagrams (4 MiB) to the connection
    # acknowledged it only once all of it was taken, milliseconds after the first arrived: the sender heard
    # nothing for that long (ack_due tells the caller to send the ACK in the middle of a batch).
    ack_bytes: int = 0
    # Delayed ACK (RFC 9293 3.8.6.3, RFC 1122's timer): an ACK for in-order data alone waits up to this many
    # seconds for more (0: none, each batch of arrivals is acknowledged at once). It never waits past
    # ack_bytes, nor for data out of order, a filled hole, a duplicate, a window update, a ping, or outside
    # ESTABLISHED. A jumbo receiver that took every wake-up's few datagrams and acknowledged them sent the
    # sender ~2,300 ACKs per GB, each a receive, an ACK's bookkeeping and a send of its own there. The
    # sender's tail loss probe waits this much longer (recovery._pto): both ends must agree on it.
    ack_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.congestion not in CONTROLLERS:
            raise LocalProtocolError(f"congestion {self.congestion!r} is unknown: use one of {', '.join(CONTROLLERS)}")
        if self.max_datagram_size < wire.OVERHEAD + 16 or self.max_datagram_size > 65507:
            raise LocalProtocolError(
                f"max_datagram_size {self.max_datagram_size} out of range: use {wire.OVERHEAD + 16}..65507 "
                "(the encapsulation MTU minus its headers)"
            )
        if self.recv_buffer < 2 * self.mss or self.send_buffer < 2 * self.mss:
            raise LocalProtocolError(
                f"send_buffer/recv_buffer must be at least two segments ({2 * self.mss} bytes)"
            )
        if self.recv_buffer > wire.MAX_U32:
            raise LocalProtocolError("recv_buffer must fit the 32-bit window field (< 4 GiB)")
        if self.message_mode and not 0 < self.max_message_size <= min(self.send_buffer, self.recv_buffer):
            raise LocalProtocolError("max_message_size must be >0 and fit both send_buffer and recv_buffer")
        if self.max_window is not None and not 2 * self.mss <= self.max_window <= self.send_buffer:
            raise LocalProtocolError(
                f"max_window must be between two segments ({2 * self.mss} bytes) and send_buffer"
            )
        if self.initial_window is not None and self.initial_window < self.mss:
            # below one segment nothing full-sized is ever sent (0: nothing at all, and no timer to say so)
            raise LocalProtocolError(
                f"initial_window {self.initial_window} is below one segment: give at least {self.mss} bytes "
                "(the mss), or None for the default of four segments"
            )
        if self.ack_bytes < 0:
            raise LocalProtocolError(f"ack_bytes {self.ack_bytes}: need 0 (once per batch) or more bytes")
        if not 0 <= self.ack_delay < self.min_rto:
            raise LocalProtocolError(f"ack_delay {self.ack_delay}: need 0 (no delayed ACK) or more seconds, below "
                                     f"min_rto ({self.min_rto}), or the peer's RTO fires before the ACK")
        if self.dupack_threshold < 1:
            raise LocalProtocolError(
                f"dupack_threshold {self.dupack_threshold}: need at least 1 (3 is TCP's; 0 would call every "
                "segment in flight lost at the first ACK)"
            )
        for name in ("max_retransmits", "max_syn_retransmits"):
            if getattr(self, name) < 0:
                raise LocalProtocolError(f"{name} {getattr(self, name)}: need 0 or more (0: give up at the first "
                                         "timeout)")
        if self.time_wait < 0:
            raise LocalProtocolError(f"time_wait {self.time_wait}: need 0 or more seconds (a few times max_rto)")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise LocalProtocolError("timers: need 0 < min_rto <= initial_rto <= max_rto")
        if self.keepalive_interval <= 0 or self.idle_timeout <= self.keepalive_interval:
            raise LocalProtocolError("idle_timeout must be greater than keepalive_interval (both > 0)")

    @property
    def window_limit(self) -> int:
        """The congestion window's cap in bytes (see max_window)."""
        return self.max_window if self.max_window is not None else max(self.send_buffer // 2, 2 * self.mss)

    @property
    def mss(self) -> int:
        """Largest payload per datagram. SACK blocks ride only in the room a payload leaves."""
        return self.max_datagram_size - wire.OVERHEAD
