"""One vocabulary: every option of every `kbypass` subcommand against the README's table (issue "The first
hour", item 2). The parser is the real one (kbypass.cli.build_parser); the table is read from README.md,
so the two cannot drift apart: a new option, a renamed one or a short option that means something else
fails here until the README says so."""

from __future__ import annotations

import pytest

from tests.clitree import leaves, long_name, options, particular, short_names, vocabulary

COMMANDS = {path: parser for path, parser in leaves()}
ROWS = vocabulary()
TABLE = {r.option: r for r in ROWS}
SHORT = {r.short: r.option for r in ROWS if r.short}

# The table's "commands" column in words, as explicit lists (kept small on purpose: a command that starts
# opening an interface or printing a summary is added here, where a reviewer sees it).
OPENS_AN_INTERFACE = ["sink", "reflect", "capture", "gen", "stats", "pingpong server", "pingpong client",
                      "tune show", "tune apply", "xfer send", "xfer recv", "cp serve", "cp start", "http serve",
                      "http get"]
USES_THE_TESTBED = [*OPENS_AN_INTERFACE, "testbed up", "testbed down", "testbed status", "doctor", "demo",
                    "bench rx", "bench latency"]
HAS_A_SUMMARY = ["sink", "reflect", "capture", "gen", "stats", "pingpong server", "pingpong client",
                 "tune show", "tune apply", "xfer send", "xfer recv", "testbed up", "testbed status",
                 "doctor", "bench rx", "bench latency", "http serve", "http get"]
PHRASES = {
    "every command that opens an interface": OPENS_AN_INTERFACE,
    "every command that reads or makes the testbed": USES_THE_TESTBED,
    "every command with a summary": HAS_A_SUMMARY,
}

# Names the issue found for concepts the table names otherwise: they must be gone, not kept as aliases.
RETIRED = {"--server": "--dst", "--to": "--dst", "--to-mac": "--dst-mac", "--give-up": "--idle-timeout",
           "--timeout": "--idle-timeout", "--engine": "--backend"}


def name(path: tuple[str, ...]) -> str:
    return " ".join(path)


def commands_of(row, previous: list[str]) -> list[str]:
    """The commands a row's last column names: "pingpong, xfer send", "the same", or a phrase above."""
    words = row.commands.strip()
    if words == "the same":
        return previous
    if words in PHRASES:
        return PHRASES[words]
    out = []
    for item in (w.strip() for w in words.split(",")):
        family = [name(p) for p in COMMANDS if name(p) == item or p[0] == item]
        assert family, f"README row {row.option}: {item!r} is not a kbypass command (nor a phrase this test maps)"
        out += family
    return out


def every_option():
    for path, parser in COMMANDS.items():
        for action in options(parser):
            yield name(path), action


def test_the_readme_table_is_read() -> None:
    # guards the parser of the README against a format change that would make every check below vacuous
    assert {"--iface", "--port", "--duration", "--count", "--write", "--dst", "--json"} <= set(TABLE)
    assert SHORT == {"-i": "--iface", "-p": "--port", "-t": "--duration", "-c": "--count", "-w": "--write",
                     "-o": "--output"}
    assert {"--queue", "--rule", "--subnet", "--histogram"} <= set(particular())
    assert {"sink", "gen", "pingpong client", "xfer recv", "testbed up", "bench rx"} <= {name(p) for p in COMMANDS}


def test_the_table_names_each_option_once() -> None:
    """Two rows for one name, or an option both shared and 'particular', would be two concepts for a name."""
    shared = [r.option for r in ROWS]
    assert len(shared) == len(set(shared)), f"options listed twice in the table: {shared}"
    shorts = [r.short for r in ROWS if r.short]
    assert len(shorts) == len(set(shorts)), f"short options listed twice: {shorts}"
    rest = particular()
    assert len(rest) == len(set(rest)), f"options listed twice after the table: {rest}"
    assert not set(shared) & set(rest), f"both in the table and 'particular': {set(shared) & set(rest)}"


