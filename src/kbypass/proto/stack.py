"""A sans-IO IPv4/UDP host: the slow path of kbypass's userspace UDP endpoint.

    stack = Stack(mac, ip, prefixlen, now)
    out = stack.receive(frame, now)        # frames to transmit in answer (ARP replies, echo replies,
                                           # datagrams released by a completed ARP resolution)
    ev = stack.next_event()                # UdpDatagram / ArpResolved / ArpTimeout, or None
    out = stack.send_udp(dst_ip, dst_port, src_port, payload, now)
    out = stack.handle_timer(now)          # call at stack.next_timer() (or later)

No sockets, no clock: bytes and time go in, bytes and events come out, so every timer path is testable
without sleeping. Every frame that is not used is counted under a reason in `stack.counters`, and nothing
malformed is ever answered. Frames are `bytes` here: this is the per-packet path for ARP, ICMP and the
occasional datagram. The Mpps path reads batches with `udp.classify_batch` (see `fast_path_mask`) and
hands only the frames it does not take to `receive`.

Two address modes:
- owns_address=True (a dedicated address the kernel does not have): the stack answers ARP and ping for
  its address and resolves peers with its own ARP (cache, retries, bounded queue).
- owns_address=False (the interface's own address; the kernel keeps answering ARP and ping): ARP and ICMP
  that reach the stack are counted and ignored, and peers are resolved through `resolve(ip) -> mac|None`
  (e.g. the kernel's neighbour table), asked again at each retry until the attempts run out.

Blame is split as in h11: a bad argument from the caller raises `UsageError` (local); anything bad from
the wire is counted and dropped (remote), never raised.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..errors import UsageError
from . import arp, ethernet, icmp, ipv4, udp
from .checksum import IPPROTO_ICMP, IPPROTO_UDP
from .ethernet import BROADCAST_MAC, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, build_ethernet

# ------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A datagram for us. Addresses are dotted strings; payload is a copy (the frame can be reused)."""

    src_ip: str
    src_port: int
    dst_port: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ArpResolved:
    ip: str
    mac: str


@dataclass(frozen=True, slots=True)
class ArpTimeout:
    """Resolution of `ip` gave up after all attempts; `dropped` queued datagrams were discarded."""

    ip: str
    dropped: int


Event = UdpDatagram | ArpResolved | ArpTimeout

# ----------------------------------------------------------------------------------------------- counters

# Why a received (or queued) frame was not used. Every name is a key of Stack.counters from the start.
DROP_REASONS: tuple[str, ...] = (
    ethernet.TRUNCATED, ethernet.BAD_SOURCE, "eth_not_for_us", ethernet.VLAN, ethernet.UNKNOWN_ETHERTYPE,
    arp.TRUNCATED, arp.UNSUPPORTED, arp.BAD_OP, arp.BAD_SENDER, "arp_ip_conflict", "arp_not_for_us",
    "arp_unsolicited",
    "arp_not_owned",
    ipv4.TRUNCATED, ipv4.BAD_VERSION, ipv4.BAD_IHL, ipv4.BAD_LENGTH, ipv4.LENGTH_LIES, ipv4.BAD_CHECKSUM,
    ipv4.OPTIONS, ipv4.FRAGMENT, ipv4.TTL_ZERO, ipv4.BAD_SOURCE, "ip_not_for_us", "ip_unknown_protocol",
    icmp.TRUNCATED, icmp.BAD_CHECKSUM, icmp.UNHANDLED, "icmp_not_owned",
    udp.TRUNCATED, udp.BAD_LENGTH, udp.LENGTH_LIES, udp.BAD_CHECKSUM, udp.NO_CHECKSUM, udp.PORT_ZERO,
    "udp_no_listener",
    # transmit side: datagrams that never left
    "tx_arp_queue_full", "tx_arp_pending_full", "tx_arp_timeout",
)
# What did happen. Every received frame lands in exactly one of: a drop reason (not tx_*), udp_delivered,
# icmp_echo_answered, arp_requests_answered, arp_replies_accepted.
ACTIVITY: tuple[str, ...] = (
    "rx_frames", "arp_requests_answered", "arp_replies_accepted", "arp_requests_sent", "arp_learned",
    "arp_refreshes", "arp_timeouts",
    "icmp_echo_answered", "udp_delivered", "udp_sent", "udp_queued", "ip_sent", "ip_queued",
)


