"""What the control plane knows and decides: clients, their rules and sockets, one steering program per
interface. No I/O of its own beyond the steering program (kbypass.cp.server feeds it requests).

Ownership: every rule and socket belongs to the client that asked for it and goes when that client goes
(`drop_client`). An interface's program is loaded and attached at its first rule or socket and detached
when the last one goes, so an idle control plane leaves every interface as it found it.

Socket groups: each client that registers a socket gets its own group (a row of the XSKMAP, see
bpf/steer.h), and its rules redirect only to its own sockets. Group 0 is the in-process steering's
(`kbypass.port.SteeredPort(control_plane=False)`), never a client's.

Shared queues: the clients that ask to share a queue are members of its pool (kbypass.cp.pool), each with
its own socket in its own group over the pool's UMEM; the pool goes with its last member's socket.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

from kbypass.steer.rules import Rule, RuleError, overlap
from kbypass.steer.steering import MAX_GROUPS, MODES, Steering

from .pool import QueuePool
from .protocol import DEFAULT_PRIORITY, ProtocolError

log = logging.getLogger("kbypass.cp")
MAX_LISTED = 200  # clients a status reply lists (each takes up to ~300 bytes of the 64 KiB message)


DESCRIBE_COMMAND = 60  # characters of a client's command line in an error


@dataclass
class Client:
    cid: int
    pid: int
    uid: int
    command: str = "?"
    group: int | None = None  # its socket group, once it registers a socket
    rules: set = field(default_factory=set)  # (iface, rule_id)
    sockets: set = field(default_factory=set)  # (iface, queue)
    greeted: bool = False
    since: float = field(default_factory=time.monotonic)  # when it connected
    leaving: bool = False  # said bye: its connection closes after the reply
    shim_page: object | None = None  # a preload shim's counters (kbypass.cp.shimpage.ShimPage)
    refusals: set = field(default_factory=set)  # (op, message) of its refused changes: logged once at info

    def describe(self) -> str:
        # for one-line errors: a long command line (a test runner's, a shell pipeline) would push the fix
        # the error names off the end of the line, and past the preload shim's 256-byte reason; status
        # keeps the whole command
        command = self.command
        if len(command) > DESCRIBE_COMMAND:
            command = command[: DESCRIBE_COMMAND - 3] + "..."
        return f"client {self.cid} (pid {self.pid}, {command})"


@dataclass
class _RuleEntry:
    owner: Client
    rule: Rule
    priority: int
    share: bool
    seq: int
    proof: int | None = None  # accelerate's: a dup of the app's socket, holding its port while the rule lives
    kernel_flow: tuple | None = None  # handed's: the kernel connection's 4-tuple, the pass rule's while it lives


@dataclass
class _Served:
    """One interface's program and who uses it."""

    steering: Steering
    rules: dict = field(default_factory=dict)  # rule id -> _RuleEntry
    sockets: dict = field(default_factory=dict)  # (group, queue) -> Client
    pools: dict = field(default_factory=dict)  # queue -> QueuePool, for the shared queues (kbypass.cp.pool)

    def idle(self) -> bool:
        return not self.rules and not self.sockets and not self.pools


def parse_rule(rule: Rule | str) -> Rule:
    """A request's rule text as a Rule; its syntax error as the reply's error."""
    if isinstance(rule, Rule):
        return rule
    try:
        return Rule.parse(rule)
    except RuleError as e:
        raise ProtocolError(str(e)) from None


