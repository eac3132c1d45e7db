"""Every kbypass program on the machine and its counters, from the kernel alone (what `kbypass top` shows).

No registry file: programs are found by name among the kernel's BPF program ids (kbypass_steer, livegen),
XDP attachments among its bpf_link ids, the processes that hold them from /proc/*/fd, AF_XDP sockets by
`kbypass.host.xsks`. A link's ifindex means something only in the namespace it was made in, and links
do not say which: the namespace is the one (the caller's, or one under /var/run/netns, like `ip netns`)
whose interface of that index runs the link's program. Per interface: the driver's counters (ethtool -S,
per queue) and totals (`kbypass.host.ifstats`), and where its receive work runs (NAPI threads and IRQs).

`Inventory.sample()` takes one snapshot of cumulative counters; `rates(prev, cur)` turns two into one
interval's record (a JSON-able dict). Everything is read, never written: the data path does not wait.
"""

from __future__ import annotations

import os
import socket
import time

from kbypass import netns as _netns
from kbypass.bpf import ids, libbpf
from kbypass.cp.paths import namespace_name
from kbypass.errors import KbypassError, UsageError
from kbypass.host import ifstats, napi, procscan
from kbypass.host.xsks import Finder
from kbypass.steer.observe import ObservedProgram
from kbypass.steer.steering import PROGRAM

PROGRAMS = {PROGRAM, "livegen"}


def namespaces(only: str | None = None) -> dict[str, int]:
    """name -> namespace inode: the caller's own and every one `ip netns` lists (or just `only`)."""
    here = namespace_name()
    found = {here: os.stat("/proc/thread-self/ns/net").st_ino}
    try:
        names = sorted(os.listdir(_netns.NETNS_RUN_DIR))
    except OSError:
        names = []
    for name in names:
        try:
            found.setdefault(name, os.stat(_netns.path(name)).st_ino)
        except OSError:
            continue
    if only is not None:
        if only not in found:
            raise UsageError(f"no network namespace {only!r}: see 'ip netns list'")
        return {only: found[only]}
    return found


