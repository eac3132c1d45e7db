"""`kbypass reflect`: send every steered packet back (MAC, IP and UDP ports swapped), zero copy."""

from __future__ import annotations

from kbypass.apps.reflect import Reflector
from kbypass.tools._backend import add_backend_option, open_backend
from kbypass.tools._port import (add_port_options, announce, control_plane_lost, emit, port_summary,
                                 progress_printer, rules_or_default, takes_note, unreached_warnings, warn)

# IPv4 only: the reflector swaps fields at IPv4 offsets, and IPv6 UDP (DNS, DHCPv6, ...) stays the kernel's.
DEFAULT_RULE = "udp dst 0.0.0.0/0"


def register(sub) -> None:
    p = sub.add_parser("reflect", help="bounce steered packets back to their sender (zero-copy forwarding)")
    add_backend_option(p)
    # A forwarding loop pays one transmit syscall per batch (copy mode): at full load 1024 forwarded
    # 11% more than 256 on the testbed; at low load batches are small anyway (receive never waits to fill).
    add_port_options(p, default_rule_help=f"default on a testbed host: '{DEFAULT_RULE}', every IPv4 UDP packet; --iface needs a rule", default_batch=1024)
    p.add_argument("--macs-only", action="store_true",
                   help="swap MACs only (like testpmd macswap); not with --backend socket")
    p.set_defaults(func=run)


def run(args) -> int:
    with open_backend(args, rules_or_default(args, DEFAULT_RULE, "every IPv4 UDP packet")) as sp:
        announce(args, sp, takes_note(args))
        res = Reflector(sp.port, batch=args.batch, swap_l3=not args.macs_only).run(
            duration=args.duration, count=args.count, report=progress_printer(not args.json))
        summary = port_summary(sp, res, sent=res.sent, tx_dropped=res.tx_dropped, not_reflected=res.not_reflected)
        warnings = unreached_warnings(sp)
        if warnings:
            summary["warnings"] = warnings
    warn(args.command, warnings)
    emit(summary, args.json)
    control_plane_lost(sp)
    return 0
