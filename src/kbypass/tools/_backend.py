"""`--backend afxdp|packet_mmap|socket` for the tools that open a port (sink, reflect).

`open_backend(args, rules)` returns what those tools already use: a context manager with `.port` (the Port),
`.queues` and `.rule_counters()` — a SteeredPort for afxdp (through kbypass.tools._port.open_port, so that
path is unchanged) and an `Opened` for the other two. Options that only mean something to AF_XDP (--queue,
--mode, --poll, --xdp-mode) are refused for the others rather than silently ignored.
"""

from __future__ import annotations

from kbypass import testbed
from kbypass.errors import UsageError, require_root
from kbypass.port import BACKENDS, Port
from kbypass.steer.rules import Rule
from kbypass.tools._common import pin_cpu

DEFAULT_RING = 2048  # kbypass.tools._port.DEFAULT_RING (not imported: _port imports the steering machinery)

DEFAULT_BACKEND = "afxdp"


def add_backend_option(p) -> None:
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="afxdp: steered AF_XDP, the bypass (default); packet_mmap: TPACKET_V3 rings, for "
                        "interfaces without XDP (sees every frame, filtered by the one --rule); socket: a "
                        "kernel UDP socket with recvmmsg/sendmmsg, the baseline (binds the --rule's dst/dport)")


class Opened:
    """A packet_mmap or socket port shaped like SteeredPort for the tools."""

    def __init__(self, port: Port, rules: list[Rule], queues) -> None:
        self.port = port
        self.rules = rules
        self.queues = queues

    def rule_counters(self) -> list[dict]:
        """The rule(s) and what reached the port through them (these backends have no per-rule counters)."""
        s = self.port.stats
        return [{"rule": str(r), "packets": s["rx_packets"], "bytes": s["rx_bytes"]} for r in self.rules]

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_afxdp_only(args, backend: str) -> None:
    for opt, value, default in (("--queue", getattr(args, "queue", None), None),
                                ("--mode", getattr(args, "mode", "auto"), "auto"),
                                ("--poll", getattr(args, "poll", "wakeup"), "wakeup"),
                                ("--xdp-mode", getattr(args, "xdp_mode", "native"), "native")):
        if value != default:
            raise UsageError(f"{opt} applies to the afxdp backend only, not {backend}: drop it or use "
                             "--backend afxdp")


def open_backend(args, rules: list[str]):
    """Open the port `args.backend` names for the tool `args.command`; see the module doc."""
    backend = getattr(args, "backend", DEFAULT_BACKEND) or DEFAULT_BACKEND
    if backend == "afxdp":
        from kbypass.tools._port import open_port

        return open_port(args, rules)
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r} is unknown: use one of {', '.join(BACKENDS)}")
    require_root(f"kbypass {args.command}")
    _check_afxdp_only(args, backend)
    parsed = [Rule.parse(r) for r in rules]  # all syntax errors before anything is opened
    from kbypass.tools._port import resolve_where

    iface, ns = resolve_where(args)
    if backend == "packet_mmap":
        if len(parsed) > 1:
            raise UsageError(f"--backend packet_mmap takes one --rule (a classic BPF filter), not {len(parsed)}")
        from kbypass.port.packet_mmap import PacketMmapPort

        pin_cpu(args.cpu)
        port = PacketMmapPort(iface, netns=ns, rule=parsed[0] if parsed else None, frame_size=args.frame_size,
                              frames=args.frames, tx_frames=args.ring_size or DEFAULT_RING)
        return Opened(port, parsed, "all")
    # socket
    if getattr(args, "macs_only", False):
        raise UsageError("--macs-only cannot work with --backend socket (it sends to the IP and port in the "
                         "frame): drop --macs-only")
    if len(parsed) != 1 or parsed[0].proto != "udp" or parsed[0].dport is None or (
            parsed[0].dst is not None and "/" in parsed[0].dst):
        raise UsageError("--backend socket binds one UDP port: give one --rule like 'udp dst 10.77.0.2 dport 4321'")
    if getattr(args, "ring_size", None) is not None:
        raise UsageError("--ring-size applies to the afxdp and packet_mmap backends, not socket (a kernel socket "
                         "has a buffer, not rings): drop it")
    rule = parsed[0]
    ip = rule.dst
    if ip is None:
        ip = testbed.host(args.host).ipv4 if getattr(args, "host", None) else "0.0.0.0"
    from kbypass.port.socket_port import SocketPort

    pin_cpu(args.cpu)
    batch = min(args.batch, 1024)
    port = SocketPort(ip, rule.dport, netns=ns, batch=batch, frame_size=args.frame_size,
                      frames=max(args.frames, 4 * batch))
    return Opened(port, parsed, [0])