def _cpu_list(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def placement(iface: str) -> dict:
    """Where `iface`'s receive work runs: its NAPI threads (CPUs allowed, CPU last run on) and IRQs."""
    threads = []
    try:
        pids = napi.threads(iface)
    except KbypassError:
        pids = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                last = int(f.read().rsplit(")", 1)[1].split()[36])  # field 39, "processor"
            threads.append({"pid": pid, "cpus": _cpu_list(os.sched_getaffinity(pid)), "last_cpu": last})
        except (OSError, ValueError, IndexError):
            continue
    irqs = []
    try:
        with open("/proc/interrupts") as f:
            for line in f:
                head, _, rest = line.partition(":")
                if head.strip().isdigit() and iface in rest.split()[-1:]:
                    irq = head.strip()
                    with open(f"/proc/irq/{irq}/smp_affinity_list") as a:
                        irqs.append({"irq": int(irq), "cpus": a.read().strip()})
    except OSError:
        pass
    return {"napi_threads": threads, "irqs": irqs}


class Inventory:
    def __init__(self, only_netns: str | None = None) -> None:
        self.only = only_netns
        self.namespaces = namespaces(only_netns)
        self.here = namespace_name()
        self.xsks = Finder(self.namespaces, self.here)
        self._observed: dict[int, ObservedProgram] = {}
        self._where: dict[int, tuple[str, str] | None] = {}  # link id -> (namespace, iface)
        self._commands: dict[int, str] = {}

    def _enter(self, name: str):
        return _netns.entered(None if name == self.here else name)

    def _locate(self, link: ids.LinkInfo) -> tuple[str, str] | None:
        """The link's namespace and interface; found once (a link never moves), not found: asked again
        next time (its namespace may be one made after top started)."""
        if link.id not in self._where:
            for name in self.namespaces:
                try:
                    with self._enter(name):
                        if link.prog_id in libbpf.xdp_query(link.ifindex).ids:
                            self._where[link.id] = (name, socket.if_indextoname(link.ifindex))
                            break
                except (KbypassError, OSError):
                    continue  # no such index there, or the namespace went
        return self._where.get(link.id)

    def _pids(self, pids: set[int]) -> list[dict]:
        out = []
        for pid in sorted(pids):
            if pid not in self._commands:
                self._commands[pid] = procscan.command(pid)
            out.append({"pid": pid, "command": self._commands[pid]})
        return out

    def sample(self) -> dict:
        """One snapshot: cumulative counters of every program, rule, interface, queue and socket."""
        if self.only is None:  # namespaces come and go (a testbed brought up while top runs)
            self.namespaces = self.xsks.namespaces = namespaces()
        holders = procscan.scan()
        alive_pids = {p for fds in holders.sockets.values() for p, _ in fds}
        alive_pids |= {p for g in (*holders.progs.values(), *holders.links.values()) for p in g}
        self._commands = {p: c for p, c in self._commands.items() if p in alive_pids}  # pids are reused
        progs = ids.programs_named(PROGRAMS)
        alive = {p.id for p in progs}
        for gone in set(self._observed) - alive:
            self._observed.pop(gone).close()
        links = ids.xdp_links()
        programs, ifaces = [], {}
        for p in progs:
            entry = {"prog_id": p.id, "name": p.name, "owners": self._pids(holders.progs.get(p.id, set())),
                     "links": []}
            for link in links:
                if link.prog_id != p.id:
                    continue
                where = self._locate(link)
                if where is None and self.only is not None:
                    continue
                ns, iface = where or (None, None)
                entry["links"].append({"link_id": link.id, "ifindex": link.ifindex, "netns": ns, "iface": iface,
                                       "owners": self._pids(holders.links.get(link.id, set()))})
                if where:
                    ifaces[where] = None
            if self.only is not None and not entry["links"]:
                continue  # a program attached elsewhere (or nowhere) is not this namespace's
            if p.name == PROGRAM:
                if p.id not in self._observed:
                    self._observed[p.id] = ObservedProgram(p)
                entry["mono"] = time.monotonic()  # each source's own read time: its rate's interval
                entry["rules"] = self._observed[p.id].rules()
                entry["unmatched"] = self._observed[p.id].stats()
            programs.append(entry)
        interfaces = []
        for ns, iface in ifaces:
            try:
                s = ifstats.sample(iface, None if ns == self.here else ns)
            except KbypassError:
                continue  # gone between the link walk and now
            interfaces.append({"netns": ns, "iface": iface, "sample": s, **placement(iface)})
        sockets_mono = time.monotonic()
        sockets = [x.as_dict() for x in self.xsks.find(holders)]
        for x in sockets:
            x["owners"] = self._pids(set(x.pop("pids")))
        return {"time": time.time(), "mono": time.monotonic(), "programs": programs, "interfaces": interfaces,
                "sockets": sockets, "sockets_mono": sockets_mono}

    def close(self) -> None:
        for o in self._observed.values():
            o.close()
        self._observed.clear()


def _per_s(now: int, before: int | None, dt: float) -> float:
    return max(now - before, 0) / dt if before is not None else 0.0


def rates(prev: dict, cur: dict) -> dict:
    """One interval's record: `cur`'s cumulative counters with per-second rates since `prev`. Each source's
    rate is over the interval between its own two reads (a sample takes milliseconds, more on a busy
    machine, and a rate over the sample's end times would be off by that share of the interval)."""
    dt = max(cur["mono"] - prev["mono"], 1e-9)
    old_progs = {p["prog_id"]: p for p in prev["programs"]}
    programs = []
    for p in cur["programs"]:
        q = {k: v for k, v in p.items() if k != "mono"}
        if "rules" in p:
            old = old_progs.get(p["prog_id"], {})
            pdt = max(p["mono"] - old["mono"], 1e-9) if "mono" in old else dt
            old_rules = {(r["rule_id"], r["rule"]): r for r in old.get("rules", [])}
            q["rules"] = []
            for r in p["rules"]:
                o = old_rules.get((r["rule_id"], r["rule"]), {})
                q["rules"].append({**r, "pps": _per_s(r["packets"], o.get("packets"), pdt),
                                   "mbit_s": _per_s(r["bytes"], o.get("bytes"), pdt) * 8 / 1e6})
        programs.append(q)
    old_if = {(i["netns"], i["iface"]): i["sample"] for i in prev["interfaces"]}
    interfaces = []
    for i in cur["interfaces"]:
        before = old_if.get((i["netns"], i["iface"]))
        r = ifstats.rates(before or i["sample"], i["sample"])  # new this interval: all zero
        interfaces.append({k: v for k, v in i.items() if k != "sample"} | {"totals": r["totals"],
                                                                           "queues": r["queues"]})
    old_socks = {s["inode"]: s["stats"] for s in prev["sockets"]}
    sdt = max(cur.get("sockets_mono", cur["mono"]) - prev.get("sockets_mono", prev["mono"]), 1e-9)
    sockets = []
    for s in cur["sockets"]:
        o = old_socks.get(s["inode"], {})
        sockets.append({**s, "stats_per_s": {k: _per_s(v, o.get(k), sdt) for k, v in s["stats"].items()}})
    return {"time": cur["time"], "seconds": dt, "programs": programs, "interfaces": interfaces, "sockets": sockets}
