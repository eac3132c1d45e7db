"""What the preload shim (`kbypass run`, csrc/preload) asks the control plane: `accelerate` and `next_hop`.

`accelerate` comes with one fd: the application's own UDP socket (or TCP socket: listening, or bound before
its connect), already bound in the kernel. That socket is the proof of ownership a peer credential cannot
give: the kernel let this process bind ip:port, so this process may have that port's datagrams steered to its
AF_XDP sockets (an unprivileged app too, without --allow-kernel-ports: the kernel socket on the port is its
own placeholder). The control plane reads the address from the socket (never from the message), finds the
interface that holds it, adds the rule `udp dst IP dport PORT` (`tcp ...` for a TCP socket; a TCP active open
names its peer and gets its 4-tuple's rule: flow_rule) in the client's socket group and answers what the shim
needs to build frames: the interface, its MAC, MTU, receive queues, the address's prefix. The shim then asks
`open_socket` for each queue it has no socket on yet. Everything goes with the client's connection (kill -9
included). A non-root client's rule lasts only while its socket keeps the port to itself: the app shares that
socket and may change it afterwards, so the control plane looks at it again (watch_proofs).

`handed` comes with one fd: a TCP connection of the app's that `kbypass run` handed to the kernel's TCP while its
listener's port rule still steers (before a posix_spawn: the child gets the connection, the parent keeps its
listener on the rings). Its segments must reach that kernel socket, so the control plane adds a `pass` rule of
its 4-tuple ahead of the port's (connected_flow proves the 4-tuple: the kernel made that connection the app's)
and removes it once the kernel has no socket of that 4-tuple any more (handed_gone), or with the client.

`next_hop` {iface, dst} answers the MAC the kernel's routes and neighbour table give for dst out of iface
(the gateway's for an off-link dst), "" while the kernel is still resolving it (it is asked to, NTF_USE): the
shim then sends that datagram through its kernel socket and asks again later. So the shim needs no netlink.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

from kbypass.xsk.socket import rx_queue_count

from . import sockdiag
from .protocol import ProtocolError

NTF_USE = 0x01
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT


SO_COOKIE, SO_NETNS_COOKIE = 57, 71  # asm-generic/socket.h (Python 3.11 names neither)


def socket_cookie(fd: int) -> int:
    """The socket's cookie (SO_COOKIE): the id sock_diag lists it by, never reused while the system runs."""
    s = socket.socket(fileno=fd)
    try:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")
    finally:
        s.detach()


def _netns_cookie(s: socket.socket) -> int | None:
    try:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    except OSError:  # before Linux 5.14
        return None


@functools.cache
def _own_netns() -> int | None:
    """This process's namespace cookie (the control plane serves its own namespace for its whole life)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as here:
        return _netns_cookie(here)


def check_own_namespace(s: socket.socket, op: str) -> None:
    """ProtocolError for a socket of another network namespace (one the app made, even unprivileged, in a user
    namespace of its own): its port there proves nothing of the port here, and sock_diag lists only this
    namespace's sockets. Namespace cookies (SO_NETNS_COOKIE) are never reused."""
    theirs, ours = _netns_cookie(s), _own_netns()
    if theirs is not None and ours is not None and theirs != ours:
        raise ProtocolError(f"{op}: the socket belongs to another network namespace: send one of this namespace's")


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
        check_own_namespace(s, "accelerate")
        ip, port = s.getsockname()
    finally:
        s.detach()  # the caller closes the fd
    if port == 0:
        raise ProtocolError("accelerate: bind the socket first (its port is 0)")
    return kind, ip, port



