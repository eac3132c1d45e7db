"""UdpEndpoint: a UDP socket without the kernel. Bind ip:port; the steering rule is installed for you.

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

Fast path. One message costs a handful of Python operations: the RX descriptor is read through a
memoryview of the ring, the frame is copied out with one slice, the headers and both checksums are checked
with integer arithmetic (anything that is not plain valid UDP to us goes to `Stack.receive`, which answers
it or counts why it was dropped), and the frame goes straight back to the fill ring (it never leaves the
kernel's share, so the UMEM accounting does not change). Sending writes a cached per-peer header with the
lengths and checksums patched in. The batch helpers of the port (numpy) cost tens of microseconds per
call whatever the batch size, which is right for Mpps and wrong for one message; `recv_batch` and
`send_batch` use them when there is a batch.

Ownership: the endpoint owns its port; frames never leave it. Datagrams come out as `bytes` copies.
`backend="socket"` gives the same API over a kernel UDP socket (the baseline the latency tool compares).
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import struct
import time
from collections import deque

import numpy as np

from kbypass import netns as _netns
from kbypass.errors import KbypassError, UsageError
from kbypass.native import lane as _fastlane  # C per-message path; None: the Python _Lane does the work
from kbypass.port.afxdp import IN_FILL, IN_TX, RX_BYTES, RX_PACKETS, TX_BYTES, TX_COMPLETED, TX_KICKS, TX_PACKETS
from kbypass.proto import checksum as ck
from kbypass.proto import udp as udpp
from kbypass.proto.stack import ArpTimeout, Stack, UdpDatagram
from kbypass.xsk.consts import XDP_PACKET_HEADROOM
from kbypass.xsk.umem import APP, FILL, TX

BACKENDS = ("afxdp", "socket")
POLL_MODES = ("wakeup", "busy")
ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
NTF_USE = 0x01
# neighbour states whose lladdr can be used (REACHABLE, STALE, DELAY, PROBE, NOARP, PERMANENT)
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80
SO_BUSY_POLL, SO_PREFER_BUSY_POLL = 46, 69
_U32 = 0xFFFFFFFF
_MOD = 0xFFFF
VECTOR_MIN = 32
# Ethernet + IPv4 + UDP headers for the fast path: dst MAC, first byte of the source MAC, EtherType,
# version/IHL, fragment field, TTL, protocol, src, dst, ports, UDP length and checksum
_HDR = struct.Struct("!6sB5xHB5xHBB2x4s4sHHHH")  # below this many frames the scalar path beats the numpy batch helpers

# endpoints of this process, so two in one process get a clear error before the kernel's
_IN_USE: dict[tuple[str | None, str], str] = {}


# ------------------------------------------------------------------------------------------ interface


class _Iface:
    """What the endpoint needs to know about an interface, read once through netlink in its namespace."""

    def __init__(self, ifname: str, netns: str | None) -> None:
        from pyroute2 import IPRoute

        where = f" in namespace {netns!r}" if netns else ""
        with _netns.entered(netns):
            self.ipr = IPRoute()  # a netlink socket made inside the namespace stays there
        try:
            found = self.ipr.link_lookup(ifname=ifname)
            if not found:
                raise UsageError(f"no interface {ifname!r}{where}: check the name with "
                                 f"'ip {'-n ' + netns + ' ' if netns else ''}link show'")
            self.ifindex = found[0]
            link = self.ipr.get_links(self.ifindex)[0]
            self.mac = link.get_attr("IFLA_ADDRESS")
            self.mtu = int(link.get_attr("IFLA_MTU"))
            self.nets = [ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                         for a in self.ipr.get_addr(index=self.ifindex, family=socket.AF_INET)]
            self.all_local = {a.get_attr("IFA_ADDRESS") for a in self.ipr.get_addr(family=socket.AF_INET)}
        except BaseException:
            self.ipr.close()
            raise

    def neighbour(self, ip: str) -> str | None:
        """The kernel's usable neighbour entry for ip, or None after asking the kernel to resolve it."""
        try:
            for n in self.ipr.get_neighbours(ifindex=self.ifindex, family=socket.AF_INET, dst=ip):
                mac = n.get_attr("NDA_LLADDR")
                if mac and n["state"] & NUD_USABLE and n.get_attr("NDA_DST") == ip:
                    return mac
            # NTF_USE makes the kernel start (or continue) resolving, like a send through it would
            self.ipr.neigh("replace", dst=ip, ifindex=self.ifindex, flags=NTF_USE, state=0)
        except Exception:  # netlink hiccups count as "not known yet": the stack asks again
            pass
        return None

    def close(self) -> None:
        self.ipr.close()


