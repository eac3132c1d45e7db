"""Reliable transport over datagrams ("TCP bypass"), sans-IO.

    conn = Connection(Role.CLIENT, ConnConfig(), now); conn.connect(now)
    loop: wire.send(conn.datagrams_to_send(now)); conn.receive_datagrams(batch, now) (or receive_datagram(d,
          now) one at a time: the same result); conn.handle_timer(now)
          (sleep until conn.next_timer()); ev = conn.next_event()

Modules: wire (codec), events, states (transition table), rtt (RFC 6298), congestion (loss-rate-tolerant Reno),
sendbuf / recvbuf (bounded buffers), config, connection, listener, sim (paired endpoints over FaultyLink;
measure_goodput: a CPU-bound LAN path under random loss).
"""

import importlib

# Lazy (PEP 562): the connection's codec needs numpy, and importing any submodule imports this package
# first (the CLI reads config's defaults while it builds `kbypass xfer`'s options, numpy unloaded).
_HOMES = {
    "ConnConfig": "config", "Connection": "connection", "ConnectionStats": "connection", "Role": "connection",
    "LocalProtocolError": "errors", "RemoteProtocolError": "errors", "TransportError": "errors",
    "Closed": "events", "Connected": "events", "ConnectionLost": "events", "DataReceived": "events",
    "Event": "events", "MessageReceived": "events", "PeerClosed": "events", "Listener": "listener",
    "State": "states",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(name)
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # a plain module attribute from now on
    return value


__all__ = [
    "Closed", "ConnConfig", "Connected", "Connection", "ConnectionLost", "ConnectionStats", "DataReceived",
    "Event", "Listener", "LocalProtocolError", "MessageReceived", "PeerClosed", "RemoteProtocolError",
    "Role", "State", "TransportError",
]
