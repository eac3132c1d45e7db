"""The steered port: a Port that receives exactly the flows its rules name, on any backend.

This is the ef_vi "hidden RX queue plus filters" shape. On `afxdp` (the bypass) the steering program sits on
the interface with the user's rules and one AF_XDP socket per queue is registered as that queue's redirect
target: only the named flows reach the rings, and whatever no rule matches passes to the kernel.

Who owns the program: by default the namespace's control plane (kbypass.cp, started on demand), which
serves every kbypass user of the interface, so several steered ports (in one process or many) share it,
each with its own rules and sockets; closing the port (or the process dying) removes them within the
control plane's next loop turn. `control_plane=False` steers in-process instead (no daemon): this port then
owns the program alone, in a bpf_link that dies with the process, and nobody else can steer the interface
meanwhile. Both modes run the same kbypass.steer code (the control plane's is in its process).
The fallbacks take the same rules the way they can: `packet_mmap` attaches the one rule as a classic BPF
filter (kbypass.steer.cbpf) to a PACKET_MMAP socket, a tap that leaves the kernel every frame; `socket`
binds a kernel UDP socket to the one rule's destination address and port, the baseline.

A SteeredPort is itself a Port (receive/transmit/free/alloc/wait/stats/check/close go to the port(s)
underneath: `sp.port`, a PortGroup when several queues are open) and adds what steering knows:
`rule_counters()`, `unreached()`, `queues`. `kbypass.port.open_port` is the one way in by backend name.
"""

from __future__ import annotations

import errno
import os

from kbypass.backend import batch as batch_backend
from kbypass.cp.client import ControlPlaneError, ControlPlaneGone, SteeringLease
from kbypass.errors import UsageError
from kbypass.netns import entered
from kbypass.steer.ethtool import HardwareSteeringError
from kbypass.steer.rules import Rule
from kbypass.steer.steering import Steering
from kbypass.xsk.socket import XskError, rx_queue_count

from . import BACKENDS
from .base import Port
from .batch import Batch
from .group import PortGroup
from .hidden_queue import MODES as HW_MODES
from .hidden_queue import HiddenQueue


def rule_list(rules) -> list[Rule]:
    """`rules` as a list of parsed Rules: one rule (text or Rule) is a list of one. A bare string is not
    iterated, which would parse "udp dport 1" letter by letter; anything else that is not a list or tuple
    is refused. Every syntax error is raised here, before anything is attached."""
    if isinstance(rules, (str, Rule)):
        rules = [rules]
    if not isinstance(rules, (list, tuple)):
        raise UsageError(f"rules: give a list of rules (text or Rule), e.g. [\"udp dport 4321\"], not "
                         f"{type(rules).__name__}")
    for r in rules:
        if not isinstance(r, (str, Rule)):
            raise UsageError(f"rules: each rule is text like \"udp dport 4321\" or a Rule, not {type(r).__name__}")
    return [r if isinstance(r, Rule) else Rule.parse(r) for r in rules]


class QueueTaken(UsageError):
    """Another AF_XDP socket holds a queue SteeredPort needs; `owner` names it. A tool without --queue and
    --share-queue (kbypass's TCP takes every queue) says its own remedy with these."""

    def __init__(self, why: str, ifname: str, queue: int, owner: str) -> None:
        super().__init__(why)
        self.ifname, self.queue, self.owner = ifname, queue, owner


