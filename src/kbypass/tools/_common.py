"""Small pieces the command modules share: JSON output, CPU pinning, the testbed prefix option."""

from __future__ import annotations

import json
import os
import sys

from kbypass.errors import UsageError


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def console():
    """A rich console that does not squeeze tables into 80 columns when output goes to a file or pipe."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def add_prefix_option(parser) -> None:
    parser.add_argument(
        "--prefix",
        default=None,
        help="testbed name prefix (default: $KBYPASS_TESTBED or 'kb')",
    )


def pin_cpu(cpu: int | None) -> None:
    """Pin this process to one core, so generator and system under test do not share one."""
    if cpu is None:
        return
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed:
        raise UsageError(f"--cpu {cpu}: this machine allows CPUs {sorted(allowed)}; pick one of those")
    os.sched_setaffinity(0, {cpu})
