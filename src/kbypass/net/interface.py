"""One interface's facts, read through netlink (pyroute2) inside its namespace, and the kernel-side UDP
bind an endpoint holds while it serves a port the kernel also owns.

    with Interface("kb-b", "kb-b") as iface:
        iface.mac, iface.mtu, iface.ifindex, iface.nets   # flat, typed: no nested attribute lists
        iface.neighbour("10.77.0.1")                      # the kernel's ARP entry, or None (and a probe)
    link_info("kb-b", "kb-b")                             # the same facts as a LinkInfo, netlink closed
    placeholder = bind_udp("kb-b", "10.77.0.2", 0)        # a kernel socket holding the port
    placeholder = bind_tcp("kb-b", "10.77.0.2", 8080)     # the same for a userspace TCP port (never listens)
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import NamedTuple

from kbypass import netns as _netns
from kbypass.errors import UsageError

from .offloop import outside_loop

NTF_USE = 0x01
# neighbour states whose lladdr can be used (REACHABLE, STALE, DELAY, PROBE, NOARP, PERMANENT)
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80


class LinkInfo(NamedTuple):
    """An interface's MAC (text), MTU, IPv4 addresses (text, the interface's own first) and index."""

    mac: str
    mtu: int
    ipv4: list[str]
    ifindex: int

    def __getitem__(self, key):  # info["mac"] as well as info.mac: the transport endpoint reads it so
        return getattr(self, key) if isinstance(key, str) else tuple.__getitem__(self, key)


class Interface:
    """What an endpoint needs to know about an interface, read once through netlink in its namespace; the
    netlink socket stays open for `neighbour()` until close() (or the end of a `with` block).

    ifindex, mac (text), mtu, nets (its IPv4Interface list), all_local (every IPv4 address of the
    namespace, text)."""

    def __init__(self, ifname: str, netns: str | None) -> None:
        outside_loop(self._read, ifname, netns)

    def _read(self, ifname: str, netns: str | None) -> None:
        from pyroute2 import IPRoute

        self.ifname, self.netns = ifname, netns
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

    @property
    def info(self) -> LinkInfo:
        return LinkInfo(self.mac, self.mtu, [str(n.ip) for n in self.nets], self.ifindex)

    def neighbour(self, ip: str) -> str | None:
        """The kernel's usable neighbour entry for ip, or None after asking the kernel to resolve it."""
        return outside_loop(self._neighbour, ip)

    def _neighbour(self, ip: str) -> str | None:
        try:
            for n in self.ipr.get_neighbours(ifindex=self.ifindex, family=socket.AF_INET, dst=ip):
                mac = n.get_attr("NDA_LLADDR")
                if mac and n["state"] & NUD_USABLE and n.get_attr("NDA_DST") == ip:
                    return mac
            # NTF_USE makes the kernel start (or continue) resolving, like a send through it would
            self.ipr.neigh("replace", dst=ip, ifindex=self.ifindex, flags=NTF_USE, state=0)
        except Exception:  # netlink hiccups count as "not known yet": the caller asks again
            pass
        return None

    def close(self) -> None:
        outside_loop(self.ipr.close)

    def __enter__(self) -> "Interface":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def link_info(ifname: str, netns: str | None) -> LinkInfo:
    """MAC, MTU, IPv4 addresses and index of ifname, read through netlink inside netns."""
    with Interface(ifname, netns) as iface:
        return iface.info


def check_address(iface: Interface, ip: str, dedicated: bool, prefixlen: int | None) -> int:
    """The prefix length to use for `ip` on `iface`, with a UsageError naming the fix when it does not fit:
    one of the interface's own addresses, or (dedicated) one the kernel does not have, inside a subnet of
    the interface unless `prefixlen` is given."""
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


def bind_udp(netns: str | None, ip: str, port: int) -> socket.socket:
    """A kernel UDP socket bound to ip:port in netns, with a clear error when the port is taken. An
    endpoint that serves a port of an address the kernel owns holds one: a kernel socket already there is
    refused clearly, none can bind it later, and port 0 picks a free port (`getsockname()`)."""
    return _bind(netns, ip, port, socket.SOCK_DGRAM)


def bind_tcp(netns: str | None, ip: str, port: int) -> socket.socket:
    """A kernel TCP socket bound to ip:port in netns and never listening: it holds the port for a userspace
    TCP endpoint (the kernel will not hand it out as an ephemeral port, nor let a server bind it), while
    the steering program takes every segment of the port before the kernel could answer one (a bound,
    non-listening socket would otherwise RST a SYN). A port a kernel socket already holds (a listening
    server, a connection from that port) is a UsageError naming the fix; 0 picks a free port."""
    return _bind(netns, ip, port, socket.SOCK_STREAM)


def _kernel_states(ip: str, port: int) -> set[str]:
    """States (hex, as /proc/net/tcp writes them: 0A listen, 06 TIME_WAIT) of the kernel TCP sockets on
    ip:port or the wildcard with that port, in the namespace we are in (/proc shows the reading thread's)."""
    want = {f"{int.from_bytes(socket.inet_aton(a), 'little'):08X}:{port:04X}" for a in (ip, "0.0.0.0")}
    try:
        with open("/proc/thread-self/net/tcp") as f:
            next(f)
            return {fields[3] for fields in (line.split() for line in f) if fields[1] in want}
    except OSError:
        return set()


LISTEN, TIME_WAIT = "0A", "06"


def _bind(netns: str | None, ip: str, port: int, kind: int) -> socket.socket:
    with _netns.entered(netns):
        s = socket.socket(socket.AF_INET, kind)
        states = _kernel_states(ip, port) if kind == socket.SOCK_STREAM and port else set()
        if states == {TIME_WAIT}:
            # only connections the kernel is finishing (a server that just exited): they never take a SYN
            # from the wire again, so sharing the port with them is what SO_REUSEADDR is for
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as e:
            s.close()
            proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
            if e.errno == errno.EADDRINUSE:
                if LISTEN in states:
                    raise UsageError(f"{ip}:{port} is a kernel TCP server's: a kernel socket listens on it; stop "
                                     "that server or pick another port") from None
                raise UsageError(f"{ip}:{port} is already bound by another {proto} socket in the kernel: pick "
                                 "another port or stop that program") from None
            raise UsageError(f"cannot bind {proto} {ip}:{port}: {e.strerror}") from None
    return s
