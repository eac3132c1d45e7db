"""The transition table: the paths we rely on exist, nothing leaves CLOSED, misuse is refused."""

import pytest

from kbypass.proto.transport.states import TRANSITIONS, Input, State, next_state
from kbypass.proto.transport import Connection, ConnConfig, LocalProtocolError, Role


def walk(state, *inputs):
    for i in inputs:
        state = next_state(state, i)
        assert state is not None, i
    return state


def test_handshake_and_both_close_orders():
    S, I = State, Input
    assert walk(S.IDLE, I.CONNECT, I.SYNACK_IN) is S.ESTABLISHED
    assert walk(S.LISTEN, I.SYN_IN, I.ACK_IN) is S.ESTABLISHED
    assert walk(S.ESTABLISHED, I.CLOSE, I.FIN_ACKED, I.PEER_FIN, I.LINGER_DONE) is S.CLOSED
    assert walk(S.ESTABLISHED, I.CLOSE, I.PEER_FIN, I.FIN_ACKED, I.LINGER_DONE) is S.CLOSED
    assert walk(S.ESTABLISHED, I.PEER_FIN, I.CLOSE, I.FIN_ACKED) is S.CLOSED


def test_closed_is_terminal_and_every_live_state_can_die():
    assert not [k for k in TRANSITIONS if k[0] is State.CLOSED]
    for s in State:
        if s is not State.CLOSED:
            assert next_state(s, Input.LOST) is State.CLOSED


def test_illegal_local_calls_raise_local_errors():
    c = Connection(Role.CLIENT, ConnConfig(), 0.0)
    with pytest.raises(LocalProtocolError):
        c.close(0.0)  # before connect
    with pytest.raises(LocalProtocolError):
        c.send(b"x", 0.0)  # IDLE
    c.connect(0.0)
    with pytest.raises(LocalProtocolError):
        c.connect(0.0)  # twice
    s = Connection(Role.SERVER, ConnConfig(), 0.0)
    with pytest.raises(LocalProtocolError):
        s.connect(0.0)
