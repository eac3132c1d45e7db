"""`kbypass reflect`: send every steered packet back (MAC, IP and UDP ports swapped), zero copy."""

from __future__ import annotations

from kbypass.tools._backend import add_backend_option, check_return_limit, open_backend
from kbypass.tools._port import (add_port_options, announce, control_plane_lost, emit, port_summary,
                                 progress_printer, rules_or_default, takes_note, unreached_warnings, warn)
from kbypass.tools._workers import add_worker_options, emit_team, exit_code, run_one, run_team, wants_workers

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
    add_worker_options(p)
    p.set_defaults(func=run)


def forward(args, rules: list[str], on_open=None) -> tuple[dict, list[str], object]:
    """One reflector on the port the options name: its summary, its warnings and the (closed) port."""
    # numpy: loaded to run, not to parse options
    from kbypass.apps.reflect import Reflector

    with open_backend(args, rules, sends_back=True) as sp:
        if on_open is not None:
            on_open(sp)
        res = Reflector(sp.port, batch=args.batch, swap_l3=not args.macs_only).run(
            duration=args.duration, count=args.count, report=progress_printer(not args.json))
        summary = port_summary(sp, res, sent=res.sent, tx_dropped=res.tx_dropped, not_reflected=res.not_reflected)
        warnings = unreached_warnings(sp)
        if warnings:
            summary["warnings"] = warnings
    return summary, warnings, sp


def work(worker, args, rules: list[str]) -> dict:
    """One worker of `reflect --workers`: the reflector on its queue, in its own process."""
    return run_one(worker, args, rules, forward)


def run(args) -> int:
    rules = rules_or_default(args, DEFAULT_RULE, "every IPv4 UDP packet")
    check_return_limit(args)  # before any worker starts: one line, not one per worker
    if wants_workers(args):
        summary, outcomes = run_team(args, work, rules,
                                     totals=("packets", "bytes", "sent", "tx_dropped", "not_reflected"))
        emit_team(summary, args.json)
        return exit_code(outcomes)
    summary, warnings, sp = forward(args, rules, on_open=lambda sp: announce(args, sp, takes_note(args)))
    warn(args.command, warnings)
    emit(summary, args.json)
    control_plane_lost(sp)
    return 0
