"""Events a Connection hands to the application through `next_event()`. Frozen: they are facts."""

from __future__ import annotations

from dataclasses import dataclass


class Event:
    """Base class, so `isinstance(e, Event)` works."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """The handshake finished; data can flow both ways."""

    local_id: int
    peer_id: int


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """In-order bytes of a byte-stream connection (consecutive deliveries may be coalesced)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """One whole message of a message-mode connection, boundaries as the sender gave them."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed(Event):
    """The peer sent FIN: it will send no more data (end of stream). We may still send."""


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """Both directions are finished and all our data was acknowledged. Terminal, clean."""


@dataclass(frozen=True, slots=True)
class ConnectionLost(Event):
    """The connection died: peer silent past the idle timeout, retries exhausted, or reset. Terminal.
    Data that was not acknowledged may not have arrived; acknowledged data did."""

    reason: str