def _ip_text(ip: bytes) -> str:
    return socket.inet_ntoa(ip)


class Stack:
    """One IPv4 host on one Ethernet segment (sans-IO). Not thread-safe; one owner drives it."""

    def __init__(self, mac: str | bytes, ip: str | bytes, prefixlen: int, now: float, *,
                 owns_address: bool = True,
                 resolve: Callable[[str], str | bytes | None] | None = None,
                 gateway: str | bytes | None = None,
                 mtu: int = 1500,
                 udp_ports: Iterable[int] | None = None,
                 accept_zero_udp_checksum: bool = True,
                 arp_ttl: float = 60.0, arp_interval: float = 1.0, arp_attempts: int = 3,
                 arp_max_queue: int = 16, arp_max_pending: int = 256, arp_refresh_ahead: float | None = None):
        try:
            self.mac = ethernet.mac_bytes(mac)
            self.ip = ipv4.ip_bytes(ip)
            self.network = ipaddress.IPv4Network((int.from_bytes(self.ip, "big"), prefixlen), strict=False)
        except ValueError as e:
            raise UsageError(f"bad stack address: {e}; give a MAC like 02:00:00:00:00:01, an IPv4 address and "
                             f"a prefix length 0-32") from None
        if ethernet.is_multicast_mac(self.mac) or self.mac == ethernet.ZERO_MAC:
            raise UsageError(f"{ethernet.mac_str(self.mac)} is not a unicast MAC; use the interface's MAC")
        if ipv4.is_bad_source(self.ip) or self.ip == b"\0\0\0\0":
            raise UsageError(f"{_ip_text(self.ip)} cannot be a host address; pick a unicast address")
        if prefixlen < 31 and self.ip in (self.network.network_address.packed,
                                          self.network.broadcast_address.packed):
            raise UsageError(f"{_ip_text(self.ip)} is the network or broadcast address of {self.network}; "
                             "pick a host address inside it")
        if not owns_address and resolve is None:
            raise UsageError("owns_address=False needs resolve=callable(ip) -> mac|None (the kernel's neighbour "
                             "table), since the stack does not run ARP for an address the kernel owns")
        if not 68 <= mtu <= 65535:
            raise UsageError(f"MTU {mtu} out of range 68-65535; use the interface's MTU")
        self.prefixlen = prefixlen
        self._netmask = int(self.network.netmask)
        self._netint = int(self.network.network_address)
        self._bcast = self.network.broadcast_address.packed if prefixlen < 31 else None
        self.gateway = None
        if gateway is not None:
            try:
                self.gateway = ipv4.ip_bytes(gateway)
            except ValueError as e:
                raise UsageError(f"bad gateway address: {e}") from None
            if not self.on_link(self.gateway):
                raise UsageError(f"gateway {_ip_text(self.gateway)} is not inside {self.network}; give an "
                                 "on-link gateway")
        self.owns_address = owns_address
        self.mtu = mtu
        self.accept_zero_udp_checksum = accept_zero_udp_checksum
        self.udp_ports: set[int] | None = set(udp_ports) if udp_ports is not None else None
        self._resolve = resolve
        try:
            self.arp = arp.ArpResolver(ttl=arp_ttl, interval=arp_interval, attempts=arp_attempts,
                                       max_queue=arp_max_queue, max_pending=arp_max_pending,
                                       refresh_ahead=arp_refresh_ahead)
        except ValueError as e:
            raise UsageError(f"{e}; the defaults (ttl 60 s, interval 1 s, 3 attempts) suit a LAN") from None
        self.counters: dict[str, int] = dict.fromkeys(DROP_REASONS + ACTIVITY, 0)
        self._events: deque[Event] = deque()
        self._ident = 0
        self.created_at = now  # the stack reads no clock; times are only ever arguments

    # ---------------------------------------------------------------------------------------- helpers

    def on_link(self, ip: bytes) -> bool:
        return (int.from_bytes(ip, "big") & self._netmask) == self._netint

    def drops(self) -> dict[str, int]:
        """Non-zero drop counters only."""
        return {k: self.counters[k] for k in DROP_REASONS if self.counters[k]}

    def _drop(self, reason: str) -> list[bytes]:
        self.counters[reason] += 1
        return []

    def bind(self, port: int) -> None:
        """Deliver datagrams for `port` (once any port is bound, others are counted as udp_no_listener)."""
        if not 1 <= port <= 0xFFFF:
            raise UsageError(f"UDP port {port} out of range 1-65535")
        if self.udp_ports is None:
            self.udp_ports = set()
        self.udp_ports.add(port)

    def unbind(self, port: int) -> None:
        if self.udp_ports is not None:
            self.udp_ports.discard(port)

    # ----------------------------------------------------------------------------------------- events

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        """All pending events, oldest first (drains them)."""
        out = list(self._events)
        self._events.clear()
        return out

    # ---------------------------------------------------------------------------------------- receive

    def receive(self, frame: bytes | bytearray | memoryview | np.ndarray, now: float) -> list[bytes]:
        """Take one received frame: bytes, or any contiguous buffer such as a numpy view of a UMEM frame.
        Nothing is kept (payloads are copied), so the caller may reuse or free the buffer on return.

        Returns frames to transmit now; queues events. Never raises on wire data."""
        self.counters["rx_frames"] += 1
        # a memoryview of bytes: indexing yields Python ints (numpy uint8 scalars would overflow on shifts)
        frame = memoryview(frame).cast("B")
        eth = ethernet.parse_ethernet(frame)
        if isinstance(eth, str):
            return self._drop(eth)
        if eth.dst != self.mac and eth.dst != BROADCAST_MAC:
            return self._drop("eth_not_for_us")
        if eth.ethertype == ETH_P_IP:
            return self._receive_ip(eth, frame[ETH_HLEN:], now)
        if eth.ethertype == ETH_P_ARP:
            return self._receive_arp(frame[ETH_HLEN:], now)
        if eth.ethertype in (ETH_P_8021Q, ETH_P_8021AD):
            return self._drop(ethernet.VLAN)
        return self._drop(ethernet.UNKNOWN_ETHERTYPE)

    def _receive_arp(self, payload: memoryview, now: float) -> list[bytes]:
        if not self.owns_address:
            return self._drop("arp_not_owned")
        pkt = arp.parse_arp(payload)
        if isinstance(pkt, str):
            return self._drop(pkt)
        if pkt.spa == self.ip:
            return self._drop("arp_ip_conflict")  # someone claims our address (or our own echo)
        to_us = pkt.tpa == self.ip
        martian = ipv4.is_bad_source(pkt.spa) or pkt.spa == self._bcast  # 0.0.0.0 included
        usable_sender = not martian and self.on_link(pkt.spa)
        known = self.arp.knows(pkt.spa, now)
        out: list[bytes] = []
        if usable_sender and (known or (to_us and pkt.op == arp.OP_REQUEST)):
            # RFC 826 merge: update what we know; add a new sender only when it asks us (we are about to
            # answer it, and will likely talk to it). Unsolicited replies never create entries, so a
            # stranger cannot flood the cache or plant one.
            released = self.arp.learn(pkt.spa, pkt.sha, now)
            self.counters["arp_learned"] += 1
            out.extend(self._flush(pkt.sha, released))
            if released:
                self._events.append(ArpResolved(_ip_text(pkt.spa), ethernet.mac_str(pkt.sha)))
        if not to_us:
            self.counters["arp_not_for_us"] += 1
            return out
        if pkt.op == arp.OP_REQUEST:
            if not martian or pkt.spa == b"\0\0\0\0":
                # probes (spa 0.0.0.0, RFC 5227 address conflict detection) are answered too, as Linux's
                # arp_process answers them: unicast to the prober's MAC, target 0.0.0.0 / its MAC. An
                # off-subnet sender is answered (Linux does, without strict rp_filter) but not learned.
                out.append(arp.reply_frame(self.mac, self.ip, pkt.sha, pkt.spa))
                self.counters["arp_requests_answered"] += 1
            else:  # a martian sender (multicast, broadcast, loopback, 0/8): Linux's route check refuses it
                self.counters[arp.BAD_SENDER] += 1
        elif not usable_sender:
            self.counters[arp.BAD_SENDER] += 1  # a reply from 0.0.0.0 or off-subnet tells us nothing
        elif known:
            self.counters["arp_replies_accepted"] += 1
        else:
            self.counters["arp_unsolicited"] += 1
        return out

    def _receive_ip(self, eth: ethernet.EthernetHeader, payload: memoryview, now: float) -> list[bytes]:
        h = ipv4.parse_ipv4(payload)
        if isinstance(h, str):
            return self._drop(h)
        if h.dst != self.ip:
            return self._drop("ip_not_for_us")
        if h.src == self.ip or h.src == self._bcast:
            return self._drop(ipv4.BAD_SOURCE)
        body = payload[h.header_length:h.total_length]
        if h.proto == IPPROTO_UDP:
            u = udp.parse_udp(body, h.src, h.dst, accept_zero_checksum=self.accept_zero_udp_checksum)
            if isinstance(u, str):
                return self._drop(u)
            if self.udp_ports is not None and u.dst_port not in self.udp_ports:
                return self._drop("udp_no_listener")
            self._events.append(UdpDatagram(_ip_text(h.src), u.src_port, u.dst_port, bytes(body[8:u.length])))
            self.counters["udp_delivered"] += 1
            return []
        if h.proto == IPPROTO_ICMP:
            if not self.owns_address:
                return self._drop("icmp_not_owned")
            req = icmp.parse_echo(body)
            if isinstance(req, str):
                return self._drop(req)
            self.counters["icmp_echo_answered"] += 1
            # answer to the MAC it came from, as a reflector does: no ARP round trip for a ping
            return [build_ethernet(eth.src, self.mac, ETH_P_IP,
                                   ipv4.build_ipv4(self.ip, h.src, IPPROTO_ICMP, icmp.build_echo_reply(req),
                                                   ident=self._next_ident()))]
        return self._drop("ip_unknown_protocol")

    # ------------------------------------------------------------------------------------------- send

    def _next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def _flush(self, mac: bytes, packets: list[bytes]) -> list[bytes]:
        udp_sent = sum(1 for p in packets if p[9] == IPPROTO_UDP)
        self.counters["udp_sent"] += udp_sent
        self.counters["ip_sent"] += len(packets) - udp_sent
        return [build_ethernet(mac, self.mac, ETH_P_IP, p) for p in packets]

    def max_payload(self) -> int:
        """Largest UDP payload that fits one unfragmented packet."""
        return self.mtu - ipv4.IPV4_HLEN - udp.UDP_HLEN

    def send_udp(self, dst_ip: str | bytes, dst_port: int, src_port: int, payload: bytes,
                 now: float) -> list[bytes]:
        """Frames to transmit for one datagram: the datagram itself when the peer's MAC is known, else an
        ARP request (owned mode) while the datagram waits in a bounded queue, released by `receive` when
        the reply comes (or dropped with an `ArpTimeout` event after the last attempt)."""
        dst = self._check_flow(dst_ip, dst_port, src_port)
        if len(payload) > self.max_payload():
            raise UsageError(f"a {len(payload)}-byte message exceeds the MTU ({self.mtu}: at most "
                             f"{self.max_payload()} bytes of UDP payload); kbypass does not fragment, send less")
        packet = ipv4.build_ipv4(self.ip, dst, IPPROTO_UDP,
                                 udp.build_udp(self.ip, dst, src_port, dst_port, payload),
                                 ident=self._next_ident())
        return self._route(dst, packet, "udp_queued", now)

    def send_ip(self, dst_ip: str | bytes, proto: int, payload: bytes, now: float) -> list[bytes]:
        """Frames for one IP packet carrying `payload` of protocol `proto` (a TCP segment the TCP endpoint
        built, say): sent now when the next hop's MAC is known, else parked behind its resolution as
        `send_udp` parks a datagram."""
        try:
            dst = ipv4.ip_bytes(dst_ip)
        except ValueError as e:
            raise UsageError(f"bad destination address: {e}") from None
        if len(payload) > self.mtu - ipv4.IPV4_HLEN:
            raise UsageError(f"a {len(payload)}-byte IP payload exceeds the MTU ({self.mtu}); kbypass does not "
                             "fragment: send less")
        return self._route(dst, ipv4.build_ipv4(self.ip, dst, proto, payload, ident=self._next_ident()),
                           "ip_queued", now)

    def next_hop_mac(self, dst_ip: str | bytes, now: float) -> bytes | None:
        """The MAC the next packet to dst_ip goes to when known now (no resolution started), else None."""
        return self._next_hop_mac(ipv4.ip_bytes(dst_ip), now)[1]

    def probe(self, dst_ip: str | bytes, now: float) -> tuple[bytes | None, list[bytes]]:
        """(the next hop's MAC toward dst_ip or None, frames to send): one resolution attempt when the MAC
        is not known (an ARP request, or a question to `resolve`), for a caller that wants the MAC before
        its first packet (a TCP connect: a SYN lost to ARP costs a second-long retransmission). Owned mode:
        one ARP request, then the timers retry as for a parked packet; resolve mode: the callback is asked
        at every call (the caller paces them)."""
        dst = ipv4.ip_bytes(dst_ip)
        hop, mac = self._next_hop_mac(dst, now)
        if mac is not None:
            return mac, []
        accepted, ask_now = self.arp.expect(hop, now)  # pending: the reply is an answer, retries run
        if not accepted:
            self.counters["tx_arp_pending_full"] += 1
            return None, []
        out = self._solicit(hop, now) if ask_now or self._resolve is not None else []
        return self.arp.lookup(hop, now), out

    def _route(self, dst: bytes, packet: bytes, queued: str, now: float) -> list[bytes]:
        hop, mac = self._next_hop_mac(dst, now)
        if mac is not None:
            return self._flush(mac, [packet])
        was_pending = self.arp.is_pending(hop)
        accepted, ask_now = self.arp.enqueue(hop, packet, now)
        if not accepted:
            return self._drop("tx_arp_queue_full" if was_pending else "tx_arp_pending_full")
        self.counters[queued] += 1
        return self._solicit(hop, now) if ask_now else []

    def _check_flow(self, dst_ip: str | bytes, dst_port: int, src_port: int) -> bytes:
        try:
            dst = ipv4.ip_bytes(dst_ip)
        except ValueError as e:
            raise UsageError(f"bad destination address: {e}") from None
        if not 1 <= dst_port <= 0xFFFF or not 0 <= src_port <= 0xFFFF:
            raise UsageError(f"UDP ports out of range: dst {dst_port} (1-65535), src {src_port} (0-65535)")
        if dst == self.ip:
            raise UsageError("cannot send to the stack's own address; use a peer address")
        return dst

    def _next_hop_mac(self, dst: bytes, now: float) -> tuple[bytes, bytes | None]:
        """(next hop, its MAC if known without asking). Raises UsageError for unroutable destinations."""
        if dst == b"\xff\xff\xff\xff" or dst == self._bcast:
            return dst, BROADCAST_MAC
        if 224 <= dst[0] < 240:
            return dst, ipv4.multicast_mac(dst)
        if self.on_link(dst):
            hop = dst
        elif self.gateway is not None:
            hop = self.gateway
        else:
            raise UsageError(f"{_ip_text(dst)} is outside {self.network} and no gateway is set: give an on-link "
                             "router as gateway=IP (UdpEndpoint, Stack; --gateway IP for kbypass pingpong) or "
                             "send inside the subnet")
        return hop, self.arp.lookup(hop, now)

    def udp_template(self, dst_ip: str | bytes, dst_port: int, src_port: int, now: float) -> bytes | None:
        """The 42 header bytes of a flow for batch transmit (`udp.frame_template`: lengths and checksums
        left zero for `udp.write_lengths_batch` and the `checksum.*_fill_batch` functions), or None while
        the peer's MAC is unknown: then send one datagram with `send_udp`, which starts the resolution.
        Ask again per batch: entries expire."""
        dst = self._check_flow(dst_ip, dst_port, src_port)
        _, mac = self._next_hop_mac(dst, now)
        if mac is None:
            return None
        return udp.frame_template(self.mac, mac, self.ip, dst, src_port, dst_port)

    def _solicit(self, hop: bytes, now: float) -> list[bytes]:
        """One resolution attempt for `hop`: an ARP request, or a question to the resolve callback."""
        if self._resolve is None:
            self.counters["arp_requests_sent"] += 1
            return [arp.request_frame(self.mac, self.ip, hop)]
        try:
            answer = self._resolve(_ip_text(hop))
            mac = ethernet.mac_bytes(answer) if answer is not None else None
        except ValueError:
            mac = None  # a malformed answer counts as "not known yet"; the next attempt asks again
        if mac is None or ethernet.is_multicast_mac(mac) or mac == ethernet.ZERO_MAC:
            return []
        was_pending = self.arp.is_pending(hop)
        released = self.arp.learn(hop, mac, now)
        if was_pending:  # a refresh of a known entry is not news
            self._events.append(ArpResolved(_ip_text(hop), ethernet.mac_str(mac)))
        return self._flush(mac, released)

    # ------------------------------------------------------------------------------------------ timers

    def next_timer(self) -> float | None:
        """When `handle_timer` must next be called (absolute time), or None when nothing waits."""
        return self.arp.next_timer()

    def handle_timer(self, now: float) -> list[bytes]:
        """Run due timers: ARP retries and refreshes of entries in use (frames returned), and timeouts
        (`ArpTimeout` events; a neighbour in use that stopped answering its refresh probes is one, with
        nothing dropped, and its entry is gone: the next send resolves afresh)."""
        retry, expired, refresh = self.arp.handle_timer(now)
        out: list[bytes] = []
        for ip in retry:
            out.extend(self._solicit(ip, now))
        for ip, mac in refresh:
            # re-check a neighbour in use before its entry expires, while still sending to it: unicast
            # probes, then one broadcast (mac None); the resolver paces them (Linux's PROBE state)
            self.counters["arp_refreshes"] += 1
            if self._resolve is None:
                self.counters["arp_requests_sent"] += 1
                out.append(arp.request_frame(self.mac, self.ip, ip, dst_mac=mac or BROADCAST_MAC))
            else:
                out.extend(self._solicit(ip, now))
        for ip, dropped in expired:
            self.counters["arp_timeouts"] += 1
            self.counters["tx_arp_timeout"] += len(dropped)
            self._events.append(ArpTimeout(_ip_text(ip), len(dropped)))
        return out

    # -------------------------------------------------------------------------------------- announcing

    def gratuitous_arp(self, *, reply: bool = False) -> bytes:
        """A gratuitous ARP announcing our address (send it after taking the address over)."""
        return arp.gratuitous_frame(self.mac, self.ip, reply=reply)

    # -------------------------------------------------------------------------------------- fast path

    def fast_path_mask(self, buf: np.ndarray, addr: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Mask of frames in a received batch that are valid UDP for this stack's bound ports (all ports
        when none are bound); pass the rest to `receive` so they are answered or counted."""
        ports = None if self.udp_ports is None else np.fromiter(self.udp_ports, dtype=np.int64)
        return udp.classify_batch(buf, addr, length, mac=self.mac, ip=self.ip, ports=ports,
                                  accept_zero_checksum=self.accept_zero_udp_checksum, broadcast=self._bcast)