# ------------------------------------------------------------------------------------------- the API


class UdpEndpoint:
    """A bound UDP endpoint. See the module doc; use as a context manager or call close().

    ifname/netns: where; ip/port: what to bind. dedicated: ip is an address the kernel does not have
    (kbypass answers ARP and ping for it); prefixlen: its subnet when the interface has no address there.
    poll: "wakeup" (sleep in poll()) or "busy" (spin; SO_PREFER_BUSY_POLL on the AF_XDP sockets).
    backend: "afxdp" (the bypass) or "socket" (a kernel UDP socket, for comparison).
    queue: one queue, or None for every receive queue (a flow lands on whichever queue the hash picks).
    native: the per-message ring work in C (kbypass._fastlane) or in Python (False); None: C when built.
    gateway: an on-link router, the next hop for peers outside the subnet (without one they are refused);
    the socket backend uses the kernel's routes instead.
    frame_size: UMEM frame size (2048 or 4096). One packet never spans frames, so it caps the message
    size below a jumbo MTU: `max_payload` is what sendto takes, `max_rx_payload` what can arrive (longer
    frames are dropped by the kernel and counted in `stats["rx_dropped"]`).
    Not thread-safe: one thread drives an endpoint. It makes progress (answers ARP and ping, retries
    resolution) only inside its calls, as Onload-style stacks without a helper thread do: call `poll()`
    while you are not receiving if the address must keep answering.
    """

    def __new__(cls, *args, backend: str = "afxdp", **kwargs):
        if cls is UdpEndpoint:
            if backend not in BACKENDS:
                raise UsageError(f"backend {backend!r} is unknown: use one of {', '.join(BACKENDS)}")
            cls = _SocketEndpoint if backend == "socket" else _XdpEndpoint
        return super().__new__(cls)

    # common helpers -------------------------------------------------------------------------------
    def _check_common(self, ip: str, port: int, poll: str) -> None:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise UsageError(f"{ip!r} is not an IPv4 address: give one like 10.77.0.2") from None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise UsageError(f"UDP port {port!r}: use a number from 1 to 65535 (0: pick a free one)")
        if poll not in POLL_MODES:
            raise UsageError(f"poll={poll!r} is unknown: use 'wakeup' or 'busy'")

    def _check_size(self, n: int) -> None:
        if n > self.max_payload:
            frame = getattr(self, "frame_size", None)
            if frame is not None and self.max_payload < self.mtu - 28:  # the UMEM frame is the limit
                raise UsageError(f"a {n}-byte message does not fit one {frame}-byte UMEM frame (at most "
                                 f"{self.max_payload} bytes of UDP payload; the MTU {self.mtu} would allow "
                                 f"{self.mtu - 28}): open the endpoint with frame_size=4096 (--frame-size 4096)"
                                 " or send less; kbypass does not fragment")
            raise UsageError(f"a {n}-byte message exceeds the MTU ({self.mtu}: at most {self.max_payload} "
                             "bytes of UDP payload); kbypass does not fragment: send less")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# the 42 header bytes of an outgoing frame: Ethernet + IPv4 up to the length, total length, ident,
# flags/TTL/protocol, checksum, addresses and ports, UDP length, UDP checksum
_OUT = struct.Struct("!16sHH4sH12sHH")


def split_template(tmpl: bytes) -> tuple[bytes, bytes, bytes, int, int]:
    """A flow's 42-byte header template (lengths and checksums zero, `udp.frame_template`) as the pieces
    `_build_frame` packs around the computed fields, plus the partial sums of the IP header and of the UDP
    pseudo-header and ports (the only per-message inputs left are the lengths, the ident and the payload)."""
    ip_partial = ck.ones_sum(tmpl[14:34])
    udp_partial = (int.from_bytes(tmpl[26:34], "big") + 17 + int.from_bytes(tmpl[34:38], "big")) % _MOD
    return tmpl[0:16], tmpl[20:24], tmpl[26:38], ip_partial, udp_partial


