"""What the preload shim (`kbypass run`, csrc/preload) asks the control plane: `accelerate` and `next_hop`.

`accelerate` comes with one fd: the application's own UDP socket (or TCP socket: listening, or bound before
its connect), already bound in the kernel. That socket is the proof of ownership a peer credential cannot
give: the kernel let this process bind ip:port, so this process may have that port's datagrams steered to its
AF_XDP sockets (an unprivileged app too, without --allow-kernel-ports: the kernel socket on the port is its
own placeholder). The control plane reads the address from the socket (never from the message), finds the
interface that holds it, adds the rule `udp dst IP dport PORT` (`tcp ...` for a TCP socket) in the client's
socket group and answers what the shim needs to build frames: the interface, its MAC, MTU, receive queues, the
address's prefix. The shim then asks `open_socket` for each queue it has no socket on yet. Everything goes
with the client's connection (kill -9 included).

`next_hop` {iface, dst} answers the MAC the kernel's routes and neighbour table give for dst out of iface
(the gateway's for an off-link dst), "" while the kernel is still resolving it (it is asked to, NTF_USE): the
shim then sends that datagram through its kernel socket and asks again later. So the shim needs no netlink.
"""

from __future__ import annotations

import ipaddress
import socket

from kbypass.xsk.socket import rx_queue_count

from .protocol import ProtocolError

NTF_USE = 0x01
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT


