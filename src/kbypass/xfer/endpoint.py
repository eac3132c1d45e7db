"""TransportEndpoint: the sans-IO reliable transport (kbypass.proto.transport) driven over a Port.

    ep = TransportEndpoint.open(iface="kb-a", netns="kb-a", encap="udp", local_ip="10.77.0.1",
                                peer=("10.77.0.2", 7000), peer_mac="02:...")
    ep.connect(); ep.sendall(data); ep.close()                      # client
    ep = TransportEndpoint.open(..., local_port=7000); ep.accept()  # server
    while chunk := ep.recv(): ...; ep.close()

Theory of operation. One loop, `pump(timeout)`, moves everything: it takes a batch of frames from the port (up
to `rx_batch`), checks their headers where they lie (encap.peer_datagrams), feeds the datagrams, still views
of packet memory, to the Connection (or the Listener, for a server) in one `receive_datagrams` call (the
decoder copies each payload out once) and then gives the frames back, runs the due timers, and puts whatever
the connection wants to send into one batch of frames for one `transmit` (the batch path: one ring operation
and one kick for many datagrams; the connection also acknowledges a whole batch of arrivals with one ACK).
When nothing moved it sleeps in `port.wait` until a frame may be there or the next timer (retransmission,
keepalive, a delayed simulated fault) is due.

The codec (kbypass.backend: the C one over kbypass._fastxfer, or the reference Python, which takes no runs
and frames each datagram in Python; chosen once by the caller, `codec=`, and given to the connection): before
the frames of a batch go the way above, rx_run takes the run of them that are each the next data segment
in line (Connection.rx_run_params / receive_run: in order, as stream data or as messages, or extending
the out-of-order run above a hole in stream mode), checks and copies them in one call; the frame that ends a run goes through the Python path alone,
then C tries again, and once C takes nothing the rest of the batch goes to Python together. On the way
out the connection encodes its runs of new segments in one call and write_frames builds every frame in
packet memory in another. Not with userspace faults on receive (they act per datagram).
Time is `time.monotonic()`, passed into the protocol; nothing in the protocol reads a clock.

One peer per endpoint. A client knows its peer; a server takes the source of the first SYN its listener
makes a connection of (its MAC, and for UDP its address and port; a refused SYN teaches nothing) and counts
frames from anyone else as `other_peer` drops.

Fault injection, two places:
  * userspace: `faults_rx` / `faults_tx` (FaultyLink keyword arguments, e.g. from faults.parse_spec) put
    a seeded FaultyLink on the datagrams this endpoint receives / sends (loss, bursts, reordering,
    duplication, corruption, delay, blackholes; times in seconds since the endpoint opened). Same seed,
    same fault decisions per datagram.
  * the steering program: `xdp_loss=P` (afxdp backend only) installs "MATCH sample prob P" in front of
    "MATCH redirect", so the kernel drops that share of our frames before they reach the AF_XDP ring.
    The kernel's random numbers are not seeded; only the rate is reproducible.

Errors: misuse (send after close, oversized message, a datagram size above the MTU) raises a
KbypassError subclass naming the fix; anything malformed from the wire is counted in `stats["drops"]`
by reason (encapsulation drops here, CRC/length/id drops in the connection) and never raised.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter, deque

from kbypass.errors import KbypassError, UsageError
from kbypass.proto.faults import FaultyLink
from kbypass import backend
from kbypass.net import Interface, bind_udp, link_info
from kbypass.proto.transport import (
    Closed, ConnConfig, Connected, Connection, ConnectionLost, DataReceived, Listener, MessageReceived,
    PeerClosed, Role,
)

from .datapath import DataPath, EncodeInFrames
from .encap import ETHERTYPE, EthEncap, UdpEncap, mac_bytes, mac_str
from .sizing import chain_frames, check_fits, default_config, frame_size_for

ENCAPS = ("udp", "eth")


class TransferError(KbypassError):
    """The connection failed (peer silent, reset, handshake unanswered); the message says why."""


class TransferTimeout(TransferError, TimeoutError):
    """A blocking call (connect, accept, send, recv, with a timeout) ran out of time."""


_HINTS = {
    "connecting": ": is 'kbypass xfer recv' running at the peer, with the same --encap, and are its "
                  "address, port and MAC right?",
    "accepting": ": no sender came (start 'kbypass xfer send' against this address and port)",
}


class TransportEndpoint(DataPath):
    """See the module doc. Owns `port` (closed by close()) unless own_port=False. The receive and send
    paths are datapath.py's.

    codec: the transport codec (kbypass.backend.codec(): C or the reference Python), chosen once by the
    caller and given to the connection too; None: the one of the lane in force (backend.select)."""

    def __init__(self, port, encap, *, config: ConnConfig | None = None, seed: int | None = None,
                 faults_rx: dict | None = None, faults_tx: dict | None = None, rx_batch: int = 64,
                 clock=time.monotonic, own_port: bool = True, on_close=None,
                 idle_timeout: float | None = None, codec=None, congestion: str | None = None) -> None:
        if codec is None:
            codec = backend.codec()
        # the codec: in-order arrival runs, encoding, framing in C (kbypass._fastxfer), or all in Python
        self.codec = codec
        self.native = codec.name == "c"
        self.port = port
        self.encap = encap
        self.clock = clock
        self._own_port = own_port
        self._on_close = on_close
        if config is None:
            # datagrams as large as the path's MTU allows, the encapsulation's headers counted
            config = default_config(encap.max_datagram, **({"congestion": congestion} if congestion else {}))
        if config.max_datagram_size > encap.max_datagram:
            raise _too_big(config, encap)
        check_fits(encap, config.max_datagram_size, port)
        # datagrams larger than one frame go out as chains of frames (multi-buffer AF_XDP), and a receive
        # batch counts frames: as many as rx_batch such datagrams take
        self._chain_frames, self._chain_room = chain_frames(port, encap.header_len + config.max_datagram_size)
        if self._chain_frames:
            rx_batch *= -(-(encap.header_len + config.max_datagram_size) // self._chain_room)
        self.rx_batch = rx_batch
        if congestion is not None:
            config = dataclasses.replace(config, congestion=congestion)
        if idle_timeout is not None:
            # the dead-peer time; keepalives go out often enough that a live but idle peer answers in time
            config = dataclasses.replace(config, idle_timeout=idle_timeout,
                                         keepalive_interval=min(config.keepalive_interval, idle_timeout / 3))
        self.config = config
        # on_tick(endpoint, now): called from pump() about every tick_interval seconds, also while a blocking
        # call (send, recv, close) waits: progress output and the dead-peer countdown hang on it
        self.on_tick = None
        self.tick_interval = 1.0
        self._next_tick = clock() + self.tick_interval
        self._xdp_sampled = 0  # frames the "sample" rule (xdp_loss) dropped, read last before the port closed
        self._rng = random.Random(seed)
        self.t0 = clock()
        self._rx_link = FaultyLink(self._rng.randrange(1 << 30), **faults_rx) if faults_rx else None
        self._tx_link = FaultyLink(self._rng.randrange(1 << 30), **faults_tx) if faults_tx else None
        # chains of frames from C: new segments are encoded straight into their frames (datapath.Unencoded)
        self._conn_codec = EncodeInFrames(codec) if self._chain_frames and self.native else codec
        self.conn: Connection | None = None
        self._listener: Listener | None = None
        self.drops: Counter = Counter()
        self.counters = Counter()
        # stream data not read yet, as the chunks it arrived in: recv() hands a chunk on as it is when it
        # fits, instead of appending every chunk to one buffer and copying it out again
        self._rxbuf: deque[bytes | memoryview] = deque()  # views: the rest of a chunk recv() cut (_take)
        self._messages: list[bytes] = []
        self._buffered = 0  # bytes in _rxbuf and _messages
        self._closing = False  # close() was called: unread data is discarded
        self.eof = False
        self.closed_cleanly = False
        self.lost: str | None = None
        self.connected_at: float | None = None
        self.closed_at: float | None = None  # when Closed arrived: the peer has every byte and closed too
        self._closed = False
        self._syn_sources: dict = {}  # a server's SYN senders by connection id, until one is the peer
        self._lane = None  # the message lane for small datagrams (datapath._small_lane; False: none)
        # chains of frames from C sent from the lane's stash (datapath._send_lane_chains), over its C struct
        self._lane_chains = getattr(codec, "lane_chains", None) if self._chain_frames else None
        self._lane_core = None
        self.rules: list[str] = []  # the steering rules open() installed
        self.backend = getattr(port, "mode", "?")

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, *, iface: str, netns: str | None = None, encap: str = "udp", backend: str = "afxdp",
             local_ip: str | None = None, local_port: int = 0, local_mac: str | None = None,
             peer: tuple[str, int] | None = None, peer_mac: str | None = None, ethertype: int = ETHERTYPE,
             mtu: int | None = None, xdp_loss: float = 0.0, port_options: dict | None = None,
             **kw) -> "TransportEndpoint":
        """Open a port on iface (in netns) for one transport endpoint. Client: give `peer` (udp: (ip, port);
        eth: ignored) and `peer_mac`; server: give `local_port` (udp) and no peer.

        encap "udp": local_ip must be an address of the interface; the steering rule is
        "udp dst LOCAL_IP dport LOCAL_PORT", and the port is reserved in the kernel with a bound UDP
        socket (local_port 0 picks a free one). encap "eth": the rule is "ether ETHERTYPE".
        """
        from kbypass.port import BACKENDS

        if encap not in ENCAPS:
            raise UsageError(f"encapsulation {encap!r} is unknown: use udp or eth")
        if backend not in BACKENDS:
            raise UsageError(f"backend {backend!r} is unknown: use one of {', '.join(BACKENDS)}")
        if not 0.0 <= xdp_loss <= 1.0:
            raise UsageError(f"loss {xdp_loss}: give a probability 0 <= P <= 1")
        if xdp_loss and backend != "afxdp":
            raise UsageError("XDP sample-drop loss needs the afxdp backend: use userspace faults "
                             "(faults_rx={'loss': P}, --loss-at user) with the other backends")
        held: list = []  # kernel sockets opened on the way (port reservation, SocketPort): closed on failure
        try:
            return cls._open(held, iface=iface, netns=netns, encap=encap, backend=backend, local_ip=local_ip,
                             local_port=local_port, local_mac=local_mac, peer=peer, peer_mac=peer_mac,
                             ethertype=ethertype, mtu=mtu, xdp_loss=xdp_loss, port_options=port_options, **kw)
        except BaseException:
            for sock in held:
                sock.close()
            raise

    @classmethod
    def _open(cls, held: list, *, iface, netns, encap, backend, local_ip, local_port, local_mac, peer, peer_mac,
              ethertype, mtu, xdp_loss, port_options, **kw) -> "TransportEndpoint":
        from kbypass.port import open_port

        info = link_info(iface, netns)
        mac = local_mac or info["mac"]
        if mtu is not None and mtu > info["mtu"]:
            raise UsageError(f"MTU {mtu} is above {iface}'s ({info['mtu']}): datagrams that large would be dropped; "
                             f"give at most {info['mtu']}, or raise the interface's MTU")
        mtu = mtu or info["mtu"]
        placeholder = None
        options = dict(port_options or {})
        # frames large enough for MTU-sized packets (up to a 4 KiB page: what veth's XDP takes); a larger
        # MTU is refused once the port is open (sizing.check_fits), naming the fix
        options.setdefault("frame_size", frame_size_for(mtu, options.get("headroom", 0)))
        if encap == "udp":
            if local_ip is None:
                if not info["ipv4"]:
                    raise UsageError(f"{iface} has no IPv4 address: give local_ip (--ip)")
                local_ip = info["ipv4"][0]
            if backend == "socket":
                # the socket is the port: open it first, so port 0 becomes the port the kernel picked
                from kbypass.port.socket_port import SocketPort

                sock_port = SocketPort(local_ip, local_port, netns=netns, **options)
                held.append(sock_port)
                local_port = sock_port.port
            else:
                placeholder = _reserve_udp(netns, local_ip, local_port)
                held.append(placeholder)
                local_port = placeholder.getsockname()[1]
            enc = UdpEncap(mac, local_ip, local_port, mtu)
            match = f"udp dst {local_ip} dport {local_port}"
        else:
            if backend == "socket":
                raise UsageError("the eth encapsulation needs raw frames: use backend afxdp or packet_mmap")
            enc = EthEncap(mac, ethertype, mtu)
            match = f"ether {ethertype:#06x}"
        if peer is not None or peer_mac is not None:
            if encap == "udp":
                if peer is None:
                    raise UsageError("a UDP client needs the peer address: give peer=(ip, port) (--dst IP:PORT)")
                pm = peer_mac or (None if backend == "socket" else resolve_mac(iface, netns, peer[0]))
                enc.set_peer(peer[0], int(peer[1]), pm or bytes(6))
            else:
                if peer_mac is None:
                    raise UsageError("the eth encapsulation addresses the peer by MAC: give peer_mac (--dst-mac, "
                                     "or --dst with a testbed host's address)")
                enc.set_peer(peer_mac)
        cfg = kw.get("config")
        if cfg is not None and cfg.max_datagram_size > enc.max_datagram:  # before any BPF is loaded
            raise _too_big(cfg, enc)
        if backend == "afxdp":
            rules = ([f"{match} sample prob {xdp_loss!r}"] if xdp_loss else []) + [f"{match} redirect"]
        elif backend == "packet_mmap":
            # its classic BPF filter knows IPv4 rules only: for eth take every frame, parse() filters
            rules = [match] if encap == "udp" else []
        else:
            rules = [match]
        if backend == "socket":
            port = held.pop()  # the SocketPort opened above; from here the endpoint owns it
        else:
            port = open_port(backend, iface, netns=netns, rules=rules, **options)
        try:
            ep = cls(port, enc, on_close=placeholder.close if placeholder is not None else None, **kw)
        except BaseException:
            port.close()
            raise
        ep.rules = rules
        ep.backend = backend
        return ep

    # ------------------------------------------------------------------ the loop
    def _t(self, now: float) -> float:
        return now - self.t0

    def _collect(self) -> None:
        """Take the connection's events. Data is taken only while less than one receive buffer of it is
        waiting for recv(): what we leave in the connection keeps its advertised window closed, so a
        slow reader slows the sender down instead of growing our memory."""
        conn = self.conn
        if conn is None:
            return
        limit = conn.config.recv_buffer
        while True:
            if self._buffered < limit or self._closing:
                chunks = conn.take_chunks()  # stream data as it arrived: recv_chunk hands the pieces on unjoined
                if chunks is not None:
                    n = sum(map(len, chunks))
                    if self._closing:
                        self.counters["discarded_bytes"] += n  # close() before reading it all
                    else:
                        self._rxbuf.extend(c for c in chunks if c)  # (an empty piece would read as the end)
                        self._buffered += n
                    continue
            ev = conn.peek_event()
            if ev is None:
                return
            if isinstance(ev, (DataReceived, MessageReceived)) and self._buffered >= limit and not self._closing:
                return
            ev = conn.next_event()
            if self._closing and isinstance(ev, (DataReceived, MessageReceived)):
                self.counters["discarded_bytes"] += len(ev.data)  # close() before reading it all
                continue
            if isinstance(ev, DataReceived):
                if ev.data:
                    self._rxbuf.append(ev.data)
                    self._buffered += len(ev.data)
            elif isinstance(ev, MessageReceived):
                self._messages.append(ev.data)
                self._buffered += len(ev.data)
            elif isinstance(ev, Connected):
                self.connected_at = self.clock()
            elif isinstance(ev, PeerClosed):
                self.eof = True
            elif isinstance(ev, Closed):
                self.closed_cleanly = True
                self.closed_at = self.clock()
            elif isinstance(ev, ConnectionLost):
                self.lost = ev.reason
                self.eof = True

    def _machine(self):
        return self._listener if self._listener is not None else self.conn

    def pump(self, timeout: float = 0.0) -> bool:
        """One round of receive, timers, send; waits up to `timeout` when nothing moved. True if frames
        moved. Call it (or any blocking method) often enough: the endpoint has no thread of its own."""
        if self._closed:
            raise UsageError("the endpoint is closed: open a new one")
        now = self.clock()
        if self.on_tick is not None and now >= self._next_tick:
            self._next_tick = now + self.tick_interval
            self.on_tick(self, now)
        moved = self._take_frames(now)
        if self._rx_link is not None and (late := self._rx_link.deliver(self._t(now))):
            self._deliver_all(late, now)
        m = self._machine()
        if m is not None:
            t = m.next_timer()
            if t is not None and now >= t:
                m.handle_timer(now)
            out = m.datagrams_to_send(now)
            if out or (self._tx_link is not None and self._tx_link.in_flight):
                self._send_out(out, now)
                moved += len(out)
        self._collect()
        if moved or timeout <= 0:
            return bool(moved)
        # Nothing moved: sleep until a frame may be there, a timer is due or a delayed fault lands.
        # (Spinning on the ring here does not shorten the round trip on veth: in wakeup mode the frames
        # wait for the kernel's softirq, which only busy polling (poll="busy") drives from here.)
        wake = [now + timeout]
        if m is not None and (t := m.next_timer()) is not None:
            wake.append(t)
        for link in (self._rx_link, self._tx_link):
            if link is not None and (t := link.next_time()) is not None:
                wake.append(self.t0 + t)
        delay = min(wake) - now
        if delay > 0:
            self.port.wait(delay)
        return False

    def _run_until(self, cond, timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else self.clock() + timeout
        while not cond():
            if self.lost is not None:  # (a handshake can end this way too: the peer never said a word)
                raise TransferError(f"connection lost while {what}: {self.lost}{_HINTS.get(what, '')}")
            now = self.clock()
            if deadline is not None and now >= deadline:
                raise TransferTimeout(f"timed out after {timeout} s while {what}{_HINTS.get(what, '')}")
            self.pump(min(0.05, deadline - now) if deadline is not None else 0.05)

    # ------------------------------------------------------------------ API
    def connect(self, timeout: float | None = 10.0) -> None:
        """Client: handshake with the peer given at open(); returns once Connected."""
        if self.conn is not None or self._listener is not None:
            raise UsageError("connect() twice, or on a server endpoint: open a new endpoint")
        if self.encap.peer is None:
            raise UsageError("connect() needs a peer: open the endpoint with peer= / peer_mac=")
        now = self.clock()
        self.conn = Connection(Role.CLIENT, self.config, now, rng=self._rng, codec=self._conn_codec)
        self.conn.connect(now)
        self._run_until(lambda: self.connected_at is not None, timeout, "connecting")

    def accept(self, timeout: float | None = None) -> None:
        """Server: wait for one peer's handshake; returns once Connected."""
        if self.conn is not None or self._listener is not None:
            raise UsageError("accept() twice, or on a client endpoint: open a new endpoint")
        self._listener = Listener(self.config, rng=self._rng, backlog=1, max_connections=1, codec=self._conn_codec)
        self._run_until(lambda: self.connected_at is not None, timeout, "accepting")

    def _need_conn(self, what: str) -> Connection:
        if self._closed:
            raise UsageError(f"{what} on a closed endpoint: open a new one")
        if self.conn is None or self.connected_at is None:
            raise UsageError(f"{what} before the connection is up: call connect() or accept() first")
        return self.conn

    def send(self, data: bytes, timeout: float | None = None, lent: bool = False) -> int:
        """Queue all of `data` (byte-stream mode), pumping while the send buffer is full; returns len(data).
        In message mode `data` is one message. Raises LocalProtocolError after close, TransferError if
        the connection dies. lent (byte-stream mode): `data`, any buffer, is handed over uncopied, taken
        whole like a bytes object; the caller changes none of it while anything else holds a reference to
        it (proto.transport.sendbuf.SendBuffer.write). With jumbo datagrams and data in flight it may return
        with `data` queued, not yet sent (_corked): the next call into the endpoint sends it."""
        conn = self._need_conn("send()")
        # no copy here: the send buffer copies a piece it takes, once (a bytes object taken whole: not at all)
        mv = memoryview(data)
        mv = mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())
        if conn.config.message_mode:
            def offer() -> bool:
                self._raise_if_lost(conn, "sending a message")
                return conn.send_message(mv, self.clock())

            self._run_until(offer, timeout, "sending a message")
            return len(mv)
        done = 0
        deadline = None if timeout is None else self.clock() + timeout
        # an immutable bytes object (not too large for the buffer) goes in whole, once there is room for all
        # of it: the send buffer keeps it as it is, where a piece of it would be copied. Only without a
        # timeout: with one, waiting for room for all of it could time out with "0 of N queued" where part
        # would have fit; what fits is queued, as always.
        whole = timeout is None and (type(data) is bytes or lent) and _fits_whole(conn, len(mv))
        while done < len(mv):
            self._raise_if_lost(conn, "sending")
            space = conn.send_space
            if whole and space < len(mv):
                space = 0
            if not space:
                n = 0
                conn.send(b"", self.clock())  # raises LocalProtocolError when closing or closed
            else:
                n = conn.send(data if whole else mv[done:done + space], self.clock(), lent)
                whole = False  # (taken whole; should the buffer ever take less, the rest goes in pieces)
            done += n
            if done < len(mv):
                if deadline is not None and self.clock() >= deadline:
                    raise TransferTimeout(f"timed out after {timeout} s with {done} of {len(mv)} bytes queued")
                self.pump(0.01 if n == 0 else 0.0)
        if not self._corked(conn):
            self.pump(0.0)
        return done

    def _corked(self, conn: Connection) -> bool:
        """Whether send() may return without a pump (autocorking, as Linux's TCP holds small writes while
        earlier data is still out): datagrams go out as chains of frames (jumbo: each pump's send is a C
        call and a kernel kick over ~2 MiB), data is in flight, so the sender is busy and the ACK clock runs,
        and the send buffer still has room for the caller's next send(). A bulk sender then queues until its
        buffer is full and pumps once per ACK's worth of room, not once per send() (a 1 MiB block a pump:
        ~1,000 pumps per GB, each ~150 us of Python at MTU 65535). An idle connection sends at once; corked
        data goes at the next call into the endpoint (send, recv, pump, close). One frame a datagram (MTU
        1500) it saved no CPU per GB (2.49 against 2.57 s/GB, 2.24 against 2.27, 2026-12-07), so not there."""
        return bool(self._chain_frames) and conn.sbuf.inflight_bytes > 0 and conn.send_space > 0

    sendall = send

    def takes_whole(self, nbytes: int) -> bool:
        """Does send() hand a bytes object of nbytes to the send buffer whole, uncopied (it waits for room for
        all of it)? When the buffer holds four such at least: with less, waiting for that much room would
        idle the flight. (At MTU 1500 the 2 MiB buffer takes 256 KiB pieces, copied, faster than 1 MiB whole
        blocks, measured: 2186 against 1599 Mbit/s; at 65535 its 8 MiB takes 1 MiB blocks whole.)"""
        conn = self.conn  # (in message mode send() hands a message over its own way: never "whole")
        return conn is not None and not conn.config.message_mode and _fits_whole(conn, nbytes)

    def _raise_if_lost(self, conn: Connection, what: str) -> None:
        """TransferError naming why the connection died, if it did. Checked before the connection is asked
        to take data: a dead one is CLOSED and would refuse with "cannot send in state CLOSED", a
        LocalProtocolError that hides the reason. (The connection's own record, as _collect may not
        have reached its ConnectionLost yet: it stops behind unread data.)"""
        reason = self.lost or conn.lost_reason
        if reason is not None:
            raise TransferError(f"connection lost while {what}: {reason}")

    def recv(self, max_bytes: int = 1 << 20, timeout: float | None = None) -> bytes:
        """Up to max_bytes of the stream (message mode: the next message); b"" at the end of the stream.
        TimeoutError when nothing arrived within timeout (None: wait for ever)."""
        if max_bytes < 1:
            raise UsageError(f"recv(max_bytes={max_bytes}): ask for at least 1 byte (an empty result means the "
                             "end of the stream)")
        conn = self._need_conn("recv()")
        if conn.config.message_mode:
            self._run_until(lambda: self._messages or self.eof, timeout, "receiving")
            if not self._messages:
                return self._end_of_stream()
            msg = self._messages.pop(0)
            self._buffered -= len(msg)
            return msg
        self._run_until(lambda: self._rxbuf or self.eof, timeout, "receiving")
        if not self._rxbuf:
            return self._end_of_stream()
        out = _take(self._rxbuf, max_bytes)
        self._buffered -= len(out)
        return out

    def recv_chunk(self, timeout: float | None = None) -> bytes | memoryview:
        """The next piece of the stream as it arrived (a run of datagrams: bytes, or a read-only view of the
        rest of one that recv() cut), never joined with the next: no copy (recv(max_bytes) joins pieces
        into one bytes object, a copy of every byte when runs are shorter than max_bytes). b"" at the end of
        the stream; message mode: recv()."""
        conn = self._need_conn("recv_chunk()")
        if conn.config.message_mode:
            return self.recv(timeout=timeout)
        self._run_until(lambda: self._rxbuf or self.eof, timeout, "receiving")
        if not self._rxbuf:
            return self._end_of_stream()
        out = self._rxbuf.popleft()
        self._buffered -= len(out)
        return out

    def _end_of_stream(self) -> bytes:
        if self.lost is not None:
            raise TransferError(f"connection lost: {self.lost} (everything recv() returned did arrive; the "
                                "rest may not have)")
        return b""

    def close(self, timeout: float = 10.0, linger: float = 0.5) -> None:
        """Graceful close: our FIN after all queued data, then wait (up to timeout) until the peer
        acknowledged everything; then release the port. Idempotent.

        Whoever closes second ends in TIME_WAIT; it lingers `linger` seconds re-acknowledging a FIN the
        peer retransmits (its copy of our last ACK was lost), so the peer's close finishes at once
        instead of after its retry limit."""
        if self._closed:
            return
        from kbypass.proto.transport import State

        self._closing = True
        try:
            conn = self.conn
            if conn is not None and self.connected_at is not None and not conn.is_closed and self.lost is None:
                if conn.state in (State.ESTABLISHED, State.CLOSE_WAIT):
                    conn.close(self.clock())
                try:
                    self._run_until(lambda: self.closed_cleanly or self.lost is not None, timeout, "closing")
                except TimeoutError:
                    self.counters["close_timeouts"] += 1
                if conn.state is State.TIME_WAIT and linger > 0:
                    end = self.clock() + linger
                    while self.clock() < end:
                        self.pump(min(0.05, max(0.0, end - self.clock())))
        finally:
            self._release()

    def abort(self) -> None:
        """Drop the connection now (RST to the peer, best effort) and release the port."""
        if self._closed:
            return
        try:
            if self.conn is not None and not self.conn.is_closed:
                self.conn.abort(self.clock())
                out = self.conn.datagrams_to_send(self.clock())
                if out:
                    self._send_out(out, self.clock())
        finally:
            self._release()

    def _release(self) -> None:
        self._xdp_sampled = self._sample_drops()  # the counters go with the steering program
        self._closed = True
        try:
            self._close_lane()
            if self._own_port:
                self.port.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> "TransportEndpoint":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def silent_for(self) -> float:
        """Seconds since the last valid datagram from the peer (0 before a connection exists)."""
        if self.conn is None or self.lost is not None:
            return 0.0
        return max(0.0, self.clock() - self.conn.last_heard)

    def _sample_drops(self) -> int:
        """Frames the steering program's sample rule (xdp_loss) dropped before they reached us."""
        counters = getattr(self.port, "rule_counters", None)  # a steered port (open_port) has them
        if self._closed or counters is None:
            return self._xdp_sampled
        return sum(r["packets"] for r in counters() if " sample " in f" {r['rule']} ")

    @property
    def stats(self) -> dict:
        """Connection counters plus this driver's: drops by reason (encapsulation and wire, and the injected
        loss: loss_xdp for the steering program's sample rule, loss_user for the userspace fault link),
        frames."""
        s = self.conn.stats if self.conn is not None else None
        drops = Counter(self.drops)
        if xdp := self._sample_drops():
            drops["loss_xdp"] += xdp
        if self._rx_link is not None:
            ls = self._rx_link.stats
            if user := ls.lost + ls.burst_lost + ls.blackholed + ls.queue_drops:
                drops["loss_user"] += user
        if s is not None:
            drops.update(s.drops)
        if self._listener is not None:
            drops.update(self._listener.drops)
        out = {
            "retransmits": s.retransmits if s else 0,
            "fast_retransmits": s.fast_retransmits if s else 0,
            "timeouts": s.timeouts if s else 0,
            "spurious_timeouts": s.spurious_timeouts if s else 0,
            "tail_probes": s.tail_probes if s else 0,
            "rtt_ms": s.rtt_ms if s else None,
            "datagrams_sent": s.datagrams_sent if s else 0,
            "datagrams_received": s.datagrams_received if s else 0,
            "bytes_acked": s.bytes_acked if s else 0,
            "bytes_delivered": s.bytes_delivered if s else 0,
            "duplicates": s.duplicates if s else 0,
            "drops": dict(drops),
            **dict(self.counters),
        }
        cc = self.conn.cc if self.conn is not None else None
        if cc is not None and hasattr(cc, "state"):
            out["cc"] = cc.state()
        for name, link in (("faults_rx", self._rx_link), ("faults_tx", self._tx_link)):
            if link is not None:
                out[name] = {k: v for k, v in vars(link.stats).items()}
        return out


