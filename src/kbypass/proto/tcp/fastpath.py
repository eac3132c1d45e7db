"""The Python side of kbypass._fasttcp (csrc/core/kb_tcp.h), for a host without the C module: the same names
and calls, chosen once by the endpoint (kbypass.endpoint.tcpio.TcpHost) so that no caller asks which it has.

Prediction predicts nothing, so rx sends every frame to the general path (TcpConnection.receive, the
reference the C prediction is held to); frame builds the established path's frame with Segment.encode and
build_ipv4_header, the bytes kb_tcp_frame is tested to make (tests/unit/test_tcp_fastpath.py).
"""

from __future__ import annotations

from kbypass.proto.ipv4 import build_ipv4_header

from .segment import IPPROTO_TCP, NO_OPTIONS, Options, Segment


class Prediction:
    """One connection's prediction that never predicts: arm and disarm have nothing to keep."""

    __slots__ = ("owner",)
    armed = False
    address = 0  # no struct kb_tcp_pred for C to predict with

    def __init__(self, local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int, owner=None) -> None:
        self.owner = owner

    def arm(self, *fields) -> None:
        pass

    def disarm(self) -> None:
        pass

    def state(self) -> None:
        return None


def rx(frame: bytes, table: dict) -> None:
    """No HIT: the frame goes to the general receive path."""
    return None


def frame(eth: bytes, src_ip: bytes, dst_ip: bytes, ident: int, sport: int, dport: int, seq: int, ack: int,
          flags: int, window: int, ts: tuple[int, int] | None, payload) -> bytes:
    """One Ethernet + IPv4 + TCP frame with no options or only timestamps (kbypass._fasttcp.frame's)."""
    opts = NO_OPTIONS if ts is None else Options(timestamps=ts)
    body = Segment(sport, dport, seq, ack, flags, window, opts, payload).encode(src_ip, dst_ip)
    return eth + build_ipv4_header(src_ip, dst_ip, IPPROTO_TCP, len(body), ident=ident) + body


SOCKPERF = "sockperf"  # Canned.arm's answers for sockperf's rule (kbypass._fasttcp.SOCKPERF, csrc/core/kb_sockperf.h)
NEXT_SEND = "next send"  # ... for the application's next send (kbypass._fasttcp.NEXT_SEND, send_canned)


class Canned:
    """One connection's canned answers that never answer (kbypass._fasttcp.Canned's stand-in)."""

    __slots__ = ()
    armed = owed = False
    answered_at = 0.0

    def arm(self, *fields) -> None:
        pass

    def arm_run(self, *fields) -> None:
        pass

    def take_run(self) -> None:
        return None

    def disarm(self) -> None:
        pass


def rx_canned(frame: bytes, table: dict, canned: dict, now: float, ident: int, tally: dict | None = None) -> None:
    """No HIT, no answer: the frame goes to the general receive path."""
    return None


def send_canned(prediction, canned, data, now: float, ident: int) -> None:
    """No arming holds: the application's send takes the connection's own path."""
    return None
