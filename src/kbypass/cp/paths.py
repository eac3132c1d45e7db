"""Where a network namespace's control plane lives: /run/kbypass/cp-NAME.{sock,lock,start,log}.

One control plane per network namespace, like Onload's onload_cp_server: interfaces and XDP attachments
are per namespace. NAME is the namespace's name under /var/run/netns (what `ip netns identify` says), or
"init" for the namespace of pid 1, or "ns-INODE" for an unnamed one. A process started with
`ip netns exec kb-b ...` finds kb-b's control plane without being told.
"""

from __future__ import annotations

import os
import re
import stat

from kbypass import netns as _netns
from kbypass.errors import UsageError

RUN_DIR = "/run/kbypass"
# who may connect to the socket (`kbypass cp start --users`): the socket file's mode and group follow
USERS = ("root", "group", "all")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def namespace_name(netns: str | None = None) -> str:
    """The control-plane name of namespace `netns` (None: the one this thread is in)."""
    if netns is not None:
        if not _NAME.match(netns) or netns.startswith("."):
            raise UsageError(f"namespace name {netns!r}: use letters, digits, '_', '.', '-'")
        if not _netns.exists(netns):
            raise UsageError(f"no network namespace {netns!r}: see 'ip netns list'")
        return netns
    mine = _inode("/proc/thread-self/ns/net")
    if mine is not None and mine == _inode("/proc/1/ns/net"):
        return "init"
    try:
        names = sorted(os.listdir(_netns.NETNS_RUN_DIR))
    except OSError:
        names = []
    for name in names:
        if _NAME.match(name) and _inode(_netns.path(name)) == mine:
            return name
    return f"ns-{mine}"


def socket_path(name: str) -> str:
    return os.path.join(RUN_DIR, f"cp-{name}.sock")


def lock_path(name: str) -> str:
    return os.path.join(RUN_DIR, f"cp-{name}.lock")


def start_lock_path(name: str) -> str:
    return os.path.join(RUN_DIR, f"cp-{name}.start")


def log_path(name: str) -> str:
    return os.path.join(RUN_DIR, f"cp-{name}.log")


def check_run_dir() -> None:
    """Make RUN_DIR if needed and refuse one that others could write to or swap (root opens files there:
    a symlink or a file planted in a writable directory would have root truncate or append to any file).
    An unwritable one is an error naming the way around it."""
    try:
        os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
        st = os.lstat(RUN_DIR)
    except OSError as e:
        raise UsageError(f"cannot use {RUN_DIR} for the control plane ({e.strerror}): make it a directory root "
                         "can write, or steer in-process with --no-cp (control_plane=False)") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise UsageError(f"{RUN_DIR} must be a directory of root's that others cannot write to (it is "
                         f"{stat.filemode(st.st_mode)}, uid {st.st_uid}): 'chown root: {RUN_DIR}; chmod 755 "
                         f"{RUN_DIR}', or steer in-process with --no-cp")
    if not os.access(RUN_DIR, os.W_OK):
        raise UsageError(f"{RUN_DIR} is not writable here (a read-only /run?): make it writable for root, or "
                         "steer in-process with --no-cp (control_plane=False)")


def open_private(path: str, flags: int = os.O_RDWR) -> int:
    """Open (create) a file of the control plane's: mode 0600, never through a symlink."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd
