"""The TCP of `kbypass run` (the preload shim, csrc/preload/kbp_tcp.c), sans-IO: kbypass.proto.tcp's
connections and listeners behind the calls of the socket API, with the shim's integers for sockets.

The shim embeds CPython (kbp_py.c) and drives one ShimTcp per process; no sockets, threads or clocks here:

    host = ShimTcp(mss=1448)
    out = host.listen(sid, ip, port, backlog, now)     # ip, port: the listening kernel socket's (network ints)
    out = host.frame(ip_packet, now)                   # a TCP/IPv4 packet the steering rule took off the rings
    out = host.accept(listener_sid, new_sid, now)      # result: 12 bytes (peer ip, port, local ip, port) or -EAGAIN
    out = host.connect(sid, lip, lport, rip, rport, now)
    out = host.recv(sid, n, peek, now)                 # result: bytes (b"": end of stream) or -errno
    out = host.send(sid, data, now)                    # result: bytes taken or -errno
    out = host.shutdown(sid, how, now); host.close(sid, now); host.abort(sid, now)  # close, SO_LINGER 0
    out = host.timer(now); host.so_error(sid, now); host.unread(sid, now); host.exit_pending(give_up, now)
    out = host.keepalive(sid, on, idle, interval, count, now)  # SO_KEEPALIVE and its TCP_KEEP* values

Every call returns (result, packets, changes, deadline): `packets` the IPv4 packets to transmit (the shim
adds the Ethernet header toward the next hop), `changes` packed (sid u32, mask u32) pairs for sockets whose
readiness changed or that have news (poll bits: POLLIN, POLLOUT, POLLERR, POLLHUP, POLLRDHUP; NEWS: new data
or a new connection, for EPOLLET; GONE: the sid is finished, the shim may let go of it), and `deadline` the
next protocol timer (monotonic seconds, 0.0: none), when the shim calls timer(now).

The receive window counts what the app has not read wherever it waits (the host's rx, the shim's C queue:
TcpConnection.app_reads), so a connection holds at most TcpConfig.recv_buffer for an app that does not read;
the shim reports the app's reads of its C queue as CONSUMED records in the hit log. The sockets' records and the
formats the host and the shim's C share (masks, the hit log's records) are kbypass.sockapi.shimconn's.

Errors follow the kernel's: a RST is reported once (ECONNRESET, ECONNREFUSED on a SYN, ETIMEDOUT after the
retransmissions), through SO_ERROR or the next call; after it recv returns end of stream and send EPIPE.
close() with unread data resets (RFC 2525 2.17, as Linux); otherwise FIN, and the connection finishes here
(FIN_WAIT, TIME_WAIT) while the application moves on; data for a closed socket is answered with a RST.
shutdown(SHUT_RD) is Linux's: data still arrives, is ACKed and read; recv returns 0 instead of waiting.
connect() onto a 4-tuple this host holds in TIME_WAIT takes it over when timestamps were on (Linux's
twsk_unique, RFC 6191: the ISS above the old snd_nxt), else -EADDRNOTAVAIL.
"""

from __future__ import annotations

import dataclasses
import errno
import socket
from array import array

from kbypass import backend
from kbypass.proto import ipv4, tcp
from kbypass.proto.tcp import fastpath
from kbypass.proto.tcp.config import MAX_UNREAD
from kbypass.proto.tcp.handoff import handoff_state
from kbypass.proto.tcp.segment import IPPROTO_TCP

# the sockets' records and the formats the host and the shim's C share; the poll bits, PYRX/PYTX, READ_REPORT and
# the state bits are re-exported: the tests and tools that know them as this module's
from .shimconn import (  # noqa: F401
    _STATE_BITS,
    ACCEPTED,
    CONSUMED,
    GONE,
    HIT,
    NEWS,
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLOUT,
    POLLRDHUP,
    PYRX,
    PYTX,
    READ_REPORT,
    STATE_SHIFT,
    _Conn,
    _Listener,
    _pkey,
    _rearm,
    unfinished,
)
from .shimquery import ShimQueries

