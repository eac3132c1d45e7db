"""Errors of the reliable transport, split by blame (as h11 does).

* `LocalProtocolError`: *we* misused the API (send after close, a message larger than allowed, connect twice).
  It is raised at once, because the caller can fix it.
* `RemoteProtocolError`: the *peer* or the wire sent something we cannot use (bad CRC, wrong connection id,
  lying lengths). `Connection.receive_datagram` never lets it escape: it is caught and counted in
  `ConnectionStats.drops[reason]`, because garbage from the network must not crash an endpoint.
  `wire.decode` raises it, so a direct caller of the codec sees the reason.
"""

from kbypass.errors import KbypassError, UsageError


class TransportError(KbypassError):
    """Base class of every transport error."""


class LocalProtocolError(TransportError, UsageError):
    """The application used the connection wrongly; the message says what to do instead."""


class RemoteProtocolError(TransportError):
    """A datagram from the wire could not be used. `reason` is the short key it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
