"""Reliable transport over datagrams ("TCP bypass"), sans-IO.

    conn = Connection(Role.CLIENT, ConnConfig(), now); conn.connect(now)
    loop: wire.send(conn.datagrams_to_send(now)); conn.receive_datagrams(batch, now) (or receive_datagram(d,
          now) one at a time: the same result); conn.handle_timer(now)
          (sleep until conn.next_timer()); ev = conn.next_event()

Modules: wire (codec), events, states (transition table), rtt (RFC 6298), congestion (loss-rate-tolerant Reno),
sendbuf / recvbuf (bounded buffers), config, connection, listener, sim (paired endpoints over FaultyLink;
measure_goodput: a CPU-bound LAN path under random loss).
"""

from .config import ConnConfig
from .connection import Connection, ConnectionStats, Role
from .errors import LocalProtocolError, RemoteProtocolError, TransportError
from .events import Closed, Connected, ConnectionLost, DataReceived, Event, MessageReceived, PeerClosed
from .listener import Listener
from .states import State

__all__ = [
    "Closed", "ConnConfig", "Connected", "Connection", "ConnectionLost", "ConnectionStats", "DataReceived",
    "Event", "Listener", "LocalProtocolError", "MessageReceived", "PeerClosed", "RemoteProtocolError",
    "Role", "State", "TransportError",
]