class ControlPlane:
    def __init__(self) -> None:
        self.clients: dict[int, Client] = {}
        self.served: dict[str, _Served] = {}
        self._next_cid = 1
        self._seq = 0
        self._stuck_groups: set[int] = set()  # groups whose XSKMAP row a failed removal may have left full
        self.close_fd = os.close  # how a rule's proof socket is closed (the server's never blocks its loop)

    # ---- clients ---------------------------------------------------------------------------------

    def new_client(self, pid: int, uid: int, command: str) -> Client:
        client = Client(self._next_cid, pid, uid, command)
        self._next_cid += 1
        self.clients[client.cid] = client
        return client

    def drop_client(self, client: Client) -> None:
        """Remove everything `client` owns (it closed its connection, died or said bye). Idempotent, and it
        never raises: a removal the kernel refuses is logged and the rest still go (one client's leftovers
        must not take the control plane, and every other client's steering, down with it)."""
        self.clients.pop(client.cid, None)
        if client.shim_page is not None:
            client.shim_page.close()
            client.shim_page = None
        for iface, rule_id in sorted(client.rules):
            self._try(client, f"remove rule {rule_id} on {iface}", self._remove_rule, iface, rule_id)
        for iface, queue in sorted(client.sockets):
            self._try(client, f"remove the socket of queue {queue} of {iface}", self._unregister, client, iface,
                      queue)
        if client.sockets and client.group is not None:
            self._stuck_groups.add(client.group)  # its XSKMAP row may still hold a socket: never hand it out
        for iface in list(self.served):
            self._try(client, f"release {iface}", self._release_if_idle, iface)

    @staticmethod
    def _try(client: Client, what: str, action, *args) -> None:
        try:
            action(*args)
        except Exception as e:  # noqa: BLE001 (logged: see drop_client)
            log.error("%s: could not %s: %s", client.describe(), what, e)

    # ---- interfaces ------------------------------------------------------------------------------

    def _serve(self, iface: str, xdp_mode: str | None) -> _Served:
        served = self.served.get(iface)
        if served is not None:
            mode = served.steering.attached_mode
            if xdp_mode not in (None, "auto", mode):
                raise ProtocolError(f"{iface} is steered in {mode} mode already: ask for {mode} (or auto)")
            return served
        if xdp_mode is not None and xdp_mode not in MODES:
            raise ProtocolError(f"unknown XDP mode {xdp_mode!r} (expected native, skb or auto)")
        steering = Steering(iface, mode=xdp_mode or "native")
        try:
            steering.attach()
        except BaseException:
            steering.close()
            raise
        served = self.served[iface] = _Served(steering)
        log.info("attached the steering program to %s (%s mode, program id %d)", iface,
                 steering.attached_mode, steering.prog_id)
        return served

    def _served(self, iface: str) -> _Served:
        served = self.served.get(iface)
        if served is None:
            raise ProtocolError(f"no kbypass rule or socket on {iface!r}")
        return served

    def _release_if_idle(self, iface: str) -> None:
        served = self.served.get(iface)
        if served is not None and served.idle():
            served.steering.close()
            del self.served[iface]
            log.info("detached the steering program from %s (no rules or sockets left)", iface)

    # ---- rules -----------------------------------------------------------------------------------

    def add_rule(self, client: Client, iface: str, rule: Rule | str, priority: int = DEFAULT_PRIORITY,
                 share: bool = False, xdp_mode: str | None = None, proof: int | None = None,
                 kernel_flow: tuple | None = None) -> int:
        """The new rule's id. `proof` (an fd, now the rule's) is closed with the rule, through `close_fd`."""
        rule = parse_rule(rule)
        if not 0 <= priority <= 65535:
            raise ProtocolError(f"priority {priority}: choose 0-65535 (lower goes first)")
        served = self._serve(iface, xdp_mode)
        try:
            for entry in served.rules.values():
                if entry.owner is not client and overlap(rule, entry.rule) and not (share and entry.share):
                    fix = ("it does not share: narrow your rule, or have it shared (--share) too" if share else
                           "narrow the rule, or have both ask to share (the first in priority order then takes "
                           "the packets)")
                    raise ProtocolError(f"rule '{rule}' overlaps '{entry.rule}' of {entry.owner.describe()} on "
                                        f"{iface}: {fix}", retry=True)  # until that client lets go of it
            group = self._group(client)
            order = sorted(served.rules.items(), key=lambda kv: (kv[1].priority, kv[1].seq))
            index = sum(1 for _, e in order if e.priority <= priority)
            rule_id = served.steering.add(rule, index=index, group=group)
        except BaseException:
            self._release_if_idle(iface)
            raise
        self._seq += 1
        served.rules[rule_id] = _RuleEntry(client, rule, priority, share, self._seq, proof, kernel_flow)
        client.rules.add((iface, rule_id))
        log.info("%s: rule %d '%s' on %s (priority %d%s)", client.describe(), rule_id, rule, iface, priority,
                 ", shared" if share else "")
        return rule_id

    def has_rule(self, client: Client, iface: str, rule: Rule | str) -> bool:
        """client has this very rule on iface already (a second socket of one app on one ip:port)."""
        rule = parse_rule(rule)
        served = self.served.get(iface)
        return served is not None and any(served.rules[rid].rule == rule for i, rid in client.rules if i == iface)

    def steers(self, client: Client, iface: str, rule: Rule) -> bool:
        """One of client's redirect rules on iface takes some of rule's packets."""
        served = self.served.get(iface)
        return served is not None and any(served.rules[rid].rule.action == "redirect" and
                                          overlap(served.rules[rid].rule, rule) for i, rid in client.rules if i == iface)

    def remove_rule(self, client: Client, iface: str, rule_id: int) -> None:
        if (iface, rule_id) not in client.rules:
            raise ProtocolError(f"you have no rule {rule_id} on {iface!r}: see 'kbypass cp status'")
        self._remove_rule(iface, rule_id)
        self._release_if_idle(iface)

    def _remove_rule(self, iface: str, rule_id: int) -> None:
        served = self.served[iface]
        entry = served.rules[rule_id]
        try:
            served.steering.remove(rule_id)
        finally:  # the books follow the program even when the map update failed: no rule to find twice
            del served.rules[rule_id]
            entry.owner.rules.discard((iface, rule_id))
            if entry.proof is not None:
                self.close_fd(entry.proof)
        log.info("%s: removed rule %d '%s' on %s", entry.owner.describe(), rule_id, entry.rule, iface)

    def _group(self, client: Client) -> int:
        """The client's socket group, allocated at its first rule or socket (1..MAX_GROUPS-1; 0 is the
        in-process steering's)."""
        if client.group is None:
            taken = {c.group for c in self.clients.values()} | self._stuck_groups
            free = next((g for g in range(1, MAX_GROUPS) if g not in taken), None)
            if free is None:
                raise ProtocolError(f"{MAX_GROUPS - 1} clients steer already: the most one control plane serves")
            client.group = free
        return client.group

    # ---- sockets ---------------------------------------------------------------------------------

    def register(self, client: Client, iface: str, queue: int, fd: int, xdp_mode: str | None = None) -> int:
        served = self._serve(iface, xdp_mode)
        try:
            group = self._group(client)
            if (group, queue) in served.sockets:
                raise ProtocolError(f"you registered a socket for queue {queue} of {iface} already: "
                                    "unregister it first")
            served.steering.register_xsk(queue, fd, group)
        except BaseException:
            self._release_if_idle(iface)
            raise
        served.sockets[(group, queue)] = client
        client.sockets.add((iface, queue))
        log.info("%s: AF_XDP socket for queue %d of %s (group %d)", client.describe(), queue, iface, group)
        return group

    def join_pool(self, client: Client, iface: str, queue: int, layout: dict, mode: str = "auto",
                  xdp_mode: str | None = None):
        """Make the client a member of the queue's shared pool (made now if it has none: kbypass.cp.pool) and
        register its socket as `register` does; returns the Member, whose fds the caller sends and closes."""
        served = self._serve(iface, xdp_mode)
        pool = served.pools.get(queue)
        made_pool = pool is None
        try:
            if made_pool:
                pool = QueuePool(iface, queue, client.uid, mode=mode, **{k: layout[k] for k in (
                    "frames", "frame_size", "fill_size", "comp_size", "headroom")},
                                 multi_buffer=layout.get("multi_buffer", False))
                served.pools[queue] = pool
                log.info("%s: made the shared pool of queue %d of %s (%d frames of %d bytes, %s mode)",
                         client.describe(), queue, iface, pool.frames, pool.frame_size, pool.mode)
            else:
                pool.check_layout(layout["frames"], layout["frame_size"], layout["headroom"], mode,
                                  layout.get("multi_buffer", False))
            member = pool.join(client.cid, layout["rx_size"], layout["tx_size"])
            try:
                self.register(client, iface, queue, member.fd, xdp_mode)
            except BaseException:
                member.close()
                pool.refuse(client.cid)
                raise
        except BaseException:
            if made_pool and pool is not None and not pool.members:
                served.pools.pop(queue, None)
                pool.close()
            self._release_if_idle(iface)
            raise
        log.info("%s: joined the shared pool of queue %d of %s (slice %d, %d members)", client.describe(), queue,
                 iface, member.slice, len(pool.members))
        return member

    def pool_of(self, iface: str, queue: int) -> QueuePool | None:
        served = self.served.get(iface)
        return None if served is None else served.pools.get(queue)

    def unregister(self, client: Client, iface: str, queue: int) -> None:
        if (iface, queue) not in client.sockets:
            raise ProtocolError(f"you have no socket on queue {queue} of {iface!r}")
        self._unregister(client, iface, queue)
        self._release_if_idle(iface)

    def _unregister(self, client: Client, iface: str, queue: int) -> None:
        served = self.served[iface]
        try:
            served.steering.unregister_xsk(queue, client.group)
            del served.sockets[(client.group, queue)]
            client.sockets.discard((iface, queue))
            log.info("%s: removed the socket of queue %d of %s", client.describe(), queue, iface)
        finally:  # a pool's memory goes with its last member whatever the map said
            pool = served.pools.get(queue)
            if pool is not None and client.cid in pool.members:
                pool.leave(client.cid)
                if not pool.members:
                    del served.pools[queue]
                    pool.close()
                    log.info("closed the shared pool of queue %d of %s: its last member left", queue, iface)

    def holder_of_queue(self, iface: str, queue: int, but: Client | None = None) -> Client | None:
        """Who else has a socket on that queue (AF_XDP allows one socket pool per queue)."""
        served = self.served.get(iface)
        if served is None:
            return None
        return next((c for (g, q), c in served.sockets.items() if q == queue and c is not but), None)

    # ---- reading ---------------------------------------------------------------------------------

    def counters(self, iface: str) -> list[dict]:
        served = self._served(iface)
        counts = served.steering.counters()
        return [{"rule_id": rid, "rule": str(e.rule), "owner": e.owner.cid, "packets": counts.get(rid, (0, 0))[0],
                 "bytes": counts.get(rid, (0, 0))[1]} for rid, e in self._ordered(served)]

    def stats(self, iface: str) -> dict:
        """What no rule decided on the interface (kbypass.steer.SteerStats, as a dict)."""
        return dataclasses.asdict(self._served(iface).steering.stats())

    @staticmethod
    def _ordered(served: _Served):
        order = served.steering.rules()
        return [(rid, served.rules[rid]) for rid in order]

    def status(self) -> dict:
        """Clients and interfaces. The clients that steer (rules or sockets) are listed first, and at most
        MAX_LISTED in all, the rest only counted: a thousand idle connections must not make the reply too
        long for the protocol (one message of at most protocol.MAX_MESSAGE bytes)."""
        greeted = sorted((c for c in self.clients.values() if c.greeted),
                         key=lambda c: (not (c.rules or c.sockets), c.cid))
        clients = [{"client": c.cid, "pid": c.pid, "uid": c.uid, "command": c.command, "group": c.group,
                    "rules": len(c.rules), "sockets": sorted(f"{i}:{q}" for i, q in c.sockets),
                    **({"shim": c.shim_page.sockets(), "shim_tcp": c.shim_page.tcp_counters()}
                       if c.shim_page is not None else {})}
                   for c in greeted[:MAX_LISTED]]
        interfaces = []
        for iface, served in sorted(self.served.items()):
            stats = self.stats(iface)
            interfaces.append({
                "iface": iface, "xdp_mode": served.steering.attached_mode, "prog_id": served.steering.prog_id,
                "rules": [{**r, "priority": served.rules[r["rule_id"]].priority,
                           "share": served.rules[r["rule_id"]].share} for r in self.counters(iface)],
                "sockets": [{"queue": q, "group": g, "owner": c.cid, "shared": q in served.pools}
                            for (g, q), c in sorted(served.sockets.items())],
                "pools": [pool.describe() for _, pool in sorted(served.pools.items())],
                **stats,
            })
        return {"server_pid": os.getpid(), "clients": clients, "clients_not_listed": len(greeted) - len(clients),
                "interfaces": interfaces}

    def close(self) -> None:
        for client in list(self.clients.values()):
            self.drop_client(client)
        for served in self.served.values():
            for pool in served.pools.values():
                pool.close()
            served.pools.clear()
            served.steering.close()
        self.served.clear()
