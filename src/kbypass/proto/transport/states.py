"""The connection state machine: every transition of the transport is in the table below, nowhere else.

Close is TCP-like (RFC 793 figure 6, without simultaneous open): our FIN and the peer's FIN are
independent half-closes; the connection is done once our FIN is acknowledged and the peer's FIN arrived.
TIME_WAIT lingers to re-acknowledge a peer FIN whose ack was lost, then becomes CLOSED.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    IDLE = "IDLE"  # client before connect()
    LISTEN = "LISTEN"  # server waiting for a SYN
    SYN_SENT = "SYN_SENT"
    SYN_RCVD = "SYN_RCVD"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"  # we closed, our FIN not yet acknowledged
    FIN_WAIT_2 = "FIN_WAIT_2"  # our FIN acknowledged, waiting for the peer's FIN
    CLOSING = "CLOSING"  # both FINs sent, ours not yet acknowledged
    CLOSE_WAIT = "CLOSE_WAIT"  # peer closed, we have not
    LAST_ACK = "LAST_ACK"  # peer closed, then we closed; waiting for our FIN's ack
    TIME_WAIT = "TIME_WAIT"  # done; lingering to re-ack a retransmitted peer FIN
    CLOSED = "CLOSED"


class Input(enum.Enum):
    CONNECT = "connect"  # local: connect()
    SYN_IN = "syn_in"  # remote: a SYN arrived
    SYNACK_IN = "synack_in"  # remote: the SYN|ACK arrived
    ACK_IN = "ack_in"  # remote: the handshake's final ACK (or any ACKing packet) arrived
    CLOSE = "close"  # local: close()
    FIN_ACKED = "fin_acked"  # remote: our FIN was acknowledged
    PEER_FIN = "peer_fin"  # remote: the peer's FIN was received in order
    LINGER_DONE = "linger_done"  # timer: TIME_WAIT elapsed
    LOST = "lost"  # timer or remote: dead peer, retries exhausted, reset
    ABORT = "abort"  # local: abort()


S, I = State, Input

TRANSITIONS: dict[tuple[State, Input], State] = {
    (S.IDLE, I.CONNECT): S.SYN_SENT,
    (S.LISTEN, I.SYN_IN): S.SYN_RCVD,
    (S.SYN_SENT, I.SYNACK_IN): S.ESTABLISHED,
    (S.SYN_RCVD, I.ACK_IN): S.ESTABLISHED,
    (S.ESTABLISHED, I.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, I.PEER_FIN): S.CLOSE_WAIT,
    (S.FIN_WAIT_1, I.FIN_ACKED): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, I.PEER_FIN): S.CLOSING,
    (S.FIN_WAIT_2, I.PEER_FIN): S.TIME_WAIT,
    (S.CLOSING, I.FIN_ACKED): S.TIME_WAIT,
    (S.CLOSE_WAIT, I.CLOSE): S.LAST_ACK,
    (S.LAST_ACK, I.FIN_ACKED): S.CLOSED,
    (S.TIME_WAIT, I.LINGER_DONE): S.CLOSED,
}
# Any live state can die or be aborted.
for _s in State:
    if _s is not S.CLOSED:
        TRANSITIONS[(_s, I.LOST)] = S.CLOSED
        TRANSITIONS[(_s, I.ABORT)] = S.CLOSED

#: States in which our application may still call send() / send_message().
CAN_SEND = frozenset({S.SYN_SENT, S.SYN_RCVD, S.ESTABLISHED, S.CLOSE_WAIT})
#: States in which data segments may go on the wire (the handshake is complete).
SYNCHRONIZED = frozenset(
    {S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.CLOSE_WAIT, S.LAST_ACK, S.TIME_WAIT}
)
#: States from which the peer may still send us data.
PEER_OPEN = frozenset({S.SYN_RCVD, S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
#: Transitions that end the connection cleanly (emit Closed).
CLEAN_END = frozenset({S.TIME_WAIT, S.CLOSED})


def next_state(state: State, inp: Input) -> State | None:
    """The state after `inp`, or None if `inp` is not allowed in `state` (the caller decides the blame)."""
    return TRANSITIONS.get((state, inp))
