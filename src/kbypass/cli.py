"""`kbypass ...`: one entry point, one module per command.

Each command lives in `kbypass.tools.<name>` and exposes `register(subparsers)`, which adds its parser and
sets `func=run` (run(args) -> exit code). Errors the user can fix (`KbypassError`) print one line and exit
2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kbypass import __version__
from kbypass.errors import KbypassError

# Order is the order of `kbypass --help`.
COMMANDS = [
    "testbed",
    "doctor",
    "demo",
    "sink",
    "reflect",
    "gen",
    "stats",
    "capture",
    "bench",
    "pingpong",
    "tune",
    "xfer",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kbypass",
        description="Kernel-bypass networking from Python: steer chosen flows to AF_XDP rings.",
    )
    parser.add_argument("--version", action="version", version=f"kbypass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"kbypass.tools.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"kbypass.tools.{name}":
                continue  # command not built yet in this tree
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KbypassError as e:
        print(f"kbypass: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kbypass ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