# ------------------------------------------------------------------ helpers
def _fits_whole(conn: Connection, nbytes: int) -> bool:
    """A byte-stream write of nbytes the send buffer can take whole: a quarter of it at most (takes_whole)."""
    return 0 < nbytes <= conn.config.send_buffer // 4


def _take(chunks: deque, max_bytes: int) -> bytes:
    """Up to max_bytes (at least 1) from the front of `chunks` (non-empty bytes objects, or views of bytes
    left by an earlier call; at least one): a first chunk that is all of it comes back as it is, with no
    copy. A chunk larger than max_bytes stays as a view of its rest: each byte is copied at most once
    (cutting it as bytes copied the rest again at every call, quadratic in the chunk: a 4 MiB run read a
    MiB at a time was copied 2.5 times over)."""
    first = chunks[0]
    if len(first) <= max_bytes and (len(chunks) == 1 or len(first) == max_bytes):
        first = chunks.popleft()
        return first if type(first) is bytes else bytes(first)
    out = []
    room = max_bytes
    while chunks and room > 0:
        c = chunks[0]
        if len(c) <= room:
            out.append(chunks.popleft())
            room -= len(c)
        else:
            view = c if type(c) is memoryview else memoryview(c)
            out.append(view[:room])
            chunks[0] = view[room:]
            room = 0
    return b"".join(out)