def join_template(parts) -> bytes:
    head, mid, addrs = parts[:3]
    return head + b"\0\0\0\0" + mid + b"\0\0" + addrs + b"\0\0\0\0"


def payload_limits(mtu: int, frame_size: int, headroom: int = 0) -> tuple[int, int]:
    """(largest UDP payload we can send, largest we can receive) on a link of `mtu` with UMEM frames of
    `frame_size` bytes: a packet never spans two frames, so the frame caps both. A sent frame starts at
    the frame + headroom; a received one also after the kernel's XDP_PACKET_HEADROOM, and the kernel drops
    longer ones (counted in the socket's rx_dropped, `stats["rx_dropped"]`)."""
    if frame_size not in (2048, 4096):
        raise UsageError(f"frame_size {frame_size} is not supported: use 2048 or 4096")
    tx_room = frame_size - headroom
    cap = mtu + 14
    return min(cap, tx_room) - 42, min(cap, tx_room - XDP_PACKET_HEADROOM) - 42


def _bind_udp(netns: str | None, ip: str, port: int) -> socket.socket:
    """A kernel UDP socket bound to ip:port in netns, with a clear error when the port is taken."""
    with _netns.entered(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((ip, port))
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"{ip}:{port} is already bound by another socket in the kernel: pick another "
                             "port or stop that program") from None
        raise UsageError(f"cannot bind {ip}:{port}: {e.strerror}") from None
    return s


def _peer(addr) -> tuple[str, int]:
    try:
        ip, port = addr
        ipaddress.IPv4Address(ip)
        port = int(port)
    except (TypeError, ValueError):
        raise UsageError(f"bad peer address {addr!r}: give (ip, port) like ('10.77.0.1', 4321)") from None
    if not 1 <= port <= 0xFFFF:
        raise UsageError(f"peer port {port}: use 1-65535")
    return ip, port


# --------------------------------------------------------------------------------------- AF_XDP lane


