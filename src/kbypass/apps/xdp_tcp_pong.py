"""The TCP latency floor: sockperf `--tcp` messages answered in the driver by an XDP program
(bpf/tcppong.bpf.c, XDP_TX) on connections a kernel listener accepted.

    with HandshakeListener("10.77.0.2", 11411, netns="kb-b") as listener, \\
            XdpTcpPong("kb-b", 11411, netns="kb-b", peer=("kb-a", "kb-a")) as pong:
        ...                                 # sockperf ping-pong --tcp -i 10.77.0.2 -p 11411 from kb-a
        pong.counters()                     # {"answered": n, "absorbed": n, "reset": n, ...}

The kernel does what a server does once per connection (the handshake, through HandshakeListener's
accept); the program does what a server does per message, and the least of it: one segment answered with
the right seq, ack and timestamps (see bpf/tcppong.h). No server answers a message with less work, so a
ping-pong against it is the floor under every TCP server on this path: what is left is the wire and the
client's own stack.

The program's answers use sequence space the kernel never sent, so it keeps the kernel out of the flow
from its first message: the client's pure ACKs (of those answers) are absorbed, and the client's FIN or
RST reaches the kernel as an RST at the kernel's own rcv_nxt, which drops the accepted socket at once;
the client's FIN, retransmitted, then meets only the listener, which resets it: both ends close, neither
lingers. Measuring with it skips the server's ACK processing, which only lowers the floor.
"""

from __future__ import annotations

import socket
import threading

from kbypass import netns as _netns
from kbypass.apps.xdp_pong import XdpPong


class XdpTcpPong(XdpPong):
    """Answer sockperf --tcp messages to TCP port `port` on `ifname` (in `netns`) from XDP; see the module
    doc. The handshake needs a kernel listener on the port (HandshakeListener)."""

    OBJECT, PROGRAM = "tcppong", "xdp_tcppong"
    CONFIG_MAP, COUNTERS_MAP = "tcppong_config", "tcppong_counters"
    COUNTERS = ("answered", "acked", "absorbed", "reset", "passed")  # enum tcppong_counter in bpf/tcppong.h


class HandshakeListener:
    """A kernel TCP listener on (addr, port) in `netns` that accepts connections and holds them until the
    peer closes or resets them: the handshake half of the floor. `accepted` counts connections, `ended`
    those the kernel has since dropped (EOF or ECONNRESET); it never reads application data (the XDP
    program answers it)."""

    def __init__(self, addr: str, port: int, *, netns: str | None = None) -> None:
        with _netns.entered(netns):
            self._sock = socket.create_server((addr, port), backlog=128)
        self.port = self._sock.getsockname()[1]  # `port` 0 picks one
        self.accepted = self.ended = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="handshake-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        while not self._stopping:
            for key, _ in sel.select(0.05):
                if key.fileobj is self._sock:
                    try:
                        conn, _ = self._sock.accept()
                    except OSError:
                        continue
                    sel.register(conn, selectors.EVENT_READ)
                    with self._lock:
                        self.accepted += 1
                        self._open.append(conn)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except OSError:  # ECONNRESET: the RST the program made of the client's FIN
                    data = b""
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    with self._lock:
                        self.ended += 1
                        self._open.remove(conn)
        sel.close()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(5)
        for conn in self._open:
            conn.close()
        self._open = []
        self._sock.close()

    def __enter__(self) -> HandshakeListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
