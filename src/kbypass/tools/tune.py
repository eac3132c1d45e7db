"""`kbypass tune show | apply`: the latency knobs of an interface (coalescing, NAPI deferral, busy polling),
shown before and after a change; values the device does not support are refused.

Each knob's scope is shown and said: most belong to the interface, but busy_poll and busy_read are
machine-wide sysctls that outlive the testbed, so `apply` says so on stderr (and in --json) and prints the
command that sets them back."""

from __future__ import annotations

import sys

from kbypass.host import testbed, tune
from kbypass.errors import UsageError, require_root
from kbypass.tools._options import add_json, add_where
from kbypass.tools._output import console, print_json


def register(sub) -> None:
    p = sub.add_parser("tune", help="show or set interrupt coalescing, napi_defer_hard_irqs, busy polling")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    show = actions.add_parser("show", help="print every knob's value and scope (interface or machine-wide)")
    apply = actions.add_parser("apply", help="set knobs; prints before -> after, and how to undo machine-wide ones")
    apply.add_argument("settings", nargs="+", metavar="KNOB=VALUE",
                       help=f"any of {', '.join(tune.KNOBS)} ({', '.join(tune.SYSCTL_KNOBS)} are machine-wide "
                            "sysctls: they stay after the testbed is gone)")
    for q in (show, apply):
        add_where(q, host_help="a testbed host: sets --iface and --netns")
        add_json(q, "print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    iface, ns = args.iface, args.netns
    if args.host:
        h = testbed.host(args.host)
        iface, ns = iface or h.iface, ns or h.netns
    if not iface:
        raise UsageError("say which interface: -i/--iface IF (with --netns NS), or --host a|b")
    if args.action == "show":
        values = tune.show(iface, ns)
        if args.json:
            print_json({"iface": iface, "netns": ns, "values": values, "scope": tune.SCOPE})
        else:
            _table(["knob", "value", "scope"], [(k, v, _scope(k)) for k, v in values.items()])
        return 0
    settings = tune.parse_settings(args.settings)
    if not settings:
        raise UsageError("apply needs at least one KNOB=VALUE, e.g. napi_defer_hard_irqs=2 gro_flush_timeout=200000")
    require_root("kbypass tune apply")
    before, after = tune.apply(iface, ns, settings)
    machine = [k for k in settings if tune.SCOPE[k] == "machine"]
    out = {"iface": iface, "netns": ns, "before": before, "after": after,
           "scope": {k: tune.SCOPE[k] for k in settings}}
    if machine:
        undo = tune.restore_command(before, machine)
        out["machine_wide"] = machine
        out["restore"] = undo
        print(f"kbypass: note: {', '.join(machine)} {'is a' if len(machine) == 1 else 'are'} machine-wide "
              f"sysctl{'s' if len(machine) > 1 else ''} (net.core.*, every namespace): the change stays after "
              f"'kbypass testbed down', until reboot; to restore: {undo}", file=sys.stderr)
    if args.json:
        print_json(out)
    else:
        _table(["knob", "before", "after", "scope"], [(k, before[k], after[k], _scope(k)) for k in settings])
    return 0


def _scope(knob: str) -> str:
    return "machine-wide (stays after the testbed)" if tune.SCOPE[knob] == "machine" else "this interface"


def _table(cols: list[str], rows) -> None:
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for c in cols:
        t.add_column(c, justify="right" if c in ("value", "before", "after") else "left")
    for r in rows:
        t.add_row(*(str(x) for x in r))
    console().print(t)
