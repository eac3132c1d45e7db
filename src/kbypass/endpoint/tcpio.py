"""TcpHost: the I/O side of kbypass's userspace TCP on one interface address (the protocol is kbypass.proto.tcp,
sans-IO; this module moves its segments through AF_XDP and drives its clocks).

    host = TcpHost("kb-b", "10.77.0.2", netns="kb-b")
    lst = host.listen(8080)                         # kbypass.endpoint.tcp.TcpListener
    sock = host.connect(("10.77.0.1", 5201))        # kbypass.endpoint.tcp.TcpSocket

Steering: each local port we use gets one rule, `tcp dst IP dport PORT` (a `sample` rule in front of it
when `loss` is set), added to one SteeredPort (the control plane's program by default): the kernel keeps
every other flow of the address, ARP and ping included. Each port is also held in the kernel by a bound,
never-listening TCP socket (kbypass.net.bind_tcp): the kernel hands it to nobody else (a server that wants
it is refused, no connect() of the kernel picks it as its ephemeral port), and port 0 picks a free one. The
kernel never sees a segment of the port (the program takes them all first), so it never answers one with
a RST; tests/netns/test_tcp_endpoint.py checks its OutRsts counter.

Next hop: the address is the kernel's, so peers are resolved through the kernel's neighbour table
(`proto.stack.Stack` with `resolve=`, as the UDP endpoint does), and the source MAC of a peer's segments is
remembered for the answers (an on-link peer that reached us is where it says it is).

Progress happens only inside calls (no helper thread, as Onload without its helper): `pump()` moves what
arrived into the connections and what they have to send onto the wire, and runs due timers; blocking socket
calls pump while they wait. A program with its own loop waits on `fileno()` (readable when frames arrived)
for at most `timeout()` seconds (the next protocol timer), then calls `pump()`.
"""

from __future__ import annotations

import heapq
import ipaddress
import select
import socket
import time
from collections import deque
from contextlib import contextmanager

from kbypass import backend
from kbypass.errors import KbypassError, UsageError
from kbypass.net import Interface, bind_tcp, check_address
from kbypass.proto import ipv4, tcp
from kbypass.proto import udp as udpp
from kbypass.proto.ethernet import ETH_HLEN, ETH_P_IP
from kbypass.proto.stack import Stack
from kbypass.proto.tcp import fastpath as tcp_fastpath
from kbypass.proto.tcp.segment import IPPROTO_TCP

from .base import POLL_MODES, close_steered, spin_lanes, wake_lanes
from .tcperrors import HostUnreachableError
from .tcprx import TcpReceive

TCP_FRAME_OVERHEAD = ETH_HLEN + 20 + 60  # Ethernet, IPv4, the largest TCP header (options included)
STACK_CHECK = 0.005  # seconds between looks at the stack's ARP timers
BUSY_SPIN = 20e-6  # seconds wait() spins on the rings in busy mode (in C) before the loop looks at timers
TX_BACKLOG = 65536  # frames waiting for TX ring room before new segments are refused (the TCP retransmits)


def _prediction_key(key: tuple[bytes, int, int]) -> int:
    """A connection's key in the prediction table (kbypass._fasttcp.rx builds the same from a frame)."""
    return (int.from_bytes(key[0], "big") << 32) | (key[1] << 16) | key[2]


