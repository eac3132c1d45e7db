"""What `kbypass run`'s TCP host (kbypass.sockapi.shimtcp) answers about its sockets without changing them: a
released listener's peers, FIONREAD, TCP_INFO, the status page's counters. ShimTcp inherits these; each call
returns as every host call does (ShimTcp._out)."""

from __future__ import annotations

import errno
import struct

from kbypass.proto.tcp.info import FIELDS, tcp_info

from .shimconn import TALLY

PEERS_MAX = 256  # port_peers: the shim's buffer (kbp_tcpwake.c kbp_tcp_flows_only) holds this many


class ShimQueries:
    """The read-only calls of ShimTcp (see the module doc)."""

    def port_peers(self, port: int, now: float):
        """The peers (4-byte address, 2-byte port, network order) of `port`'s connections still ours, for a
        released listener's shim to steer each by its 4-tuple instead of the whole port (the kernel's listener
        then gets the port's new SYNs, the handed connections their segments); -E2BIG past PEERS_MAX."""
        peers = [k[0] + k[1].to_bytes(2, "big") for k in self.conns if k[2] == port]
        return self._out(b"".join(peers) if len(peers) <= PEERS_MAX else -errno.E2BIG, now)

    def port_users(self, port: int) -> int:
        return sum(1 for k in self.conns if k[2] == port) + (port in self.listeners)

    def unread(self, sid: int, now: float):
        """FIONREAD: bytes waiting for the application."""
        c = self._conn(sid)
        if c is None:
            return self._out(0, now)
        return self._out(c.rx_len, now)

    def tcp_info(self, sid: int, now: float):
        """getsockopt(TCP_INFO): struct tcp_info's values, u64 each in tcp.info.FIELDS' order (b"": not ours)."""
        c = self._conn(sid)
        info = tcp_info(c.conn, now) if c is not None else None
        return self._out(struct.pack(f"<{len(FIELDS)}Q", *(info[k] for k in FIELDS)) if info else b"", now)

    def tally(self, now: float):
        """The counters of TALLY, packed (u64 each) for the shim's status page (it asks a few times a second)."""
        counts = {**self.counters, "connections": len(self.conns),
                  "retransmits": self._retransmits_gone + sum(c.conn.stats.retransmits for c in self.conns.values())}
        return self._out(struct.pack(f"<{len(TALLY)}Q", *(counts[k] for k in TALLY)), now)

    def stats(self) -> dict:
        return {**self.counters, "connections": len(self.conns), "listeners": len(self.listeners)}
