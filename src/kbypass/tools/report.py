"""`kbypass report RUN.jsonl -o report.html`: one self-contained HTML page of a run recorded by
`kbypass top --record` (or `--json > RUN.jsonl`): rates over time per rule, per queue, per socket, drops.

The plots are PNGs embedded as data URIs, so the page is one file to mail or attach to an issue.
"""

from __future__ import annotations

import base64
import html
import io
import json

from kbypass.errors import UsageError
from kbypass.tools._options import input_file, output_file

DROPS = ("drops", "xdp_drops", "xdp_tx_errors")  # per-queue driver counters that are losses


def register(sub) -> None:
    p = sub.add_parser("report", help="an HTML page with plots of a run recorded by 'kbypass top --record'")
    p.add_argument("record", type=input_file, metavar="FILE.jsonl", help="the JSON lines 'kbypass top' wrote")
    p.add_argument("-o", "--output", type=output_file(), required=True, metavar="FILE.html",
                   help="the HTML file to write")
    p.set_defaults(func=run)


def load(path: str) -> list[dict]:
    """The records of a run, in order; a line that is not one of top's records is an error naming it."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rec["time"], rec["programs"], rec["interfaces"], rec["sockets"]  # noqa: B018 (shape check)
            except (ValueError, KeyError, TypeError):
                raise UsageError(f"{path} line {n} is not a 'kbypass top --json' record: record a run with "
                                 "'kbypass top --record FILE'") from None
            out.append(rec)
    if not out:
        raise UsageError(f"{path} has no records: record a run with 'kbypass top --record FILE'")
    return out


def series(records: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """plot title -> line label -> [(seconds since the start, value)]."""
    t0 = records[0]["time"]
    out: dict[str, dict[str, list[tuple[float, float]]]] = {
        "rules: packets/s": {}, "queues: packets/s": {}, "drops/s (driver and sockets)": {},
        "sockets: XDP statistics/s": {}}

    def add(plot: str, label: str, t: float, v: float) -> None:
        out[plot].setdefault(label, []).append((t, v))

    for rec in records:
        t = rec["time"] - t0
        for p in rec["programs"]:
            for r in p.get("rules", []):
                add("rules: packets/s", f"prog {p['prog_id']} #{r['rule_id']} {r['rule']}", t, r["pps"])
        for i in rec["interfaces"]:
            for q, c in i["queues"].items():
                pk = next((v for k, v in c.items() if k.endswith("packets")), None)
                if pk is not None:
                    add("queues: packets/s", f"{i['netns']}/{i['iface']} {q}", t, pk)
                drops = sum(v for k, v in c.items() if k in DROPS)
                add("drops/s (driver and sockets)", f"{i['netns']}/{i['iface']} {q}", t, drops)
        for s in rec["sockets"]:
            st = s.get("stats_per_s", {})
            who = ",".join(str(o["pid"]) for o in s["owners"]) or "?"
            add("sockets: XDP statistics/s", f"xsk {s['inode']} (pid {who}) fill ring empty", t,
                st.get("rx_fill_ring_empty_descs", 0))
            add("drops/s (driver and sockets)", f"xsk {s['inode']} rx dropped + ring full", t,
                st.get("rx_dropped", 0) + st.get("rx_ring_full", 0))
    return out


def _png(title: str, lines: dict[str, list[tuple[float, float]]]) -> str:
    import matplotlib  # noqa: PLC0415 (matplotlib is slow to import: only this command needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(9, 3.6))
    for label, pts in lines.items():
        ax.plot([t for t, _ in pts], [v for _, v in pts], label=label, marker=".")
    ax.set_title(title)
    ax.set_xlabel("seconds")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def page(path: str, records: list[dict]) -> str:
    first, last = records[0], records[-1]
    secs = sum(r["seconds"] for r in records)
    parts = [f"<!doctype html><meta charset=utf-8><title>kbypass report: {html.escape(path)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:2px 8px}</style>",
             f"<h1>kbypass run: {html.escape(path)}</h1>",
             f"<p>{len(records)} intervals, {secs:.1f} s; top's own CPU: "
             f"{last.get('self', {}).get('cpu_percent', 0):.2f}% of a core.</p>",
             "<h2>Rules at the end</h2><table><tr><th>prog</th><th>rule</th><th>packets</th><th>bytes</th></tr>"]
    for p in last["programs"]:
        for r in p.get("rules", []):
            parts.append(f"<tr><td>{p['prog_id']}</td><td>{html.escape(r['rule'])}</td>"
                         f"<td>{r['packets']:,}</td><td>{r['bytes']:,}</td></tr>")
    parts.append("</table>")
    for title, lines in series(records).items():
        if any(v for pts in lines.values() for _, v in pts) or title.startswith(("rules", "queues")):
            parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                         f"src='data:image/png;base64,{_png(title, lines)}'>")
    parts.append(f"<p>From {first['time']:.0f} to {last['time']:.0f} (unix time).</p>")
    return "\n".join(parts)


def run(args) -> int:
    records = load(args.record)
    text = page(args.record, records)
    try:
        with open(args.output, "w") as f:
            f.write(text)
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror}") from None
    print(f"{args.output}: {len(records)} intervals")
    return 0