class SteeredPort(Port):
    """Open with `with SteeredPort(...) as sp:`; `sp.port` is the port underneath (the steered port itself
    is a Port too). After the `with` block both are closed: `sp.port` is a UsageError.

    queue (afxdp): one queue id, or None for every receive queue of the interface (a flow lands on whichever
    queue the NIC's or veth's hash picks, so "all" is what a sink of named flows wants). Rules: a list of
    text or `Rule`s (one rule alone is a list of one); a rule without an action redirects to the socket of
    the queue the packet arrived on. `bind=(ip, port)` (socket backend) instead of a rule. batch_ops: the
    batch backend every port underneath uses (None: kbypass.backend.batch(), the lane in force). sockets
    (afxdp): "own" (this process makes its AF_XDP sockets and UMEMs: root), "cp" (the control plane makes
    them and passes them over, so a process without privileges can use the bypass; no busy polling) or
    "auto" (the default: "cp" when this process is not root). share_queue (afxdp, control plane): receive
    on queues other programs of the same user receive on too, each its own flows (the control plane's
    shared pool of the queue, kbypass.cp.pool; every program on the queue must ask for it; the sockets are
    the control plane's). hw (afxdp, one queue): also steer in the NIC (kbypass.port.hidden_queue): an
    ntuple rule per redirect rule sends the flow to `queue` and the RSS table sends that queue nothing else,
    both undone on close (or, after a crash, by the next program that uses hw). True: a device without
    ntuple rules or an RSS table is a HardwareSteeringError (a UsageError) before anything is attached;
    "auto": steer in software only then, and `hw_note` says why. The XDP program steers in every case.
    Other keyword options go to the backend's port class (AfXdpPort,
    PacketMmapPort, SocketPort)."""

    def __init__(self, ifname: str | None, queue: int | None = 0, rules=(), *, netns: str | None = None,
                 backend: str = "afxdp", xdp_mode: str = "native", bind: tuple[str, int] | None = None,
                 control_plane: bool = True, share: bool = False, sockets: str = "auto", batch_ops=None,
                 share_queue: bool = False, hw=False, **port_options) -> None:
        self.rules = rule_list(rules)  # before anything is attached
        # chosen once here, so every queue's port (and UMEM) uses the same batch backend
        self.batch_ops = port_options["batch_ops"] = batch_ops if batch_ops is not None else batch_backend()
        if backend not in BACKENDS:
            raise UsageError(f"backend {backend!r} is unknown: use one of {', '.join(BACKENDS)}")
        self.backend = backend
        self._port = None
        self.ports: list[Port] = []
        self.steering = None
        self.rule_ids: list[int] = []
        self.control_lost: str | None = None  # why the control plane's counters are missing (see _counters)
        self.hidden: HiddenQueue | None = None
        self.hw_note: str | None = None  # why --hw auto fell back to software steering
        if (not control_plane or share) and backend != "afxdp":
            raise UsageError(f"the {backend} backend does not steer (no XDP program): drop "
                             f"{'share' if share else 'control_plane=False'}")
        if share and not control_plane:
            raise UsageError("share=True is for rules in the control plane: drop control_plane=False")
        if share_queue:
            if backend != "afxdp" or not control_plane:
                raise UsageError("sharing a queue is the control plane's (one UMEM for every AF_XDP socket of the "
                                 "queue): it needs backend 'afxdp' and the control plane")
            if sockets == "own":
                raise UsageError("a shared queue's sockets are the control plane's: drop sockets='own'")
            sockets = "cp"
        self.share_queue = share_queue
        self.sockets = _who_makes_sockets(sockets, backend, control_plane)
        self.hw = self._hardware(hw, ifname, queue, netns)  # every refusal before anything is attached
        try:
            if backend == "afxdp":
                self._open_afxdp(ifname, queue, netns, xdp_mode, port_options, control_plane, share)
                if self.hidden is not None:
                    self._apply_hardware(hw)
            elif backend == "packet_mmap":
                self._open_packet_mmap(ifname, queue, netns, port_options)
            else:
                self._open_socket(queue, netns, bind, port_options)
        except BaseException:
            self.close()
            raise
        self._port = self.ports[0] if len(self.ports) == 1 else PortGroup(self.ports)

    def _open_afxdp(self, ifname, queue, netns, xdp_mode, options, control_plane, share) -> None:
        from .afxdp import LAYOUT, AfXdpPort, resolve_multi_buffer, socket_layout

        if not ifname:
            raise UsageError("the afxdp backend needs an interface: give ifname (--iface)")
        if control_plane:
            self.steering = SteeringLease(ifname, netns, xdp_mode, share=share)
        else:
            self.steering = Steering(ifname, netns=netns, mode=xdp_mode)
        self.rule_ids = [self.steering.add(r) for r in self.rules]
        self.queues = [queue] if queue is not None else list(range(queue_count(ifname, netns)))
        options.update(resolve_multi_buffer(options, ifname, netns))  # every queue's socket alike
        for q in self.queues:
            if self.sockets == "cp":  # made and registered by the control plane
                xsk_fd, umem_fd, made = self.steering.open_socket(q, mode=options.get("mode", "auto"),
                                                                  share_queue=self.share_queue,
                                                                  **socket_layout(options))
                layout = {k: made[k] for k in LAYOUT}
                self.ports.append(AfXdpPort(ifname, q, netns=netns, **{**options, **layout}, xsk_fd=xsk_fd,
                                            umem_fd=umem_fd, shared_queue=made.get("shared_queue")))
                continue
            try:
                port = AfXdpPort(ifname, q, netns=netns, **options)
            except XskError as e:
                if e.errno != errno.EBUSY:
                    raise
                raise self._queue_taken(ifname, q) from None
            self.ports.append(port)
            self.steering.register_xsk(q, port.fd)
        if not control_plane:
            self.steering.attach()

    def _hardware(self, hw, ifname, queue, netns) -> bool:
        """Check `hw` (see the class doc) and the device; True when hardware steering will be applied."""
        if hw not in HW_MODES:
            raise UsageError(f"hw={hw!r} is unknown: use False, True or 'auto'")
        if not hw:
            return False
        if self.backend != "afxdp":
            raise UsageError(f"hardware steering places the flows the steering program redirects, and the "
                             f"{self.backend} backend has none: drop --hw or use --backend afxdp")
        if queue is None:
            raise UsageError("hardware steering puts the flows on one queue: give --queue N (queue=N)")
        try:
            hidden = HiddenQueue(ifname, netns, queue, self.rules)
            hidden.check()
        except HardwareSteeringError as e:
            if hw != "auto":
                raise
            self._software_only(e)
            return False
        self.hidden = hidden
        return True

    def _apply_hardware(self, hw) -> None:
        try:
            self.hidden.apply()
        except HardwareSteeringError as e:  # held by another program, or refused by the driver
            if hw != "auto":
                raise
            self._software_only(e)

    def _software_only(self, why: HardwareSteeringError) -> None:
        """hw="auto" where the NIC cannot: the XDP program steers alone, and `hw_note` says why."""
        self.hidden, self.hw = None, False
        # the error's own fix names --hw auto, which is what was asked: keep the cause, not the advice
        cause = str(why).split(": use a NIC with flow steering")[0]
        self.hw_note = f"{cause}; steering in software only (the XDP program)"

    def _queue_taken(self, ifname: str, queue: int) -> QueueTaken:
        """EBUSY from the bind: another AF_XDP socket holds the queue (AF_XDP takes one socket pool per
        queue). Name its owner when the control plane knows it."""
        owner = "another AF_XDP socket"
        if isinstance(self.steering, SteeringLease):
            try:
                for c in self.steering.client.status()["clients"]:
                    if f"{ifname}:{queue}" in c["sockets"]:
                        owner = f"client {c['client']} (pid {c['pid']}, {c['command']})"
            except ControlPlaneError:
                pass
        return QueueTaken(f"queue {queue} of {ifname} is taken by {owner}: AF_XDP takes one socket per queue, so "
                          "pick another queue (--queue), stop that program, or have both share it (--share-queue)",
                          ifname, queue, owner)

    def _open_packet_mmap(self, ifname, queue, netns, options) -> None:
        from .packet_mmap import PacketMmapPort

        if not ifname:
            raise UsageError("the packet_mmap backend needs an interface: give ifname (--iface)")
        if queue is not None:
            raise UsageError("the packet_mmap backend sees every queue of the interface: drop the queue")
        if len(self.rules) > 1:
            raise UsageError(f"the packet_mmap backend takes one rule (a classic BPF filter), not {len(self.rules)}: "
                             "combine them or filter the rest in userspace")
        self.queues = "all"
        self.ports.append(PacketMmapPort(ifname, netns=netns, rule=self.rules[0] if self.rules else None, **options))

    def _open_socket(self, queue, netns, bind, options) -> None:
        from .socket_port import SocketPort

        if queue is not None:
            raise UsageError("the socket backend is a kernel socket, not a queue: drop the queue")
        if bind is None:
            r = self.rules[0] if len(self.rules) == 1 else None
            if r is None or r.proto != "udp" or r.dport is None:
                raise UsageError("the socket backend binds one UDP port: give one rule like "
                                 "'udp dst 10.77.0.2 dport 4321' (or bind=(ip, port))")
            if r.dst is not None and "/" in r.dst:
                raise UsageError(f"the socket backend binds one address, not the prefix {r.dst}")
            bind = (r.dst or "0.0.0.0", r.dport)
        self.queues = [0]
        self.ports.append(SocketPort(bind[0], bind[1], netns=netns, **options))

    # ---- what steering knows ------------------------------------------------------------------------

    @property
    def port(self) -> Port:
        if self._port is None:
            raise UsageError("the steered port is closed: use sp.port inside its `with SteeredPort(...)` block")
        return self._port

    def rule_counters(self) -> list[dict]:
        """Each rule with the packets and bytes it matched. Without a steering program (packet_mmap, socket)
        what reached the port is what its one rule let through."""
        if self.steering is None:
            s = self.port.stats
            return [{"rule": str(r), "packets": s["rx_packets"], "bytes": s["rx_bytes"]} for r in self.rules]
        counters, rules = self._counters(), self.steering.rules()
        if counters is None:  # the control plane is gone, and its counts with it
            return [{"rule": str(rules[i]), "packets": None, "bytes": None} for i in self.rule_ids if i in rules]
        return [{"rule": str(rules[i]), "packets": counters.get(i, (0, 0))[0], "bytes": counters.get(i, (0, 0))[1]}
                for i in self.rule_ids if i in rules]

    def _counters(self) -> dict | None:
        """The steering's rule counters; None when the control plane went away, which `control_lost` then
        says (the port's own counts stay good: a tool prints them, then the error)."""
        try:
            return self.steering.counters()
        except ControlPlaneGone as e:
            self.control_lost = str(e)
            return None

    def unreached(self) -> int:
        """Packets a redirect rule matched that none of our sockets got (received, dropped for a full ring
        or an empty fill ring, or waiting in the ring): they arrived on a queue with no socket, where the
        program's redirect falls back to XDP_PASS, or had malformed headers, which are never redirected.
        Either way the kernel got them. 0 without a steering program."""
        if self.steering is None:
            return 0
        counters, rules = self._counters(), self.steering.rules()  # first: sockets only lag the count
        if counters is None:
            return 0
        matched = sum(counters.get(i, (0, 0))[0] for i in self.rule_ids if i in rules and rules[i].action == "redirect")
        got = 0
        for p in self.ports:
            s = p.stats
            got += s["rx_packets"] + s.get("rx_dropped", 0) + s.get("rx_ring_full", 0) + p._rx.available()
        return max(0, matched - got)

    # ---- the Port API, by the port(s) underneath ----------------------------------------------------

    def receive(self, max_frames: int = 64) -> Batch:
        return self.port.receive(max_frames)

    def transmit(self, batch: Batch) -> int:
        return self.port.transmit(batch)

    def free(self, batch: Batch) -> None:
        self.port.free(batch)

    def alloc(self, n: int, **size) -> Batch:
        """Up to n empty frames; `size=S` (AF_XDP): packets of S bytes, chains on a multi-buffer port."""
        return self.port.alloc(n, **size)

    def wait(self, timeout: float | None = None) -> bool:
        return self.port.wait(timeout)

    def flush(self) -> None:
        flush = getattr(self.port, "flush", None)
        if flush is not None:
            flush()

    @property
    def fd(self) -> int:
        return self.ports[0].fd

    @property
    def mode(self) -> str:
        """The backend's mode: copy or zerocopy for AF_XDP sockets, else the backend's own word."""
        return self.port.mode

    bind_mode = mode

    @property
    def stats(self) -> dict:
        return self.port.stats

    def check(self, *, app: int | None = None) -> dict:
        """UMEM accounting of the port(s) underneath; raises OwnershipError on a leak."""
        return self.port.check(app=app)

    def close(self) -> None:
        # Detach first so no new frames are steered to sockets that are going away.
        self._port = None
        if self.hidden is not None:
            self.hidden.undo()
        if self.steering is not None:
            self.steering.close()
        for port in self.ports:
            port.close()

    def __enter__(self) -> SteeredPort:
        return self


SOCKETS = ("auto", "own", "cp")


def _who_makes_sockets(sockets: str, backend: str, control_plane: bool) -> str:
    """"own" (this process makes its AF_XDP sockets: root) or "cp" (the control plane makes them and passes
    them over: what a process without CAP_NET_RAW can have); "auto" is "cp" for such a process."""
    if sockets not in SOCKETS:
        raise UsageError(f"sockets={sockets!r} is unknown: use one of {', '.join(SOCKETS)}")
    if sockets == "auto":
        sockets = "own" if os.geteuid() == 0 or backend != "afxdp" or not control_plane else "cp"
    if sockets == "cp" and (backend != "afxdp" or not control_plane):
        raise UsageError("sockets='cp' has the control plane make AF_XDP sockets: it needs backend 'afxdp' and the "
                         "control plane (drop control_plane=False)")
    return sockets


def queue_count(ifname: str, netns: str | None) -> int:
    """The interface's receive queues (1 when the kernel does not say)."""
    with entered(netns):
        n = rx_queue_count(ifname)
    return n or 1
