"""Errors of the sans-IO TCP, split by blame (as h11 does).

* `TcpParseError`: bytes from the wire are not a usable segment. `TcpConnection.receive` never sees one: the
  caller parses, counts the reason and drops the frame, because garbage from the network must not crash us.
* `TcpUsageError`: *we* misused the API (send after shutdown, connect with a bad address); fix the caller.
* `TcpResetError` / `TcpRefusedError` / `TcpTimeoutError`: the connection is gone, for the reason their
  name gives; they also subclass the builtin socket errors so an endpoint raises what a socket user expects.
"""

from kbypass.errors import KbypassError, UsageError


class TcpError(KbypassError):
    """Base class of every TCP error."""


class TcpParseError(TcpError):
    """A segment from the wire could not be parsed. `reason` is the short key it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TcpUsageError(TcpError, UsageError):
    """The application used the connection wrongly; the message says what to do instead."""


class TcpStateError(TcpUsageError, BrokenPipeError):
    """send() after our own shutdown() or close: the kernel's EPIPE."""


class TcpResetError(TcpError, ConnectionResetError):
    """The peer reset the connection (or we aborted it): the kernel's ECONNRESET."""


class TcpRefusedError(TcpError, ConnectionRefusedError):
    """The peer answered our SYN with RST: nothing listens there (ECONNREFUSED)."""


class TcpTimeoutError(TcpError, TimeoutError):
    """Retransmissions or keepalive probes went unanswered (ETIMEDOUT)."""
