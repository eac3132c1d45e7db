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
    # Check against the machine's CPUs, not our inherited mask: a parent pinned elsewhere may start us.
    cpus = os.cpu_count() or 1
    if not 0 <= cpu < cpus:
        raise UsageError(f"--cpu {cpu}: this machine has CPUs 0-{cpus - 1}; pick one of those")
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as e:
        raise UsageError(f"--cpu {cpu}: cannot run there ({e.strerror}); pick another CPU") from None
