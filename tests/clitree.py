"""The `kbypass` argparse tree as data, and the README's option vocabulary, for the cross-command tests
(tests/unit/test_vocabulary.py, tests/unit/test_option_matrix.py)."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def leaves(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()):
    """(command path, parser) for every command a user runs: ("sink",), ("testbed", "up"), ..."""
    if parser is None:
        from kbypass.cli import build_parser

        parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaves(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of one command (not positionals, not -h/--help)."""
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def long_name(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    assert len(longs) == 1, f"{action.option_strings}: one long name per option"
    return longs[0]


def short_names(action: argparse.Action) -> list[str]:
    return [s for s in action.option_strings if not s.startswith("--")]


@dataclass
class Row:
    option: str  # "--iface"
    short: str | None  # "-i"
    means: str
    commands: str  # the README's words: "pingpong, xfer", "the same", ...


def readme_section() -> str:
    text = README.read_text()
    start = text.index("### Options: one vocabulary")
    end = text.index("\n### ", start + 1)
    return text[start:end]


def vocabulary() -> list[Row]:
    """The rows of the README's "Options: one vocabulary" table."""
    rows = []
    for line in readme_section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        # a `--host a\|b` cell splits on the escaped bar: glue the cells back by counting the four columns
        if len(cells) > 4:
            cells = [" ".join(cells[:-3]), *cells[-3:]]
        if len(cells) != 4 or not cells[0].startswith("`--"):
            continue
        option = re.match(r"`(--[a-z][a-z0-9-]*)", cells[0]).group(1)
        short = re.fullmatch(r"`(-[a-zA-Z])`", cells[1])
        rows.append(Row(option, short.group(1) if short else None, cells[2], cells[3]))
    return rows


def particular() -> list[str]:
    """The README's list of options particular to one command or family (the paragraph after the table)."""
    section = readme_section()
    m = re.search(r"The rest are particular to one command or family:(.*?)\.\s", section, re.S)
    assert m, "the README's options section lost its 'The rest are particular to ...' paragraph"
    return re.findall(r"`(--[a-z][a-z0-9-]*)`", m.group(1))
