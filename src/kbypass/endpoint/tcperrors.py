"""The errors TcpHost/TcpSocket/TcpListener raise where the stdlib socket would raise its own: each is the
stdlib's type (code written for `socket` catches it) and a KbypassError (the CLI says it on one line).

    connect to an address nobody answers ARP for   HostUnreachableError   OSError EHOSTUNREACH
    an address that is not dotted IPv4              AddressError           socket.gaierror (we look no name up)
    a port outside 0..65535                         PortRangeError         OverflowError
    an address that is not an (ip, port) pair       AddressTypeError       TypeError
    a negative timeout                              TimeoutValueError      ValueError
"""

from __future__ import annotations

import errno
import socket

from kbypass.errors import KbypassError, UsageError


class _Said:
    """str() is the message alone (the CLI's one line), not OSError's "[Errno N] ..." form."""

    def __str__(self) -> str:
        text = getattr(self, "strerror", None)
        return text if text else super().__str__()


class HostUnreachableError(_Said, OSError, KbypassError):
    def __init__(self, why: str) -> None:
        super().__init__(errno.EHOSTUNREACH, why)


class AddressError(_Said, socket.gaierror, UsageError):
    def __init__(self, why: str) -> None:
        super().__init__(socket.EAI_NONAME, why)


class PortRangeError(OverflowError, UsageError):
    pass


class AddressTypeError(TypeError, UsageError):
    pass


class TimeoutValueError(ValueError, UsageError):
    pass


def check_timeout(timeout: float | None) -> float | None:
    """settimeout's check, as socket.settimeout makes it."""
    if timeout is None:
        return None
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        raise AddressTypeError(f"timeout {timeout!r}: give seconds (a number) or None") from None
    if timeout < 0 or timeout != timeout:
        raise TimeoutValueError(f"timeout {timeout}: give seconds >= 0, or None to block")
    return timeout