class TcpHost(TcpReceive):
    """One address of one interface running kbypass's TCP. See the module doc. Not thread-safe.

    poll: "wakeup" (sleep in poll()) or "busy" (spin). max_connections: connections (all states but LISTEN
    and CLOSED) held at once; a SYN past it is refused (RST) and counted in `counters["refused_limit"]`.
    loss: drop this fraction of the segments we receive, in the steering program (testing under loss).
    config: a kbypass.proto.tcp.TcpConfig for every connection (the MSS is capped by the MTU and the frame).
    native: the per-frame ring work in C (kbypass._fastlane), in Python (False), or C when built (None).
    """

    def __init__(self, ifname: str, ip: str, *, netns: str | None = None, poll: str = "wakeup",
                 queue: int | None = None, xdp_mode: str = "native", frames: int = 4096, frame_size: int = 2048,
                 control_plane: bool = True, max_connections: int = 4096, loss: float = 0.0,
                 config=None, native: bool | None = None) -> None:
        from kbypass.port.steered import QueueTaken, SteeredPort

        self._closed = True
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise UsageError(f"{ip!r} is not an IPv4 address: give one like 10.77.0.2") from None
        if poll not in POLL_MODES:
            raise UsageError(f"poll={poll!r} is unknown: use 'wakeup' or 'busy'")
        if not 0.0 <= loss < 1.0:
            raise UsageError(f"loss {loss}: give a fraction from 0 to below 1, e.g. 0.01")
        if max_connections < 1:
            raise UsageError(f"max_connections {max_connections}: give at least 1")
        self.ifname, self.netns, self.ip, self.poll_mode, self.loss = ifname, netns, ip, poll, loss
        self.max_connections = max_connections
        self._iface = Interface(ifname, netns)
        self._steered = None
        self._lanes: list = []
        self._placeholders: dict[int, socket.socket] = {}
        self._rules: dict[int, list[int]] = {}
        try:
            prefixlen = check_address(self._iface, ip, False, None)
            self.mtu = self._iface.mtu
            try:
                self._steered = SteeredPort(ifname, queue, [], netns=netns, xdp_mode=xdp_mode,
                                            control_plane=control_plane, poll=poll, frames=frames,
                                            frame_size=frame_size)
            except QueueTaken as e:  # its --queue/--share-queue remedy is not ours: a TcpHost takes every queue
                raise UsageError(f"queue {e.queue} of {e.ifname} is taken by {e.owner}: kbypass's TCP takes every "
                                 "queue of the interface (AF_XDP allows one socket per queue), so stop that program "
                                 "first, or serve on another interface") from None
            # The message lanes move one frame at a time (in C when built: kbypass._fastlane). Their "plain
            # UDP to us" check is for a port 0 no rule steers, so every frame comes back whole, as bytes.
            never = udpp.PlainUdp(bytes.fromhex(self._iface.mac.replace(":", "")), socket.inet_aton(ip), 0, None)
            self._lanes = [p.message_lane(never, native=native) for p in self._steered.ports]
            self.native = self._lanes[0].native  # True: the C lane moves the frames
            # ... and the TCP fast path rides with it (kbypass._fasttcp, csrc/core/kb_tcp.h): the header
            # prediction of each connection's next segment, and frames built from header fields; without it
            # the same calls in Python (kbypass.proto.tcp.fastpath: nothing predicted)
            self._fasttcp = (backend.native_module("tcp") if self.native and backend.built("tcp")
                             else tcp_fastpath)
            tx_room = min(lane.tx_room for lane in self._lanes)
            # the MSS Linux would announce on this link, shrunk when a UMEM frame cannot hold such a packet
            self.mss = min(self.mtu - 40, tx_room - TCP_FRAME_OVERHEAD)
            self.stack = Stack(self._iface.mac, ip, prefixlen, time.monotonic(), owns_address=False,
                               resolve=self._iface.neighbour, mtu=self.mtu, udp_ports=[], arp_interval=0.02,
                               arp_attempts=100)
        except BaseException:
            self._teardown()
            raise
        self.config = tcp.TcpConfig(mss=self.mss) if config is None else config
        self._macb = self._iface_mac = bytes.fromhex(self._iface.mac.replace(":", ""))
        self._ipb = socket.inet_aton(ip)
        self._peer_macs: dict[bytes, bytes] = {}  # on-link peer IP -> the source MAC of its segments
        self._eth_heads: dict[bytes, bytes] = {}  # next-hop MAC -> our 14-byte Ethernet header to it
        self._ident = 0
        self._conns: dict[tuple[bytes, int, int], object] = {}  # (peer ip, peer port, local port) -> TcpSocket
        # the same connections' predictions for kbypass._fasttcp.rx, by (peer ip << 16 | peer port) << 16 | local port
        self._predictions: dict[int, object] = {}
        self._canned: dict[int, object] = {}  # and their canned answers' arming (TcpSocket.canned), same keys
        self._tally: dict = {}  # canned table value -> answers C sent since take_canned
        self._tallied = 0  # of which counted in counters["rx_canned"]
        self.late: list = []  # (HIT, arrival time): payloads applications took early (NEXT_SEND), not yet told
        self._predict, self._frame_of = self._fasttcp.rx_canned, self._fasttcp.frame
        # a receive burst in one C call per lane (kbypass._fasttcp.rx_burst over the lane's own C struct)
        native_tcp = self._fasttcp is not tcp_fastpath
        self._burst = self._fasttcp.rx_burst if native_tcp else None
        self._cores = [lane.c.core if native_tcp else None for lane in self._lanes]
        self._no_time_wait_until = 0.0  # room(): no TIME_WAIT connection to end before then
        self._listeners: dict[int, object] = {}  # local port -> endpoint.tcp.TcpListener
        self._dirty: set = set()  # sockets with something to send or events to read
        self._timers: list = []  # heap of (when, seq, socket or listener)
        self._scheduled: dict = {}  # socket or listener -> its live heap entry (when, seq)
        self._seq = 0
        self.defer_tx = False  # batched(): send() leaves its segments to the next transmit()
        self.woken: set | None = None  # batched(): sockets with news for the application (take_woken)
        self._tx_backlog: deque[bytes] = deque()
        self._stack_check_at = 0.0
        self._poller = select.poll()
        for lane in self._lanes:
            self._poller.register(lane.fd, select.POLLIN)
        # fileno()'s epoll, made on the first call: registered, it sits on the AF_XDP sockets' wait queues and
        # every frame the kernel delivers (in the sender's context on veth) and every TX completion runs its
        # callback under two locks, for a host whose loop never waits on it (kbypass http serve polls)
        self._epoll: select.epoll | None = None
        self.counters = dict.fromkeys(("rx_segments", "rx_predicted", "tx_segments", "rx_not_tcp", "rx_bad", "rx_no_socket",
                                       "tx_ring_full", "tx_dropped", "refused_limit", "accepted", "connected",
                                       "loss_dropped", "rx_canned", "rx_canned_kept"), 0)
        self._closed = False

    # ---- ports and steering --------------------------------------------------------------------------
    def claim_port(self, port: int) -> int:
        """Hold `port` (0: a free one) in the kernel and steer its segments to us; returns the port."""
        self._check_open()
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise UsageError(f"TCP port {port!r}: use a number from 1 to 65535 (0: pick a free one)")
        holder = bind_tcp(self.netns, self.ip, port)
        port = holder.getsockname()[1]
        steering = self._steered.steering
        ids = []
        try:
            if self.loss:
                ids.append(steering.add(f"tcp dst {self.ip} dport {port} sample prob {self.loss}"))
            ids.append(steering.add(f"tcp dst {self.ip} dport {port}"))
        except BaseException:
            for i in ids:
                steering.remove(i)
            holder.close()
            raise
        self._placeholders[port] = holder
        self._rules[port] = ids
        return port

    def rule_counters(self) -> list[dict]:
        """Each steering rule of our ports with the packets and bytes it matched (a sample rule: dropped)."""
        if self._steered is None:
            return []
        steering = self._steered.steering
        counts, rules = steering.counters(), steering.rules()
        return [{"rule": str(rules[i]), "packets": counts.get(i, (0, 0))[0], "bytes": counts.get(i, (0, 0))[1]}
                for ids in self._rules.values() for i in ids if i in rules]

    def release_port(self, port: int) -> None:
        """Stop steering `port` and let the kernel have it again (after its last connection closed)."""
        ids = self._rules.pop(port, None)
        if self.loss and ids and self._steered is not None:  # the sample rule (first) is going: keep its count
            try:
                self.counters["loss_dropped"] += self._steered.steering.counters().get(ids[0], (0, 0))[0]
            except KbypassError:
                pass
        if ids and self._steered is not None:
            for i in ids:
                try:
                    self._steered.steering.remove(i)
                except KbypassError:
                    pass  # the control plane went away: its rules went with it
        holder = self._placeholders.pop(port, None)
        if holder is not None:
            holder.close()

    def port_in_use(self, port: int) -> bool:
        return port in self._listeners or any(k[2] == port for k in self._conns)

    # ---- the sockets' side ---------------------------------------------------------------------------
    def listen(self, port: int, backlog: int = 128):
        """A TcpListener on `port` (0: a free one). See kbypass.endpoint.tcp."""
        from .tcp import TcpListener

        return TcpListener(self, port, backlog)

    def connect(self, addr: tuple[str, int], *, timeout: float | None = None, blocking: bool = True,
                local_port: int = 0):
        """A TcpSocket connected to addr (ip, port), from `local_port` (0: a free one). Blocking (default):
        returns once established, ConnectionRefusedError on a RST, TimeoutError after `timeout`. Not
        blocking: returns at once; the socket is writable when connected (`connected`), as connect_ex."""
        from .tcp import TcpSocket

        return TcpSocket.open(self, addr, timeout=timeout, blocking=blocking, local_port=local_port)

    def register(self, sock, key: tuple[bytes, int, int]) -> None:
        if len(self._conns) >= self.max_connections:
            raise UsageError(f"{self.max_connections} connections are open on {self.ip} (max_connections): close "
                             "some or open the host with a larger max_connections")
        self._conns[key] = sock
        self._dirty.add(sock)
        pkey = _prediction_key(key)
        sock.prediction = self._predictions[pkey] = self._fasttcp.Prediction(self._ipb, key[2], key[0], key[1], sock)
        sock.canned_prediction = self._canned[pkey] = self._fasttcp.Canned()

    def forget(self, sock) -> None:
        """The socket's connection is CLOSED: drop it from the table (and its port when nothing uses it)."""
        self._scheduled.pop(sock, None)
        if self._conns.get(sock.key) is sock:
            del self._conns[sock.key]
            self._predictions.pop(_prediction_key(sock.key), None)
            self._canned.pop(_prediction_key(sock.key), None)
            if not self.port_in_use(sock.key[2]):
                self.release_port(sock.key[2])

    def touch(self, sock) -> None:
        """The application did something (send, shutdown): the socket has segments to send."""
        self._dirty.add(sock)

    @contextmanager
    def batched(self):
        """Inside, a socket's send() queues its data for the next transmit() (or pump()) instead of sending at
        once: a loop answering a batch of requests sends each connection's answers with one segment (its
        ACK on them) rather than one send apiece, and the TX ring is kicked once for all of the batch's
        frames. The loop must call transmit() (pump()) after each batch, and learns which sockets had news
        from take_woken()."""
        self._check_open()
        was, self.defer_tx = self.defer_tx, True
        lane = self._lanes[0]  # the one we send on: its frames wait for transmit()'s kick, one for them all
        lane.defer_kick = True
        woken, self.woken = self.woken, set()
        try:
            yield self
        finally:
            self.transmit()
            self.defer_tx = lane.defer_kick = was
            self.woken = woken

    def take_woken(self) -> set:
        """Inside batched(): the sockets that had news (data, EOF, reset, established, window) since the last
        call, so a loop with thousands of idle connections looks only at these."""
        woken, self.woken = self.woken, set()
        return woken

    def flush_one(self, sock) -> None:
        """Put what `sock` has on the wire now (a send() returning), without a whole pump."""
        self._dirty.discard(sock)
        sock.flush(time.monotonic())
        if self._tx_backlog:
            self._drain_backlog()

    @property
    def connections(self) -> int:
        return len(self._conns)

    def room(self) -> bool:
        """Room for one more connection: the established ones and the listeners' half-open ones count. When
        full, a connection in TIME_WAIT is ended early to make room (it only re-acknowledges a lost FIN; Linux
        likewise ends TIME_WAIT sockets past tcp_max_tw_buckets): one a server closed must not hold a slot."""
        half_open = sum(len(lst.half_open) for lst in self._listeners.values())
        if len(self._conns) + half_open < self.max_connections:
            return True
        now = time.monotonic()
        if now < self._no_time_wait_until:  # a scan just found none: a SYN flood at the limit is not O(n) each
            return False
        for sock in self._conns.values():
            if sock.conn.state is tcp.State.TIME_WAIT:
                self.forget(sock)
                return True
        self._no_time_wait_until = now + 0.01
        return False

    # ---- receive ---------------------------------------------------------------------------------------
    def pump(self) -> bool:
        """Take what arrived, run due timers, send what the connections have; True when any frame came."""
        got = self.receive()
        self.transmit()
        return got

    def transmit(self) -> None:
        """Run due timers, then send what the connections have, each its segments once for all it was told
        since the last transmit (one ACK for a burst of segments, the answer's data riding on it)."""
        self.catch_up()
        now = time.monotonic()
        if self._timers and self._timers[0][0] <= now:
            self._run_timers(now)
        if now >= self._stack_check_at:  # ARP retries: a few per second are plenty (and the scan costs)
            self._stack_check_at = now + STACK_CHECK
            t = self.stack.next_timer()
            if t is not None and now >= t:
                self._emit(self.stack.handle_timer(now))
            while self.stack.next_event() is not None:  # ARP news: connect() asks the stack itself
                pass
        if self._dirty:
            self._flush(now)
        if self._tx_backlog:
            self._drain_backlog()
        if self.defer_tx:
            self._lanes[0].flush_tx()

    # ---- timers ------------------------------------------------------------------------------------------
    def schedule(self, sock, when: float | None) -> None:
        """Call sock.timer(now) at `when` (a socket or a listener), unless it is already due at or before
        then: that earlier call finds nothing due, and its flush schedules the real next time. So the heap
        holds one live entry per socket plus the entries an earlier time superseded, which are skipped
        when they come up, and rebuilt away when they outnumber the live ones (a keepalive hours ahead
        would otherwise pile up one entry per re-arm)."""
        if when is None:
            return
        cur = self._scheduled.get(sock)
        if cur is not None and cur[0] <= when:
            return
        self._seq += 1
        self._scheduled[sock] = (when, self._seq)
        heapq.heappush(self._timers, (when, self._seq, sock))
        if len(self._timers) > 4 * len(self._scheduled) + 64:
            self._timers = [(t, n, o) for o, (t, n) in self._scheduled.items()]
            heapq.heapify(self._timers)

    def _run_timers(self, now: float) -> None:
        timers, scheduled = self._timers, self._scheduled
        while timers and timers[0][0] <= now:
            when, n, sock = heapq.heappop(timers)
            if scheduled.get(sock) != (when, n):
                continue  # superseded by an earlier time, or the socket is gone
            del scheduled[sock]
            sock.timer(now)  # the socket checks its connection's own next_timer
            self._dirty.add(sock)

    @property
    def timer_entries(self) -> int:
        """Entries in the timer heap (bounded: see schedule)."""
        return len(self._timers)

    def timeout(self) -> float | None:
        """Seconds until the next protocol timer (None: none set): wait on fileno() no longer than this."""
        when = [t for t in (self._timers[0][0] if self._timers else None, self.stack.next_timer()) if t is not None]
        if self._dirty or self._tx_backlog or self.late:
            return 0.0
        return max(0.0, min(when) - time.monotonic()) if when else None

    # ---- send --------------------------------------------------------------------------------------------
    def _flush(self, now: float) -> None:
        dirty, self._dirty = self._dirty, set()
        for sock in dirty:
            sock.flush(now)

    def eth_head(self, dst_ip: bytes) -> bytes | None:
        """Our 14-byte Ethernet header toward dst_ip's next hop, or None while that is not resolved."""
        mac = self._peer_macs.get(dst_ip)
        if mac is None:
            mac = self.stack.next_hop_mac(dst_ip, time.monotonic())
            if mac is None:
                return None
        head = self._eth_heads.get(mac)
        if head is None:
            head = self._eth_heads[mac] = mac + self._macb + ETH_P_IP.to_bytes(2, "big")
        return head

    def send_fields(self, head: bytes, dst_ip: bytes, sport: int, dport: int, fields: tuple, payload) -> None:
        """One established-path segment from its header fields (TcpConnection.send_now's) on the wire."""
        self._ident = ident = (self._ident + 1) & 0xFFFF
        seq, ack, flags, window, ts = fields
        self._send_frame(self._frame_of(head, self._ipb, dst_ip, ident, sport, dport, seq, ack, flags, window, ts,
                                        payload))
        self.counters["tx_segments"] += 1

    def send_segments(self, dst_ip: bytes, segments) -> None:
        """Put segments for dst_ip on the wire (or behind its next hop's resolution)."""
        if not segments:
            return
        head = self.eth_head(dst_ip)
        if head is None:
            now = time.monotonic()
            for seg in segments:
                self._emit(self.stack.send_ip(dst_ip, IPPROTO_TCP, seg.encode(self._ipb, dst_ip), now))
            return
        src, frame_of = self._ipb, self._frame_of
        for seg in segments:
            self._ident = ident = (self._ident + 1) & 0xFFFF
            opts = seg.options
            if not opts.sack and opts.mss is None and opts.wscale is None:
                # the established path's shape (no options, or timestamps): the frame in one call (C when built)
                self._send_frame(frame_of(head, src, dst_ip, ident, seg.src_port, seg.dst_port, seg.seq, seg.ack,
                                          seg.flags, seg.window, opts.timestamps, seg.payload))
                continue
            body = seg.encode(src, dst_ip)
            self._send_frame(head + ipv4.build_ipv4_header(src, dst_ip, IPPROTO_TCP, len(body), ident=ident) + body)
        self.counters["tx_segments"] += len(segments)

    def _emit(self, frames) -> None:
        for f in frames:
            self._send_frame(f)

    def _send_frame(self, frame: bytes) -> None:
        if self._tx_backlog:
            self._drain_backlog()
        if not self._tx_backlog and self._lanes[0].send_one(frame):
            return
        self.counters["tx_ring_full"] += 1
        if len(self._tx_backlog) >= TX_BACKLOG:
            self.counters["tx_dropped"] += 1  # lost here as on a wire: the TCP retransmits it
            return
        self._tx_backlog.append(frame)

    def _drain_backlog(self) -> None:
        lane, q = self._lanes[0], self._tx_backlog
        while q and lane.send_one(q[0]):
            q.popleft()
        if q:
            lane.kick()

    # ---- waiting -----------------------------------------------------------------------------------------
    def fileno(self) -> int:
        """An epoll fd, readable when frames wait on a ring: wait on it at most `timeout()`, then pump()."""
        if self._epoll is None:
            self._check_open()
            ep = select.epoll()
            for lane in self._lanes:
                ep.register(lane.fd, select.EPOLLIN)
            self._epoll = ep
        return self._epoll.fileno()

    def wait(self, deadline: float | None) -> None:
        """Nothing to do now: let the kernel work (busy: spin on the rings for BUSY_SPIN, in C with C lanes;
        wakeup: sleep in poll until a frame may have come, the next timer or the deadline)."""
        if self.poll_mode == "busy":
            if self.defer_tx:  # batched: frames transmit()'s kick left on the ring (no completion room then)
                self._lanes[0].retry_tx()
            spin_lanes(self._lanes, BUSY_SPIN)
            return
        wake_lanes(self._lanes, False)
        if self._tx_backlog:
            self._drain_backlog()
            if self.defer_tx:  # batched: what the drain put on the ring is not kicked by the sends
                self._lanes[0].flush_tx()
            wait = 0.0005
        elif self.defer_tx and self._lanes[0].retry_tx():  # batched: frames transmit()'s kick left on the ring
            wait = 0.0005
        else:
            t, now = self.timeout(), time.monotonic()
            wait = min(x for x in (t, None if deadline is None else deadline - now, 1.0) if x is not None)
        self._poller.poll(max(0, int(wait * 1000 + 0.999)))

    def run_until(self, done, deadline: float | None) -> bool:
        """Pump until done() is true (True) or the deadline passes (False)."""
        while True:
            self.pump()
            if done():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if not self.pump():
                if done():
                    return True
                self.wait(deadline)

    def resolve(self, ip: bytes, deadline: float) -> None:
        """Know the next hop's MAC toward ip before a connect sends its SYN (no SYN waits a second-long
        retransmission for ARP): ask the kernel's table, probing, until it answers or the deadline."""
        while True:
            mac, out = self.stack.probe(ip, time.monotonic())
            self._emit(out)
            if mac is not None:
                return
            if time.monotonic() >= deadline:
                raise HostUnreachableError(f"{socket.inet_ntoa(ip)} did not answer ARP on {self.ifname} (no route "
                                           "to host): check the peer address, that it is up and inside the subnet")
            self.pump()
            self._poller.poll(5)

    # ---- status and teardown -----------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        """Counters; `loss_dropped` (with loss) counts the segments the sample rules dropped, live ones too."""
        live = 0
        if self.loss and self._steered is not None:
            counts = self._steered.steering.counters()
            live = sum(counts.get(ids[0], (0, 0))[0] for ids in self._rules.values())
        return {**self.counters, "loss_dropped": self.counters["loss_dropped"] + live, "connections": len(self._conns), "drops": self.stack.drops(),
                "port": self._steered.port.stats if self._steered else {},
                "rules": self.rule_counters()}

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"the TCP host {self.ip} on {self.ifname} is closed")

    def _teardown(self) -> None:
        for port in list(self._rules):
            self.release_port(port)
        for holder in self._placeholders.values():
            holder.close()
        self._placeholders.clear()
        self._cores = []  # the lanes' C structs (held by these capsules) go with the lanes
        close_steered(self._lanes, self._steered)
        self._lanes, self._steered = [], None
        self._iface.close()

    def close(self, linger: float = 5.0) -> None:
        """Let closed connections deliver what they still have (their data and FIN acknowledged: at most
        `linger` seconds, the kernel's job after a process exits, which nobody does for us), then reset
        what is left (RST) and let go of the ports, the steering rules and the AF_XDP sockets."""
        if self._closed:
            return
        if linger > 0 and self._conns:
            self.run_until(self._quiet, time.monotonic() + linger)
        for sock in list(self._conns.values()):
            if sock.conn.state is not tcp.State.TIME_WAIT:  # done: only re-acknowledging a lost FIN
                sock.abort()
        if self._dirty:
            self._flush(time.monotonic())
        if self._tx_backlog:
            self._drain_backlog()
        self._closed = True
        if self._epoll is not None:
            self._epoll.close()
        self._teardown()

    def _quiet(self) -> bool:
        """No connection the application closed still has data or a FIN in flight."""
        return all(not s.closing for s in self._conns.values())

    def __enter__(self) -> TcpHost:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