class _Lane:
    """Scalar access to one AfXdpPort's rings for one message at a time, keeping the port's UMEM
    accounting exactly as its own receive/transmit would (same states, same counters).

    RX frames go straight back to the fill ring after their bytes are copied out, so they stay in the
    kernel's share (state FILL) throughout. TX frames come from a small stash (state APP, "held by the
    application"), are marked TX when submitted, and come back from the completion ring straight into the
    stash (reclaim), one or two per send; only when that runs dry is the stash refilled from the port in a
    batch. (Refilling by batch every STASH messages put a numpy reap + alloc, ~20 us, into one message in
    32: the p99 of a ping-pong.) The port's own reap() reads the same completion ring, so frames reclaimed
    by either path are accounted once."""

    STASH = 32

    def __init__(self, port, accept) -> None:
        self.port = port
        self.accept = accept  # frame -> (payload, src_ip4, src_port) for plain valid UDP to us, else None
        self.umem = port.umem
        self.rx, self.fill, self.tx = port._rx, port._fill, port._tx  # the port's rings (see class doc)
        self.comp = port._comp
        self.rxq = memoryview(self.rx.slots.view(np.uint64)).cast("B").cast("Q")
        self.fillq = memoryview(self.fill.slots).cast("B").cast("Q")
        self.compq = memoryview(self.comp.slots).cast("B").cast("Q")
        self.txq = memoryview(self.tx.slots.view(np.uint64)).cast("B").cast("Q")
        self.mem = memoryview(self.umem.array)
        self.chunk_mask = ~(self.umem.frame_size - 1)
        self.shift = self.umem.shift
        self.headroom = self.umem.headroom
        # the largest frame one UMEM frame carries: TX frames start at chunk + headroom (alloc), RX ones
        # also after the kernel's XDP_PACKET_HEADROOM; the kernel drops (and counts in the socket's
        # rx_dropped statistic) any received frame longer than rx_room
        self.tx_room = self.umem.frame_size - self.headroom
        self.rx_room = self.tx_room - XDP_PACKET_HEADROOM
        self.copy = port.mode == "copy"
        self.busy = port.poll_mode == "busy"
        self.stash: list[int] = []
        self.empty_looks = 0
        self.fd = port.fd
        self.stats = memoryview(port.counters).cast("B").cast("Q")  # the port's counters (shared with C)

    def recv(self) -> bytes | None:
        """One received frame's bytes, or None when the RX ring is empty (no syscall in that case)."""
        rx = self.rx
        i, got = rx.peek(1)
        if not got:
            return None
        j = (i & rx.mask) << 1
        addr = self.rxq[j]
        n = self.rxq[j + 1] & _U32
        data = bytes(self.mem[addr:addr + n])
        rx.release(1)
        fill = self.fill
        k, got = fill.reserve(1)
        c = self.stats
        if got:
            self.fillq[k & fill.mask] = addr & self.chunk_mask
            fill.submit(1)
        else:  # cannot happen (the frame just left the fill quota), but never lose a frame
            self.umem.give_free(np.array([addr], dtype=np.uint64), FILL, trusted=True)
            c[IN_FILL] -= 1
        c[RX_PACKETS] += 1
        c[RX_BYTES] += n
        return data

    def recv_udp(self):
        """None when the RX ring is empty; (payload, src_ip4, src_port) for a plain valid UDP datagram to
        us; any other frame as bytes, for the stack (the contract of the C lane)."""
        f = self.recv()
        if f is None:
            return None
        dg = self.accept(f)
        return f if dg is None else dg

    def stashed(self) -> int:
        """Frames the lane holds for sending (state APP)."""
        return len(self.stash)

    BUSY_POLL_EVERY = 16

    def wake(self) -> None:
        """Nothing on the ring: let the kernel make progress.

        Busy polling drives the driver's NAPI from recvfrom(), which a NIC with deferred interrupts needs;
        but a copy-mode ring is also filled from the sender's softirq (veth, generic XDP), and a syscall on
        every empty look only delays seeing the frame. So a busy spin reads the ring and makes the
        busy-poll call on every BUSY_POLL_EVERY-th empty look (and whenever the fill ring asks)."""
        if self.fill.needs_wakeup():
            self.port.xsk.wake_rx()
        elif self.busy:
            self.empty_looks += 1
            if self.empty_looks % self.BUSY_POLL_EVERY == 0:
                self.port.xsk.wake_rx()

    def reclaim(self) -> None:
        """Completed TX frames straight back into the stash (state TX -> APP), scalar: in copy mode a frame
        completes inside the sendto() that sent it, so there is one here per send."""
        # at most a stash's worth: completions of the batch path (send_batch) are for the port's free list
        room = self.STASH - len(self.stash)
        if room <= 0:
            return
        comp = self.comp
        i, n = comp.peek(room)
        if not n:
            return
        mask, compq, state, shift = comp.mask, self.compq, self.umem.state, self.shift
        for k in range(n):
            addr = compq[(i + k) & mask]
            state[addr >> shift] = APP  # held by the lane, as alloc() would hand it out
            self.stash.append(addr)
        comp.release(n)
        c = self.stats
        c[IN_TX] -= n
        c[TX_COMPLETED] += n

    def send(self, frame: bytes) -> bool:
        """Put one frame on the TX ring and kick; False when no frame or TX slot is free right now, or
        when the frame is longer than a UMEM frame holds (nothing written; callers check sizes first)."""
        if len(frame) > self.tx_room:
            return False
        if not self.stash:
            self.reclaim()
        if not self.stash:
            self.port.reap()
            got = self.port.alloc(self.STASH)
            self.stash = [int(a) for a in got.addr]
            if not self.stash:
                return False
        tx = self.tx
        i, k = tx.reserve(1)
        if not k:
            self.port.reap()
            self.port.xsk.kick_tx()
            i, k = tx.reserve(1)
            if not k:
                return False
        addr = self.stash.pop()
        n = len(frame)
        self.mem[addr:addr + n] = frame
        j = (i & tx.mask) << 1
        self.txq[j] = addr
        self.txq[j + 1] = n  # len, options 0
        self.umem.state[addr >> self.shift] = TX  # as AfXdpPort.transmit marks it
        tx.submit(1)
        c = self.stats
        c[IN_TX] += 1
        c[TX_PACKETS] += 1
        c[TX_BYTES] += n
        if self.copy or tx.needs_wakeup() or self.busy:
            c[TX_KICKS] += 1
            self.port.xsk.kick_tx()
        return True

    def send_udp(self, flow, payload: bytes, ident: int) -> bool:
        """One datagram of a flow (a `_XdpEndpoint._templates` entry) with IP ident `ident`."""
        if len(payload) + 42 > self.tx_room:
            return False
        return self.send(_build_frame(flow[1], payload, ident))

    def release(self) -> None:
        """Give the stash back and drop every view of the port's memory (before the port closes)."""
        from kbypass.port.batch import DESC, Batch

        if self.stash:
            descs = np.zeros(len(self.stash), dtype=DESC)
            descs["addr"] = self.stash
            self.port.free(Batch(descs, self.umem.array, self.port))
            self.stash = []
        for mv in (self.rxq, self.fillq, self.compq, self.txq, self.mem, self.stats):
            mv.release()


