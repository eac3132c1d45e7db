"""pytest plugin: a test session gets its own testbed, always torn down.

Names are unique per test process: "t" and the pid in base 36 (at most 6 characters for any Linux pid,
the testbed's prefix cap; "kt<pid>" did not fit once pids reached 5 digits). Two runs at once never
collide, and a run killed with SIGKILL (no teardown possible) is swept by the next run: a testbed whose
owning pid is gone is removed, namespaces and ownership marker alike.
"""

from __future__ import annotations

import os
import re

import pytest

from kbypass import netns
from kbypass.host import testbed

PREFIX_ENV = "KBYPASS_TEST_TESTBED_PREFIX"  # lets a test fix the name of a child session's testbed
B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
# "<letter><pid in base 36>": "t" for the session fixture; other letters are free for tests that make
# testbeds of their own and want them swept the same way (pass them to sweep_stale).
_SHORT = re.compile(r"^([a-z])([0-9a-z]{1,5})$")
_LEGACY = re.compile(r"^kt(\d+)$")  # testbeds of older kbypass versions


def pid_tag(pid: int | None = None) -> str:
    """`pid` (default: ours) in base 36: at most 5 characters for any Linux pid (pid_max <= 2**22)."""
    n = os.getpid() if pid is None else pid
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = B36[d] + out
        if not n:
            return out


def owner_pid(prefix: str, letters: str = "t") -> int | None:
    """The pid a test testbed prefix names, or None when it is not a test testbed's."""
    m = _SHORT.match(prefix)
    if m and m.group(1) in letters:
        return int(m.group(2), 36)
    m = _LEGACY.match(prefix)
    return int(m.group(1)) if m else None


def session_prefix() -> str:
    return os.environ.get(PREFIX_ENV) or f"t{pid_tag()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _candidates() -> set[str]:
    """Prefixes of testbeds that may be left over: from namespaces named <prefix>-a|b and from markers."""
    found = set()
    if os.path.isdir(netns.NETNS_RUN_DIR):
        found |= {n[:-2] for n in os.listdir(netns.NETNS_RUN_DIR) if n.endswith(("-a", "-b"))}
    if os.path.isdir(testbed.RUN_DIR):
        found |= {m[len("testbed-"):] for m in os.listdir(testbed.RUN_DIR)
                  if m.startswith("testbed-") and not m.endswith(".lock")}
    return found


def sweep_stale(letters: str = "t") -> list[str]:
    """Remove test testbeds (prefixes "<letter><base-36 pid>" for `letters`, and old "kt<pid>") left by
    test processes that died without teardown; testbed.down removes only what kbypass made."""
    removed: list[str] = []
    for prefix in sorted(_candidates()):
        pid = owner_pid(prefix, letters)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            removed += testbed.down(prefix)
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
    prefix = session_prefix()
    # a known MTU: a testbed left up at another (a crashed run's jumbo test) comes back to it
    config = testbed.TestbedConfig(prefix=prefix, queues=2, mtu=testbed.DEFAULT_MTU)
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
