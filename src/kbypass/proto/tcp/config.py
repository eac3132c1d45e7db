"""Settings of one TCP connection or listener; the defaults follow Linux's where a user would compare."""

from __future__ import annotations

from dataclasses import dataclass

from .congestion import CONTROLLERS
from .errors import TcpUsageError

MAX_UNREAD = 4 << 20  # bytes a host takes from a connection before the application reads them: the receive
# window closes behind this (Data events free window when they are taken, so a host stops taking them there)


@dataclass(frozen=True)
class TcpConfig:
    mss: int = 1460  # what we advertise: the largest segment payload we receive (MTU - 40)
    send_buffer: int = 1 << 20  # bytes the application may queue unacknowledged
    recv_buffer: int = 1 << 20  # receive window: bytes held for the application (unread + out of order)
    window_scaling: bool = True  # RFC 7323 options offered on SYN; used only if the peer offers them too
    sack: bool = True
    timestamps: bool = True
    congestion: str = "cubic"  # a key of congestion.CONTROLLERS: "cubic", "newreno" or one registered there
    initial_cwnd: int = 10  # segments (RFC 6928)
    nodelay: bool = True  # False: Nagle (hold a small segment while data is unacknowledged)
    slow_start_after_idle: bool = True  # RFC 5681 4.1: idle longer than an RTO -> back to the initial window
    delayed_ack: float = 0.04  # seconds; 0 acks every segment at once. Every 2nd full segment acks at once.
    initial_rto: float = 1.0  # RFC 6298 2.1
    min_rto: float = 0.2  # Linux's TCP_RTO_MIN
    max_rto: float = 120.0
    syn_retries: int = 6  # SYN / SYN-ACK retransmissions before giving up (Linux tcp_syn_retries)
    max_retries: int = 15  # data retransmissions before giving up (Linux tcp_retries2)
    time_wait: float = 60.0  # 2*MSL
    fin_timeout: float = 60.0  # FIN_WAIT_2 of a connection the application closed (Linux tcp_fin_timeout)
    keepalive: bool = False  # SO_KEEPALIVE
    keepalive_idle: float = 7200.0
    keepalive_interval: float = 75.0
    keepalive_count: int = 9
    challenge_ack_limit: int = 100  # RFC 5961 challenge ACKs per second per connection
    max_ooo_ranges: int = 64  # out-of-order ranges held; a segment that would make more is dropped
    syn_backlog: int = 256  # half-open connections a listener keeps (beyond: SYN cookies or drop)
    syn_cookies: bool = True

    def __post_init__(self) -> None:
        if not 64 <= self.mss <= 65495:
            raise TcpUsageError(f"mss {self.mss} is out of range: give 64..65495 (MTU - 40)")
        if self.send_buffer < self.mss or self.recv_buffer < self.mss:
            raise TcpUsageError("send_buffer and recv_buffer must hold at least one mss: make them larger")
        if self.recv_buffer > (0xFFFF << 14):
            raise TcpUsageError("recv_buffer above 1 GiB cannot be advertised (window scale 14): make it smaller")
        if self.congestion not in CONTROLLERS:
            raise TcpUsageError(f"congestion {self.congestion!r} is unknown: give one of {', '.join(CONTROLLERS)}")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise TcpUsageError("need 0 < min_rto <= initial_rto <= max_rto")
        if self.syn_backlog < 1 or self.max_ooo_ranges < 1 or self.initial_cwnd < 1:
            raise TcpUsageError("syn_backlog, max_ooo_ranges and initial_cwnd must be at least 1")

    @property
    def rcv_wscale(self) -> int:
        """Our window-scale shift: the smallest that lets the 16-bit field carry the whole receive buffer."""
        return min(14, max(0, (self.recv_buffer - 1).bit_length() - 16))
