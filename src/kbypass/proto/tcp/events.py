"""Events a TcpConnection hands to the application through `next_event()`. Frozen: they are facts."""

from __future__ import annotations

from dataclasses import dataclass

#: Reset.reason values (an endpoint maps them to exceptions: see errors.py)
REFUSED = "refused"  # RST answered our SYN
PEER_RESET = "reset by peer"  # RST in a synchronized state
TIMED_OUT = "timed out"  # retransmissions exhausted
KEEPALIVE = "keepalive timed out"  # the peer vanished: keepalive probes unanswered
ABORTED = "aborted"  # we called abort()


class Event:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """The three-way handshake finished; `mss` is what we send per segment, the rest what was negotiated."""

    mss: int
    wscale: bool
    sack: bool
    timestamps: bool


@dataclass(frozen=True, slots=True)
class Data(Event):
    """In-order bytes from the peer (consecutive deliveries may be coalesced). Taking this event with
    `next_event()` frees its bytes from the receive window."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfStream(Event):
    """The peer sent FIN: it sends no more (we may still send: half close)."""


@dataclass(frozen=True, slots=True)
class WindowOpened(Event):
    """The send buffer has room again after send() accepted less than offered."""

    room: int


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """Both directions finished cleanly (our FIN acknowledged, the peer's FIN received). Terminal."""


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """The connection died; `reason` is one of the constants above. Terminal. Unacknowledged data may be lost."""

    reason: str
