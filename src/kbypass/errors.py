"""Errors that say what to do.

Every error a user can cause is a `KbypassError` whose message names the fix. The CLI prints it on one line
(`kbypass: error: ...`) and exits 2; a traceback means a bug in kbypass, not in the user's input.
"""


class KbypassError(Exception):
    """A problem the user can fix; the message says how."""


class UsageError(KbypassError):
    """Bad input on the command line or to an API call."""


class PermissionProblem(KbypassError):
    """Not root / missing capability."""


class EnvironmentProblem(KbypassError):
    """Something the machine lacks: a kernel feature, a package, bpffs, the built BPF objects."""


class TestbedError(KbypassError):
    """The netns testbed cannot be made, found or removed as asked."""

    __test__ = False  # not a pytest test class


def require_root(what: str) -> None:
    import os

    if os.geteuid() != 0:
        raise PermissionProblem(f"{what} needs root (CAP_NET_ADMIN and CAP_BPF): run it with sudo")
