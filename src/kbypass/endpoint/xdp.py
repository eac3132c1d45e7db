"""XdpEndpoint (UdpEndpoint's "afxdp" backend): a UDP socket without the kernel. Bind ip:port; the steering rule is installed for you.

    with UdpEndpoint("kb-b", "10.77.0.2", 4321, netns="kb-b", poll="busy") as ep:
        data, (ip, port) = ep.recvfrom(timeout=1.0)
        ep.sendto(data, (ip, port))

Everything the endpoint did not ask for still passes to the kernel (ssh, ping, other ports).

Two address modes
- The interface's own address (default): the steering program takes only `udp dst IP dport PORT`. The
  kernel keeps answering ARP and ping for the address, and peers are resolved through the kernel's
  neighbour table (pyroute2 in the namespace); a missing entry is resolved by asking the kernel to probe
  (RTM_NEWNEIGH with NTF_USE, what `ip neigh ... use` does), so no datagram of ours leaves through the
  kernel.
- A dedicated address the kernel does not have (`dedicated=True`): the program takes every IP packet to
  the address (`any dst IP`), and the sans-IO `Stack` answers ping, runs ARP for its own sends and counts
  the rest. ARP is not IP, so the steering program always passes it to the kernel and it never reaches
  the AF_XDP socket; the endpoint therefore reads ARP from an AF_PACKET socket bound to the interface
  for ETH_P_ARP (the kernel ignores requests for an address it does not own, so nobody else answers). We
  chose this over a static neighbour entry in the peer (it needs root on the peer) and over changing the
  XDP program (ARP is rare, the slow path is fine). Answers and our own requests leave through the AF_XDP
  TX ring, and a gratuitous ARP announces the address at start.

Fast path. One message at a time goes through each port's MessageLane (`AfXdpPort.message_lane`, in C
when built): the frame is copied out and goes straight back to the fill ring, "plain valid UDP to us" is
`proto.udp.PlainUdp` (anything else goes to `Stack.receive`, which answers it or counts why it was
dropped), and sending writes a flow's cached header (`proto.udp.UdpFlow`) with the lengths and checksums
patched in. The batch helpers of the port (numpy) cost tens of microseconds per call whatever the batch
size, which is right for Mpps and wrong for one message; `recv_batch` and `send_batch` use them when there
is a batch.

Ownership: the endpoint owns its port; frames never leave it. Datagrams come out as `bytes` copies.
`backend="socket"` gives the same API over a kernel UDP socket (the baseline the latency tool compares).
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import time
from collections import deque

import numpy as np

from kbypass import netns as _netns
from kbypass.backend import native_module
from kbypass.errors import KbypassError, UsageError
from kbypass.net import Interface, bind_udp, check_address
from kbypass.port.lane import native_default
from kbypass.proto import checksum as ck
from kbypass.proto import udp as udpp
from kbypass.proto.stack import ArpTimeout, Stack, UdpDatagram
from kbypass.xsk import multibuf

from .base import UdpEndpoint, check_peer, close_steered, payload_limits, wake_lanes

ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
VECTOR_MIN = 32  # below this many frames the scalar path beats the numpy batch helpers

# endpoints of this process, so two in one process get a clear error before the kernel's
_IN_USE: dict[tuple[str | None, str], str] = {}


class XdpEndpoint(UdpEndpoint):
    """UdpEndpoint over AF_XDP: see the module doc and UdpEndpoint's."""

    def __init__(self, ifname: str, ip: str, port: int, *, netns: str | None = None, dedicated: bool = False,
                 prefixlen: int | None = None, poll: str = "wakeup", backend: str = "afxdp",
                 queue: int | None = None, xdp_mode: str = "native", mode: str = "auto", frames: int = 4096,
                 frame_size: int = 2048, ring_size: int = 2048, gratuitous_arp: bool = True,
                 native: bool | None = None, gateway: str | None = None, control_plane: bool = True,
                 placeholder: socket.socket | None = None) -> None:
        self._closed = True
        self._borrowed = placeholder is not None
        if native:
            native_module("lane")  # NativeMissing, naming the fix, before anything is opened
        self._check_common(ip, port, poll)
        from kbypass.port.steered import SteeredPort

        self.ifname, self.netns, self.ip, self.port, self.dedicated, self.poll_mode = ifname, netns, ip, port, \
            dedicated, poll
        self.backend = "afxdp"
        key = (netns, ifname)
        if key in _IN_USE and not control_plane:
            raise UsageError(f"{ifname} already carries this process's endpoint {_IN_USE[key]}: in-process "
                             "steering is one program per interface; close that endpoint first, use another "
                             "interface, or steer through the control plane (control_plane=True)")
        self._iface = iface = Interface(ifname, netns)
        self._steered = None
        self._arp_sock = None
        self._placeholder = None
        self._lanes: list = []  # one MessageLane per queue's port
        try:
            prefixlen = check_address(iface, ip, dedicated, prefixlen)
            if placeholder is not None:
                # the caller's kernel socket already holds the port (kbypass.socket: it is the socket the
                # application sees); the endpoint uses it and leaves closing it to the caller
                self._placeholder = placeholder
            elif not dedicated:
                # The kernel owns this address, so reserve the port in it too: a kernel socket already
                # there is refused clearly, none can bind it later, and port 0 picks a free port.
                self._placeholder = bind_udp(netns, ip, port)
                self.port = port = self._placeholder.getsockname()[1]
            elif port == 0:
                # nothing in the kernel to ask for a free port of an address it does not have
                self.port = port = 49152 + time.monotonic_ns() % 16384
            self.mtu = iface.mtu
            self.frame_size = frame_size
            # a message larger than one frame travels as a chain (multi-buffer) when the MTU needs it
            self.multi_buffer = multibuf.needs_multi_buffer(self.mtu, frame_size)
            self.max_payload, self.max_rx_payload = payload_limits(self.mtu, frame_size,
                                                                   multi_buffer=self.multi_buffer)
            now = time.monotonic()
            # the stack builds whole frames too (datagrams sent while resolving): same limit
            stack_mtu = self.max_payload + 28
            if dedicated:
                self.stack = Stack(iface.mac, ip, prefixlen, now, owns_address=True, mtu=stack_mtu,
                                   udp_ports=[port], arp_interval=0.2, arp_attempts=5, gateway=gateway)
                rules = [f"any dst {ip}"]
            else:
                self.stack = Stack(iface.mac, ip, prefixlen, now, owns_address=False, mtu=stack_mtu,
                                   udp_ports=[port], resolve=iface.neighbour, arp_interval=0.02,
                                   arp_attempts=100, gateway=gateway)
                rules = [f"udp dst {ip} dport {port}"]
            self.rules = rules
            try:
                self._steered = SteeredPort(ifname, queue, rules, netns=netns, xdp_mode=xdp_mode, mode=mode,
                                            control_plane=control_plane,
                                            poll=poll, frames=frames, frame_size=frame_size, rx_size=ring_size,
                                            tx_size=ring_size, fill_size=ring_size, comp_size=ring_size,
                                            multi_buffer=self.multi_buffer)
            except KbypassError as e:
                # someone else's XDP program on the interface (their AF_XDP sockets on its queues are
                # named by SteeredPort's own "queue N is taken by ..." error)
                if any(w in str(e) for w in ("already has XDP program", "already steered by kbypass")):
                    raise KbypassError(
                        f"cannot steer {ip}:{port}: {ifname} is already steered by someone else (another "
                        f"kbypass process or XDP tool holds it; 'bpftool net show' names it): stop that "
                        f"program, or bind on another interface ({e})") from None
                raise
            self._ipb = socket.inet_aton(ip)
            self._macb = bytes.fromhex(iface.mac.replace(":", ""))
            net = ipaddress.IPv4Network(f"{ip}/{prefixlen}", strict=False)
            self._bcast = net.broadcast_address.packed if prefixlen < 31 else None
            self.native = native_default() if native is None else native  # both lanes take chains
            self._udp = udpp.PlainUdp(self._macb, self._ipb, port, self._bcast)
            self._lanes = [p.message_lane(self._udp, native=self.native) for p in self._steered.ports]
            if dedicated:
                self._arp_sock = self._open_arp_socket()
        except BaseException:
            self._teardown()
            raise
        self._key = None if control_plane else key  # the control plane arbitrates between endpoints itself
        if self._key is not None:
            _IN_USE[key] = f"{ip}:{port}"
        self._closed = False
        self._pending: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._unresolved: dict[str, int] = {}  # peers whose resolution timed out (ArpTimeout), not yet reported
        self._templates: dict[tuple[str, int], tuple[float, udpp.UdpFlow]] = {}  # see _flow
        self._names: dict[bytes, str] = {}
        self._ident = 0
        self.tos, self.ttl = 0, None  # IP header fields of what we send (set_ip_fields)
        self._spins = 0  # turns of spin()
        self._next_lane = 0
        self._tx_lane = self._lanes[0]
        self._poller = select.poll()
        for lane in self._lanes:
            self._poller.register(lane.fd, select.POLLIN)
        if self._arp_sock is not None:
            self._poller.register(self._arp_sock.fileno(), select.POLLIN)
        self.counters = {"rx_datagrams": 0, "tx_datagrams": 0, "rx_slow_path": 0, "rx_vector": 0, "tx_failed": 0}
        if dedicated and gratuitous_arp:
            self._emit([self.stack.gratuitous_arp()])

    # set-up ---------------------------------------------------------------------------------------
    def _open_arp_socket(self) -> socket.socket:
        with _netns.entered(self.netns):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        try:
            s.bind((self.ifname, ETH_P_ARP))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    # slow path ------------------------------------------------------------------------------------
    def _emit(self, frames: list[bytes]) -> None:
        for f in frames:
            if (self.tos or self.ttl is not None) and f[12:14] == b"\x08\x00" and f[23] == 17 and \
                    int.from_bytes(f[34:36], "big") == self.port:
                f = self._ip_fields(f)  # our datagrams the stack built (while resolving) carry them too
            if not self._tx_lane.send_one(f):
                self.counters["tx_failed"] += 1

    def _slow(self, frame: bytes, now: float) -> None:
        self.counters["rx_slow_path"] += 1
        self._emit(self.stack.receive(frame, now))
        self._drain_events()

    def _drain_events(self) -> None:
        ev = self.stack.next_event()
        while ev is not None:
            if isinstance(ev, UdpDatagram):
                self._pending.append((ev.payload, (ev.src_ip, ev.src_port)))
                self.counters["rx_datagrams"] += 1
            elif isinstance(ev, ArpTimeout):
                self._unresolved[ev.ip] = ev.dropped
            ev = self.stack.next_event()

    def _service(self, now: float) -> None:
        """Timers (ARP retries) and ARP frames from the packet socket."""
        t = self.stack.next_timer()
        if t is not None and now >= t:
            self._emit(self.stack.handle_timer(now))
            self._drain_events()
        s = self._arp_sock
        if s is not None:
            while True:
                try:
                    frame, where = s.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                if where[2] != PACKET_OUTGOING:
                    self._slow(frame, now)

    # receive --------------------------------------------------------------------------------------
    def _poll_once(self) -> bool:
        """Take what the rings hold now into _pending (fast path, else the stack); True if anything came."""
        got = False
        lanes = self._lanes
        n = len(lanes)
        for k in range(n):
            at = (self._next_lane + k) % n
            lane = lanes[at]
            r = lane.receive_udp()
            while r is not None:
                got = True
                if type(r) is tuple:
                    payload, src, sport = r
                    name = self._names.get(src)
                    if name is None:
                        name = self._names[src] = socket.inet_ntoa(src)
                    self._pending.append((payload, (name, sport)))
                    c = self.stack.counters
                    c["rx_frames"] += 1
                    c["udp_delivered"] += 1
                    self.counters["rx_datagrams"] += 1
                    self._tx_lane = lane  # answer on the queue the peer's traffic arrives on
                    self._next_lane = (at + 1) % n  # round robin: the next call looks at the next queue first
                    return True
                self._slow(r, time.monotonic())
                r = lane.receive_udp()
        self._next_lane = (self._next_lane + 1) % n
        return got

    def _wait(self, deadline: float | None) -> None:
        """Nothing pending: let the kernel work (busy: one round; wakeup: sleep in poll until something
        may be ready, a timer is due, or the deadline)."""
        now = time.monotonic()
        self._service(now)
        wake_lanes(self._lanes, self.poll_mode == "busy")
        if self.poll_mode == "busy":
            return
        t = self.stack.next_timer()
        until = min(x for x in (deadline, t, now + 1.0) if x is not None)
        self._poller.poll(max(0, int((until - now) * 1000 + 0.999)))

    def recvfrom(self, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        """The next datagram to ip:port as (payload, (src_ip, src_port)); TimeoutError after `timeout`
        seconds (None: wait for ever, 0: do not wait)."""
        pending = self._pending
        if pending:
            return pending.popleft()
        if self._closed:
            raise UsageError("the endpoint is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        spins = 0
        while True:
            if self._poll_once() and pending:
                return pending.popleft()
            spins += 1
            if self.poll_mode == "busy" and spins & 0x3FF == 0 or self.poll_mode == "wakeup":
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"no datagram for {self.ip}:{self.port} within {timeout} s")
            if self.poll_mode == "busy":
                for lane in self._lanes:
                    lane.wake()
                if spins & 0x3FF == 0:
                    self._service(time.monotonic())
            else:
                self._wait(deadline)

    def recv_batch(self, max_datagrams: int = 64, timeout: float = 0.0) -> list[tuple[bytes, tuple[str, int]]]:
        """Up to max_datagrams datagrams, waiting at most `timeout` for the first. Large bursts go through
        the port's numpy batch path (`Stack.fast_path_mask` over the whole batch)."""
        out: list = []
        while self._pending and len(out) < max_datagrams:
            out.append(self._pending.popleft())
        if len(out) < max_datagrams:
            for lane in self._lanes:
                if lane.waiting() >= VECTOR_MIN:
                    self._vector_receive(lane.port, max_datagrams - len(out))
        if not out and not self._pending and timeout:
            try:
                out.append(self.recvfrom(timeout))
            except TimeoutError:
                return out
        while len(out) < max_datagrams:
            if not self._pending and not self._poll_once():
                break
            while self._pending and len(out) < max_datagrams:
                out.append(self._pending.popleft())
        return out

    def _vector_receive(self, port, want: int) -> None:
        batch = port.receive(want)
        if not batch:
            return
        try:
            mask = self.stack.fast_path_mask(batch.mem, batch.addr, batch.lens)
            good = batch[mask]
            ulen = udpp.udp_lengths_batch(batch.mem, good.addr)
            hdr = good.bytes_at(26, 10)  # source IP and port of every accepted frame
            mv = memoryview(batch.mem)
            for a, u, h in zip(good.addr.tolist(), ulen.tolist(), hdr.tolist()):
                src = bytes(h[0:4])
                name = self._names.get(src) or self._names.setdefault(src, socket.inet_ntoa(src))
                self._pending.append((bytes(mv[a + 42:a + 34 + u]), (name, (h[8] << 8) | h[9])))
            self.counters["rx_datagrams"] += len(good)
            self.counters["rx_vector"] += len(good)
            self.stack.counters["rx_frames"] += len(good)
            self.stack.counters["udp_delivered"] += len(good)
            now = time.monotonic()
            for i in np.flatnonzero(~mask).tolist():
                self._slow(batch.tobytes(i), now)
            mv.release()
        finally:
            port.free(batch)

    # send -----------------------------------------------------------------------------------------
    def _flow(self, ip: str, port: int, now: float):
        """A flow's cached header, (expiry, proto.udp.UdpFlow), kept for a second; None while the peer's
        MAC is being resolved."""
        t = self._templates.get((ip, port))
        if t is not None and t[0] > now:
            return t
        tmpl = self.stack.udp_template(ip, port, self.port, now)
        if tmpl is None:
            return None
        if self.tos or self.ttl is not None:  # both are in the flow's partial IP checksum: patch first
            b = bytearray(tmpl)
            b[15] = self.tos
            if self.ttl is not None:
                b[22] = self.ttl
            tmpl = bytes(b)
        t = self._templates[(ip, port)] = (now + 1.0, udpp.UdpFlow(tmpl))
        return t

    def _template(self, ip: str, port: int, now: float):
        """A flow's UdpFlow; None while the peer's MAC is resolved."""
        t = self._flow(ip, port, now)
        return None if t is None else t[1]

    def sendto(self, payload: bytes, addr: tuple[str, int]) -> int:
        """Send one datagram to addr = (ip, port); returns its length. Like a kernel socket, a datagram to
        a peer whose MAC is not known yet waits (bounded) for resolution instead of blocking.

        Raises BlockingIOError (EAGAIN), as a non-blocking kernel socket does, when the datagram could not
        be queued: the TX ring is full and no frame is free even after taking back the completed ones and
        kicking the kernel once. Nothing was sent then (counted in tx_failed); try again later."""
        if self._closed:
            raise UsageError("the endpoint is closed")
        now = time.monotonic()
        if type(addr) is not tuple:
            addr = tuple(addr)
        t = self._templates.get(addr)
        if t is None or t[0] <= now:
            ip, port = check_peer(addr)
            self._check_size(len(payload))
            self._service(now)
            t = self._flow(ip, port, now)
            if t is None:
                self._emit(self.stack.send_udp(ip, port, self.port, bytes(payload), now))
                self._await_resolution(ip)
                self.counters["tx_datagrams"] += 1
                return len(payload)
        if len(payload) > self.max_payload:
            self._check_size(len(payload))
        self._ident = ident = (self._ident + 1) & 0xFFFF
        data = payload if type(payload) is bytes else bytes(payload)
        lane = self._tx_lane
        flow = t[1]
        if not lane.send_udp(flow, data, ident):
            # TX ring or frame stash full: let the kernel send what is queued, then try once more (the
            # lane takes the completed frames back when its stash is empty) before telling the caller
            lane.kick()
            if not lane.send_udp(flow, data, ident):
                self.counters["tx_failed"] += 1
                raise BlockingIOError(errno.EAGAIN, f"TX ring of {self.ifname} full: the datagram to "
                                      f"{addr[0]}:{addr[1]} was not sent; retry (or poll) later")
        self.counters["tx_datagrams"] += 1
        self.stack.counters["udp_sent"] += 1
        return len(payload)

    def _await_resolution(self, ip: str) -> None:
        """Drive the endpoint until the peer's MAC is known and the queued datagram has left. There is
        no kernel thread to finish the resolution behind our back, so sendto waits here (bounded by the
        ARP attempts, about a second) instead of leaving the datagram stuck until the next call."""
        hop = socket.inet_aton(ip)
        if not self.stack.on_link(hop) and self.stack.gateway is not None:
            hop = self.stack.gateway
        arp = self.stack.arp
        while arp.is_pending(hop):
            now = time.monotonic()
            self._service(now)
            self._poll_once()
            if not arp.is_pending(hop):
                break
            t = self.stack.next_timer()
            wait = 0.0 if t is None else max(0.0, min(t - now, 0.01))
            if self.poll_mode == "busy":
                for lane in self._lanes:
                    lane.wake()
            else:
                self._poller.poll(int(wait * 1000 + 0.999))
        self._drain_events()
        if self._unresolved.pop(ip, None):
            raise KbypassError(f"{ip} did not answer ARP for {self.ip} on {self.ifname}: check the peer "
                               "address, that it is up and inside the subnet")

    def set_ip_fields(self, tos: int | None = None, ttl: int | None = None) -> None:
        """The IP TOS byte and TTL of the datagrams sent from now on (IP_TOS, IP_TTL); ttl None: the
        template's default (64). Flows cached with the old values are dropped."""
        if tos is not None:
            self.tos = tos & 0xFF
        if ttl is not None:
            self.ttl = ttl
        self._templates.clear()

    def _ip_fields(self, frame: bytes) -> bytes:
        b = bytearray(frame)
        b[15] = self.tos
        if self.ttl is not None:
            b[22] = self.ttl
        b[24:26] = b"\0\0"
        b[24:26] = ck.internet_checksum(b[14:34]).to_bytes(2, "big")
        return bytes(b)

    # readiness: what an event loop needs to drive the endpoint without blocking in it -------------------
    @property
    def readiness_fds(self) -> list[int]:
        """The fds that poll readable when a datagram (or an ARP frame of a dedicated address) may have
        arrived: the AF_XDP sockets of every queue (their RX rings), and the ARP packet socket."""
        fds = [lane.fd for lane in self._lanes]
        if self._arp_sock is not None:
            fds.append(self._arp_sock.fileno())
        return fds

    def receive_nowait(self) -> tuple[bytes, tuple[str, int]] | None:
        """The next datagram if one has arrived, else None; never waits, never raises for an empty ring."""
        pending = self._pending
        if not pending:
            if self._closed:
                raise UsageError("the endpoint is closed")
            self._poll_once()
            if not pending:
                return None
        return pending.popleft()

    @property
    def pending(self) -> int:
        """Datagrams already taken off the rings and not yet handed out (readiness fds do not show them)."""
        return len(self._pending)

    def spin(self) -> None:
        """One turn of a busy wait with nothing on the rings: the busy-poll wakeup every few turns, timers
        and ARP every 1024th."""
        for lane in self._lanes:
            lane.wake()
        self._spins += 1
        if self._spins & 0x3FF == 0:
            self._service(time.monotonic())

    def before_sleep(self) -> float | None:
        """Call before sleeping on `readiness_fds`: runs the timers and ARP, makes the wakeup the kernel asks
        for; returns when the next timer is due (monotonic seconds), or None."""
        self._service(time.monotonic())
        for lane in self._lanes:
            lane.wake_if_asked()
        return self.stack.next_timer()

    def poll(self, timeout: float = 0.0) -> int:
        """Process what arrived (answer ARP and ping, queue datagrams) for up to `timeout` seconds
        without taking datagrams; returns how many are waiting for recvfrom. Call it when not receiving,
        so the address keeps answering."""
        deadline = time.monotonic() + timeout
        while True:
            self._service(time.monotonic())
            self._poll_once()
            if self._pending or time.monotonic() >= deadline:
                return len(self._pending)
            self._wait(deadline)

    def send_batch(self, payloads: list[bytes], addr: tuple[str, int]) -> int:
        """Send many datagrams to one peer with the port's batch path (numpy lengths and checksums);
        returns how many were queued. Falls back to sendto while the peer is being resolved."""
        if self._closed:
            raise UsageError("the endpoint is closed")
        ip, port = check_peer(addr)
        for p in payloads:
            self._check_size(len(p))
        now = time.monotonic()
        flow = self._template(ip, port, now)
        if flow is None or len(payloads) < 4:
            for i, p in enumerate(payloads):
                try:
                    self.sendto(p, (ip, port))
                except BlockingIOError:
                    return i  # the ring is full: the rest was not queued, as with the batch path
            return len(payloads)
        tmpl = flow.template
        lane = self._tx_lane
        sent = 0
        while sent < len(payloads):
            chunk = payloads[sent:sent + 256]
            batch = lane.port.alloc(len(chunk))
            if not batch:
                lane.port.reap()
                break
            k = len(batch)
            mv = memoryview(batch.mem)
            for a, p in zip(batch.addr.tolist(), chunk):
                mv[a:a + 42] = tmpl
                mv[a + 42:a + 42 + len(p)] = p
            mv.release()
            lens = np.fromiter((42 + len(p) for p in chunk[:k]), dtype=np.int64, count=k)
            batch.set_len(lens)
            udpp.write_lengths_batch(batch.mem, batch.addr, lens)
            self._ident = (self._ident + k) & 0xFFFF
            batch.set_u16be(18, (np.arange(k) + self._ident) & 0xFFFF)
            ck.ipv4_fill_batch(batch.mem, batch.addr, lens)
            ck.udp_fill_batch(batch.mem, batch.addr, lens)
            accepted = lane.port.transmit(batch)
            if accepted < k:
                lane.port.free(batch[accepted:])
            sent += accepted
            if accepted < k:
                break
        self.counters["tx_datagrams"] += sent
        self.stack.counters["udp_sent"] += sent
        return sent

    # status and teardown ----------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        """Endpoint counters, the stack's non-zero drops, and the port's (kernel XDP statistics included).
        `rx_dropped` (lifted from the port's) counts frames the kernel could not put in a UMEM frame, among
        them frames longer than one holds (above `max_rx_payload` bytes of UDP payload)."""
        port = self._steered.port.stats
        return {**self.counters, "rx_dropped": int(port.get("rx_dropped", 0)), "drops": self.stack.drops(),
                "port": port, "rules": self._steered.rule_counters()}

    def check(self) -> dict:
        """UMEM accounting of every queue's port (raises OwnershipError on a leak)."""
        total: dict = {}
        for lane in self._lanes:
            for k, v in lane.port.check(app=0).items():  # the port counts its lane's frames
                total[k] = total.get(k, 0) + v
        return total

    def _teardown(self) -> None:
        close_steered(self._lanes, self._steered)
        self._lanes, self._steered = [], None
        if self._arp_sock is not None:
            self._arp_sock.close()
            self._arp_sock = None
        if self._placeholder is not None:
            if not self._borrowed:
                self._placeholder.close()
            self._placeholder = None
        self._iface.close()

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        _IN_USE.pop(self._key, None)
        self._teardown()
