"""ARP for IPv4 over Ethernet (RFC 826): packet parse/build, gratuitous ARP, and a sans-IO resolver.

The resolver (`ArpResolver`) owns the neighbour cache and the pending-resolution table: entries expire
after `ttl` seconds, a resolution sends up to `attempts` requests `interval` seconds apart and then gives
up, and packets waiting for a MAC are queued with hard bounds (per address and number of addresses) so a
peer that never answers cannot grow memory. Time is always an argument.

An entry in use is re-checked `refresh_ahead` seconds before it expires, so a busy flow never stalls on a
resolution. The re-check is Linux's neighbour PROBE state, kept per address: `attempts` unicast requests to
the cached MAC `interval` seconds apart, then one broadcast request, then FAILED (the entry is dropped and
reported as a timeout with nothing queued; the next send starts a fresh resolution). Sending to the entry
meanwhile neither restarts nor speeds up the probing, so a silent peer costs attempts + 1 requests per
entry lifetime, whatever the send rate.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from .ethernet import BROADCAST_MAC, ETH_P_ARP, ETH_P_IP, ZERO_MAC, build_ethernet

ARP_LEN = 28
OP_REQUEST = 1
OP_REPLY = 2
HTYPE_ETHERNET = 1

# drop reasons (counter names)
TRUNCATED = "arp_truncated"
UNSUPPORTED = "arp_unsupported"  # not Ethernet/IPv4 address sizes
BAD_OP = "arp_bad_op"
BAD_SENDER = "arp_bad_sender"  # multicast/broadcast/zero sender MAC; (Stack) a martian sender IP


@dataclass(frozen=True, slots=True)
class ArpPacket:
    op: int
    sha: bytes  # sender hardware address
    spa: bytes  # sender protocol address (4 bytes)
    tha: bytes
    tpa: bytes


def parse_arp(payload: bytes | memoryview) -> ArpPacket | str:
    """ARP packet from an Ethernet payload (trailing padding allowed), or a drop-reason string."""
    if len(payload) < ARP_LEN:
        return TRUNCATED
    p = bytes(payload[:ARP_LEN])
    if p[0:2] != b"\x00\x01" or p[2:4] != ETH_P_IP.to_bytes(2, "big") or p[4] != 6 or p[5] != 4:
        return UNSUPPORTED
    op = (p[6] << 8) | p[7]
    if op not in (OP_REQUEST, OP_REPLY):
        return BAD_OP
    sha = p[8:14]
    if sha[0] & 1 or sha == ZERO_MAC:
        return BAD_SENDER
    return ArpPacket(op, sha, p[14:18], p[18:24], p[24:28])


def build_arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    """The 28-byte ARP payload."""
    return (b"\x00\x01" + ETH_P_IP.to_bytes(2, "big") + b"\x06\x04" + op.to_bytes(2, "big")
            + sha + spa + tha + tpa)


def request_frame(src_mac: bytes, src_ip: bytes, target_ip: bytes, *, dst_mac: bytes = BROADCAST_MAC) -> bytes:
    """'who has target_ip? tell src_ip', broadcast, or unicast to `dst_mac` to re-check a cached entry."""
    return build_ethernet(dst_mac, src_mac, ETH_P_ARP,
                          build_arp(OP_REQUEST, src_mac, src_ip, ZERO_MAC, target_ip), pad=True)


def reply_frame(src_mac: bytes, src_ip: bytes, dst_mac: bytes, dst_ip: bytes) -> bytes:
    """Unicast 'src_ip is at src_mac' to the asker."""
    return build_ethernet(dst_mac, src_mac, ETH_P_ARP,
                          build_arp(OP_REPLY, src_mac, src_ip, dst_mac, dst_ip), pad=True)


def gratuitous_frame(mac: bytes, ip: bytes, *, reply: bool = False) -> bytes:
    """Gratuitous ARP announcing ip -> mac (RFC 5227 announcement: a broadcast request with spa == tpa;
    `reply=True` gives the older reply form some switches expect)."""
    op = OP_REPLY if reply else OP_REQUEST
    tha = BROADCAST_MAC if reply else ZERO_MAC
    return build_ethernet(BROADCAST_MAC, mac, ETH_P_ARP, build_arp(op, mac, ip, tha, ip), pad=True)


@dataclass(slots=True)
class _Pending:
    next_at: float
    sent: int
    queue: deque = field(default_factory=deque)


@dataclass(slots=True)
class _Probe:
    """A cached entry being re-checked (PROBE): when the next request is due and how many went out."""
    next_at: float
    sent: int


class ArpResolver:
    """Neighbour cache + pending resolutions. Holds opaque queued items (the stack queues IP packets).

    `lookup(ip, now)` gives a MAC or None; `enqueue(ip, item, now)` parks an item and says whether a
    request must be sent now; `learn(ip, mac, now)` fills the cache and returns the items released;
    `handle_timer(now)` returns (ips to re-request, [(ip, dropped items)] that timed out, [(ip, mac)] of
    entries in use due for a refresh probe: unicast to mac, or broadcast when mac is None). A refresh
    that went unanswered shows up among the timeouts with no items.

    What an "attempt" is belongs to the caller: an ARP request, or (when the kernel owns the address) a
    question to the kernel's neighbour table."""

    def __init__(self, *, ttl: float = 60.0, interval: float = 1.0, attempts: int = 3,
                 max_queue: int = 16, max_pending: int = 256, max_entries: int = 4096,
                 refresh_ahead: float | None = None):
        if attempts < 1 or interval <= 0 or ttl <= 0:
            raise ValueError("ARP attempts must be >= 1, interval and ttl > 0")
        # default: a quarter of the lifetime, enough for `attempts` unanswered-then-answered requests
        self.refresh_ahead = ttl / 4 if refresh_ahead is None else refresh_ahead
        self.ttl, self.interval, self.attempts = ttl, interval, attempts
        self.max_queue, self.max_pending, self.max_entries = max_queue, max_pending, max_entries
        self._cache: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()  # ip -> (mac, expires)
        self._pending: dict[bytes, _Pending] = {}
        self._in_use: dict[bytes, float] = {}  # ip -> when to refresh; entries looked up since learned
        self._probing: dict[bytes, _Probe] = {}  # entries being re-checked (PROBE); not in _in_use

    def __len__(self) -> int:
        return len(self._cache)

    def entries(self, now: float) -> dict[bytes, bytes]:
        """Live cache entries (ip -> mac)."""
        return {ip: mac for ip, (mac, exp) in self._cache.items() if exp > now}

    def lookup(self, ip: bytes, now: float) -> bytes | None:
        hit = self._cache.get(ip)
        if hit is None:
            return None
        if hit[1] <= now:
            self._forget(ip)
            return None
        if self.refresh_ahead > 0 and ip not in self._in_use and ip not in self._probing:
            self._in_use[ip] = hit[1] - self.refresh_ahead
        return hit[0]

    def _forget(self, ip: bytes) -> None:
        self._cache.pop(ip, None)
        self._in_use.pop(ip, None)
        self._probing.pop(ip, None)

    def is_pending(self, ip: bytes) -> bool:
        return ip in self._pending

    def knows(self, ip: bytes, now: float) -> bool:
        """Cached (and live) or being resolved. Unlike `lookup`, does not count as a use."""
        hit = self._cache.get(ip)
        return (hit is not None and hit[1] > now) or ip in self._pending

    def learn(self, ip: bytes, mac: bytes, now: float) -> list:
        """Cache ip -> mac and return the items that were waiting for it (in order)."""
        self._cache.pop(ip, None)
        self._cache[ip] = (mac, now + self.ttl)
        self._in_use.pop(ip, None)  # fresh: tracked again from its next use
        self._probing.pop(ip, None)  # the answer to a refresh probe (or news): back to REACHABLE
        while len(self._cache) > self.max_entries:
            old = next(iter(self._cache))  # oldest insertion first
            self._forget(old)
        p = self._pending.pop(ip, None)
        return list(p.queue) if p else []

    def refresh(self, ip: bytes, mac: bytes, now: float) -> list:
        """RFC 826 merge: update an address already cached or pending; ignore strangers. Returns released
        items (if it was pending)."""
        if ip in self._cache or ip in self._pending:
            return self.learn(ip, mac, now)
        return []

    def enqueue(self, ip: bytes, item, now: float) -> tuple[bool, bool]:
        """Park `item` until ip resolves. Returns (accepted, send_request_now)."""
        p = self._pending.get(ip)
        if p is None:
            if len(self._pending) >= self.max_pending:
                return False, False
            p = self._pending[ip] = _Pending(next_at=now + self.interval, sent=1)
            p.queue.append(item)
            return True, True
        if len(p.queue) >= self.max_queue:
            return False, False
        p.queue.append(item)
        return True, False

    def expect(self, ip: bytes, now: float) -> tuple[bool, bool]:
        """Start resolving ip with nothing parked (a caller that wants the MAC before its first packet), so
        the reply is taken as an answer and the retries and the timeout run as for a parked packet.
        Returns (accepted, send_request_now) as enqueue does."""
        if ip in self._pending:
            return True, False
        if len(self._pending) >= self.max_pending:
            return False, False
        self._pending[ip] = _Pending(next_at=now + self.interval, sent=1)
        return True, True

    def next_timer(self) -> float | None:
        times = [p.next_at for p in self._pending.values()]
        times += self._in_use.values()
        times += (p.next_at for p in self._probing.values())
        return min(times, default=None)

    def handle_timer(self, now: float) -> tuple[list[bytes], list[tuple[bytes, list]],
                                                list[tuple[bytes, bytes | None]]]:
        refresh: list[tuple[bytes, bytes | None]] = []
        expired: list[tuple[bytes, list]] = []
        for ip, at in list(self._in_use.items()):
            if at <= now:
                del self._in_use[ip]  # now PROBE: the probe state owns the re-check until learn() or FAILED
                hit = self._cache.get(ip)
                if hit is not None and hit[1] > now:
                    self._probing[ip] = _Probe(now + self.interval, 1)
                    refresh.append((ip, hit[0]))
        for ip, pr in list(self._probing.items()):
            if pr.next_at > now:
                continue
            hit = self._cache.get(ip)
            if hit is None or hit[1] <= now:  # expired meanwhile: the next use resolves afresh
                self._forget(ip)
            elif pr.sent < self.attempts:  # unicast probes to the cached MAC
                pr.sent += 1
                pr.next_at = now + self.interval
                refresh.append((ip, hit[0]))
            elif pr.sent == self.attempts:  # the last try: broadcast, in case the peer changed MAC
                pr.sent += 1
                pr.next_at = now + self.interval
                refresh.append((ip, None))
            else:  # FAILED: stop using the entry; nothing was waiting on it
                self._forget(ip)
                expired.append((ip, []))
        retry: list[bytes] = []
        for ip, p in list(self._pending.items()):
            if p.next_at > now:
                continue
            if p.sent >= self.attempts:
                del self._pending[ip]
                expired.append((ip, list(p.queue)))
            else:
                p.sent += 1
                p.next_at = now + self.interval
                retry.append(ip)
        for ip in [ip for ip, (_, exp) in self._cache.items() if exp <= now]:
            del self._cache[ip]
        return retry, expired, refresh
