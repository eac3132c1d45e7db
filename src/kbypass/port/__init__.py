"""Ports: one API (receive/transmit/free/alloc/stats) over the AF_XDP bypass and its fallbacks.

Backends: "afxdp" (AfXdpPort, the bypass: only steered flows reach it), "packet_mmap" (PacketMmapPort:
TPACKET_V3 rings, a tap that sees every frame of the interface), "socket" (SocketPort: a kernel UDP socket
with recvmmsg/sendmmsg, the baseline). `open_port(backend, ...)` opens any of them the same way.
"""

from __future__ import annotations

__all__ = ["Batch", "Port", "AfXdpPort", "PacketMmapPort", "SocketPort", "SteeredPort", "BACKENDS",
           "open_port"]

BACKENDS = ("afxdp", "packet_mmap", "socket")


def __getattr__(name):
    # Lazy so that importing kbypass.port does not set up AF_XDP machinery (or load numpy) until asked.
    if name == "Port":
        from .base import Port
        return Port
    if name == "Batch":
        from .batch import Batch
        return Batch
    if name == "AfXdpPort":
        from .afxdp import AfXdpPort

        return AfXdpPort
    if name == "PacketMmapPort":
        from .packet_mmap import PacketMmapPort

        return PacketMmapPort
    if name == "SocketPort":
        from .socket_port import SocketPort

        return SocketPort
    if name == "SteeredPort":
        from .steered import SteeredPort

        return SteeredPort
    raise AttributeError(name)


def open_port(backend: str, ifname: str | None = None, *, netns: str | None = None, rules=(),
              bind: tuple[str, int] | None = None, **options):
    """Open a steered port of `backend` that receives the flows `rules` name (text or kbypass.steer.Rule):
    a `SteeredPort` (kbypass.port.steered), which is a Port with rule counters; closing it removes the
    steering too. `queue` (afxdp only; default every queue), `xdp_mode`, `control_plane` and `share` go to
    the steering (see SteeredPort), the other `options` to the backend's port class (AfXdpPort,
    PacketMmapPort, SocketPort); `batch_ops`, the batch backend (kbypass.backend.batch(name); default the
    lane in force), is chosen once for all of its ports.

    afxdp:       the XDP steering program with `rules`, one AF_XDP socket per queue.
    packet_mmap: PacketMmapPort(ifname) with the one rule as a classic BPF filter.
    socket:      SocketPort bound to `bind`, or to the dst/dport of the one rule "udp [dst IP] dport N".
    """
    from .steered import SteeredPort

    queue = options.pop("queue", None)
    steering = {k: options.pop(k) for k in ("xdp_mode", "control_plane", "share", "hw") if k in options}
    return SteeredPort(ifname, queue, rules, netns=netns, backend=backend, bind=bind, **steering, **options)
