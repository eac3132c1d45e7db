"""Reading a command's options stays cheap: `kbypass X --help`, a bad option and the parse itself import
neither numpy nor pyroute2 nor the port stack (each costs 0.1-0.2 s of every kbypass process, and the test
suite starts hundreds). A command's run() imports what it runs on (kbypass.cli imports numpy and pyroute2
after the parse, under its start-up signal handling)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kbypass import cli

HEAVY = ("numpy", "pyroute2", "kbypass.port.batch", "kbypass.xsk.ring")

# cli.main in a fresh interpreter, as the console script calls it; what it imported, printed at exit
PROBE = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr))
from kbypass import cli
sys.argv = ["kbypass"] + {argv!r}
raise SystemExit(cli.main())
"""

COMMANDS = [["--help"]] + [[name, "--help"] for name in cli.COMMANDS]


def heavy_imports(argv: list[str]) -> tuple[int, list[str], str]:
    p = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, argv=argv)], capture_output=True,
                       text=True, timeout=60)
    *lines, last = p.stderr.strip().splitlines()
    return p.returncode, json.loads(last), "\n".join(lines)


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_imports_nothing_heavy(argv):
    rc, heavy, _ = heavy_imports(argv)
    assert rc == 0
    assert heavy == []


@pytest.mark.parametrize("argv", [
    ["pingpong", "client", "--count", "0"],
    ["sink", "--host", "c"],
    ["testbed", "status", "--prefix", ""],
    ["capture", "--snaplen", "0"],
    ["gen", "--size", "70000"],
    ["xfer", "send", "--congestion", "nosuch"],
    ["cp", "start", "--users", "nobody"],
    ["nosuch"],
])
def test_bad_option_imports_nothing_heavy(argv):
    rc, heavy, err = heavy_imports(argv)
    assert rc == 2
    assert err.startswith("kbypass: error: ")
    assert heavy == []


def test_a_command_that_runs_has_its_libraries():
    # the other side: past the parse, numpy and pyroute2 are loaded (under the start-up signal handling)
    rc, heavy, _ = heavy_imports(["testbed", "status", "--prefix", "jq", "--json"])
    assert rc == 1  # not up: it ran
    assert set(cli.START_UP_IMPORTS) <= set(heavy)


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_one_commands_parser_is_the_whole_parsers(name, capsys):
    # `kbypass NAME ...` registers NAME alone: the same options, defaults and help as in the whole parser
    helps = []
    for parser in (cli.build_parser(), cli.build_parser(only=name)):
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        helps.append(capsys.readouterr().out)
    assert helps[0] == helps[1] and name in helps[0]