def connected_flow(fd: int) -> tuple[str, int, str, int]:
    """(local IPv4, port, peer IPv4, peer port) of an app's connected IPv4 TCP socket (`handed`'s proof)."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        raise ProtocolError("handed: send the connection's kernel socket with it") from None
    try:
        if (s.family, s.type, s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)) != (
                socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP):
            raise ProtocolError("handed: only an IPv4 TCP connection is handed")
        check_own_namespace(s, "handed")
        try:
            peer, peer_port = s.getpeername()
        except OSError:
            raise ProtocolError("handed: the socket is not connected") from None
        ip, port = s.getsockname()
    finally:
        s.detach()  # the caller closes the fd
    return ip, port, peer, peer_port


def handed_gone(state) -> list[tuple[object, str, int]]:
    """(client, iface, rule id) of each `handed` pass rule whose connection the kernel no longer has, or has only
    in TIME_WAIT (a rule slot for 60 s more would serve at most a retransmitted FIN's ACK; the shim drops such
    stray segments, a new SYN of the 4-tuple it takes as a new connection): the control plane removes them at
    each PROOF_SCAN. A table that cannot be read keeps them."""
    entries = [(iface, rid, e) for iface, served in state.served.items() for rid, e in served.rules.items()
               if e.kernel_flow is not None]
    if not entries:
        return []
    try:
        live = sockdiag.tcp_flows(sockdiag.STATES & ~(1 << TIME_WAIT))
    except OSError:
        return []
    return [(e.owner, iface, rid) for iface, rid, e in entries if e.kernel_flow not in live]


def flow_rule(proto: str, ip: str, port: int, peer: str | None = None, peer_port: int | None = None) -> str:
    """The steering rule of an accelerated socket: its port (a UDP socket, a TCP listener), or for a TCP active
    open (peer given) its one connection's 4-tuple. A connecting socket is bound-only in the kernel for its whole
    life, so its port is its proof only as long as the socket's options keep others off it (watch_proofs): steered
    by its 4-tuple, another socket on the port (one let in before the control plane's next look) gets none of
    this app's packets, nor this app any of its connections'."""
    if peer is None and peer_port is None:
        return f"{proto} dst {ip} dport {port}"
    if proto != "tcp" or peer is None or peer_port is None:
        raise ProtocolError("accelerate: peer and peer_port go together, with a TCP socket about to connect")
    try:
        ipaddress.IPv4Address(peer)
    except ValueError:
        raise ProtocolError(f"accelerate: peer {peer!r} is not an IPv4 address") from None
    if not 0 < peer_port < 65536:
        raise ProtocolError(f"accelerate: peer_port {peer_port}: choose 1-65535")
    return f"tcp src {peer} sport {peer_port} dst {ip} dport {port}"

TIME_WAIT = 6  # a TIME_WAIT socket's state (its uid shows as 0: a timewait sock has none)
PROOF_TICK = 0.1  # seconds between the control plane's looks at the non-root proofs (watch_proofs) ...
PROOF_SCAN = 0.5  # ... and between its scans of the TCP sockets for other users' (~3 ms each: sockdiag)
LIST_FAILURES = 3  # ticks in a row the socket tables could not be read before non-root rules go (watch_proofs)


def port_owners(proto: str) -> dict[int, set[int]]:
    """The uids of the kernel sockets of this namespace by local port."""
    owners: dict[int, set[int]] = {}
    for _, port, uid, _ in sockdiag.sockets(proto):
        owners.setdefault(port, set()).add(uid)
    return owners


def by_port(rows) -> dict[int, list[tuple[str | None, int, int, int, int]]]:
    """sockdiag.sockets(proto, ids=True)'s rows as (local IPv4, uid, state, inode, cookie) by local port: read
    once, looked up for each proof."""
    index: dict[int, list] = {}
    for local, port, uid, state, inode, cookie in rows:
        index.setdefault(port, []).append((local, uid, state, inode, cookie))
    return index


def flow_owners(proto: str, port: int, ip: str | None = None, index=None, besides: int | None = None) -> set[int]:
    """The uids of the kernel sockets on `port` that take packets to ip (bound to it or to a wildcard; any IPv4
    address when ip is None), TIME_WAIT ones left out: such a socket takes no new connection (a SYN on its 4-tuple
    goes to the port's listener, in the kernel too), and its peer, which sent its FIN, has nothing new to send;
    its uid is not even known (0 shown), and the kernel itself lets SO_REUSEADDR and same-uid SO_REUSEPORT
    sockets bind over it, so a server restarted by a non-root user keeps its port while its old connections
    linger. Nor any other socket no file holds (inode 0: one its app closed that still finishes, a connection
    not accepted yet, whose listener is listed itself): none takes a new connection, and its uid is not its
    user's (a listener's queued connection shows the listener's maker); a listener's port with live kernel
    connections is check_no_kernel_connections' to refuse, for a while. `index`: by_port(sockdiag.sockets(proto,
    ids=True)), read once for several proofs. `besides`: the cookie of a socket left out, the proof itself: its
    uid is its maker's, which may not be the app's (a root master's listener inherited by its worker that runs
    as nobody: nginx's `user`), but whoever holds the proof holds that very socket, and the rule steers nothing
    the socket would not take. A cookie, not an inode number: those wrap, and are shared with every namespace."""
    index = by_port(sockdiag.sockets(proto, ids=True)) if index is None else index
    return {uid for local, uid, state, inode, cookie in index.get(port, ())
            if local is not None and (ip is None or local in (ip, "0.0.0.0")) and inode != 0 and
            not (proto == "tcp" and state == TIME_WAIT) and cookie != besides}


def exposure(fd: int, proto: str, port: int, uid: int, ip: str | None = None, index=None,
             scan: bool = True) -> str | None:
    """Why a non-root app's proof socket no longer keeps ip:port to itself (None: it does). A TCP socket with
    SO_REUSEADDR or SO_REUSEPORT must listen: bound only, or connected (the kernel lets SO_REUSEADDR sockets bind
    beside any socket of the port that does not listen, and listen beside it too), it lets another user bind the
    port and listen or connect from it, and the rule would steer those connections to this app. A UDP socket
    must not have SO_REUSEADDR (check_exclusive clears it): with it, any user may bind the port. And (scan) no
    socket of another uid may be on the port (the app may have joined one, or let one in while it had the port
    open and then closed it again). The app shares the proof with the control plane (a dup of one file
    description), so it can change all this after `accelerate`: watch_proofs asks again."""
    s = socket.socket(fileno=fd)
    try:
        if s.getsockname()[1] != port:
            return f"its socket let go of {proto} port {port}"
        reuse = (s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) or
                 s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        if proto == "tcp" and reuse and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return ("a TCP socket bound with SO_REUSEADDR or SO_REUSEPORT keeps its port to itself only while it "
                    "listens (anyone may bind it too)")
        if proto == "udp" and s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR):
            return f"its UDP socket has SO_REUSEADDR (anyone may bind port {port} too)"
    except OSError as e:
        return f"its socket cannot be read ({e.strerror})"
    finally:
        s.detach()
    others = flow_owners(proto, port, ip, index, socket_cookie(fd)) - {uid} if scan else set()
    if others:
        return (f"{proto} port {port} is bound by another user's socket too (uid {', '.join(map(str, sorted(others)))}"
                "; SO_REUSEADDR or SO_REUSEPORT shares it): it stays the kernel's")
    return None


def check_exclusive(fd: int, proto: str, port: int, uid: int, ip: str | None = None, scan: bool = True) -> None:
    """ProtocolError unless the app's socket keeps its port to itself while the control plane holds a dup of it
    (a non-root client's proof of ownership: `exposure`). A UDP socket has no listening state: the kernel lets
    any user bind a UDP port whose sockets all have SO_REUSEADDR (and gives the last binder the datagrams), so
    SO_REUSEADDR is cleared on it here (the kernel reads it at each later bind: they get EADDRINUSE, root's too,
    even after the app closed its socket); SO_REUSEPORT admits sockets of the same uid only. Other users'
    sockets are looked for after the clearing, so none joins between; an active open's too (its 4-tuple rule
    would take the segments of another user's socket bound beside it with SO_REUSEADDR and connected, or
    connecting later, to the same peer); refused, the socket is left as it was."""
    s = socket.socket(fileno=fd)
    cleared = False
    try:
        if proto == "udp" and s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            cleared = True
        try:
            why = exposure(fd, proto, port, uid, ip, scan=scan or proto == "udp")
        except OSError as e:  # sock_diag (EMFILE, say): who else is on the port is not known this time
            why = f"the port's sockets cannot be listed ({e.strerror})"
            if cleared:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            raise ProtocolError(f"accelerate: {why}", retry=True) from None
        if why is not None:
            if cleared:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            raise ProtocolError(f"accelerate: {why}")
    finally:
        s.detach()


def watch_proofs(state, scan: bool = True, failures: dict[str, int] | None = None
                 ) -> tuple[list[tuple[object, str, int, str]], bool]:
    """(client, iface, rule id, why) of each non-root client's `accelerate` rule whose proof no longer keeps its
    port to itself (`exposure`), for the control plane to remove (each PROOF_TICK and before each new rule), and
    whether there was any such proof to look at. Each proof's socket is looked at every time, and the UDP
    sockets (a cheap table); the TCP ones only when `scan` (each PROOF_SCAN: their dump walks the kernel's whole
    established hash), an active open's too (another user's socket bound beside it and connected to the same
    peer would have its segments steered by the 4-tuple rule). The tables are read once per protocol, and not at
    all when only root holds proofs. A table that cannot be read (EMFILE, say) keeps the rules this time: only
    `failures` such ticks in a row (state.proof_failures counts them) remove them, so one transient error does not
    take every non-root rule away."""
    tables: dict[str, dict | OSError] = {}
    failures = {} if failures is None else failures
    found = []
    watched = False
    for iface, served in list(state.served.items()):
        for rule_id, entry in list(served.rules.items()):
            if entry.proof is None or entry.owner.uid == 0:
                continue
            watched = True
            proto = entry.rule.proto
            look = proto == "udp" or scan
            if look and proto not in tables:
                try:
                    tables[proto] = by_port(sockdiag.sockets(proto, ids=True))
                    failures.pop(proto, None)
                except OSError as e:  # who else is on the port is not known: the rules go if it lasts
                    failures[proto] = failures.get(proto, 0) + 1
                    tables[proto] = e
            table = tables.get(proto)
            if isinstance(table, OSError):
                if failures.get(proto, 0) < LIST_FAILURES:
                    continue
                why = f"its port's sockets cannot be listed ({table.strerror})"
            else:
                why = exposure(entry.proof, proto, entry.rule.dport, entry.owner.uid, entry.rule.dst, table, look)
            if why is not None:
                found.append((entry.owner, iface, rule_id, why))
    return found, watched


# states of a connection that still exchanges segments (not LISTEN, TIME_WAIT or CLOSE; SYN_RECV: a handshake)
_LIVE = (1 << 1 | 1 << 2 | 1 << 3 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 11)


def kernel_connections(ip: str, port: int) -> int:
    """How many of the namespace's kernel TCP connections use local ip:port: those a fork's children serve
    (kbypass run hands its connections to the kernel's TCP at a fork), or the kernel's listener accepted."""
    return sum(1 for local, p, _, _ in sockdiag.sockets("tcp", _LIVE) if p == port and local == ip)


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
                            "port would take their segments", retry=True)  # until they end


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
