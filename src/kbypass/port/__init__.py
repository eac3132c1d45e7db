"""Ports: one API (receive/transmit/free/alloc/stats) over the AF_XDP bypass and its fallbacks.

Backends: "afxdp" (AfXdpPort, the bypass: only steered flows reach it), "packet_mmap" (PacketMmapPort:
TPACKET_V3 rings, a tap that sees every frame of the interface), "socket" (SocketPort: a kernel UDP socket
with recvmmsg/sendmmsg, the baseline). `open_port(backend, ...)` opens any of them the same way.
"""

from __future__ import annotations

from kbypass.errors import UsageError

from .base import Port
from .batch import Batch

__all__ = ["Batch", "Port", "AfXdpPort", "PacketMmapPort", "SocketPort", "SteeredAfXdpPort", "BACKENDS",
           "open_port"]

BACKENDS = ("afxdp", "packet_mmap", "socket")


def __getattr__(name):
    # Lazy so that importing kbypass.port does not set up AF_XDP machinery until asked.
    if name == "AfXdpPort":
        from .afxdp import AfXdpPort

        return AfXdpPort
    if name == "PacketMmapPort":
        from .packet_mmap import PacketMmapPort

        return PacketMmapPort
    if name == "SocketPort":
        from .socket_port import SocketPort

        return SocketPort
    raise AttributeError(name)


def open_port(backend: str, ifname: str | None = None, *, netns: str | None = None, rules=(),
              bind: tuple[str, int] | None = None, **options) -> Port:
    """Open a Port of `backend` that receives the flows `rules` name (text or kbypass.steer.Rule).

    afxdp:       SteeredPort(ifname, queue (options, default every queue), rules, ...) wrapped so closing
                 the port removes the steering too; `options` go to AfXdpPort (and xdp_mode to Steering).
    packet_mmap: PacketMmapPort(ifname, rule=<the one rule, if any>, **options): a classic BPF filter.
    socket:      SocketPort(ip, port, **options) bound to `bind`, or to the dst/dport of the one rule
                 (dst defaults to 0.0.0.0); the rule must be "udp ... dport N".
    Every backend's port has check(app=None) (accounting; raises OwnershipError on a leak) and `mode`.
    """
    from kbypass.steer.rules import Rule

    parsed = [r if isinstance(r, Rule) else Rule.parse(r) for r in rules]
    if backend == "afxdp":
        if not ifname:
            raise UsageError("the afxdp backend needs an interface: give ifname (--iface)")
        from kbypass.apps.steered import SteeredPort

        queue = options.pop("queue", None)
        steering = {k: options.pop(k) for k in ("xdp_mode",) if k in options}
        return SteeredAfXdpPort(SteeredPort(ifname, queue, parsed, netns=netns, **steering, **options))
    if backend == "packet_mmap":
        if not ifname:
            raise UsageError("the packet_mmap backend needs an interface: give ifname (--iface)")
        if len(parsed) > 1:
            raise UsageError(f"the packet_mmap backend takes one rule, not {len(parsed)}: combine them or "
                             "filter the rest in userspace")
        from .packet_mmap import PacketMmapPort

        return PacketMmapPort(ifname, netns=netns, rule=parsed[0] if parsed else None, **options)
    if backend == "socket":
        from .socket_port import SocketPort

        if bind is None:
            if len(parsed) != 1 or parsed[0].proto != "udp" or parsed[0].dport is None:
                raise UsageError("the socket backend binds one UDP port: give one rule like "
                                 "'udp dst 10.77.0.2 dport 4321' (or bind=(ip, port))")
            rule = parsed[0]
            if rule.dst is not None and "/" in rule.dst:
                raise UsageError(f"the socket backend binds one address, not the prefix {rule.dst}")
            bind = (rule.dst or "0.0.0.0", rule.dport)
        return SocketPort(bind[0], bind[1], netns=netns, **options)
    raise UsageError(f"backend {backend!r} is unknown: use one of {', '.join(BACKENDS)}")


class SteeredAfXdpPort(Port):
    """A SteeredPort (steering program + one AF_XDP port per queue) behind the plain Port API.

    Batches still belong to the per-queue AfXdpPort they came from; transmit/free go back there.
    `steered` is the SteeredPort (rule_counters(), steering, ports)."""

    mode = "afxdp"

    def __init__(self, steered) -> None:
        self.steered = steered
        self.port = steered.port
        self.queues = steered.queues

    def receive(self, max_frames: int = 64) -> Batch:
        return self.port.receive(max_frames)

    def transmit(self, batch: Batch) -> int:
        return self.port.transmit(batch)

    def free(self, batch: Batch) -> None:
        self.port.free(batch)

    def alloc(self, n: int) -> Batch:
        return self.port.alloc(n)

    def wait(self, timeout: float | None = None) -> bool:
        return self.port.wait(timeout)

    def flush(self) -> None:
        self.port.flush()

    @property
    def fd(self) -> int:
        return self.steered.ports[0].fd

    @property
    def bind_mode(self) -> str:
        """copy or zerocopy: how the AF_XDP sockets are bound."""
        return self.port.mode

    @property
    def stats(self) -> dict:
        return self.port.stats

    def check(self, *, app: int | None = None) -> dict:
        """UMEM accounting summed over the queues' ports; raises OwnershipError on a leak."""
        from kbypass.xsk.umem import OwnershipError

        total: dict = {}
        for p in self.steered.ports:
            for k, v in p.check().items():
                total[k] = total.get(k, 0) + v
        if app is not None and total.get("app") != app:
            raise OwnershipError(f"UMEM: {total.get('app')} frames in state 'app', expected {app} (a leak: some "
                                 "frame was neither transmitted nor freed)")
        return total

    def close(self) -> None:
        self.steered.close()
