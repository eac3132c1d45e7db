"""Options and set-up shared by the tools that open a steered AF_XDP port (sink, reflect)."""

from __future__ import annotations

import json
import sys

from kbypass import testbed
from kbypass.apps.steered import SteeredPort
from kbypass.errors import UsageError, require_root
from kbypass.steer.rules import Rule
from kbypass.tools._common import pin_cpu


def add_port_options(p, *, default_rule_help: str, default_batch: int = 256) -> None:
    where = p.add_argument_group("where")
    where.add_argument("--iface", help="interface to steer from (default: the testbed host's veth)")
    where.add_argument("--netns", help="network namespace of --iface (default: where kbypass runs)")
    where.add_argument("--host", choices=testbed.HOSTS,
                       help="a testbed host: sets --iface and --netns from 'kbypass testbed status'")
    where.add_argument("--queue", type=int, default=None,
                       help="queue id (default: every receive queue, one AF_XDP socket each)")
    what = p.add_argument_group("what")
    what.add_argument("--rule", action="append", default=[], metavar="RULE",
                      help=f'steering rule, repeatable, e.g. "udp dst 10.77.0.2 dport 4321" ({default_rule_help})')
    how = p.add_argument_group("how")
    how.add_argument("--mode", choices=("copy", "zerocopy", "auto"), default="auto", help="AF_XDP bind mode")
    how.add_argument("--poll", choices=("busy", "wakeup"), default="wakeup", help="wait by busy polling or need_wakeup")
    how.add_argument("--xdp-mode", choices=("native", "skb", "auto"), default="native", help="XDP attach mode")
    how.add_argument("--batch", type=int, default=default_batch,
                     help=f"most descriptors per receive; never waits to fill one (default {default_batch})")
    how.add_argument("--frames", type=int, default=4096, help="UMEM frames (default 4096)")
    how.add_argument("--frame-size", type=int, choices=(2048, 4096), default=2048, help="UMEM frame size")
    how.add_argument("--ring-size", type=int, default=2048, help="size of each of the four rings (power of two)")
    how.add_argument("--duration", type=float, help="stop after this many seconds")
    how.add_argument("--count", type=int, help="stop after this many packets")
    how.add_argument("--cpu", type=int, help="pin to this CPU")
    how.add_argument("--json", action="store_true", help="print the summary as JSON")


def resolve_where(args) -> tuple[str, str | None]:
    if args.host:
        h = testbed.host(args.host)
        return args.iface or h.iface, args.netns or h.netns
    if not args.iface:
        raise UsageError("say where to listen: --iface IF (with --netns NS), or --host a|b for the testbed")
    return args.iface, args.netns


def rules_or_default(args, default: str, takes: str) -> list[str]:
    """The --rule list, or `default` on a testbed host. On an interface named with --iface the flows must
    be named: a default like every UDP packet would take DNS answers, NTP and the rest of `takes` from
    the kernel of a real machine for as long as the tool runs."""
    if args.rule:
        return args.rule
    if args.host or not args.iface:  # the testbed (or no place at all, which resolve_where reports)
        return [default]
    raise UsageError(f"--iface {args.iface} without --rule: name the flows to take, e.g. --rule "
                     f"\"udp dst ADDR dport PORT\" (the default '{default}', {takes}, is for testbed hosts: --host)")


def open_port(args, rules: list[str]) -> SteeredPort:
    require_root(f"kbypass {args.command}")
    if args.batch <= 0:
        raise UsageError(f"--batch {args.batch}: give a positive number of descriptors")
    for name in ("duration", "count"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UsageError(f"--{name} {v}: give a positive number")
    parsed = [Rule.parse(r) for r in rules]  # all syntax errors before anything is attached
    iface, ns = resolve_where(args)
    pin_cpu(args.cpu)
    return SteeredPort(iface, args.queue, parsed, netns=ns, xdp_mode=args.xdp_mode, mode=args.mode,
                       poll=args.poll, frames=args.frames, frame_size=args.frame_size, rx_size=args.ring_size,
                       tx_size=args.ring_size, fill_size=args.ring_size, comp_size=args.ring_size)


def announce(args, sp) -> None:
    """One line on stderr once the port is open (scripts and benchmarks wait for it; --json stays clean)."""
    backend = getattr(args, "backend", "afxdp")
    mode = getattr(sp.port, "bind_mode", None) or sp.port.mode
    print(f"kbypass {args.command}: receiving on {args.iface or args.host} (backend {backend}, queues "
          f"{sp.queues}, {mode}); Ctrl-C to stop", file=sys.stderr, flush=True)


def port_summary(sp, res, **extra) -> dict:
    """The --json summary every port tool prints: counts and rate, then the port's own view."""
    return {"packets": res.packets, "bytes": res.bytes, **extra, "seconds": round(res.seconds, 6),
            "pps": round(res.pps, 1), "mode": getattr(sp.port, "bind_mode", None) or sp.port.mode,
            "queues": sp.queues, "stats": sp.port.stats, "rules": sp.rule_counters()}


def progress_printer(enabled: bool):
    if not enabled:
        return None

    def report(packets: int, seconds: float) -> None:
        print(f"{packets / seconds / 1e6:8.3f} Mpps  ({packets} packets in {seconds:.2f} s)", flush=True)

    return report


def emit(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        print(f"{key:>12}: {value}")
