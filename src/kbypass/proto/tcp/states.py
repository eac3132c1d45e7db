"""The TCP state machine (RFC 9293 figure 5): every transition is in the table below, nowhere else.

`TcpConnection._go(Input)` is the only writer of `conn.state`; an input that the table does not allow in
the current state is a bug in the caller (the connection decides *which* input a segment is), so it raises.
The listener's LISTEN state lives in TcpListener; a connection made from a SYN starts in SYN_RCVD.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    # members are singletons: hash by identity in C, not Enum's hash(name) in Python (a membership test of a
    # state set runs several times per segment)
    __hash__ = object.__hash__

    CLOSED = "CLOSED"
    SYN_SENT = "SYN_SENT"
    SYN_RCVD = "SYN_RCVD"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"  # we closed, our FIN not yet acknowledged
    FIN_WAIT_2 = "FIN_WAIT_2"  # our FIN acknowledged, waiting for the peer's FIN
    CLOSING = "CLOSING"  # both FINs sent (simultaneous close), ours not yet acknowledged
    CLOSE_WAIT = "CLOSE_WAIT"  # the peer closed, we have not (half close: we may still send)
    LAST_ACK = "LAST_ACK"  # the peer closed, then we did; waiting for our FIN's ack
    TIME_WAIT = "TIME_WAIT"  # done; lingering 2*MSL to re-acknowledge a retransmitted peer FIN


class Input(enum.Enum):
    OPEN = "open"  # local: active open, SYN sent
    PEER_SYN = "peer_syn"  # remote: a SYN without ACK (to a listener, or in SYN_SENT: simultaneous open)
    SYN_ACKED = "syn_acked"  # remote: our SYN acknowledged (and the peer's SYN seen)
    CLOSE = "close"  # local: shutdown() with the send queue drained into the FIN
    FIN_ACKED = "fin_acked"  # remote: our FIN acknowledged
    PEER_FIN = "peer_fin"  # remote: the peer's FIN received in order
    TIMEWAIT_DONE = "timewait_done"  # timer: 2*MSL elapsed
    KILL = "kill"  # reset by peer, timeout, abort, refused


S, I = State, Input

TRANSITIONS: dict[tuple[State, Input], State] = {
    (S.CLOSED, I.OPEN): S.SYN_SENT,
    (S.CLOSED, I.PEER_SYN): S.SYN_RCVD,  # passive open: the listener (LISTEN) got a SYN
    (S.SYN_SENT, I.PEER_SYN): S.SYN_RCVD,
    (S.SYN_SENT, I.SYN_ACKED): S.ESTABLISHED,
    (S.SYN_RCVD, I.SYN_ACKED): S.ESTABLISHED,
    (S.SYN_RCVD, I.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, I.CLOSE): S.FIN_WAIT_1,
    (S.CLOSE_WAIT, I.CLOSE): S.LAST_ACK,
    (S.ESTABLISHED, I.PEER_FIN): S.CLOSE_WAIT,
    (S.FIN_WAIT_1, I.PEER_FIN): S.CLOSING,
    (S.FIN_WAIT_2, I.PEER_FIN): S.TIME_WAIT,
    (S.FIN_WAIT_1, I.FIN_ACKED): S.FIN_WAIT_2,
    (S.CLOSING, I.FIN_ACKED): S.TIME_WAIT,
    (S.LAST_ACK, I.FIN_ACKED): S.CLOSED,
    (S.TIME_WAIT, I.TIMEWAIT_DONE): S.CLOSED,
}
for _s in State:
    if _s is not S.CLOSED:
        TRANSITIONS[(_s, I.KILL)] = S.CLOSED

#: The handshake is complete: sequence numbers of both sides are known (RFC 9293 "synchronized").
SYNCHRONIZED = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.CLOSE_WAIT, S.LAST_ACK,
                          S.TIME_WAIT})
#: What the C fast path may predict (TcpConnection.prediction).
PREDICTABLE = SYNCHRONIZED - {S.TIME_WAIT}
#: The application may still queue data (before shutdown()).
CAN_SEND = frozenset({S.SYN_SENT, S.SYN_RCVD, S.ESTABLISHED, S.CLOSE_WAIT})
#: The peer may still send us data (its FIN has not arrived).
PEER_OPEN = frozenset({S.SYN_RCVD, S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
#: Our FIN has been queued.
FIN_QUEUED = frozenset({S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.LAST_ACK, S.TIME_WAIT})


class ForbiddenTransition(AssertionError):
    """A transition RFC 9293 does not have: a bug in TcpConnection, never the peer's doing."""


def next_state(state: State, inp: Input) -> State:
    try:
        return TRANSITIONS[(state, inp)]
    except KeyError:
        raise ForbiddenTransition(f"{inp.value} in {state.value}") from None
