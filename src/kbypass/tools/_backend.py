"""`--backend afxdp|packet_mmap|socket` for the tools that open a port (sink, reflect, capture).

`open_backend(args, rules)` turns the tool's options into one `kbypass.port.open_port` call and returns its
SteeredPort (a Port with `.port`, `.queues`, `.rule_counters()`, `.unreached()`). Options that only mean
something to one backend (--queue, --mode, --poll, --xdp-mode for AF_XDP; --ring-size not for socket) are
refused for the others rather than silently ignored, before anything is opened.
"""

from __future__ import annotations

import sys

from kbypass.errors import UsageError, require_root
from kbypass.host import testbed
from kbypass.port import BACKENDS
from kbypass.tools._common import pin_cpu
from kbypass.tools._options import add_no_cp

DEFAULT_BACKEND = "afxdp"


def add_backend_option(p) -> None:
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="afxdp: steered AF_XDP, the bypass (default); packet_mmap: TPACKET_V3 rings, for "
                        "interfaces without XDP (sees every frame, filtered by the one --rule); socket: a "
                        "kernel UDP socket with recvmmsg/sendmmsg, the baseline (binds the --rule's dst/dport)")
    add_no_cp(p, share=True)
    p.add_argument("--hw", nargs="?", const="on", choices=("on", "auto"), default=None,
                   help="afxdp, with --queue N: also steer in the NIC: an ntuple rule sends each flow to queue N and "
                        "the RSS table sends N nothing else (the hidden queue), undone on exit (after a crash: by "
                        "the next --hw). A device without ntuple/RSS is an error; '--hw auto' then steers in "
                        "software only and says so")


def hw_mode(args):
    """--hw as SteeredPort's hw: False, True or "auto"."""
    return {None: False, "on": True, "auto": "auto"}[getattr(args, "hw", None)]


def _check_afxdp_only(args, backend: str) -> None:
    for opt, value, default in (("--queue", getattr(args, "queue", None), None),
                                ("--mode", getattr(args, "mode", "auto"), "auto"),
                                ("--poll", getattr(args, "poll", "wakeup"), "wakeup"),
                                ("--xdp-mode", getattr(args, "xdp_mode", "native"), "native"),
                                ("--no-cp", getattr(args, "no_cp", False), False),
                                ("--share", getattr(args, "share", False), False),
                                ("--share-queue", getattr(args, "share_queue", False), False),
                                ("--hw", getattr(args, "hw", None), None)):
        if value != default:
            raise UsageError(f"{opt} applies to the afxdp backend only, not {backend}: drop it or use "
                             "--backend afxdp")


def default_frame_size(iface: str, ns: str | None) -> int:
    """2048-byte frames, or 4096 when a frame of the interface's MTU does not fit one 2048-byte frame: with
    multi-buffer every packet up to MTU 65535 then arrives in at most 18 frames of 4096 bytes, the most the
    kernel sends as one packet (kbypass.xsk.multibuf), so a reflector can send back whatever it received."""
    from kbypass.port.afxdp import interface_mtu
    from kbypass.xsk import multibuf

    mtu = interface_mtu(iface, ns)
    return 4096 if mtu and multibuf.needs_multi_buffer(mtu, 2048) else 2048


def check_return_limit(args, iface: str | None = None, ns: str | None = None) -> None:
    """For a tool that sends received packets back (reflect): refuse an AF_XDP --frame-size in which a packet
    of the interface's MTU arrives in more frames than the kernel sends as one (kbypass.xsk.multibuf)."""
    from kbypass.port.afxdp import interface_mtu
    from kbypass.tools._port import resolve_where
    from kbypass.xsk import multibuf

    if (getattr(args, "backend", DEFAULT_BACKEND) or DEFAULT_BACKEND) != "afxdp" or not args.frame_size:
        return
    if iface is None:
        iface, ns = resolve_where(args)
    mtu = interface_mtu(iface, ns)
    why = mtu and multibuf.return_limit(mtu, args.frame_size)
    if why:
        raise UsageError(f"--frame-size {args.frame_size}: {why}: use --frame-size 4096 (the default at this MTU) "
                         f"or lower the MTU of {iface}")


def open_backend(args, rules: list[str], *, sends_back: bool = False):
    """Open the steered port `args.backend` names for the tool `args.command`; see the module doc.
    sends_back: the tool sends received packets back as they are (reflect): an AF_XDP frame size in which a
    packet of the interface's MTU arrives in more frames than the kernel sends as one is refused."""
    from kbypass.port import open_port
    from kbypass.port.steered import rule_list
    from kbypass.tools._port import DEFAULT_RING, resolve_where

    backend = getattr(args, "backend", DEFAULT_BACKEND) or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r} is unknown: use one of {', '.join(BACKENDS)}")
    if backend != "afxdp" or args.no_cp:
        require_root(f"kbypass {args.command}")
    # else a non-root user may go on: the control plane makes its sockets (SteeredPort sockets="auto") if
    # it admits the user, and says how to be admitted if not
    parsed = rule_list(rules)  # all syntax errors before anything is opened
    ring = args.ring_size or DEFAULT_RING
    iface, ns = resolve_where(args)
    if args.frame_size is None:
        args.frame_size = default_frame_size(iface, ns) if backend == "afxdp" else 2048
    if backend == "afxdp" and sends_back:
        check_return_limit(args, iface, ns)
    if backend == "afxdp":
        options = dict(queue=args.queue, xdp_mode=args.xdp_mode, mode=args.mode, poll=args.poll,
                       frames=args.frames, frame_size=args.frame_size, rx_size=ring, tx_size=ring,
                       fill_size=ring, comp_size=ring, control_plane=not args.no_cp, share=args.share,
                       share_queue=args.share_queue, hw=hw_mode(args))
    else:
        _check_afxdp_only(args, backend)
    if backend == "packet_mmap":
        if len(parsed) > 1:
            raise UsageError(f"--backend packet_mmap takes one --rule (a classic BPF filter), not {len(parsed)}")
        options = dict(frame_size=args.frame_size, frames=args.frames, tx_frames=ring)
    elif backend == "socket":
        if getattr(args, "macs_only", False):
            raise UsageError("--macs-only cannot work with --backend socket (it sends to the IP and port in the "
                             "frame): drop --macs-only")
        if len(parsed) != 1 or parsed[0].proto != "udp" or parsed[0].dport is None or (
                parsed[0].dst is not None and "/" in parsed[0].dst):
            raise UsageError("--backend socket binds one UDP port: give one --rule like 'udp dst 10.77.0.2 dport 4321'")
        if getattr(args, "ring_size", None) is not None:
            raise UsageError("--ring-size applies to the afxdp and packet_mmap backends, not socket (a kernel "
                             "socket has a buffer, not rings): drop it")
        batch = min(args.batch, 1024)
        options = dict(batch=batch, frame_size=args.frame_size, frames=max(args.frames, 4 * batch))
        if parsed[0].dst is None:  # the testbed host's own address, or every address of the interface
            options["bind"] = (testbed.host(args.host).ipv4 if getattr(args, "host", None) else "0.0.0.0",
                               parsed[0].dport)
    pin_cpu(args.cpu)
    sp = open_port(backend, iface, netns=ns, rules=parsed, **options)
    if sp.hw_note:  # --hw auto on a device that cannot: one line, then the software steering runs
        print(f"kbypass {args.command}: --hw auto: {sp.hw_note}", file=sys.stderr, flush=True)
    return sp
