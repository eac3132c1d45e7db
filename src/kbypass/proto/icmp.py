"""ICMP echo (RFC 792): parse a request, build a reply or a request. Other types are not answered."""

from __future__ import annotations

from typing import NamedTuple

from .checksum import internet_checksum, verify

ECHO_REPLY = 0
ECHO_REQUEST = 8
ICMP_HLEN = 8

# drop reasons (counter names)
TRUNCATED = "icmp_truncated"
BAD_CHECKSUM = "icmp_bad_checksum"
UNHANDLED = "icmp_unhandled_type"  # anything but an echo request with code 0


class Echo(NamedTuple):
    type: int
    ident: int
    seq: int
    payload: bytes


def parse_echo(msg: bytes | memoryview, *, want: int = ECHO_REQUEST) -> Echo | str:
    """An echo message of type `want` (the whole ICMP message, checksum checked), or a drop reason."""
    if len(msg) < ICMP_HLEN:
        return TRUNCATED
    if not verify(msg):
        return BAD_CHECKSUM
    if msg[0] != want or msg[1] != 0:
        return UNHANDLED
    return Echo(msg[0], (msg[4] << 8) | msg[5], (msg[6] << 8) | msg[7], bytes(msg[8:]))


def build_echo(type_: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP echo request (type 8) or reply (type 0) with a correct checksum."""
    head = bytes((type_, 0, 0, 0)) + (ident & 0xFFFF).to_bytes(2, "big") + (seq & 0xFFFF).to_bytes(2, "big")
    c = internet_checksum(head + payload)
    return head[:2] + c.to_bytes(2, "big") + head[4:] + payload


def build_echo_reply(request: Echo) -> bytes:
    return build_echo(ECHO_REPLY, request.ident, request.seq, request.payload)


def build_echo_request(ident: int, seq: int, payload: bytes = b"") -> bytes:
    return build_echo(ECHO_REQUEST, ident, seq, payload)
