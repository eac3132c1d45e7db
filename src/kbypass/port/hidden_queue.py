"""The hidden queue on a NIC: ntuple rules that send our flows to queue N, an RSS table that sends N nothing
else, and the record that undoes both after a crash.

The kernel keeps ntuple rules and the indirection table after the process that set them dies, so every
change is written to /run/kbypass/hw-NETNS-IFNAME.json (mode 0600, never through a symlink) before or as
it is made: the interface, its namespace, the queue, the original indirection table, the rule locations,
and the owner's pid, start time and command. The owner holds an flock on the record for as long as it
lives; the kernel drops the lock when it dies, however it dies. (One window stays: where the driver
picks a rule's location, a crash between its insert and the record's write, microseconds, leaves that
rule; `ethtool -n` lists it.) Whoever next applies hardware steering
(any interface) first sweeps the records whose lock it can take: their owners are dead, so their rules
are deleted and their tables restored. The lock also makes the owner of an interface's hidden queue one
process at a time: two would each restore "the original" table over the other's.

Why not the control plane, which owns the software rules: the table is the whole interface's (every
flow on the machine, not one client's), writing it needs CAP_NET_ADMIN where the control plane serves
unprivileged clients too, and the control plane itself can be killed, so the record-and-sweep is needed
either way. The software steering (the XDP program, through the control plane or in-process) stays on in
every case: hardware steering only decides which queue the flow lands on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys

from kbypass.cp.paths import RUN_DIR, check_run_dir, namespace_name, open_private
from kbypass.errors import KbypassError, UsageError
from kbypass.steer.ethtool import (
    Ethtool,
    HardwareSteeringError,
    describe,
    flow_spec,
    hidden_table,
    is_default,
    unsupported,
)
from kbypass.steer.rules import Rule

MODES = (False, True, "auto")
PREFIX, SUFFIX = "hw-", ".json"


def record_path(ifname: str, netns: str | None) -> str:
    return os.path.join(RUN_DIR, f"{PREFIX}{namespace_name(netns)}-{ifname}{SUFFIX}")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid, which
    process this is (a pid alone may have been reused)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _lock(path: str, *, wait: bool) -> int | None:
    """An fd holding the flock of the record at `path` (made if missing), or None when a live owner holds it
    and `wait` is false. Retries when the file was swept away between open and lock."""
    while True:
        fd = open_private(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _read(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"damaged": True}


def _write(fd: int, record: dict) -> None:
    data = json.dumps(record).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _where(record: dict) -> str | None:
    """The namespace argument that reaches the record's interface from here. A named namespace is entered
    by name; "init" or an unnamed one ("ns-INODE") only from inside it: elsewhere the same interface name
    may be another device. Raises LookupError when this process cannot reach it."""
    ns = record.get("netns_name")
    if ns == namespace_name(None):
        return None
    if ns == "init" or not ns or ns.startswith("ns-"):
        raise LookupError(ns)
    return ns


def _undo(record: dict, device) -> list[str]:
    """Delete the record's rules and restore its table; returns what could not be undone (an interface or
    namespace that is gone took its settings with it, which is not a failure)."""
    problems = []
    try:
        dev = device(record["ifname"], _where(record))
    except (KbypassError, OSError):
        return problems  # the namespace or interface is gone, and the NIC's settings with it
    if dev.ifindex != record.get("ifindex"):
        dev.close()
        return problems  # another device by that name now: the recorded one went, with its settings
    try:
        for loc in record.get("locations", []):
            try:
                dev.delete(loc)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENODEV):
                    problems.append(f"rule {loc}: {describe(e)}")
        if record.get("table_set") and record.get("table"):
            try:
                now, ours = dev.indirection(), record.get("hidden")
                if ours is not None and now not in (ours, record["table"]):
                    # rewritten since (by an administrator, say): theirs now, left as it is
                    problems.append("indirection table: changed since kbypass hid the queue, left as it is")
                else:
                    dev.set_indirection([] if record.get("table_default") else record["table"])
            except OSError as e:
                if e.errno != errno.ENODEV:
                    problems.append(f"indirection table: {describe(e)}")
    finally:
        dev.close()
    return problems


def sweep(device=Ethtool) -> list[dict]:
    """Undo the records of dead owners (their lock is free); returns the records undone."""
    try:
        names = sorted(n for n in os.listdir(RUN_DIR) if n.startswith(PREFIX) and n.endswith(SUFFIX))
    except FileNotFoundError:
        return []
    undone = []
    for name in names:
        path = os.path.join(RUN_DIR, name)
        fd = _lock(path, wait=False)
        if fd is None:
            continue  # a live owner
        try:
            record = _read(fd)
            try:
                if record and not record.get("damaged"):
                    _where(record)
            except LookupError:
                continue  # another namespace's that this process cannot enter by name: left for a sweep there
            if record and record.get("damaged"):
                print(f"kbypass: warning: {path} was unreadable and is removed: check 'ethtool -n' and 'ethtool -x' "
                      "of the interface it names for rules and a table a dead kbypass left", file=sys.stderr)
            elif record:
                problems = _undo(record, device)
                if problems:
                    print(f"kbypass: warning: leftover hardware steering of pid {record.get('pid')} on "
                          f"{record.get('ifname')}: {'; '.join(problems)} (see 'ethtool -n/-x')", file=sys.stderr)
                undone.append(record)
            os.unlink(path)
        finally:
            os.close(fd)
    return undone


class HiddenQueue:
    """Flows of `rules` to `queue` of `ifname` in hardware, and no hashed traffic on that queue. `check()`
    before anything is attached (it raises HardwareSteeringError naming what the device lacks), `apply()`,
    then `undo()` (or `with`). `device` makes the device layer (kbypass.steer.ethtool.Ethtool)."""

    def __init__(self, ifname: str, netns: str | None, queue: int, rules: list[Rule], *, device=Ethtool) -> None:
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 0:
            raise UsageError("hardware steering puts the flows on one queue: give a queue (--queue N)")
        self.ifname, self.netns, self.queue, self.device = ifname, netns, queue, device
        self.rules = [r for r in rules if r.action == "redirect"]
        if not self.rules:
            raise HardwareSteeringError("hardware steering places redirected flows on the queue, and no rule "
                                        "redirects: drop --hw or add a redirect rule")
        for r in self.rules:
            flow_spec(r, queue)  # refuses what an ntuple rule cannot say, before the device is touched
        self.locations: list[int] = []
        self._fd: int | None = None
        self._record: dict | None = None

    def check(self) -> list[int]:
        """Ask the device whether it can: ntuple filters on, an RSS table, the queue among its rings.
        Returns the current indirection table."""
        with self.device(self.ifname, self.netns) as dev:
            fix = ("use a NIC with flow steering, or '--hw auto' to steer in software only where the NIC cannot, "
                   "or drop --hw")
            try:
                _, driver_picks, _ = dev.rule_count()  # EOPNOTSUPP: the driver has no ntuple rules at all
                if not dev.ntuple_on():
                    raise HardwareSteeringError(f"{self.ifname} has ntuple filters off: 'ethtool -K {self.ifname} "
                                                f"ntuple on', or drop --hw")
                rings = dev.rx_rings()
                table = dev.indirection()
            except OSError as e:
                if unsupported(e):
                    raise HardwareSteeringError(f"{self.ifname} has no ntuple rules or RSS indirection table "
                                                f"({describe(e)}): {fix}") from None
                raise HardwareSteeringError(f"{self.ifname}: ethtool request failed ({describe(e)})") from None
        if self.queue >= rings:
            raise HardwareSteeringError(f"queue {self.queue} is not one of the {rings} receive queues of "
                                        f"{self.ifname}: give --queue 0-{rings - 1}")
        hidden_table(table, {self.queue}, rings)  # refuses hiding the last queue
        self._rings, self._ifindex, self._driver_picks = rings, dev.ifindex, driver_picks
        return table

    def apply(self) -> None:
        check_run_dir()
        sweep(self.device)
        path = record_path(self.ifname, self.netns)
        fd = _lock(path, wait=False)
        if fd is None:
            raise HardwareSteeringError(f"the hidden queue of {self.ifname} is held by {self._holder(path)}: one "
                                        "program at a time sets the NIC's RSS table; stop it or drop --hw")
        self._fd = fd
        try:
            self._apply(fd)
        except BaseException:
            self.undo()
            raise

    def _apply(self, fd: int) -> None:
        leftover = _read(fd)
        if leftover and not leftover.get("damaged"):
            _undo(leftover, self.device)  # a dead owner's, made between the sweep and our lock
        table = self.check()
        pid = os.getpid()
        self._record = {"ifname": self.ifname, "netns_name": namespace_name(self.netns), "ifindex": self._ifindex,
                        "queue": self.queue, "pid": pid,
                        "start_time": start_time(pid), "command": " ".join(sys.argv)[:200], "table": table,
                        "table_default": is_default(table, self._rings),
                        "table_set": False, "locations": self.locations}
        _write(fd, self._record)
        with self.device(self.ifname, self.netns) as dev:
            try:
                hidden = hidden_table(table, {self.queue}, self._rings)
                # written before the change: a crash mid-way restores it; `hidden` is what we wrote, so an
                # undo restores only a table that is still ours
                self._record["table_set"], self._record["hidden"] = True, hidden
                _write(fd, self._record)
                dev.set_indirection(hidden)
                for r in self.rules:
                    if self._driver_picks:
                        self.locations.append(dev.insert(r, self.queue))
                        _write(fd, self._record)
                        continue
                    loc = dev.free_location()
                    self.locations.append(loc)
                    _write(fd, self._record)  # before the insert: a crash right after it still deletes it
                    try:
                        dev.insert(r, self.queue, loc)
                    except OSError:
                        self.locations.pop()  # not ours after all
                        raise
            except OSError as e:
                raise HardwareSteeringError(f"{self.ifname} refused hardware steering ({describe(e)}): "
                                            "drop --hw") from None

    def undo(self) -> None:
        if self._fd is None:
            return
        try:
            if self._record is not None:
                problems = _undo(self._record, self.device)
                if problems:
                    print(f"kbypass: warning: could not undo hardware steering on {self.ifname}: "
                          f"{'; '.join(problems)}", file=sys.stderr)
            os.unlink(record_path(self.ifname, self.netns))
        finally:
            os.close(self._fd)
            self._fd, self._record = None, None

    def _holder(self, path: str) -> str:
        try:
            with open(path) as f:
                r = json.load(f)
            return f"pid {r['pid']} ({r.get('command', '?')})"
        except (OSError, ValueError, KeyError):
            return "another process"

    def __enter__(self) -> HiddenQueue:
        self.apply()
        return self

    def __exit__(self, *exc) -> None:
        self.undo()