class _NativeLane(_Lane):
    """The same lane with its per-message work in C (kbypass._fastlane over the C core's kb_lane): receive
    with the header and checksum checks of `_XdpEndpoint._accept`, send with lengths and checksums filled
    in, the TX stash and the completion reclaim. The rings' cached indexes (each Ring's `shared` struct),
    the UMEM states and the port's counters array it updates are the very memory the port and the Python
    lane use, so the two can take turns (the Python path takes over in the one case C hands back, a full
    fill ring)."""

    def __init__(self, port, accept, *, ip: bytes, mac: bytes, udp_port: int, bcast: bytes | None) -> None:
        super().__init__(port, accept)
        u = self.umem
        self.c = _fastlane.Lane(self.rx.shared, self.fill.shared, self.tx.shared, self.comp.shared,
                                umem=u.array, state=u.state, stats=port.counters, frame_size=u.frame_size,
                                fd=self.fd, mac=mac, ip=ip, udp_port=udp_port, bcast=bcast, copy=self.copy,
                                busy=self.busy, busy_every=self.BUSY_POLL_EVERY, stash=self.STASH)
        self.recv_c = self.c.recv
        self.wake = self.c.wake

    def recv_udp(self):
        r = self.recv_c()
        if r is NotImplemented:  # no fill slot for the frame: the Python path handles that case
            return super().recv_udp()
        return r

    def stashed(self) -> int:
        return self.c.stashed + len(self.stash)

    def _sent(self, r: int, again) -> bool:
        if r < 0:  # the stash ran dry: refill it from the port in one batch, then try once more
            self.port.reap()
            got = self.port.alloc(self.STASH)
            took = self.c.give(got.addr.tolist())
            if took < len(got):
                self.port.free(got[took:])
            r = again() if took else 0
        return r > 0

    def send(self, frame: bytes) -> bool:
        if len(frame) > self.tx_room:  # C would raise ValueError (or RuntimeError with headroom)
            return False
        return self._sent(self.c.send_frame(frame), lambda: self.c.send_frame(frame))

    def send_udp(self, flow, payload: bytes, ident: int) -> bool:
        if len(payload) + 42 > self.tx_room:
            return False
        r = self.c.send_udp(flow[2], payload, ident)
        return r > 0 or self._sent(r, lambda: self.c.send_udp(flow[2], payload, ident))

    def release(self) -> None:
        self.stash.extend(self.c.take_stash())
        self.c.close()
        super().release()


def _build_frame(parts, payload: bytes, ident: int) -> bytes:
    """One whole UDP frame: a flow's header (`split_template` parts) with lengths, IP ident and both
    checksums filled in, computed from the partial sums taken once per flow."""
    head, mid, addrs, ip_partial, udp_partial = parts
    ulen = len(payload) + 8
    total = ulen + 20
    r = (ip_partial + total + ident) % _MOD
    r2 = (udp_partial + 2 * ulen + (int.from_bytes(payload, "big") << (8 * (ulen & 1)))) % _MOD
    return _OUT.pack(head, total, ident, mid, _MOD - r if r else 0, addrs, ulen,
                     (_MOD - r2 if r2 else 0) or 0xFFFF) + payload


