"""The receive side of TcpHost (a mixin; the host's state lives in kbypass.endpoint.tcpio): a burst of frames
off the rings into the connections. With the C fast path, each lane's burst is one call (kbypass._fasttcp
.rx_burst): the frames it predicts and answers from the canned table never reach Python, and the rest come
back in arrival order with their verdicts, taken here as the Python loop takes rx_canned's (the loop is the
fallback, and the reference tests/unit/test_tcp_burst.py holds the C burst to)."""

from __future__ import annotations

import time

from kbypass.proto import ipv4, tcp
from kbypass.proto.ethernet import ETH_HLEN
from kbypass.proto.tcp.segment import IPPROTO_TCP

RX_BURST = 64  # frames taken per lane per pump before the connections' answers go out


class TcpReceive:
    def receive(self) -> bool:
        """Take what arrived (up to RX_BURST frames per lane) into the connections, and their events into the
        sockets (what came is readable now); True when any frame came. Nothing is sent but the answers the C
        fast path made from canned ones (TcpSocket.canned): a loop that answers a whole batch calls transmit()
        once after it (pump() is both)."""
        now = time.monotonic()
        got = False
        predict, table, canned, tally = self._predict, self._predictions, self._canned, self._tally
        answered: list = []  # canned answers sent, their exchanges not yet told to the connections
        kept = 0  # canned answers sent whose exchanges C kept (a run: TcpSocket.conn takes them when it looks)
        error = None  # what ended a C burst early (a failed kick, a bad ring): raised once its work is taken
        for lane, core in zip(self._lanes, self._cores):
            budget = RX_BURST
            if core is not None and not self._tx_backlog:  # the burst in one C call (frames behind it go first)
                frames, k, udp, self._ident, items, more, error = self._burst(core, self._cores[0], table, canned,
                                                                              now, self._ident, tally, RX_BURST)
                got = got or frames > 0
                kept += k
                if udp:
                    self.counters["rx_not_tcp"] += udp
                for item in items:
                    self._take(item, now, answered)
                if error is not None:
                    break
                if not more:
                    continue
                budget -= frames  # the rest frame by frame: the Python lane takes what C could not
            receive = lane.receive_udp
            for _ in range(budget):
                f = receive()
                if f is None:
                    break
                got = True
                if type(f) is not bytes:  # UDP to port 0: nothing of ours (no rule steers it), counted and dropped
                    self.counters["rx_not_tcp"] += 1
                    continue
                hit = predict(f, table, canned, now, (self._ident + 1) & 0xFFFF, tally)
                if hit is None:
                    hit = f
                elif type(hit) is bytes:  # kept: rx_canned built the frame with the next ident
                    self._ident = (self._ident + 1) & 0xFFFF
                    kept += 1
                    hit = (hit,)
                elif len(hit) == 10:  # reported: likewise
                    self._ident = (self._ident + 1) & 0xFFFF
                self._take(hit, now, answered)
        if kept:
            counters = self.counters
            for name in ("rx_segments", "rx_predicted", "tx_segments", "rx_canned_kept"):
                counters[name] += kept
        if answered or kept:
            if self.defer_tx:  # the answers leave now, their bookkeeping after: the peers wait less
                self._lanes[0].flush_tx()
            n = sum(tally.values())
            self.counters["rx_canned"] += n - self._tallied
            self._tallied = n
        if answered:
            self._answered(answered, now)
        if got:
            for sock in tuple(self._dirty):  # taking Data may touch (a reset for a closed socket's data)
                sock.take_events()
        if error is not None:
            raise error
        return got

    def _take(self, item, now: float, answered: list) -> None:
        """One frame's verdict, as rx_canned or rx_burst gives it: a canned answer to send (a 1-tuple: its
        exchange kept in C), a reported one (10-tuple: sent now, told to its connection with the rest of
        `answered`), a HIT (8-tuple) or a frame for the general path. The answered exchanges are told before
        any other segment: the connections must be up to date for it."""
        frame = type(item) is bytes
        if not frame and len(item) == 1:
            self._send_frame(item[0])
            return
        if not frame and len(item) == 10:
            self._send_frame(item[9])
            answered.append(item)
            return
        if answered:
            self._answered(answered, now)
            answered.clear()
        if frame:
            if self.late:
                self.catch_up()
            self._frame(item, now)
        else:
            self._predicted(item, now)

    def _frame(self, f: bytes, now: float) -> None:
        if len(f) < ETH_HLEN + 40 or f[12] != 0x08 or f[13] != 0x00 or f[ETH_HLEN + 9] != IPPROTO_TCP:
            self.counters["rx_not_tcp"] += 1
            self._emit(self.stack.receive(f, now))  # ARP or ICMP the rules let in: counted, never answered
            return
        mv = memoryview(f)[ETH_HLEN:]
        h = ipv4.parse_ipv4(mv)
        if type(h) is str or h.dst != self._ipb:
            self.counters["rx_bad"] += 1
            return
        try:
            seg = tcp.parse_segment(h.src, h.dst, f[ETH_HLEN + h.header_length:ETH_HLEN + h.total_length])
        except tcp.TcpParseError:
            self.counters["rx_bad"] += 1
            return
        self.counters["rx_segments"] += 1
        if self.stack.on_link(h.src):
            self._peer_macs[h.src] = f[6:12]
        key = (h.src, seg.src_port, seg.dst_port)
        sock = self._conns.get(key)
        if sock is not None:
            sock.segment(seg, now)
            self._dirty.add(sock)
            return
        lst = self._listeners.get(seg.dst_port)
        if lst is not None:
            lst.segment(seg, h.src, now)
            return
        self.counters["rx_no_socket"] += 1
        self.send_segments(h.src, self.reset_for(seg))

    def _predicted(self, hit: tuple, now: float) -> None:
        """A segment the C fast path predicted (kbypass._fasttcp.rx: checked and parsed there): the
        connection takes it without receive()'s checks (TcpConnection.receive_predicted). The peer's MAC
        is not learnt here as _frame learns it: a predicted segment follows slow ones of the same connection
        (its handshake at least) that did, and a peer that moves is learnt again by its next slow segment."""
        sock, seq, ack, flags, window, tsval, tsecr, payload = hit
        counters = self.counters
        counters["rx_segments"] += 1
        counters["rx_predicted"] += 1
        self._dirty.add(sock)
        if payload and sock.canned_prediction.armed:  # rx_canned kept a NEXT_SEND arming over it
            if sock.take_early(payload):
                return self.late.append((hit, now))  # readable now; the connection told in answer_late/catch_up
            sock.canned_prediction.disarm()
        self.catch_up()
        if not sock.conn.receive_hit(seq, ack, flags, window, tsval, tsecr, payload, now):
            sock.prediction.disarm()

    def catch_up(self) -> None:
        """Tell the connections of the segments their applications took early (TcpSocket.take_early), in order,
        before anything else reaches them (a segment, a timer, a flush, the socket API): still as predicted."""
        if not self.late:
            return
        late, self.late = self.late, []
        for (sock, seq, ack, flags, window, tsval, tsecr, payload), now in late:
            sock.canned_prediction.disarm()
            if not sock.conn.receive_hit(seq, ack, flags, window, tsval, tsecr, payload, now, True):
                sock.prediction.disarm()
            self._dirty.add(sock)

    def answer_late(self, sock, data) -> bool:
        """After sock's application took a segment early, its data leaves from C as the answer (send_canned) when
        the arming holds, the exchange told as a canned one (answer_hit); else catch_up and False."""
        late = self.late
        if len(late) == 1 and late[0][0][0] is sock and not self.defer_tx:
            ident, now = (self._ident + 1) & 0xFFFF, time.monotonic()
            frame = self._fasttcp.send_canned(sock.prediction, sock.canned_prediction, data, now, ident)
            if frame is not None:
                self._ident, self.late = ident, []
                self._send_frame(frame)
                self.counters["tx_segments"] += 1
                sock.answered(sock.conn.answer_hit(*late[0][0][1:], bytes(data), now))
                return True
        self.catch_up()
        return False

    def _answered(self, hits: list, now: float) -> None:
        """Segments the C fast path answered from the sockets' canned answers (rx_canned; the answers' frames
        are sent): each connection takes its exchange (TcpConnection.answer_hit), in arrival order."""
        counters = self.counters
        n = len(hits)
        counters["rx_segments"] += n
        counters["rx_predicted"] += n
        counters["tx_segments"] += n
        for sock, seq, ack, flags, window, tsval, tsecr, payload, values, _frame in hits:
            answer = values[0][0] if len(values) == 1 else b"".join(v[0] for v in values)
            sock.answered(sock.conn.answer_hit(seq, ack, flags, window, tsval, tsecr, payload, answer, now))

    def take_canned(self) -> dict:
        """The requests answered in C since the last call (TcpSocket.canned), which the application did not
        see: {the table's value: how many times it was sent}, for its counts (each socket's canned_at is
        when it last was, for its idle clock)."""
        tally, self._tally, self._tallied = self._tally, {}, 0
        return tally

    @staticmethod
    def reset_for(seg) -> list:
        """The RST answering a segment nothing here takes (none to a RST): kbypass.proto.tcp.reset_for's."""
        rst = tcp.reset_for(seg)
        return [] if rst is None else [rst]
