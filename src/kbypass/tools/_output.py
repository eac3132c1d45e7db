"""Human output for every tool: a summary dict (the same one `--json` prints) as aligned rich tables.

Scalars go in one two-column table; each nested dict becomes its own section of rows ("stats", "seq",
...), and a list of dicts (the per-rule counters) a table with a column per key. Counters that mean
something went missing or wrong (drops, losses, errors, invalid or refused descriptors, full or empty
rings) are shown in bold red when they are not zero, so a drop is never buried in a column of numbers.
When stdout is not a terminal rich writes plain text, no colour codes, wide enough not to wrap.
"""

from __future__ import annotations

import json
import re
import sys

from rich.table import Table
from rich.text import Text

# A key names a bad event when one of its words is one of these (rx_dropped, lost, tx_invalid_descs, ...).
_BAD_WORDS = re.compile(r"(^|_)(drop|drops|dropped|lost|loss|losses|error|errors|invalid|full|empty|"
                        r"duplicates|reordered|retransmits|not_reflected|malformed|refused|failed|timeouts)(_|$)")


def is_bad_counter(key: str) -> bool:
    return bool(_BAD_WORDS.search(key.lower()))


def console():
    """A rich console that does not squeeze tables into 80 columns when output goes to a file or pipe."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _cell(key: str, value) -> Text:
    if isinstance(value, float):
        text = f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else repr(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    elif isinstance(value, (list, tuple)) and not any(isinstance(v, dict) for v in value):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value)
    else:
        text = str(value)
    bad = is_bad_counter(key) and isinstance(value, (int, float)) and not isinstance(value, bool) and value
    return Text(text, style="bold red" if bad else "")


def summary_tables(summary: dict, title: str | None = None) -> list[Table]:
    main = Table(title=title, show_header=False, box=None, pad_edge=False)
    main.add_column(style="bold", justify="right")
    main.add_column(justify="right")
    tables = [main]
    for key, value in summary.items():
        if isinstance(value, dict) and value:
            for sub, v in value.items():  # a third level (per-queue stats) prints as one JSON-ish cell
                main.add_row(f"{key}.{sub}", _cell(sub, v))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for row in value for k in row))
            t = Table(title=key, title_justify="left")
            for c in cols:
                t.add_column(c, justify="left" if c in ("rule", "name", "owner") else "right")
            for row in value:
                t.add_row(*[_cell(c, row.get(c, "")) for c in cols])
            tables.append(t)
        else:
            main.add_row(key, _cell(key, value))
    return tables


def emit(summary: dict, as_json: bool, title: str | None = None) -> None:
    """Print a tool's summary: JSON with --json (shape unchanged), else aligned tables."""
    if as_json:
        print_json(summary)
        return
    out = console()
    for t in summary_tables(summary, title):
        out.print(t)


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