class _XdpEndpoint(UdpEndpoint):
    def __init__(self, ifname: str, ip: str, port: int, *, netns: str | None = None, dedicated: bool = False,
                 prefixlen: int | None = None, poll: str = "wakeup", backend: str = "afxdp",
                 queue: int | None = None, xdp_mode: str = "native", mode: str = "auto", frames: int = 4096,
                 frame_size: int = 2048, ring_size: int = 2048, gratuitous_arp: bool = True,
                 native: bool | None = None, gateway: str | None = None) -> None:
        self._closed = True
        if native and _fastlane is None:
            raise KbypassError("the endpoint's C fast path (kbypass._fastlane) is not built: run 'make setup' "
                               "(it needs gcc and python3-dev), or leave native=None: the Python lane is used when C is not built")
        self._check_common(ip, port, poll)
        from kbypass.port.steered import SteeredPort

        self.ifname, self.netns, self.ip, self.port, self.dedicated, self.poll_mode = ifname, netns, ip, port, \
            dedicated, poll
        self.backend = "afxdp"
        key = (netns, ifname)
        if key in _IN_USE:
            raise UsageError(f"{ifname} already carries this process's endpoint {_IN_USE[key]}: one steering "
                             "program per interface; close that endpoint first or use another interface")
        self._iface = iface = _Iface(ifname, netns)
        self._steered = None
        self._arp_sock = None
        self._placeholder = None
        self._lanes: list[_Lane] = []
        try:
            prefixlen = self._check_address(iface, ip, dedicated, prefixlen)
            if not dedicated:
                # The kernel owns this address, so reserve the port in it too: a kernel socket already
                # there is refused clearly, none can bind it later, and port 0 picks a free port.
                self._placeholder = _bind_udp(netns, ip, port)
                self.port = port = self._placeholder.getsockname()[1]
            elif port == 0:
                # nothing in the kernel to ask for a free port of an address it does not have
                self.port = port = 49152 + time.monotonic_ns() % 16384
            self.mtu = iface.mtu
            self.frame_size = frame_size
            self.max_payload, self.max_rx_payload = payload_limits(self.mtu, frame_size)
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
                                            poll=poll, frames=frames, frame_size=frame_size, rx_size=ring_size,
                                            tx_size=ring_size, fill_size=ring_size, comp_size=ring_size)
            except KbypassError as e:
                # someone else's XDP program on the interface, or their AF_XDP sockets on its queues
                if "already has XDP program" in str(e) or "already uses this queue" in str(e):
                    raise KbypassError(
                        f"cannot steer {ip}:{port}: {ifname} is already steered by someone else (another "
                        f"kbypass process or XDP tool holds it; 'bpftool net show' names it): stop that "
                        f"program, or bind on another interface ({e})") from None
                raise
            self._ipb = socket.inet_aton(ip)
            self._macb = bytes.fromhex(iface.mac.replace(":", ""))
            net = ipaddress.IPv4Network(f"{ip}/{prefixlen}", strict=False)
            self._bcast = net.broadcast_address.packed if prefixlen < 31 else None
            self.native = _fastlane is not None if native is None else native
            if self.native:
                self._lanes = [_NativeLane(p, self._accept, ip=self._ipb, mac=self._macb, udp_port=port,
                                           bcast=self._bcast) for p in self._steered.ports]
            else:
                self._lanes = [_Lane(p, self._accept) for p in self._steered.ports]
            if dedicated:
                self._arp_sock = self._open_arp_socket()
        except BaseException:
            self._teardown()
            raise
        _IN_USE[key] = f"{ip}:{port}"
        self._key = key
        self._closed = False
        self._pending: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._unresolved: dict[str, int] = {}  # peers whose resolution timed out (ArpTimeout), not yet reported
        self._templates: dict[tuple[str, int], tuple[float, tuple, bytes]] = {}  # see _flow
        self._names: dict[bytes, str] = {}
        self._ident = 0
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
    @staticmethod
    def _check_address(iface: _Iface, ip: str, dedicated: bool, prefixlen: int | None) -> int:
        addr = ipaddress.IPv4Address(ip)
        nets = ", ".join(str(n.network) for n in iface.nets) or "none"
        if not dedicated:
            for n in iface.nets:
                if n.ip == addr:
                    return n.network.prefixlen
            raise UsageError(f"{ip} is not an address of the interface (its subnets: {nets}): bind one of its "
                             f"own addresses ({', '.join(str(n.ip) for n in iface.nets) or 'none'}), or pass "
                             "dedicated=True (--dedicated) for an address the kernel does not have")
        if ip in iface.all_local:
            raise UsageError(f"{ip} is already an address of the kernel here: a dedicated address must be one "
                             "the kernel does not have; drop dedicated=True to share the interface's address")
        if prefixlen is not None:
            if not 0 < prefixlen <= 32:
                raise UsageError(f"prefix length {prefixlen}: use 1-32")
            return prefixlen
        for n in iface.nets:
            if addr in n.network:
                return n.network.prefixlen
        raise UsageError(f"{ip} is outside the interface's subnets ({nets}): pick an address inside one of "
                         "them (or give prefixlen= when the interface has no address there)")

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
            if not self._tx_lane.send(f):
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
    def _accept(self, f: bytes):
        """Plain valid UDP to ip:port? Then (payload, source IP as 4 bytes, source port); else None.
        The same checks as proto.udp.classify_batch, in scalar form: one unpack of the 42 header bytes,
        then both checksums as big-integer sums mod 0xFFFF (see proto.checksum)."""
        n = len(f)
        if n < 42:
            return None
        (dmac, smac0, etype, vihl, frag, ttl, proto, src, dst, sport, dport, ulen, ucsum) = _HDR.unpack_from(f)
        total = ulen + 20
        if (etype != 0x0800 or vihl != 0x45 or proto != 17 or dport != self.port or dst != self._ipb
                or dmac != self._macb or smac0 & 1 or frag & 0x3FFF or not ttl
                or ((f[16] << 8) | f[17]) != total or ulen < 8 or total + 14 > n):
            return None
        if src[0] == 0 or src[0] == 127 or src[0] >= 224 or src == self._ipb or src == self._bcast:
            return None
        if int.from_bytes(f[14:34], "big") % _MOD:
            return None
        end = 14 + total
        if ucsum:
            s = int.from_bytes(f[34:end], "big")
            if ulen & 1:
                s <<= 8
            if (s + int.from_bytes(f[26:34], "big") + 17 + ulen) % _MOD:
                return None
        return f[42:end], src, sport

    def _poll_once(self) -> bool:
        """Take what the rings hold now into _pending (fast path, else the stack); True if anything came."""
        got = False
        lanes = self._lanes
        n = len(lanes)
        for k in range(n):
            at = (self._next_lane + k) % n
            lane = lanes[at]
            r = lane.recv_udp()
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
                r = lane.recv_udp()
        self._next_lane = (self._next_lane + 1) % n
        return got

    def _wait(self, deadline: float | None) -> None:
        """Nothing pending: let the kernel work (busy: one round; wakeup: sleep in poll until something
        may be ready, a timer is due, or the deadline)."""
        now = time.monotonic()
        self._service(now)
        if self.poll_mode == "busy":
            for lane in self._lanes:
                lane.wake()
            return
        for lane in self._lanes:
            if lane.fill.needs_wakeup():
                lane.port.xsk.wake_rx()
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
                if lane.rx.available() >= VECTOR_MIN:
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
        """A flow's cached header, (expiry, `split_template` parts, the 42 template bytes), kept for a
        second; None while the peer's MAC is being resolved."""
        t = self._templates.get((ip, port))
        if t is not None and t[0] > now:
            return t
        tmpl = self.stack.udp_template(ip, port, self.port, now)
        if tmpl is None:
            return None
        t = self._templates[(ip, port)] = (now + 1.0, split_template(tmpl), tmpl)
        return t

    def _template(self, ip: str, port: int, now: float):
        """The split header of a flow (see `split_template`); None while the peer's MAC is resolved."""
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
            ip, port = _peer(addr)
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
        if not lane.send_udp(t, data, ident):
            # TX ring or frame stash full: let the kernel send what is queued, then try once more (the
            # lane takes the completed frames back when its stash is empty) before telling the caller
            lane.port.xsk.kick_tx()
            if not lane.send_udp(t, data, ident):
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
        ip, port = _peer(addr)
        for p in payloads:
            self._check_size(len(p))
        now = time.monotonic()
        parts = self._template(ip, port, now)
        if parts is None or len(payloads) < 4:
            for i, p in enumerate(payloads):
                try:
                    self.sendto(p, (ip, port))
                except BlockingIOError:
                    return i  # the ring is full: the rest was not queued, as with the batch path
            return len(payloads)
        tmpl = join_template(parts)
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
            for k, v in lane.port.check(app=lane.stashed()).items():
                total[k] = total.get(k, 0) + v
        return total

    def _teardown(self) -> None:
        for lane in self._lanes:
            try:
                lane.release()
            except Exception:
                pass
        self._lanes = []
        if self._steered is not None:
            self._steered.close()
            self._steered = None
        if self._arp_sock is not None:
            self._arp_sock.close()
            self._arp_sock = None
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        self._iface.close()

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        _IN_USE.pop(self._key, None)
        self._teardown()


