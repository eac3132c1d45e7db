"""`kbypass stats --iface IF`: per-interface and per-queue packet rates, like `watch ethtool -S`."""

from __future__ import annotations

import json
import math
import time

from rich.live import Live
from rich.table import Table

from kbypass import ifstats, testbed
from kbypass.apps.loop import Stopper
from kbypass.errors import UsageError
from kbypass.tools._common import console

MAX_INTERVAL = 3600.0  # an hour between samples; longer is almost certainly a typo

def register(sub) -> None:
    p = sub.add_parser("stats", help="per-interface and per-queue packet rates (like watch ethtool -S)")
    p.add_argument("--iface", help="interface")
    p.add_argument("--netns", help="namespace of --iface")
    p.add_argument("--host", choices=testbed.HOSTS, help="a testbed host: sets --iface and --netns")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument("--count", type=int, help="stop after this many intervals (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="one JSON object per interval")
    p.set_defaults(func=run)


def table(ifname: str, r: dict) -> Table:
    t = Table(title=f"{ifname}: per second over {r['seconds']:.2f} s")
    t.add_column("where")
    for col in ("rx pps", "tx pps", "rx Mbit/s", "tx Mbit/s", "drops/s"):
        t.add_column(col, justify="right")
    tot = r["totals"]
    t.add_row("interface", f"{tot['rx_packets']:,.0f}", f"{tot['tx_packets']:,.0f}",
              f"{tot['rx_bytes'] * 8 / 1e6:,.1f}", f"{tot['tx_bytes'] * 8 / 1e6:,.1f}",
              f"{tot['rx_dropped'] + tot['tx_dropped']:,.0f}")
    for q, c in r["queues"].items():
        pk = next((v for k, v in c.items() if k.endswith("packets")), 0.0)
        by = next((v for k, v in c.items() if k.endswith("bytes")), 0.0)
        drops = sum(v for k, v in c.items() if "drop" in k or "error" in k)
        rx = q.startswith("rx")
        t.add_row(f"queue {q}", f"{pk:,.0f}" if rx else "", "" if rx else f"{pk:,.0f}",
                  f"{by * 8 / 1e6:,.1f}" if rx else "", "" if rx else f"{by * 8 / 1e6:,.1f}", f"{drops:,.0f}")
    return t


def run(args) -> int:
    if not math.isfinite(args.interval) or not 0 < args.interval <= MAX_INTERVAL:
        raise UsageError(f"--interval {args.interval}: give a number of seconds above 0 and at most "
                         f"{MAX_INTERVAL:.0f}")
    if args.count is not None and args.count <= 0:
        raise UsageError(f"--count {args.count}: give a positive number of intervals")
    if args.host:
        h = testbed.host(args.host)
        iface, ns = args.iface or h.iface, args.netns or h.netns
    elif args.iface:
        iface, ns = args.iface, args.netns
    else:
        raise UsageError("say which interface: --iface IF (with --netns NS), or --host a|b")
    prev = ifstats.sample(iface, ns)
    n = 0
    with Stopper() as stop:
        live = None if args.json else Live(console=console(), auto_refresh=False)
        if live:
            live.start()
        try:
            while not stop.stopped and (args.count is None or n < args.count):
                time.sleep(args.interval)
                cur = ifstats.sample(iface, ns)
                r = ifstats.rates(prev, cur)
                prev = cur
                n += 1
                if args.json:
                    print(json.dumps({"iface": iface, **r}), flush=True)
                else:
                    live.update(table(iface, r), refresh=True)
        finally:
            if live:
                live.stop()
    return 0
