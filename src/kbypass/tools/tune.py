"""`kbypass tune show | apply`: the latency knobs of an interface (coalescing, NAPI deferral, busy polling),
shown before and after a change; values the device does not support are refused."""

from __future__ import annotations

from kbypass import testbed, tune
from kbypass.errors import UsageError, require_root
from kbypass.tools._common import print_json


def register(sub) -> None:
    p = sub.add_parser("tune", help="show or set interrupt coalescing, napi_defer_hard_irqs, busy polling")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    show = actions.add_parser("show", help="print every knob's value")
    apply = actions.add_parser("apply", help="set knobs; prints before -> after")
    apply.add_argument("settings", nargs="+", metavar="KNOB=VALUE", help=f"any of {', '.join(tune.KNOBS)}")
    for q in (show, apply):
        q.add_argument("--iface", help="interface (default: the testbed host's veth)")
        q.add_argument("--netns", help="network namespace of --iface")
        q.add_argument("--host", choices=testbed.HOSTS, help="a testbed host: sets --iface and --netns")
        q.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    iface, ns = args.iface, args.netns
    if args.host:
        h = testbed.host(args.host)
        iface, ns = iface or h.iface, ns or h.netns
    if not iface:
        raise UsageError("say which interface: --iface IF (with --netns NS), or --host a|b")
    if args.action == "show":
        values = tune.show(iface, ns)
        if args.json:
            print_json({"iface": iface, "netns": ns, "values": values})
        else:
            for k, v in values.items():
                print(f"{k:>22}: {v}")
        return 0
    settings = tune.parse_settings(args.settings)
    if not settings:
        raise UsageError("apply needs at least one KNOB=VALUE, e.g. napi_defer_hard_irqs=2 gro_flush_timeout=200000")
    require_root("kbypass tune apply")
    before, after = tune.apply(iface, ns, settings)
    if args.json:
        print_json({"iface": iface, "netns": ns, "before": before, "after": after})
    else:
        for k in settings:
            print(f"{k:>22}: {before[k]} -> {after[k]}")
    return 0