def test_every_option_is_in_the_vocabulary() -> None:
    known = set(TABLE) | set(particular())
    unknown = sorted({f"{cmd} {long_name(a)}" for cmd, a in every_option() if long_name(a) not in known})
    hints = [f"{u} (the table's name: {RETIRED[u.split()[-1]]})" if u.split()[-1] in RETIRED else u for u in unknown]
    assert not unknown, "options neither in the README's table nor in its list of particular ones:\n  " + \
        "\n  ".join(hints)


def test_short_options_mean_what_the_table_says() -> None:
    wrong = []
    for cmd, action in every_option():
        long = long_name(action)
        shorts = short_names(action)
        for s in shorts:
            if SHORT.get(s) != long:
                wrong.append(f"{cmd}: {s} is {long}, the table says {SHORT.get(s) or 'no such short option'}")
        row = TABLE.get(long)
        if row and row.short and row.short not in shorts:
            wrong.append(f"{cmd}: {long} lacks its short option {row.short}")
    assert not wrong, "\n".join(wrong)


def test_each_row_is_on_every_command_it_names() -> None:
    missing, previous = [], []
    for row in ROWS:
        cmds = commands_of(row, previous)
        previous = cmds
        for cmd in cmds:
            have = {long_name(a) for a in options(COMMANDS[tuple(cmd.split())])}
            if row.option not in have:
                missing.append(f"{cmd} has no {row.option} (README: {row.commands})")
    assert not missing, "\n".join(missing)


def test_every_option_and_command_has_help() -> None:
    import argparse

    bare = [f"{cmd} {long_name(a)}" for cmd, a in every_option()
            if not a.help or a.help == argparse.SUPPRESS or not a.help.strip()]
    assert not bare, f"options without help text: {bare}"
    from kbypass.cli import build_parser

    def undocumented(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                documented = {c.dest for c in action._choices_actions if c.help}
                for sub, p in action.choices.items():
                    if sub not in documented:
                        yield " ".join((*path, sub))
                    yield from undocumented(p, (*path, sub))

    assert not list(undocumented(build_parser())), "commands without help in 'kbypass --help'"


def _parses_as(action) -> tuple:
    """How an option takes its value: the action's kind, how many values, and the type that checks them
    (the shared types of kbypass.tools._options by their function; a type made by a factory, like
    int_range(...), counts as that factory)."""
    t = action.type
    kind = None if t is None else getattr(t, "__qualname__", type(t).__qualname__)
    kind = SAME_FAMILY.get(kind, kind)
    return type(action).__name__, action.nargs, kind


# A type that is the shared one with a tighter bound for one command (bench latency: seconds per ping-pong
# up to a minute) takes its value the same way.
SAME_FAMILY = {"seconds_up_to.<locals>.parse": "seconds"}


@pytest.mark.parametrize("option", sorted(TABLE))
def test_one_name_one_concept(option) -> None:
    """A shared name means one thing: it takes its value the same way (the same checking type) on every
    command that has it, under the same short option. (`--duration` that is "how long to run" on one
    command and a float "give up waiting" on another fails here.)"""
    seen = {}
    for cmd, action in every_option():
        if long_name(action) == option:
            seen.setdefault((_parses_as(action), tuple(short_names(action))), []).append(cmd)
    assert len(seen) <= 1, f"{option} is taken in different ways: " + "; ".join(
        f"{how} on {', '.join(cmds)}" for how, cmds in seen.items())


def test_retired_names_are_gone() -> None:
    left = sorted(f"{cmd} {long_name(a)} -> {RETIRED[long_name(a)]}" for cmd, a in every_option()
                  if long_name(a) in RETIRED)
    assert not left, "renamed options still there (no aliases): " + ", ".join(left)


@pytest.mark.parametrize("option", ["--duration", "--idle-timeout", "--reply-timeout"])
def test_seconds_are_checked_by_the_shared_type(option) -> None:
    """Every option counted in seconds refuses NaN, inf, 0 and negatives by one type (_options.seconds)."""
    from kbypass.tools._options import seconds

    def shared(t) -> bool:
        return t is seconds or getattr(t, "__qualname__", "") in SAME_FAMILY

    wrong = [cmd for cmd, a in every_option() if long_name(a) == option and not shared(a.type)]
    assert not wrong, f"{option} is not kbypass.tools._options.seconds on: {', '.join(wrong)}"