def _too_big(config: ConnConfig, encap) -> UsageError:
    return UsageError(f"max_datagram_size {config.max_datagram_size} does not fit the {encap.name} encapsulation "
                      f"on an MTU of {encap.mtu}: use at most {encap.max_datagram}")


def resolve_mac(iface: str, netns: str | None, ip: str, timeout: float = 2.0) -> str:
    """The peer's MAC from the kernel's neighbour table of netns, asking the kernel to resolve it (ARP)
    when it is not known yet; UsageError naming --dst-mac when it cannot be found."""
    nb = Interface(iface, netns)
    try:
        deadline = time.monotonic() + timeout
        while True:
            mac = nb.neighbour(ip)
            if mac:
                return mac
            if time.monotonic() >= deadline:
                raise UsageError(f"cannot find the MAC of {ip} on {iface} (no ARP answer within {timeout} s): "
                                 "check the address, or give the MAC (--dst-mac)")
            time.sleep(0.02)
    finally:
        nb.close()


def _reserve_udp(netns: str | None, ip: str, port: int):
    """Bind a kernel UDP socket on ip:port so no kernel socket takes the port (0 picks a free one)."""
    return bind_udp(netns, ip, port)


__all__ = ["ENCAPS", "TransferError", "TransferTimeout", "TransportEndpoint", "default_config", "resolve_mac", "mac_str", "mac_bytes"]
