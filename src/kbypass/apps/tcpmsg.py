"""sockperf messages over TCP: the message endpoint `kbypass pingpong --tcp` gives apps.pingpong's serve() and
ping(), so the UDP tool's logic (answers, warm-up, loss, percentiles) runs unchanged over a stream.

sockperf's TCP mode sends the very messages of its UDP mode back to back on one connection; a message's
length field (u32 at offset 10 of its 14-byte header, the whole message) frames it. Bytes that cannot be a
sockperf header (a length below 14 or above MAX_MESSAGE) end the connection: the stream cannot be framed.

    ep = TcpMessages(host, listener=lst)      # server: accepts every client, answers each on its own
    ep = TcpMessages(host, listener=lst, pongs=True)  # ... its pongs in C when it can (see below)
    ep = TcpMessages(host, sock=s)            # client: one connection made with host.connect
    data, peer = ep.recvfrom(timeout)         # one whole message and its sender (ip, port)
    ep.sendto(data, peer)

`host` is a kbypass.endpoint.tcpio.TcpHost (pump, wait, run_until); the sockets are its TcpSockets.

pongs=True is for a server answering with apps.pingpong.answer (pingpong.serve): a segment that is whole
messages all asking for an answer is answered by the TCP fast path in C, in the call that took it off the ring
(TcpSocket.canned = SOCKPERF, csrc/core/kb_sockperf.h), and never reaches recvfrom; take_answered() counts
them. Armed only while no partial message waits here (the next segment then starts with a header)."""

from __future__ import annotations

import time
from collections import deque

from kbypass.apps.pingpong import HEADER_LEN
from kbypass.proto.tcp.fastpath import NEXT_SEND, SOCKPERF

MAX_MESSAGE = 65536 * 16  # sockperf's largest --msg-size is 65506
TRANSMIT_EVERY = 8  # receives between transmits while messages keep coming (timers, ACKs of unanswered ones)


class TcpMessages:
    def __init__(self, host, *, listener=None, sock=None, pongs: bool = False) -> None:
        self.host, self.listener = host, listener
        self._pongs = SOCKPERF if pongs else None  # TcpSocket.canned while no partial message waits
        self._conns: dict[tuple[str, int], list] = {}  # peer -> [sock, bytearray]
        self._ready: deque = deque()
        self.closed_conns = 0
        self._untransmitted = 0  # receives since the host last transmitted (recvfrom)
        self.bad_streams = 0
        self.ip = host.ip
        if sock is not None:
            self._add(sock)
            sock.canned = NEXT_SEND  # a client: the answer readable at its HIT, the next message sent from C
        if listener is not None:
            listener.setblocking(False)
            self.port = listener.port
        else:
            self.port = sock.local[1]

    def _add(self, sock) -> None:
        sock.setblocking(False)
        sock.canned = self._pongs
        self._conns[sock.peer] = [sock, bytearray()]

    def _take(self) -> bool:
        """Accept, read and frame what is there now; True when a whole message is ready."""
        if self.listener is not None:
            while self.listener.pending:  # not accept(0) on an empty queue: it pumps the host again, then raises
                sock, _ = self.listener.accept(0)
                self._add(sock)
        for peer, entry in list(self._conns.items()):
            sock, buf = entry
            while sock.readable:
                try:
                    data = sock.recv(1 << 20)
                except (ConnectionError, TimeoutError):
                    data = b""
                if not data:
                    self._drop(peer)
                    break
                if not buf and HEADER_LEN <= len(data) <= MAX_MESSAGE and int.from_bytes(data[10:14], "big") == len(data):
                    self._ready.append((data, peer))  # exactly one whole message (ping-pong's case): no copies
                    continue
                buf += data
            if peer not in self._conns:
                continue
            while len(buf) >= HEADER_LEN:
                n = int.from_bytes(buf[10:14], "big")
                if n < HEADER_LEN or n > MAX_MESSAGE:
                    self.bad_streams += 1
                    self._drop(peer)
                    break
                if len(buf) < n:
                    break
                self._ready.append((bytes(buf[:n]), peer))
                del buf[:n]
            if self._pongs is not None and peer in self._conns:
                sock.canned = None if buf else self._pongs  # C would read a message's tail as a header
        return bool(self._ready)

    def take_answered(self) -> int:
        """Messages the TCP fast path answered in C since the last call (pongs=True); 0 without."""
        return sum(self.host.take_canned().values()) if self._pongs is not None else 0

    def _drop(self, peer) -> None:
        entry = self._conns.pop(peer, None)
        if entry is not None:
            entry[0].close()
            self.closed_conns += 1

    def recvfrom(self, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        if self._ready or self._take():
            return self._ready.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        host = self.host
        while True:
            # receive only: a message that came goes to the caller before the host sends what the connections
            # owe (their ACKs ride on its answer, send() sends that at once; a flush before it would be on the
            # round trip's path), and the rest goes out here when nothing is ready, before waiting
            got = host.receive()
            ready = self._take()
            self._untransmitted += 1
            if not ready or self._untransmitted >= TRANSMIT_EVERY:  # a stream of messages starves no timer
                host.transmit()
                self._untransmitted = 0
            if ready:
                return self._ready.popleft()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no message within {timeout} s")
            if not got:
                host.wait(deadline)

    def sendto(self, data: bytes, peer: tuple[str, int]) -> int:
        entry = self._conns.get(tuple(peer))
        if entry is None:
            return 0  # the connection is gone: the answer is lost, as a datagram to a closed port
        sock, view = entry[0], memoryview(data)
        while view:
            try:
                n = sock.send(view)
            except BlockingIOError:  # the send buffer is full: let ACKs come
                if not self.host.pump():
                    self.host.wait(None)
                continue
            except (ConnectionError, TimeoutError, OSError):
                self._drop(tuple(peer))
                return 0
            view = view[n:]
        return len(data)  # send() put it on the wire

    backend = "afxdp"

    @property
    def native(self) -> bool:
        """The frames move through the C lane (the TCP itself is Python)."""
        return self.host.native

    @property
    def stats(self) -> dict:
        return self.host.stats

    @property
    def connections(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        for peer in list(self._conns):
            self._drop(peer)
        if self.listener is not None:
            self.listener.close()
