"""`kbypass top`: every kbypass program on the machine, live, from the kernel's own counters (like `snabb top`,
`dpdk-proc-info`, `watch ethtool -S`).

Per steering program: where it is attached (namespace, interface, bpf_link, the processes holding it) and
each rule's hit rate from its per-CPU counters; per interface: per-queue rates from the driver (ethtool -S)
and where the receive work runs (NAPI threads, IRQs); per AF_XDP socket: its owners and XDP statistics.
It only reads maps and counters, once per interval. On a terminal one screen redrawn in place (rich
Live); `--json` prints one JSON object per interval, `--record FILE` writes the same lines to a file for
`kbypass report`.
"""

from __future__ import annotations

import json
import os
import sys
import time

from rich.console import Group
from rich.live import Live
from rich.table import Table

from kbypass.errors import UsageError
from kbypass.port.loop import Stopper
from kbypass.tools._common import console
from kbypass.tools._options import add_count, add_json, output_file, seconds_up_to
from kbypass.tools.stats import rows as queue_rows

MAX_INTERVAL = 3600.0


def register(sub) -> None:
    p = sub.add_parser("top", help="every kbypass program live: rules' hit rates, per-queue rates, sockets, "
                                   "NAPI placement, from the kernel's counters")
    p.add_argument("--netns", help="only this network namespace (default: this one and every 'ip netns')")
    p.add_argument("--interval", type=seconds_up_to(MAX_INTERVAL, "seconds between samples"), default=1.0,
                   help="seconds between samples (default 1)")
    add_count(p, "stop after this many intervals (default: until Ctrl-C)", limit=10**9)
    p.add_argument("--once", action="store_true", help="one interval, then exit (the same as -c 1)")
    add_json(p, "one JSON object per interval (lines), for scripts")
    p.add_argument("--record", type=output_file(), metavar="FILE",
                   help="also write each interval's JSON line to FILE (for 'kbypass report')")
    p.set_defaults(func=run)


def _owners(owners: list[dict]) -> str:
    return ", ".join(f"{o['pid']} {o['command'][:40]}" for o in owners) or "-"


def _rate(v: float) -> str:
    return f"{v:,.0f}"


def view(rec: dict) -> Group:
    """The screen for one interval's record."""
    cpu = rec["self"]["cpu_percent"]
    progs = Table(title=f"kbypass programs (per second over {rec['seconds']:.2f} s; top itself: {cpu:.1f}% "
                        "of a core)", title_justify="left")
    for col in ("prog", "name", "netns", "iface", "link", "held by"):
        progs.add_column(col)
    rules = Table(title="rules", title_justify="left")
    for col, right in (("prog", False), ("id", False), ("rule", False), ("group", False), ("pps", True),
                       ("Mbit/s", True), ("packets", True)):
        rules.add_column(col, justify="right" if right else "left")
    for p in rec["programs"]:
        for link in p["links"] or [{"netns": "-", "iface": "(not attached)", "link_id": "-", "owners": p["owners"]}]:
            progs.add_row(str(p["prog_id"]), p["name"], str(link["netns"]), str(link["iface"]),
                          str(link["link_id"]), _owners(link["owners"]))
        for r in p.get("rules", []):
            rules.add_row(str(p["prog_id"]), str(r["rule_id"]), r["rule"], str(r["group"]), _rate(r["pps"]),
                          f"{r['mbit_s']:,.1f}", f"{r['packets']:,}")
        if p.get("unmatched"):
            rules.add_row(str(p["prog_id"]), "-", "(no rule: to the kernel)", "", "", "",
                          f"{p['unmatched'].get('unmatched', 0):,}")
    queues = Table(title="queues (driver counters, ethtool -S)", title_justify="left")
    for col in ("netns", "iface", "where", "rx pps", "tx pps", "rx Mbit/s", "redirect/s", "drops/s", "NAPI / IRQ"):
        queues.add_column(col, justify="left" if col in ("netns", "iface", "where", "NAPI / IRQ") else "right")
    for i in rec["interfaces"]:
        place = "; ".join([f"napi {t['pid']} cpus {t['cpus']} on {t['last_cpu']}" for t in i["napi_threads"]]
                          + [f"irq {q['irq']} cpus {q['cpus']}" for q in i["irqs"]]) or "softirq (not threaded)"
        for n, (where, v) in enumerate(queue_rows(i)):
            qname = where.split()[-1]
            redirect = i["queues"].get(qname, {}).get("xdp_redirect")
            drops = v.get("drops_s", 0)
            queues.add_row(i["netns"] if n == 0 else "", i["iface"] if n == 0 else "", where,
                           *(_rate(v[k]) if k in v else "" for k in ("rx_pps", "tx_pps")),
                           f"{v['rx_mbit_s']:,.1f}" if "rx_mbit_s" in v else "",
                           _rate(redirect) if redirect is not None else "",
                           f"[bold red]{_rate(drops)}[/]" if drops else _rate(drops), place if n == 0 else "")
    socks = Table(title="AF_XDP sockets (XDP statistics per second)", title_justify="left")
    for col in ("inode", "netns", "queue", "held by", "rx dropped", "ring full", "fill empty", "tx empty"):
        socks.add_column(col, justify="right" if col in ("rx dropped", "ring full", "fill empty", "tx empty")
                         else "left")
    for s in rec["sockets"]:
        st = s["stats_per_s"]
        socks.add_row(str(s["inode"]), str(s["netns"]), "?" if s["queue"] is None else str(s["queue"]),
                      _owners(s["owners"]),
                      *(_rate(st.get(k, 0)) for k in ("rx_dropped", "rx_ring_full", "rx_fill_ring_empty_descs",
                                                      "tx_ring_empty_descs")))
    return Group(progs, rules, queues, socks)


def _open_record(path: str | None):
    if path is None:
        return None
    try:
        return open(path, "w")
    except OSError as e:
        raise UsageError(f"cannot write --record {path}: {e.strerror}: give a file in a writable directory") from None


def run(args) -> int:
    # pyroute2, numpy: loaded to run, not to parse options
    from kbypass.host.inventory import Inventory, rates

    if args.once and args.count is not None:
        raise UsageError("--once is one interval: drop -c/--count, or --once")
    count = 1 if args.once else args.count
    record = _open_record(args.record)
    inv = Inventory(args.netns)
    live = None
    try:
        prev = inv.sample()
        cpu0, t0 = os.times(), time.monotonic()
        n = 0
        tty = sys.stdout.isatty() and not args.json
        with Stopper() as stop:
            if tty:
                live = Live(console=console(), auto_refresh=False, screen=False)
                live.start()
            while not stop.stopped and (count is None or n < count):
                time.sleep(max(args.interval - (time.monotonic() - prev["mono"]), 0.0))
                cur = inv.sample()
                rec = rates(prev, cur)
                prev = cur
                n += 1
                now = os.times()
                used = (now.user + now.system) - (cpu0.user + cpu0.system)
                rec["self"] = {"pid": os.getpid(), "cpu_seconds": round(used, 4),
                               "cpu_percent": round(100 * used / max(time.monotonic() - t0, 1e-9), 3)}
                line = json.dumps(rec)
                if record:
                    record.write(line + "\n")
                    record.flush()
                if args.json:
                    print(line, flush=True)
                elif live:
                    live.update(view(rec), refresh=True)
                else:
                    console().print(view(rec))
    finally:
        if live:
            live.stop()
        inv.close()
        if record:
            record.close()
    return 0