def bound_flow(fd: int) -> tuple[str, str, int]:
    """The protocol ("udp" or "tcp"), IPv4 address and port an application's socket is bound to: a UDP
    socket, or a TCP socket (listening, or bound before its connect: kbypass run's TCP); ProtocolError
    otherwise."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        raise ProtocolError("accelerate: send the application's bound UDP or TCP socket with it") from None
    try:
        proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        kinds = {(socket.SOCK_DGRAM, socket.IPPROTO_UDP): "udp", (socket.SOCK_STREAM, socket.IPPROTO_TCP): "tcp"}
        kind = kinds.get((s.type, proto)) if s.family == socket.AF_INET else None
        if kind is None:
            raise ProtocolError("accelerate: only IPv4 UDP and TCP sockets are accelerated")
        ip, port = s.getsockname()
    finally:
        s.detach()  # the caller closes the fd
    if port == 0:
        raise ProtocolError("accelerate: bind the socket first (its port is 0)")
    return kind, ip, port


def port_owners(proto: str) -> dict[int, set[int]]:
    """The uids of the kernel sockets of this namespace by local port (/proc/net/{udp,tcp}{,6})."""
    owners: dict[int, set[int]] = {}
    for name in (proto, proto + "6"):
        try:
            with open(f"/proc/net/{name}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    owners.setdefault(int(fields[1].rsplit(":", 1)[1], 16), set()).add(int(fields[7]))
        except (OSError, StopIteration, ValueError, IndexError):
            pass
    return owners


def check_exclusive(fd: int, proto: str, port: int, uid: int) -> None:
    """ProtocolError unless the app's socket keeps its port to itself while the control plane holds a dup of it
    (a non-root client's proof of ownership). A TCP socket must listen or be connected, or be bound without
    SO_REUSEADDR and SO_REUSEPORT: a bound-only socket with SO_REUSEADDR lets anyone bind the port and listen on
    it, whose connections the rule would then steer to this app. A UDP socket has no such state: the kernel lets
    any user bind a UDP port whose sockets all have SO_REUSEADDR (and gives the last binder the datagrams), and
    the rule would steer that binder's datagrams to this app, so SO_REUSEADDR is cleared on it here (the kernel
    reads it at each later bind: they get EADDRINUSE, root's too, even after the app closed its socket);
    SO_REUSEPORT admits sockets of the same uid only. A socket with either option must find no socket of another
    uid on its port (it may have joined that one's port: looked for after the clearing, so none joins between)."""
    s = socket.socket(fileno=fd)
    cleared = False
    try:
        reuse = (s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) or
                 s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        if proto == "tcp" and reuse and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            try:
                s.getpeername()
            except OSError:
                raise ProtocolError("accelerate: a TCP socket bound with SO_REUSEADDR or SO_REUSEPORT proves its "
                                    "port only once it listens (anyone may bind it too)") from None
        if proto == "udp" and s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            cleared = True
        if reuse and port_owners(proto).get(port, set()) - {uid}:
            if cleared:  # refused: the app's socket as it was
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            raise ProtocolError(f"accelerate: {proto} port {port} is bound by another user's socket too "
                                "(SO_REUSEADDR or SO_REUSEPORT shares it): it stays the kernel's")
    finally:
        s.detach()


# /proc/net/tcp states of a connection that still exchanges segments (not LISTEN, TIME_WAIT or CLOSE)
_LIVE = {"01", "02", "03", "04", "05", "08", "09", "0B"}


def kernel_connections(ip: str, port: int) -> int:
    """How many of the namespace's kernel TCP connections use local ip:port: those a fork's children serve
    (kbypass run hands its connections to the kernel's TCP at a fork), or the kernel's listener accepted."""
    want = (socket.inet_aton(ip)[::-1].hex().upper(), f"{port:04X}")
    n = 0
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                n += tuple(fields[1].split(":")) == want and fields[3] in _LIVE
    except (OSError, StopIteration, IndexError):
        pass
    return n


def check_no_kernel_connections(fd: int, ip: str, port: int) -> None:
    """ProtocolError when a TCP listener's port rule would take the segments of live kernel connections on its
    port (they would stall: the rule steers the whole port): the listener stays the kernel's until they end."""
    s = socket.socket(fileno=fd)
    try:
        listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    finally:
        s.detach()
    if listening and (n := kernel_connections(ip, port)):
        raise ProtocolError(f"tcp {ip}:{port} has {n} live kernel connection(s) (a fork's children serve them, or "
                            "the kernel's listener accepted them): this listener stays the kernel's, a rule for the "
                            "port would take their segments")


class Routes:
    """The namespace's addresses, routes and neighbours through one netlink socket (made lazily, in the
    control plane's namespace)."""

    def __init__(self) -> None:
        self._ipr = None

    @property
    def ipr(self):
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _addresses(self) -> list[tuple[str, ipaddress.IPv4Interface]]:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in self.ipr.get_links()}
        return [(names.get(a["index"], "?"), ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"))
                for a in self.ipr.get_addr(family=socket.AF_INET)]

    def place(self, ip: str, served: set[str]) -> tuple[str, ipaddress.IPv4Interface]:
        """The interface (and its address) a socket bound to ip is accelerated on. A wildcard bind takes the
        one served interface with an address (with several, the app must bind one of their addresses)."""
        addrs = [(name, a) for name, a in self._addresses() if name != "lo" and not a.ip.is_loopback]
        if ip != "0.0.0.0":
            for name, a in addrs:
                if str(a.ip) == ip:
                    if served and name not in served:
                        raise ProtocolError(f"{ip} is on {name}, which this control plane does not serve "
                                            f"(--iface {', '.join(sorted(served))})")
                    return name, a
            raise ProtocolError(f"{ip} is not an address of an interface here (loopback stays the kernel's)")
        if served:
            addrs = [(n, a) for n, a in addrs if n in served]
        names = sorted({n for n, _ in addrs})
        if len(names) != 1:
            raise ProtocolError(f"bound to 0.0.0.0 with {len(names)} candidate interfaces ({', '.join(names)}): bind "
                                "one interface's address, or serve one interface (kbypass run --iface)")
        return addrs[0]

    def describe(self, iface: str, addr: ipaddress.IPv4Interface) -> dict:
        index = self.ipr.link_lookup(ifname=iface)[0]
        link = self.ipr.get_links(index)[0]
        return {"iface": iface, "ifindex": index, "mac": link.get_attr("IFLA_ADDRESS"),
                "mtu": int(link.get_attr("IFLA_MTU")), "ip": str(addr.ip), "prefixlen": addr.network.prefixlen,
                "queues": rx_queue_count(iface) or 1}

    def next_hop(self, iface: str, dst: str) -> str:
        """The MAC a datagram to dst leaves iface for, "" while unknown (and the kernel asked to resolve)."""
        try:
            ipaddress.IPv4Address(dst)
        except ValueError:
            raise ProtocolError(f"next_hop: {dst!r} is not an IPv4 address") from None
        found = self.ipr.link_lookup(ifname=iface)
        if not found:
            raise ProtocolError(f"next_hop: no interface {iface!r}")
        index = found[0]
        route = self.ipr.route("get", dst=dst)[0]
        if route.get_attr("RTA_OIF") != index:
            raise ProtocolError(f"{dst} is routed out of another interface than {iface}")
        hop = route.get_attr("RTA_GATEWAY") or dst
        for n in self.ipr.get_neighbours(ifindex=index, family=socket.AF_INET, dst=hop):
            mac = n.get_attr("NDA_LLADDR")
            if mac and n["state"] & NUD_USABLE and n.get_attr("NDA_DST") == hop:
                return mac
        self.ipr.neigh("replace", dst=hop, ifindex=index, flags=NTF_USE, state=0)
        return ""
