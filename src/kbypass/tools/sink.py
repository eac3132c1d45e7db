"""`kbypass sink`: receive the steered flows on an AF_XDP socket, count them, report pps."""

from __future__ import annotations

from kbypass.tools import _options
from kbypass.tools._backend import add_backend_option, open_backend
from kbypass.tools._port import (add_port_options, announce, control_plane_lost, emit, port_summary,
                                 progress_printer, rules_or_default, takes_note, unreached_warnings, warn)
from kbypass.tools._workers import add_worker_options, emit_team, exit_code, run_one, run_team, wants_workers


def register(sub) -> None:
    p = sub.add_parser("sink", help="receive steered flows on AF_XDP and count them")
    add_backend_option(p)
    add_port_options(p, default_rule_help="default on a testbed host: every UDP packet; --iface needs a rule")
    p.add_argument("--check-seq", action="store_true",
                   help="check the sequence numbers and send stamps kbypass generators put in the payload")
    _options.add_idle_timeout(p, help="stop after this many seconds without a packet, counted from the start "
                                      "and then from the last packet (a run that sees nothing ends too)")
    add_worker_options(p)
    p.set_defaults(func=run)


def receive(args, rules: list[str], on_open=None) -> tuple[dict, list[str], object]:
    """One sink on the port the options name: its summary, its warnings and the (closed) port."""
    # numpy and the port stack: loaded to run, not to parse options
    from kbypass.apps.sink import Sink

    with open_backend(args, rules) as sp:
        if on_open is not None:
            on_open(sp)
        sink = Sink(sp.port, batch=args.batch, check_seq=args.check_seq)
        res = sink.run(duration=args.duration, count=args.count, idle_timeout=args.idle_timeout,
                       report=progress_printer(not args.json))
        summary = port_summary(sp, res)
        if res.seq is not None:
            summary["seq"] = res.seq
            summary["latency_us"] = res.latency_us
        warnings = unreached_warnings(sp)
        if warnings:
            summary["warnings"] = warnings
    return summary, warnings, sp


def work(worker, args, rules: list[str]) -> dict:
    """One worker of `sink --workers`: the sink on its queue, in its own process."""
    return run_one(worker, args, rules, receive)


def run(args) -> int:
    rules = rules_or_default(args, "udp", "every UDP packet")
    if wants_workers(args):
        summary, outcomes = run_team(args, work, rules, totals=("packets", "bytes"))
        emit_team(summary, args.json)
        return exit_code(outcomes)
    summary, warnings, sp = receive(args, rules, on_open=lambda sp: announce(args, sp, takes_note(args)))
    warn(args.command, warnings)
    emit(summary, args.json)
    control_plane_lost(sp)
    return 0
