"""pytest plugin: a test session gets its own testbed, always torn down.

Names are unique per test process ("kt<pid>"), so two runs at once never collide, and a run killed with
SIGKILL (no teardown possible) is swept by the next run: a testbed whose owning pid is gone is removed.
"""

from __future__ import annotations

import os
import re

import pytest

from kbypass import netns, testbed

PREFIX_ENV = "KBYPASS_TEST_TESTBED_PREFIX"  # lets a test fix the name of a child session's testbed
_OWNED = re.compile(r"^kt(\d+)-[ab]$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Remove test testbeds left by test processes that died without teardown."""
    removed: list[str] = []
    if not os.path.isdir(netns.NETNS_RUN_DIR):
        return removed
    for name in sorted(os.listdir(netns.NETNS_RUN_DIR)):
        m = _OWNED.match(name)
        if m and not _alive(int(m.group(1))):
            removed += testbed.down(name[:-2])
    return removed


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, BPF and AF_XDP")


@pytest.fixture(scope="session")
def testbed_hosts():
    """Bring up this session's testbed; yields the two `testbed.Host`s (a, b); removes it at the end.

    Also sets $KBYPASS_TESTBED so `kbypass` commands started by tests find it."""
    needs_root()
    sweep_stale()
    prefix = os.environ.get(PREFIX_ENV) or f"kt{os.getpid()}"
    config = testbed.TestbedConfig(prefix=prefix, queues=2)
    old = os.environ.get("KBYPASS_TESTBED")
    try:
        hosts = testbed.up(config)
        os.environ["KBYPASS_TESTBED"] = prefix
        yield hosts
    finally:
        testbed.down(prefix)
        if old is None:
            os.environ.pop("KBYPASS_TESTBED", None)
        else:
            os.environ["KBYPASS_TESTBED"] = old
