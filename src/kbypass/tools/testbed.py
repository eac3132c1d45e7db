"""`kbypass testbed up | down | status [--json]`."""

from __future__ import annotations

import sys

from rich.table import Table

from kbypass.errors import require_root
from kbypass.host import testbed
from kbypass.tools._common import console, print_json
from kbypass.tools._options import add_prefix
from kbypass.tools._options import int_range


def register(sub) -> None:
    p = sub.add_parser("testbed", help="the built-in two-host netns testbed")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    up = verbs.add_parser("up", help="create hosts a and b (idempotent)")
    add_prefix(up)
    up.add_argument("--queues", type=int_range(1, testbed.MAX_QUEUES, "a queue count"), default=2,
                    help=f"queues per veth end, 1 to {testbed.MAX_QUEUES} (default 2)")
    # Any whole number gets through here so that validate() can say why a large MTU cannot work.
    up.add_argument("--mtu", type=int_range(-(1 << 62), 1 << 62, "an MTU"), default=None,
                    help=f"MTU of the veth pair, {testbed.MIN_MTU} to {testbed.FRAGS_MAX_MTU} (above "
                         f"{testbed.XDP_MAX_MTU} every XDP program must be frags-aware, as kbypass's are; "
                         "again on a testbed that is up: changes its MTU; default: a testbed that is up keeps "
                         f"its MTU, a new one gets {testbed.DEFAULT_MTU})")
    up.add_argument("--subnet", default=testbed.DEFAULT_SUBNET, help="IPv4 subnet (default %(default)s)")
    up.add_argument("--json", action="store_true", help="print the status JSON")
    up.set_defaults(func=run_up)

    down = verbs.add_parser("down", help="remove everything 'up' made")
    add_prefix(down)
    down.set_defaults(func=run_down)

    st = verbs.add_parser("status", help="show the testbed")
    add_prefix(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=run_status)


def run_up(args) -> int:
    prefix = args.prefix or testbed.default_prefix()
    config = testbed.TestbedConfig(prefix=prefix, queues=args.queues, mtu=args.mtu, subnet=args.subnet)
    config.validate()  # a bad value is refused before anything is looked at
    require_root("kbypass testbed up")
    before = testbed.status(prefix) if args.mtu is not None else None
    hosts = testbed.up(config)
    if before and before[0].mtu != hosts[0].mtu:  # a change in place is worth a line (the table shows the result)
        print(f"kbypass testbed up: MTU of {prefix!r} changed from {before[0].mtu} to {hosts[0].mtu}", file=sys.stderr)
    _show(hosts, prefix, args.json)
    return 0


def run_down(args) -> int:
    prefix = args.prefix or testbed.default_prefix()
    removed = testbed.down(prefix)
    print(f"removed {', '.join(removed)}" if removed else f"testbed {prefix!r} was not up")
    return 0


def run_status(args) -> int:
    prefix = args.prefix or testbed.default_prefix()
    hosts = testbed.status(prefix)
    _show(hosts, prefix, args.json)
    return 0 if hosts is not None else 1


def _show(hosts, prefix: str, as_json: bool) -> None:
    if as_json:
        print_json(testbed.status_json(hosts, prefix))
        return
    if hosts is None:
        print(f"testbed {prefix!r} is not up (kbypass testbed up)")
        return
    table = Table(title=f"testbed {prefix!r}")
    for col in ("host", "netns", "iface", "ifindex", "mac", "ipv4", "queues", "mtu"):
        table.add_column(col)
    for h in hosts:
        table.add_row(h.name, h.netns, h.iface, str(h.ifindex), h.mac, f"{h.ipv4}/{h.prefixlen}",
                      str(h.queues), str(h.mtu))
    console().print(table)
