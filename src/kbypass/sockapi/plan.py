"""Where a kbypass UDP socket's traffic goes: the bypass on a served interface, or the kernel, and why.

A socket is accelerated when its local address is on an interface kbypass serves: any interface of this
network namespace that is not a loopback one, or only those `$KBYPASS_IFACE` names (comma-separated).
Everything else stays a kernel socket, with the reason kept
(`socket.kbypass_reason`):

- a loopback address, or an address on an interface that is not served;
- the wildcard address (`0.0.0.0`, `""`) when the namespace has no single served interface with one
  IPv4 address to take it for (bind that address instead, or name the interface in `$KBYPASS_IFACE`);
- an unbound socket that sends first: the kernel's route to the destination picks the interface and the
  source address, as its autobind would.

Per datagram, a destination the rings cannot reach goes out through the kernel socket that holds the port
(`Plan.via_ring`): this host's own addresses and loopback (a frame sent on the wire never comes back to
us), broadcast and multicast (the kernel's rules: SO_BROADCAST, IP_MULTICAST_*), and peers off the subnet
when the interface has no default gateway.

The facts come from netlink (pyroute2) in the caller's namespace, read once per socket.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from kbypass.net.offloop import outside_loop

ANY = "0.0.0.0"


@dataclass(frozen=True)
class Plan:
    """ifname None: the kernel, for `reason`. Otherwise the bypass on `ifname` with local address `ip`
    (`prefixlen`), next hop `gateway` for peers off the subnet, and `local` the host's own addresses."""

    ifname: str | None
    ip: str = ""
    prefixlen: int = 32
    gateway: str | None = None
    reason: str | None = None
    local: frozenset = field(default_factory=frozenset)
    queues: int = 1  # the interface's receive queues

    def via_ring(self, dst: str) -> bool:
        """Can a datagram to `dst` leave through the rings (see the module doc)?"""
        try:
            d = ipaddress.IPv4Address(dst)
        except ValueError:
            return False
        if dst in self.local or d.is_loopback or d.is_multicast or d.is_unspecified or dst == "255.255.255.255":
            return False
        net = ipaddress.IPv4Network(f"{self.ip}/{self.prefixlen}", strict=False)
        if d in net:
            return self.prefixlen >= 31 or d != net.broadcast_address
        return self.gateway is not None


def served(ifname: str, env: str | None = None) -> str | None:
    """None when kbypass serves `ifname`, else why not."""
    want = os.environ.get("KBYPASS_IFACE", "") if env is None else env
    names = [n.strip() for n in want.split(",") if n.strip()]
    if names and ifname not in names:
        return f"interface {ifname} is not served (KBYPASS_IFACE={want})"
    return None


class _Netlink:
    """The namespace's addresses and routes, read through one netlink socket."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self.ipr = IPRoute()
        links = self.ipr.get_links()
        self.names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
        self.queues = {link["index"]: link.get_attr("IFLA_NUM_RX_QUEUES") or 1 for link in links}
        self.loopback = {link["index"] for link in links if link["flags"] & 0x8}  # IFF_LOOPBACK
        self.addrs = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"], a["index"])
                      for a in self.ipr.get_addr(family=2)]

    def gateway(self, index: int) -> str | None:
        for r in self.ipr.get_routes(family=2, table=254):
            if r["dst_len"] == 0 and r.get_attr("RTA_OIF") == index and r.get_attr("RTA_GATEWAY"):
                return r.get_attr("RTA_GATEWAY")
        return None

    def route(self, dst: str) -> tuple[int | None, str | None]:
        """(interface index, preferred source address) of the kernel's route to dst."""
        try:
            r = self.ipr.route("get", dst=dst)[0]
        except Exception:
            return None, None
        return r.get_attr("RTA_OIF"), r.get_attr("RTA_PREFSRC")

    def close(self) -> None:
        self.ipr.close()


def _plan_on(nl: _Netlink, ip: str, index: int, prefixlen: int) -> Plan:
    name = nl.names.get(index, f"#{index}")
    if index in nl.loopback:
        return Plan(None, ip, reason=f"{ip} is on the loopback interface {name}: the kernel keeps it")
    why = served(name)
    if why:
        return Plan(None, ip, reason=why)
    return Plan(name, ip, prefixlen, nl.gateway(index), local=frozenset(a for a, _, _ in nl.addrs),
                queues=nl.queues.get(index, 1))


def for_bind(ip: str) -> Plan:
    """The plan of a socket bound to ip (already bound in the kernel, so the address exists here)."""
    return outside_loop(_for_bind, ip)


def _for_bind(ip: str) -> Plan:
    nl = _Netlink()
    try:
        if ip == ANY:
            cands = [(a, p, i) for a, p, i in nl.addrs if i not in nl.loopback and not served(nl.names.get(i, ""))]
            if len(cands) != 1:
                seen = ", ".join(f"{a} ({nl.names.get(i)})" for a, _, i in cands) or "none"
                return Plan(None, ip, reason=f"bound to the wildcard address with {len(cands)} served addresses "
                                             f"here ({seen}): bind one of them, or set KBYPASS_IFACE to one interface")
            a, p, i = cands[0]
            return _plan_on(nl, a, i, p)
        if ipaddress.IPv4Address(ip).is_loopback:
            return Plan(None, ip, reason=f"{ip} is a loopback address: the kernel keeps it")
        for a, p, i in nl.addrs:
            if a == ip:
                return _plan_on(nl, ip, i, p)
        return Plan(None, ip, reason=f"{ip} is not an address of an interface here")
    finally:
        nl.close()


def for_destination(dst: str) -> Plan:
    """The plan of an unbound socket that first talks to dst: the kernel's route picks the interface and
    the source address."""
    return outside_loop(_for_destination, dst)


def _for_destination(dst: str) -> Plan:
    nl = _Netlink()
    try:
        index, src = nl.route(dst)
        if index is None or src is None:
            return Plan(None, reason=f"no route to {dst} here: the kernel handles the socket")
        for a, p, i in nl.addrs:
            if a == src and i == index:
                return _plan_on(nl, src, i, p)
        return _plan_on(nl, src, index, 32)
    finally:
        nl.close()
