"""`kbypass stats -i IF`: per-interface and per-queue packet rates, like `watch ethtool -S`.

On a terminal the rates are one table redrawn in place (rich Live). Anywhere else (`> log`, `| grep`) a
redrawn table would keep only its last state, so each interval is written as plain lines instead, one per
interface and one per queue, each complete in itself (time, interface, where, rates) so grep and awk work.
"""

from __future__ import annotations

import json
import sys
import time

from rich.live import Live
from rich.table import Table

from kbypass.errors import UsageError
from kbypass.host import testbed
from kbypass.port.loop import Stopper
from kbypass.tools._common import console
from kbypass.tools._options import add_count, add_json, add_where, seconds_up_to

MAX_INTERVAL = 3600.0  # an hour between samples; longer is almost certainly a typo
COLUMNS = ("rx_pps", "tx_pps", "rx_mbit_s", "tx_mbit_s", "drops_s")


def register(sub) -> None:
    p = sub.add_parser("stats", help="per-interface and per-queue packet rates (like watch ethtool -S)")
    add_where(p, iface_help="interface to watch", host_help="a testbed host: sets --iface and --netns")
    p.add_argument("--interval", type=seconds_up_to(MAX_INTERVAL, "seconds between samples"), default=1.0,
                   help=f"seconds between samples (default 1, at most {MAX_INTERVAL:.0f})")
    add_count(p, "stop after this many intervals (default: until Ctrl-C)", limit=10**9)
    add_json(p, "one JSON object per interval")
    p.set_defaults(func=run)


def rows(r: dict) -> list[tuple[str, dict]]:
    """(where, {column: per-second value}) for the interface and each queue, in display order."""
    tot = r["totals"]
    out = [("interface", {"rx_pps": tot["rx_packets"], "tx_pps": tot["tx_packets"],
                          "rx_mbit_s": tot["rx_bytes"] * 8 / 1e6, "tx_mbit_s": tot["tx_bytes"] * 8 / 1e6,
                          "drops_s": tot["rx_dropped"] + tot["tx_dropped"]})]
    for q, c in r["queues"].items():
        pk = next((v for k, v in c.items() if k.endswith("packets")), 0.0)
        by = next((v for k, v in c.items() if k.endswith("bytes")), 0.0)
        drops = sum(v for k, v in c.items() if "drop" in k or "error" in k)
        d = q[:2]  # "rx" or "tx": a queue counts one direction
        out.append((f"queue {q}", {f"{d}_pps": pk, f"{d}_mbit_s": by * 8 / 1e6, "drops_s": drops}))
    return out


def table(ifname: str, r: dict) -> Table:
    t = Table(title=f"{ifname}: per second over {r['seconds']:.2f} s")
    t.add_column("where")
    for col in ("rx pps", "tx pps", "rx Mbit/s", "tx Mbit/s", "drops/s"):
        t.add_column(col, justify="right")
    for where, v in rows(r):
        cells = [("" if k not in v else f"{v[k]:,.1f}" if "mbit" in k else f"{v[k]:,.0f}") for k in COLUMNS]
        if v.get("drops_s"):
            cells[-1] = f"[bold red]{cells[-1]}[/]"
        t.add_row(where, *cells)
    return t


def lines(ifname: str, r: dict, now: float) -> list[str]:
    """The plain form: one line per interface and queue, key=value, every line complete on its own."""
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    return [f"{stamp} iface={ifname} queue={'all' if where == 'interface' else where.split()[1]} "
            + " ".join(f"{k}={v[k]:.1f}" if "mbit" in k else f"{k}={v[k]:.0f}" for k in COLUMNS if k in v)
            for where, v in rows(r)]


def run(args) -> int:
    # pyroute2: loaded to run, not to parse options
    from kbypass.host import ifstats

    if args.host:
        h = testbed.host(args.host)
        iface, ns = args.iface or h.iface, args.netns or h.netns
    elif args.iface:
        iface, ns = args.iface, args.netns
    else:
        raise UsageError("say which interface: -i/--iface IF (with --netns NS), or --host a|b")
    prev = ifstats.sample(iface, ns)
    n = 0
    tty = sys.stdout.isatty()
    with Stopper() as stop:
        live = Live(console=console(), auto_refresh=False) if tty and not args.json else None
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
                elif live:
                    live.update(table(iface, r), refresh=True)
                else:
                    print("\n".join(lines(iface, r, time.time())), flush=True)
        finally:
            if live:
                live.stop()
    return 0
