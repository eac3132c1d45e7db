"""Options and set-up shared by the tools that open a steered AF_XDP port (sink, reflect, capture)."""

from __future__ import annotations

import argparse
import sys

from kbypass.errors import KbypassError, UsageError
from kbypass.host import testbed
from kbypass.tools import _options, _output

# Upper bounds that keep a typo from asking for gigabytes (2^24 ring entries already took 1.6 GB, 2^30 spun
# at 100% CPU) while leaving room far beyond what a receive loop gains from: 2^18 frames of 4096 bytes are
# 1 GiB of packet memory; a ring of 2^16 descriptors outruns any batch we read.
MAX_FRAMES = 1 << 18
MAX_RING = 1 << 16
MAX_BATCH = 1 << 16
DEFAULT_RING = 2048


def ring_size(text: str) -> int:
    """A ring size: a power of two from 64 to MAX_RING (the kernel masks ring indexes with size - 1)."""
    v = _options.int_range(64, MAX_RING, "a ring size")(text)
    if v & (v - 1):
        raise argparse.ArgumentTypeError(f"{text!r}: a ring size is a power of two from 64 to {MAX_RING}, "
                                         "e.g. 512, 1024, 2048 or 4096")
    return v


def add_port_options(p, *, default_rule_help: str, default_batch: int = 256) -> None:
    where = p.add_argument_group("where")
    _options.add_where(where, iface_help="interface to steer from (or --host for a testbed host's veth)")
    where.add_argument("--queue", type=_options.int_range(0, 4095, "a queue id"), default=None,
                       help="queue id (default: every receive queue, one AF_XDP socket each); a flow the "
                            "NIC hashes to another queue goes to the kernel, and the summary says so")
    what = p.add_argument_group("what")
    what.add_argument("--rule", action="append", default=[], metavar="RULE",
                      help=f'steering rule, repeatable, e.g. "udp dst 10.77.0.2 dport 4321" ({default_rule_help})')
    how = p.add_argument_group("how")
    how.add_argument("--mode", choices=("copy", "zerocopy", "auto"), default="auto",
                     help="AF_XDP bind mode (afxdp backend only)")
    how.add_argument("--poll", choices=("busy", "wakeup"), default="wakeup",
                     help="wait by busy polling or need_wakeup (afxdp backend only)")
    how.add_argument("--xdp-mode", choices=("native", "skb", "auto"), default="native",
                     help="XDP attach mode (afxdp backend only)")
    how.add_argument("--batch", type=_options.int_range(1, MAX_BATCH, "a batch size"), default=default_batch,
                     help=f"most descriptors per receive, 1 to {MAX_BATCH}; never waits to fill one "
                          f"(default {default_batch})")
    how.add_argument("--frames", type=_options.int_range(64, MAX_FRAMES, "a number of frames"), default=4096,
                     help=f"packet memory frames, 64 to {MAX_FRAMES} (default 4096; half are lent to the kernel "
                          "for receiving)")
    how.add_argument("--frame-size", type=int, choices=(2048, 4096), default=None,
                     help="packet memory frame size (default 2048, or 4096 when the interface's MTU does not fit "
                          "one 2048-byte frame: then packets span several frames, multi-buffer AF_XDP)")
    how.add_argument("--ring-size", type=ring_size, default=None,
                     help=f"size of each ring: a power of two from 64 to {MAX_RING} (default {DEFAULT_RING}; "
                          "afxdp: the four AF_XDP rings, packet_mmap: the TX ring; not for socket)")
    _options.add_duration(how)
    _options.add_count(how)
    _options.add_cpu(how)
    _options.add_json(how)


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


def announce(args, sp, note: str = "") -> None:
    """One line on stderr once the port is open (scripts and benchmarks wait for it; --json stays clean)."""
    backend = getattr(args, "backend", "afxdp")
    mode = getattr(sp.port, "bind_mode", None) or sp.port.mode
    print(f"kbypass {args.command}: receiving on {args.iface or args.host} (backend {backend}, queues "
          f"{sp.queues}, {mode}){note}; Ctrl-C to stop", file=sys.stderr, flush=True)


def takes_note(args) -> str:
    """What the afxdp backend does to the kernel's traffic, for the start-up line: redirected packets are
    the socket's, not copies."""
    if getattr(args, "backend", "afxdp") != "afxdp":
        return ""
    return "; matched packets are taken from the kernel (its sockets, ping, tcpdump do not see them)"


def port_summary(sp, res, **extra) -> dict:
    """The --json summary every port tool prints: counts and rate, then the port's own view."""
    summary = {"packets": res.packets, "bytes": res.bytes, **extra, "seconds": round(res.seconds, 6),
               "pps": round(res.pps, 1), "mode": getattr(sp.port, "bind_mode", None) or sp.port.mode,
               "queues": sp.queues, "stats": sp.port.stats, "rules": sp.rule_counters()}
    hidden, note = getattr(sp, "hidden", None), getattr(sp, "hw_note", None)
    if hidden is not None:  # --hw: where the NIC put our ntuple rules
        summary["hw"] = {"queue": hidden.queue, "rule_locations": list(hidden.locations)}
    elif note:  # --hw auto on a device that cannot
        summary["hw"] = {"fallback": note}
    return summary


def unreached_warnings(sp) -> list[str]:
    """The steered packets no socket received: the steering program counted them as matched by a redirect
    rule, but they arrived on a queue without an AF_XDP socket (--queue N while the NIC hashed the flow
    elsewhere), so bpf_redirect_map fell back to XDP_PASS and the kernel got them."""
    missed = getattr(sp, "unreached", lambda: 0)()
    if missed <= 0:
        return []
    return [f"{missed} packets matched a redirect rule but arrived on a queue with no socket (this run has "
            f"queues {sp.queues}): they went to the kernel; leave out --queue to listen on every queue"]


def control_plane_lost(sp) -> None:
    """After the summary: a control plane that died under the run is an error (its rules were gone from
    then on), said once the port's own counts are printed."""
    lost = getattr(sp, "control_lost", None)
    if lost:
        raise KbypassError(lost)


def warn(command: str, warnings: list[str]) -> None:
    for w in warnings:
        print(f"kbypass {command}: warning: {w}", file=sys.stderr, flush=True)


def progress_printer(enabled: bool, file=None):
    if not enabled:
        return None

    def report(packets: int, seconds: float) -> None:
        print(f"{packets / seconds / 1e6:8.3f} Mpps  ({packets} packets in {seconds:.2f} s)",
              file=file or sys.stdout, flush=True)

    return report


def emit(summary: dict, as_json: bool) -> None:
    """The summary as JSON (shape unchanged) or as tables; for people the per-queue counters become a
    table of their own (a row per queue, the columns that are not zero everywhere) instead of one cell."""
    if not as_json and isinstance(summary.get("stats"), dict) and "per_queue" in summary["stats"]:
        summary = dict(summary, stats=dict(summary["stats"]))
        per_queue = summary["stats"].pop("per_queue")
        keys = [k for k in next(iter(per_queue.values()), {})
                if k == "rx_packets" or any(s.get(k) for s in per_queue.values())]
        summary["per_queue"] = [{"queue": q, **{k: s.get(k) for k in keys}} for q, s in per_queue.items()]
    _output.emit(summary, as_json)