_CLOSED, _TIME_WAIT, _ESTABLISHED = tcp.State.CLOSED, tcp.State.TIME_WAIT, tcp.State.ESTABLISHED
NO_ETH = bytes(14)  # frame() builds Ethernet frames: the shim puts its own header in front of the packet
ETH_IP = bytes(12) + b"\x08\x00"  # an Ethernet header in front of a packet for the fast path's rx

_ERRNO = {tcp.REFUSED: errno.ECONNREFUSED, tcp.PEER_RESET: errno.ECONNRESET, tcp.TIMED_OUT: errno.ETIMEDOUT,
          tcp.KEEPALIVE: errno.ETIMEDOUT}


class ShimTcp(ShimQueries):
    """The process's TCP (see the module doc). Not thread-safe: the shim calls it under its lock."""

    def __init__(self, mss: int = 1460, quick: bool = True, **config) -> None:
        self.quick = quick  # recv of queued bytes and send_now's one segment skip _out's general pass (False: test)
        self.config = tcp.TcpConfig(mss=mss, **config)
        self.conns: dict[tuple[bytes, int, int], _Conn] = {}  # (peer ip, peer port, local port)
        self.by_sid: dict[int, _Conn | _Listener] = {}
        self.listeners: dict[int, _Listener] = {}  # by local port
        self._draining: dict[int, int] = {}  # closed listeners' sids -> their port, while connections use it
        # connections handed to the kernel (handed()) -> when: their segments still on the rings are dropped (the
        # peer sends them again to the kernel socket), not answered with a RST as an unknown 4-tuple's
        self._handed: dict[tuple[bytes, int, int], float] = {}
        self._released: set[int] = set()  # ports whose listener went back to the kernel (release()): stray segments dropped
        self._ident = 0
        # the established path's segments (no options but timestamps) built in C when it is (kbypass._fasttcp)
        fast = backend.native_module("tcp") if backend.built("tcp") else fastpath
        self._frame, self._rx, self._prediction_of = fast.frame, fast.rx, fast.Prediction
        # ... and the receive side's header prediction (kbypass._fasttcp.rx against each connection's armed
        # TcpConnection.prediction(), as TcpHost does): a HIT skips parsing and receive()'s checks
        self._predictions: dict[int, object] = {}
        self._packets: list[bytes] = []
        self._touched: set = set()
        self._timers: dict = {}  # connection or listener -> its next timer (those with one)
        self._next = 0.0  # the earliest of them
        self.counters = dict.fromkeys(("rx_segments", "rx_predicted", "tx_segments", "rx_bad", "rx_no_socket"), 0)
        self._retransmits_gone = 0  # of the connections forgotten (tally adds the live ones')

    # ---- what every call returns ---------------------------------------------------------------------------
    def _out(self, result, now: float):
        touched, timers = self._touched, self._timers
        if not touched:
            packets, self._packets = self._packets, []
            return result, packets, b"", self._next
        for c in list(touched):
            if type(c) is _Conn:
                self._events(c, now)  # may touch its listener
        changes: list[int] = []
        for c in touched:
            if type(c) is _Conn:
                conn = c.conn
                _rearm(c)
                finished = conn.state is _CLOSED
                t = None if finished else conn.next_timer()
                if finished and (c.app_closed or c.sid is None):
                    self._forget(c)
                if c.app_closed and c.sid is not None:  # closed by the app: only its end is news (GONE: its port)
                    # at TIME_WAIT when a connect may take it over (timestamps: connect()); else the kernel keeps
                    # the port until CLOSED, so it does not hand it out to a connect that would be refused
                    if finished or (conn.state is _TIME_WAIT and conn.ts_ok):
                        changes += (c.sid, GONE)
                        self.by_sid.pop(c.sid, None)
                        c.sid = None
            else:
                t = c.tcp.next_timer()
            if t is None:
                timers.pop(c, None)
            else:
                timers[c] = t
            if c.sid is None or (type(c) is _Conn and c.app_closed):
                continue
            m = c.readiness()
            if m != c.mask or c.news:
                changes += (c.sid, m | NEWS if c.news else m)
                c.mask, c.news = m, False
        touched.clear()
        for sid, port in list(self._draining.items()):
            if not self.port_users(port):  # a closed listener's port is free: the shim removes its rule
                changes += (sid, GONE)
                del self._draining[sid]
        self._next = min(timers.values()) if timers else 0.0
        packets, self._packets = self._packets, []
        return result, packets, array("I", changes).tobytes() if changes else b"", self._next

    def _quick_out(self, c: _Conn, result, rearm: bool = False):
        """_out for one connection nothing else touched, after a change that makes no event and sends nothing
        more (the application read queued bytes; send_now sent its one segment): its readiness, and after
        send_now its prediction and timer, as _out would leave them (tests/unit/test_shimtcp.py holds the two
        to the same packets, results and changes)."""
        if rearm:
            conn = c.conn
            _rearm(c)
            t = conn.next_timer()
            timers = self._timers
            if t is None:
                timers.pop(c, None)
            else:
                timers[c] = t
            self._next = min(timers.values()) if timers else 0.0
        m = c.readiness()
        changes = b""
        if m != c.mask or c.news:
            changes = array("I", (c.sid, m | NEWS if c.news else m)).tobytes()
            c.mask, c.news = m, False
        packets, self._packets = self._packets, []
        return result, packets, changes, self._next

    def _emit(self, src: bytes, dst: bytes, segments) -> None:
        for seg in segments:
            self._ident = ident = (self._ident + 1) & 0xFFFF
            o = seg.options
            if not o.sack and o.mss is None and o.wscale is None:
                self._packets.append(self._frame(NO_ETH, src, dst, ident, seg.src_port, seg.dst_port, seg.seq, seg.ack,
                                                 seg.flags, seg.window, o.timestamps, seg.payload)[14:])
                continue
            body = seg.encode(src, dst)
            self._packets.append(ipv4.build_ipv4_header(src, dst, IPPROTO_TCP, len(body), ident=ident) + body)
        self.counters["tx_segments"] += len(segments)

    def _flush(self, c: _Conn, now: float) -> None:
        """c has something to send: _out sends it (its events first: taking Data may open the window)."""
        self._touched.add(c)

    def _events(self, c: _Conn, now: float) -> None:
        conn = c.conn
        # Unread data past MAX_UNREAD stays the connection's (its window closes): recv takes more as the app reads
        while c.rx_len < MAX_UNREAD or c.app_closed:
            e = conn.next_event()
            if e is None:
                break
            kind = type(e)
            if kind is tcp.Data:
                if c.app_closed:  # nobody will read it: the kernel answers with a RST
                    c.prediction.disarm()
                    conn.abort()
                    continue
                self._take_data(c, e.data)
            elif kind is tcp.Connected:
                c.connected = c.news = True
                lst = c.listener
                if lst is not None:
                    # past the app's backlog Linux resets nobody (tcp_abort_on_overflow 0): it holds the handshake
                    # in SYN_RECV until accept() makes room; held here as done, as many as its SYN backlog
                    if len(lst.ready) >= lst.backlog + self.config.syn_backlog or lst.sid not in self.by_sid:
                        conn.abort()
                    else:
                        lst.ready.append(c)
                        lst.news = True
                        self._touched.add(lst)
            elif kind is tcp.EndOfStream:
                c.eof = c.news = True
            elif kind is tcp.Reset:
                c.dead = c.news = True
                c.error = _ERRNO.get(e.reason, 0)
                if c.listener is not None and c in c.listener.ready:
                    c.listener.ready.remove(c)
        self._emit(c.local_ip, c.peer_ip, conn.segments_to_send(now))

    @staticmethod
    def _take_data(c: _Conn, data: bytes) -> None:
        if c.c_owned:  # bytes of hits(): the shim's C queue has them (the window counts them until CONSUMED)
            k = min(c.c_owned, len(data))
            c.c_owned -= k
            data = data[k:]
            if not data:
                return
        c.rx.append(data)
        c.rx_len += len(data)
        c.news = True

    def _register(self, c: _Conn) -> None:
        self.conns[c.key] = c
        c.conn.app_reads = True  # its window counts rx and the C queue until the app reads them (consumed)
        c.prediction = self._predictions[_pkey(c.key)] = self._prediction_of(c.local_ip, c.key[2], c.key[0],
                                                                             c.key[1], c)

    def _forget(self, c: _Conn) -> None:
        if self.conns.get(c.key) is c:
            del self.conns[c.key]
            self._retransmits_gone += c.conn.stats.retransmits
            self._predictions.pop(_pkey(c.key), None)
        c.prediction.disarm()

    # ---- the wire ------------------------------------------------------------------------------------------
    def frame(self, packet: bytes, now: float):
        """One IPv4 packet (TCP) off the rings."""
        self._segment(packet, now)
        return self._out(0, now)

    def frames(self, packets: bytes, now: float):
        """IPv4 packets back to back (each as long as its total length says): one pump's TCP frames."""
        off, n = 0, len(packets)
        while off + 20 <= n:
            size = int.from_bytes(packets[off + 2:off + 4], "big")
            if size < 20 or off + size > n:
                self.counters["rx_bad"] += 1
                break
            self._segment(packets[off:off + size], now)
            off += size
        return self._out(0, now)

    def _segment(self, packet: bytes, now: float) -> None:
        hit = self._rx(ETH_IP + packet, self._predictions) if self._predictions else None
        if hit is not None:  # predicted: the connection takes it without receive()'s checks
            c, seq, ack, flags, window, tsval, tsecr, payload = hit
            self.counters["rx_segments"] += 1
            self.counters["rx_predicted"] += 1
            if not c.conn.receive_hit(seq, ack, flags, window, tsval, tsecr, payload, now):
                c.prediction.disarm()
            self._touched.add(c)
            return
        h = ipv4.parse_ipv4(packet)
        if type(h) is str or h.proto != IPPROTO_TCP:
            self.counters["rx_bad"] += 1
            return
        try:
            seg = tcp.parse_segment(h.src, h.dst, packet[h.header_length:h.total_length])
        except tcp.TcpParseError:
            self.counters["rx_bad"] += 1
            return
        self.counters["rx_segments"] += 1
        c = self.conns.get((h.src, seg.src_port, seg.dst_port))
        if c is not None and c.conn.state is tcp.State.TIME_WAIT and seg.has(tcp.SYN) and not seg.has(tcp.ACK):
            c.prediction.disarm()
            c.conn.receive(seg, now)  # a new SYN may end the TIME_WAIT (the protocol says: finished)
            if c.conn.finished:
                self._forget(c)
                c = None
        if c is None and self._handed and (h.src, seg.src_port, seg.dst_port) in self._handed:
            if not seg.has(tcp.SYN) or seg.has(tcp.ACK):
                return  # the kernel's now
            del self._handed[(h.src, seg.src_port, seg.dst_port)]  # a new connection: the kernel is done with it
        if c is not None:
            c.prediction.disarm()  # changed outside the fast path: armed again by _out
            c.conn.receive(seg, now)
            self._flush(c, now)
            return
        lst = self.listeners.get(seg.dst_port)
        if lst is None and seg.dst_port in self._released:
            return  # on the rings before the port's rule went: the peer sends it again, to the kernel's listener
        if lst is None:
            self.counters["rx_no_socket"] += 1
            rst = tcp.reset_for(seg)
            if rst is not None:
                self._emit(h.dst, h.src, [rst])
            return
        peer_ip = socket.inet_ntoa(h.src)
        out, conn = lst.tcp.receive(seg, peer_ip, now)
        self._emit(h.dst, h.src, out)
        self._touched.add(lst)  # its SYN-ACK retransmission timer
        if conn is not None:
            c = _Conn(conn, (socket.inet_ntoa(h.dst), lst.port), (peer_ip, seg.src_port), listener=lst)
            self._register(c)
            self._touched.add(c)

    def hits(self, log: bytes, now: float):
        """Segments the shim's C predicted and queued for the app itself (HIT records, each with its payload),
        taken as frames() takes a HIT, at their arrival times: the connection catches up (its ACK, window,
        timers), its Data is not queued here again (the app reads it from C) but counted by the window until
        CONSUMED records say the app read it (TcpConnection.app_reads), so the window bounds the C queue as rx."""
        off, n, size = 0, len(log), HIT.size
        while off + size <= n:
            sid, seq, ack, tsval, tsecr, window, flags, has_ts, length, at = HIT.unpack_from(log, off)
            off += size
            c = self.by_sid.get(sid)
            if flags == CONSUMED:  # no payload follows
                if type(c) is _Conn:
                    c.c_held = max(0, c.c_held - length)
                    if c.conn.consumed(length):
                        self._touched.add(c)  # a window update
                continue
            payload = log[off:off + length]
            off += length
            if type(c) is not _Conn:
                continue
            c.c_held += length
            self.counters["rx_segments"] += 1
            self.counters["rx_predicted"] += 1
            c.c_owned += length
            if not c.conn.receive_hit(seq, ack, flags, window, tsval if has_ts else None, tsecr if has_ts else None,
                                      payload, at):
                c.prediction.disarm()
            self._touched.add(c)
        touched = self._touched
        if self.quick and len(touched) == 1:  # one established connection (the common case): _out's pass for it
            c = next(iter(touched))
            if type(c) is _Conn and c.sid is not None and c.conn.state is _ESTABLISHED:
                touched.clear()
                self._events(c, now)
                if not touched and c.conn.state is _ESTABLISHED:
                    return self._quick_out(c, 0, rearm=True)
                touched.add(c)
        return self._out(0, now)

    def hits_send(self, log: bytes, sid: int, data: bytes, now: float):
        """hits(log) then send(sid, data) in one call (the app's reply after reading what C queued)."""
        _, packets, changes, _ = self.hits(log, now)
        result, more, changed, deadline = self.send(sid, data, now)
        return result, packets + more, changes + changed, deadline

    def prediction_address(self, sid: int, now: float):
        """Where sid's Prediction keeps its struct kb_tcp_pred (0: none, the Python stand-in's), for the shim's
        C to predict with while sid is the app's."""
        c = self._conn(sid)
        return self._out(0 if c is None else c.prediction.address, now)

    def timer(self, now: float):
        for c, t in list(self._timers.items()):
            if t > now:
                continue
            self._touched.add(c)
            if type(c) is _Conn:
                c.prediction.disarm()
                c.conn.on_timer(now)
            else:
                for ip, seg in c.tcp.on_timer(now):
                    self._emit(c.ip_bytes, socket.inet_aton(ip), [seg])
        return self._out(0, now)

    # ---- the application's calls ---------------------------------------------------------------------------
    def listen(self, sid: int, ip: int, port: int, backlog: int, now: float):
        self._released.discard(port)
        old = self.listeners.get(port)
        if old is not None and old.sid == sid:  # listen() again: a new backlog
            old.backlog = max(1, backlog)
            return self._out(0, now)
        lst = self.listeners[port] = _Listener(sid, socket.inet_ntoa(ip.to_bytes(4, "big")), port, backlog, self.config)
        self.by_sid[sid] = lst
        return self._out(0, now)

    def accept(self, sid: int, new_sid: int, now: float):
        lst = self.by_sid.get(sid)
        if type(lst) is not _Listener:
            return self._out(-errno.EINVAL, now)
        self._touched.add(lst)
        if not lst.ready:
            return self._out(-errno.EAGAIN, now)
        c = lst.ready.popleft()
        c.listener, c.sid = None, new_sid
        self.by_sid[new_sid] = c
        self._touched.add(c)
        return self._out(ACCEPTED.pack(c.peer_ip, c.peer[1], socket.inet_aton(c.local[0]), c.local[1]), now)

    def connect(self, sid: int, lip: int, lport: int, rip: int, rport: int, now: float):
        local = (socket.inet_ntoa(lip.to_bytes(4, "big")), lport)
        peer = (socket.inet_ntoa(rip.to_bytes(4, "big")), rport)
        key = (socket.inet_aton(peer[0]), rport, lport)
        old, iss = self.conns.get(key), None
        if old is not None and not old.conn.finished:
            if old.conn.state is not _TIME_WAIT or not old.conn.ts_ok:
                return self._out(-errno.EADDRNOTAVAIL, now)
            # Linux's reuse of a TIME_WAIT for a connect (twsk_unique; RFC 6191): the kernel gave this port out
            # again (the shim lets it go at TIME_WAIT) or the app bound it itself. Safe with timestamps: our
            # tsval only grows (same 4-tuple offset, a later clock) and the ISS starts above the old snd_nxt,
            # so the peer tells old duplicates from new segments
            iss = old.conn.sq.snd_max + 65535 + 2
            old.prediction.disarm()
            self._timers.pop(old, None)
            self._forget(old)
        c = _Conn(tcp.TcpConnection.connect(local, peer, now, config=self.config, iss=iss), local, peer)
        c.sid = sid
        self._register(c)
        self.by_sid[sid] = c
        self._flush(c, now)
        return self._out(0, now)

    def _conn(self, sid: int) -> _Conn | None:
        c = self.by_sid.get(sid)
        return c if type(c) is _Conn and not c.app_closed else None

    def recv(self, sid: int, n: int, peek: int, now: float):
        c = self._conn(sid)
        if c is None:
            return self._out(-errno.ENOTCONN, now)
        # quick only below MAX_UNREAD: at the cap _events left Data in the connection, and _out's pass must take
        # it as rx drains (else no POLLIN, a closed window, and C queueing later segments in front of it)
        if c.rx and self.quick and not self._touched and c.rx_len < MAX_UNREAD:
            data = self._take(c, n, peek)
            if peek or not c.conn.consumed(len(data)):
                return self._quick_out(c, data)
            self._touched.add(c)  # the window reopened: an update
            return self._out(data, now)
        self._touched.add(c)
        if c.rx:  # after SHUT_RD too: Linux still queues and hands out what arrives, then 0 rather than waiting
            data = self._take(c, n, peek)
            if not peek:
                c.conn.consumed(len(data))
            return self._out(data, now)
        if c.error:
            err, c.error = c.error, 0
            return self._out(-err, now)
        if c.eof or c.dead or c.shut_rd:
            return self._out(b"", now)
        if not c.connected:
            return self._out(-errno.ENOTCONN if c.conn.state is tcp.State.CLOSED else -errno.EAGAIN, now)
        return self._out(-errno.EAGAIN, now)

    @staticmethod
    def _take(c: _Conn, n: int, peek: int) -> bytes:
        parts, got = [], 0
        for chunk in c.rx:
            if got >= n:
                break
            parts.append(chunk[:n - got])
            got += len(parts[-1])
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        if peek:
            return out
        left = got
        while left:
            head = c.rx[0]
            if len(head) <= left:
                c.rx.popleft()
                left -= len(head)
            else:
                c.rx[0] = head[left:]
                left = 0
        c.rx_len -= got
        return out

    def send(self, sid: int, data: bytes, now: float):
        c = self._conn(sid)
        if c is None:
            return self._out(-errno.ENOTCONN, now)
        if self.quick and not self._touched and c.connected and not (c.error or c.dead or c.shut_wr):
            fields = c.conn.send_now(data, now)  # one segment on an idle connection: send() + segments_to_send
            if fields is not None:
                seq, ack, flags, window, ts = fields
                self._ident = ident = (self._ident + 1) & 0xFFFF
                self._packets.append(self._frame(NO_ETH, c.local_ip, c.peer_ip, ident, c.key[2], c.key[1], seq, ack,
                                                 flags, window, ts, data)[14:])
                self.counters["tx_segments"] += 1
                return self._quick_out(c, len(data), rearm=True)
        self._touched.add(c)
        if c.error:
            err, c.error = c.error, 0
            return self._out(-err, now)
        if c.dead or c.shut_wr:
            return self._out(-errno.EPIPE, now)
        if not c.connected:
            return self._out(-errno.EAGAIN if c.conn.state is tcp.State.SYN_SENT else -errno.ENOTCONN, now)
        try:
            n = c.conn.send(data)
        except tcp.TcpError:
            return self._out(-errno.EPIPE, now)
        if not n:
            return self._out(-errno.EAGAIN, now)
        self._flush(c, now)
        return self._out(n, now)

    def shutdown(self, sid: int, how: int, now: float):
        c = self._conn(sid)
        if c is None:
            return self._out(-errno.ENOTCONN, now)
        self._touched.add(c)
        if not c.connected and not c.dead:
            return self._out(-errno.ENOTCONN, now)
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            c.shut_rd = True  # as Linux: recv stops waiting (0 once rx is empty), data still arrives and is read
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and not c.shut_wr and not c.dead:
            c.prediction.disarm()
            c.shut_wr = True
            c.conn.shutdown()
            self._flush(c, now)
        return self._out(0, now)

    def close(self, sid: int, now: float):
        """The application's last fd of sid is closed: FIN (RST with unread data); a listener resets the
        connections nobody accepted. Returns how many connections still use the port (the rule stays)."""
        s = self.by_sid.pop(sid, None)
        if type(s) is _Listener:
            self._timers.pop(s, None)
            if self.listeners.get(s.port) is s:
                del self.listeners[s.port]
            for c in s.ready:
                c.prediction.disarm()
                c.conn.abort()
                self._flush(c, now)
                c.app_closed = True
            for c in list(self.conns.values()):
                if c.listener is s:  # half way through the handshake: the listener took the SYN
                    c.prediction.disarm()
                    c.conn.abort()
                    self._flush(c, now)
                    c.app_closed = True
            if self.port_users(s.port):
                self._draining[s.sid] = s.port  # GONE for its sid when the port's last connection is done
            out = self._out(0, now)  # the connections it reset are forgotten here
            return (self.port_users(s.port), *out[1:])
        if s is None:
            return self._out(0, now)
        c = s
        c.prediction.disarm()
        c.app_closed = True  # its sid stays until GONE says so (the shim holds an active open's port till then)
        if not c.dead and not c.conn.finished:
            if c.rx_len:
                c.conn.abort()
            elif not c.shut_wr:
                c.shut_wr = True
                c.conn.shutdown()
            c.conn.orphan(now)  # FIN_WAIT_2 ends after fin_timeout: a peer that never closes holds nothing
        c.rx.clear()
        c.rx_len = 0
        self._flush(c, now)
        return self._out(0, now)

    def half_open(self, sid: int, now: float):
        """How many connections listener sid's SYN-ACK answered that have not finished their handshake."""
        lst = self.by_sid.get(sid)
        return self._out(len(lst.tcp.half_open) if type(lst) is _Listener else 0, now)

    def release(self, sid: int, now: float):
        """Listener sid goes back to the kernel (the shim at a fork): close(sid), and the port's connections in
        TIME_WAIT are forgotten (they would hold the port's rule a minute; the kernel answers their stray
        segments), the port's segments still on the rings are dropped, not reset."""
        lst = self.by_sid.get(sid)
        if type(lst) is _Listener:
            self._released.add(lst.port)
            for c in list(self.conns.values()):
                if c.key[2] == lst.port and c.sid is None and c.conn.state is _TIME_WAIT:
                    self._forget(c)
                    self._timers.pop(c, None)
        return self.close(sid, now)

    def keepalive(self, sid: int, on: int, idle: float, interval: float, count: int, now: float):
        """SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT (the kernel socket's values): a listener's go to the
        connections it accepts later, as Linux's are inherited."""
        s = self.by_sid.get(sid)
        if s is None:
            return self._out(-errno.EBADF, now)
        change = {"keepalive": bool(on), "keepalive_idle": float(idle), "keepalive_interval": float(interval),
                  "keepalive_count": int(count)}
        if type(s) is _Listener:
            s.tcp.config = dataclasses.replace(s.tcp.config, **change)
        else:
            s.conn.config = dataclasses.replace(s.conn.config, **change)
            self._touched.add(s)  # its next timer moves
        return self._out(0, now)

    def abort(self, sid: int, now: float):
        """close() with SO_LINGER {1, 0}: RST now, whatever is queued or unread."""
        c = self._conn(sid)
        if c is not None and not c.dead and not c.conn.finished:
            c.prediction.disarm()
            c.conn.abort()
            c.shut_wr = True
        return self.close(sid, now)

    def handoff(self, sid: int, now: float):
        """sid's state and bytes for the kernel (kbypass.proto.tcp.handoff: HEADER, then the sent and unacknowledged
        bytes, the unsent ones, the unread ones), or -EINVAL when the kernel cannot carry it on. Changes nothing:
        handed(sid) when the kernel socket is made, abort(sid) when not."""
        c = self._conn(sid)
        if c is None:
            return self._out(-errno.ENOTCONN, now)
        while (e := c.conn.next_event()) is not None:  # Data past MAX_UNREAD, still the connection's
            if type(e) is tcp.Data:
                self._take_data(c, e.data)
            elif type(e) is tcp.EndOfStream:
                c.eof = True
        state = None if c.error or c.dead or c.shut_wr or c.shut_rd else handoff_state(c.conn, now)
        if state is None:
            return self._out(-errno.EINVAL, now)
        return self._out(state.pack(b"".join(c.rx)), now)

    def handed(self, sid: int, now: float):
        """sid is the kernel's (the shim made its socket from handoff()): forgotten without a segment sent."""
        c = self._conn(sid)
        if c is None:
            return self._out(-errno.ENOTCONN, now)
        self.by_sid.pop(sid, None)
        self._forget(c)
        self._timers.pop(c, None)
        self._touched.discard(c)
        c.sid = None
        if len(self._handed) > 4096:  # a rule steers a handed connection's segments here a moment only
            self._handed = {k: t for k, t in self._handed.items() if now - t < 10.0}
        self._handed[c.key] = now
        return self._out(0, now)

    def exit_pending(self, give_up: int, now: float):
        """How many closed connections still owe their peer bytes or a FIN (the shim's exit waits); give_up:
        those are reset (the exit waited KBYPASS_EXIT_LINGER_S)."""
        left = unfinished(self.conns.values())
        for c in left if give_up else ():
            c.conn.abort()
            self._flush(c, now)
        return self._out(len(left), now)

    def so_error(self, sid: int, now: float):
        c = self._conn(sid)
        err = 0
        if c is not None:
            self._touched.add(c)
            err, c.error = c.error, 0
        return self._out(err, now)