# ---------------------------------------------------------------------------------------- kernel socket


class _SocketEndpoint(UdpEndpoint):
    """The same API over a kernel UDP socket: the baseline, with SO_BUSY_POLL when poll="busy"."""

    def __init__(self, ifname: str | None, ip: str, port: int, *, netns: str | None = None,
                 dedicated: bool = False, prefixlen: int | None = None, poll: str = "wakeup",
                 backend: str = "socket", busy_poll_usecs: int = 50, **_ignored) -> None:
        self._closed = True
        self._check_common(ip, port, poll)
        if dedicated:
            raise UsageError("a dedicated address needs the bypass (the kernel does not have the address): "
                             "use backend='afxdp', or bind one of the interface's own addresses")
        self.ifname, self.netns, self.ip, self.port = ifname, netns, ip, port
        self.poll_mode, self.dedicated = poll, False
        self.backend = "socket"
        self.mtu = 1500
        if ifname:
            iface = _Iface(ifname, netns)
            try:
                self.mtu = iface.mtu
                _XdpEndpoint._check_address(iface, ip, False, None)
            finally:
                iface.close()
        self.max_payload = self.mtu - 28
        s = _bind_udp(netns, ip, port)
        self.port = s.getsockname()[1]
        if poll == "busy":
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, busy_poll_usecs)
                s.setsockopt(socket.SOL_SOCKET, SO_PREFER_BUSY_POLL, 1)
            except OSError:
                pass  # not root or an old kernel: plain spinning on a non-blocking socket still works
            s.setblocking(False)
        self._sock = s
        self._closed = False
        self.counters = {"rx_datagrams": 0, "tx_datagrams": 0}

    def recvfrom(self, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        s = self._sock
        if self.poll_mode == "busy":
            deadline = None if timeout is None else time.monotonic() + timeout
            spins = 0
            while True:
                try:
                    data, addr = s.recvfrom(65536)
                    self.counters["rx_datagrams"] += 1
                    return data, addr
                except BlockingIOError:
                    spins += 1
                    if deadline is not None and (timeout <= 0 or spins & 0x3FF == 0) and \
                            time.monotonic() >= deadline:
                        raise TimeoutError(f"no datagram for {self.ip}:{self.port} within {timeout} s") from None
        s.settimeout(timeout)
        try:
            data, addr = s.recvfrom(65536)
        except (socket.timeout, BlockingIOError, InterruptedError):
            # timeout 0 makes the socket non-blocking: an empty one says EAGAIN, not "timed out"
            raise TimeoutError(f"no datagram for {self.ip}:{self.port} within {timeout} s") from None
        self.counters["rx_datagrams"] += 1
        return data, addr

    def recv_batch(self, max_datagrams: int = 64, timeout: float = 0.0) -> list:
        """Up to max_datagrams datagrams, waiting at most `timeout` for the first (0: do not wait)."""
        out = []
        try:
            out.append(self.recvfrom(timeout))
        except TimeoutError:
            return out
        # the rest without waiting: MSG_DONTWAIT alone does not do it, since Python first waits out a
        # socket timeout (recvfrom above may have set one) for readability
        self._sock.settimeout(0)
        while len(out) < max_datagrams:
            try:
                data, addr = self._sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            self.counters["rx_datagrams"] += 1
            out.append((data, addr))
        return out

    def sendto(self, payload: bytes, addr: tuple[str, int]) -> int:
        if len(payload) > self.max_payload:
            self._check_size(len(payload))
        while True:
            try:
                n = self._sock.sendto(payload, addr)
                break
            except BlockingIOError:
                continue
        self.counters["tx_datagrams"] += 1
        return n

    def send_batch(self, payloads: list[bytes], addr: tuple[str, int]) -> int:
        for p in payloads:
            self.sendto(p, addr)
        return len(payloads)

    @property
    def stats(self) -> dict:
        return dict(self.counters)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._sock.close()
