"""Load the steering program, keep its rule maps in step with Python `Rule`s, attach it to an interface.

`SteerProgram` is the loaded object and its maps, attached nowhere: rules, counters, stats, the XSKMAP,
and `test_run` for tests. `Steering` adds one interface: `attach()` makes a bpf_link, `close()` destroys
it. The kernel also destroys it when the process dies (the link lives in an fd), so a crash or kill -9
never leaves a program behind, and nothing is pinned.

Ownership and concurrency: one `Steering` owns its program, maps and link; call its methods from one
thread (or hold your own lock). The XDP program reads the maps concurrently on every CPU; rule changes
stay consistent for it because the priority list is double-buffered (see bpf/steer.h): a packet sees
the rule list before or after an `add`/`remove`, never a mix (the one gap: two changes within the
microsecond one packet takes can let that packet see the second list half-written).

Attaching refuses when the interface already has an XDP program (ours from another process or anyone
else's), instead of replacing it: silently taking over another tool's traffic is worse than an error,
and the message says how to remove the old one. BPF maps and links are not namespaced; only the
interface lookup and the attach run inside `netns`.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from kbypass import netns as _netns
from kbypass.bpf import libbpf
from kbypass.errors import KbypassError, UsageError
from kbypass.steer.rules import Rule

PROGRAM = "kbypass_steer"
OBJECT = "steer"
# steer_stats keys (STEER_STAT_* in bpf/steer.h)
STAT_UNMATCHED, STAT_PARSE_ERROR, STAT_NOT_IP = 0, 1, 2
MAX_QUEUES = 64  # STEER_MAX_QUEUES: the XSKMAP holds one row of this many sockets per group
MAX_GROUPS = 64  # STEER_MAX_GROUPS: rows of the XSKMAP (group 0 is in-process steering's)
MODES = ("native", "skb", "auto")


@dataclass(frozen=True)
class SteerStats:
    """Packets no rule decided, summed over CPUs. See STEER_STAT_* in bpf/steer.h."""

    unmatched: int  # IPv4/IPv6 packets no rule decided (passed)
    parse_errors: int  # truncated or lying headers (also counted in a rule or in unmatched)
    not_ip: int  # non-IP frames, or more than two VLAN tags (passed)


class SteerProgram:
    """The loaded steering object and its maps; attached to no interface (see `Steering`)."""

    def __init__(self) -> None:
        self._obj: libbpf.BpfObject | None = libbpf.BpfObject.named(OBJECT)
        self.prog_fd = self._obj.program_fd(PROGRAM)
        self.prog_id = libbpf.prog_id(self.prog_fd)
        self._rules_map = self._obj.map("steer_rules")
        self._order_map = self._obj.map("steer_order")
        self._config_map = self._obj.map("steer_config")
        self._counters_map = self._obj.map("steer_counters")
        self._stats_map = self._obj.map("steer_stats")
        self._xsk_map = self._obj.map("xsks_map")
        self.max_rules = self._rules_map.max_entries
        self.max_queues = MAX_QUEUES
        self.max_groups = self._xsk_map.max_entries // MAX_QUEUES
        if self.max_groups != MAX_GROUPS:  # bpf/steer.h and this file disagree: a build from another tree
            raise KbypassError(f"the steering object has {self.max_groups} socket groups, kbypass expects "
                               f"{MAX_GROUPS}: rebuild it ('make setup')")
        self._rules: dict[int, Rule] = {}  # rule id (map slot) -> rule
        self._order: list[int] = []  # rule ids in priority order
        self._active = 0  # which steer_order entry the program reads

    # ---- rules -----------------------------------------------------------------------------------

    def add(self, rule: Rule | str, *, index: int | None = None, group: int = 0) -> int:
        """Install `rule` (a Rule or its text form) and return its id.

        It goes last in priority order, or at position `index` (0 = first). First match wins, except that
        a sample rule that spares a packet lets later rules decide. Ids are reused after `remove`.
        A redirect goes to the socket that group `group` registered for the packet's queue.
        """
        self._check_group(group)
        if isinstance(rule, str):
            rule = Rule.parse(rule)
        free = next((i for i in range(self.max_rules) if i not in self._rules), None)
        if free is None:
            raise UsageError(f"all {self.max_rules} rule slots are in use: remove a rule first")
        if index is None:
            index = len(self._order)
        if not 0 <= index <= len(self._order):
            raise UsageError(f"rule position {index} out of range (0-{len(self._order)})")
        # Counters and rule first, then publish: a packet never sees the id before its rule exists.
        self._counters_map.update(free, bytes(self._counters_map.lookup_size))
        self._rules_map.update(free, rule.pack(group))
        self._publish(self._order[:index] + [free] + self._order[index:])
        self._rules[free] = rule  # after the publish: a failed one must not keep the slot taken
        return free

    def remove(self, rule_id: int) -> None:
        """Uninstall rule `rule_id` (unknown id: UsageError)."""
        if rule_id not in self._rules:
            raise UsageError(f"no rule with id {rule_id}: see rules() for the installed ones")
        self._publish([i for i in self._order if i != rule_id])
        self._rules_map.update(rule_id, bytes(self._rules_map.value_size))
        del self._rules[rule_id]

    def clear(self) -> None:
        """Remove every rule."""
        for rule_id in list(self._order):
            self.remove(rule_id)

    def rules(self) -> dict[int, Rule]:
        """Installed rules, id -> rule, in priority order."""
        return {i: self._rules[i] for i in self._order}

    def _publish(self, order: list[int]) -> None:
        slots = order + [0] * (self.max_rules - len(order))
        spare = 1 - self._active
        self._order_map.update(spare, struct.pack(f"<I{self.max_rules}I", len(order), *slots))
        self._config_map.update(0, struct.pack("<I", spare))
        self._active = spare
        self._order = order

    # ---- counters --------------------------------------------------------------------------------

    def counters(self) -> dict[int, tuple[int, int]]:
        """rule id -> (packets, bytes) the rule decided, summed over CPUs. A sample rule counts its drops."""
        out = {}
        stride = self._counters_map.lookup_size // self._counters_map.ncpus
        for rule_id in self._order:
            raw = self._counters_map.lookup(rule_id) or b""
            packets = sum(struct.unpack_from("<Q", raw, off)[0] for off in range(0, len(raw), stride))
            nbytes = sum(struct.unpack_from("<Q", raw, off + 8)[0] for off in range(0, len(raw), stride))
            out[rule_id] = (packets, nbytes)
        return out

    def stats(self) -> SteerStats:
        def total(key: int) -> int:
            raw = self._stats_map.lookup(key) or b""
            return sum(struct.unpack(f"<{len(raw) // 8}Q", raw))

        return SteerStats(total(STAT_UNMATCHED), total(STAT_PARSE_ERROR), total(STAT_NOT_IP))

    # ---- AF_XDP sockets --------------------------------------------------------------------------

    def _check_queue(self, queue_id: int) -> None:
        if not 0 <= queue_id < self.max_queues:
            raise UsageError(f"queue {queue_id} out of range (0-{self.max_queues - 1})")

    def _check_group(self, group: int) -> None:
        if not 0 <= group < self.max_groups:
            raise UsageError(f"socket group {group} out of range (0-{self.max_groups - 1})")

    def register_xsk(self, queue_id: int, xsk_fd: int, group: int = 0) -> None:
        """Send what group `group`'s REDIRECT rules match on rx queue `queue_id` to AF_XDP socket `xsk_fd`.

        The map keeps its own reference to the socket until `unregister_xsk` or until the program goes.
        """
        self._check_queue(queue_id)
        self._check_group(group)
        try:
            self._xsk_map.update(group * self.max_queues + queue_id, struct.pack("<I", xsk_fd))
        except KbypassError as e:
            raise KbypassError(
                f"cannot register fd {xsk_fd} for queue {queue_id}: {e} (is it an AF_XDP socket?)"
            ) from None

    def unregister_xsk(self, queue_id: int, group: int = 0) -> None:
        """Stop redirecting group `group`'s matches on queue `queue_id` (they then pass to the kernel).
        No socket there: no-op."""
        self._check_queue(queue_id)
        self._check_group(group)
        self._xsk_map.delete(group * self.max_queues + queue_id)

    # ---- testing and teardown --------------------------------------------------------------------

    def test_run(self, frame: bytes) -> int:
        """Run the program once on `frame` (BPF_PROG_TEST_RUN, rx queue 0) and return its XDP verdict."""
        return libbpf.test_run(self.prog_fd, frame).retval

    def close(self) -> None:
        """Unload the program and maps (idempotent)."""
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> SteerProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Steering(SteerProgram):
    """The steering program attached to interface `ifname` (in namespace `netns`, or ours).

    mode: "native" (driver XDP; the default, since generic XDP gives no speed-up), "skb" (generic XDP,
    works on any interface), or "auto" (native, falling back to skb where the driver lacks XDP).
    Use as a context manager: entering attaches, leaving detaches and unloads.
    """

    def __init__(self, ifname: str, netns: str | None = None, mode: str = "native") -> None:
        if mode not in MODES:
            raise UsageError(f"unknown XDP mode {mode!r} (expected native, skb or auto)")
        self.ifname = ifname
        self.netns = netns
        self.mode = mode
        self.ifindex = self._ifindex()  # bad names fail before anything is loaded
        self._link: libbpf.XdpLink | None = None
        super().__init__()

    def _where(self) -> str:
        return f"namespace {self.netns!r}" if self.netns else "this network namespace"

    def _ip(self) -> str:
        return f"ip -n {self.netns} link" if self.netns else "ip link"

    def _ifindex(self) -> int:
        with _netns.entered(self.netns):
            try:
                return socket.if_nametoindex(self.ifname)
            except OSError:
                raise UsageError(
                    f"no interface {self.ifname!r} in {self._where()}: check the name with '{self._ip()} show'"
                ) from None

    @property
    def attached_mode(self) -> str | None:
        """"native" or "skb" while attached, else None."""
        return self._link.mode if self._link else None

    def attach(self, mode: str | None = None) -> None:
        """Attach through a bpf_link in `mode` (default: the constructor's); refuse if the interface
        already has any XDP program."""
        if mode is not None:
            if mode not in MODES:
                raise UsageError(f"unknown XDP mode {mode!r} (expected native, skb or auto)")
            self.mode = mode
        if self._link is not None:
            raise UsageError(f"already attached to {self.ifname}")
        with _netns.entered(self.netns):
            self.ifindex = self._ifindex()
            info = libbpf.xdp_query(self.ifindex)
            if info.attached:
                ids = ", ".join(_describe(i) for i in info.ids)
                if any(libbpf.prog_name(i) == PROGRAM for i in info.ids):
                    # another kbypass process steers here: removing its program would cut its traffic
                    raise KbypassError(
                        f"{self.ifname} in {self._where()} is already steered by kbypass (XDP program id {ids}): "
                        "either by the namespace's control plane ('kbypass cp status' lists its users; steer "
                        "through it, without --no-cp, to share the interface) or by a kbypass program run with "
                        "--no-cp, which owns it alone (stop it; 'bpftool link show' names its pid); only if no "
                        f"process holds it, remove it with '{self._ip()} set dev {self.ifname} xdp off'"
                    )
                raise KbypassError(
                    f"{self.ifname} in {self._where()} already has XDP program id {ids}; kbypass does not "
                    f"replace it: remove it with '{self._ip()} set dev {self.ifname} xdp off' (if that says busy, a "
                    "bpf_link holds it: stop the process that owns it, see 'bpftool link show'), then retry"
                )
            modes = ["native", "skb"] if self.mode == "auto" else [self.mode]
            for i, mode in enumerate(modes):
                try:
                    self._link = libbpf.attach_xdp(self.prog_fd, self.ifindex, mode)
                    return
                except libbpf.BpfCallError as e:
                    if i + 1 < len(modes):
                        continue
                    raise self._attach_error(mode, e) from None

    def _attach_error(self, mode: str, e: libbpf.BpfCallError) -> KbypassError:
        text = str(e)
        if mode == "native" and e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return KbypassError(
                f"{self.ifname} has no native (driver) XDP support ({text}): use mode='skb' (generic XDP) or 'auto'"
            )
        if e.errno in (errno.EBUSY, errno.EEXIST):
            return KbypassError(
                f"{self.ifname} got another XDP program meanwhile ({text}): remove it with "
                f"'{self._ip()} set dev {self.ifname} xdp off'"
            )
        if e.errno == errno.ERANGE:
            # the driver refuses because a frame of this MTU would not fit what XDP can see: on veth one page
            # for a program without frags, a page per frag (17) on top for ours (section xdp.frags)
            return KbypassError(
                f"cannot attach XDP to {self.ifname}: the MTU is too large for XDP on this driver ({text}); "
                "kbypass's steering program is frags-aware (a veth takes it up to MTU 65535), so the driver "
                "has no multi-buffer XDP or the MTU is past its limit: lower the MTU of the interface and of its "
                f"peer ('{self._ip()} set dev {self.ifname} mtu 1500', and the same where the peer lives)"
            )
        return KbypassError(f"cannot attach XDP to {self.ifname} in {mode} mode: {text}")

    def detach(self) -> None:
        """Destroy the link (the program leaves the interface); rules and maps stay loaded."""
        if self._link is not None:
            self._link.close()
            self._link = None

    def close(self) -> None:
        """Detach and unload (idempotent)."""
        self.detach()
        super().close()

    def __enter__(self) -> Steering:
        if self._link is None:
            try:
                self.attach()
            except BaseException:
                self.close()  # a with-block that never starts must not keep the loaded program
                raise
        return self



def _describe(prog_id: int) -> str:
    name = libbpf.prog_name(prog_id)
    return f"{prog_id} ({name!r})" if name else str(prog_id)
