"""Where an interface's receive work runs: threaded NAPI, pinned to a chosen CPU.

A NIC raises its interrupt on the CPU its IRQ affinity names, and the receive work (the driver's NAPI poll:
XDP, the copy into an AF_XDP ring, the kernel stack) runs there in softirq. A veth has no interrupt: the
sender's transmit schedules the peer's NAPI on the *sender's* CPU. On the testbed that puts the receiver's
XDP and copy work on the generator's core, so a benchmark scores how fast the generator gets through a
frame, not what the receiver can handle. Threaded NAPI (/sys/class/net/IF/threaded, Linux >= 5.12) runs
each NAPI instance as a kernel thread "napi/IF-ID" instead; pinning those threads to the system under test's
CPU gives the NIC-like placement: the receiver's core does all of the receive work, and nothing else does.

The thread name is all that ties a thread to its interface. Linux >= 5.17 shows it whole in /proc/PID/comm;
older kernels cut it at 15 characters. A thread is IF's when its name is exactly "napi/IF-" followed by the
NAPI id's digits (cut or not): "napi/kb-a-8193" is kb-a's, "napi/kb-a-a-8194" is not. When even "napi/IF-"
does not fit in 15 characters and the kernel cut the name, IF's threads cannot be told from another
interface's: that is an error naming the fix (the testbed caps its prefix so its names always fit).
"""

from __future__ import annotations

import errno
import os
import subprocess

from kbypass.errors import EnvironmentProblem

COMM_LEN = 15  # kernels before 5.17 show at most 15 characters of a kernel thread's name (TASK_COMM_LEN - 1)
CPU_ONLINE = "/sys/devices/system/cpu/online"
_threaded_here: dict[str, str | None] = {}  # interfaces this process switched to threaded NAPI: name -> netns


def set_threaded(ifname: str, netns: str | None, on: bool = True) -> None:
    """Switch threaded NAPI on or off for `ifname` (the sysfs file is per namespace: `ip netns exec`
    mounts the namespace's own /sys)."""
    argv = ["sh", "-c", f"echo {int(on)} > /sys/class/net/{ifname}/threaded"]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise EnvironmentProblem(f"cannot switch threaded NAPI {'on' if on else 'off'} for {ifname}: "
                                 f"{proc.stderr.strip()} (it needs Linux >= 5.12 and root)")
    if on:
        _threaded_here[ifname] = netns
    else:
        _threaded_here.pop(ifname, None)


def is_thread_of(comm: str, ifname: str) -> bool:
    """Is `comm`, a kernel thread's name as /proc shows it, the name of one of `ifname`'s NAPI threads?"""
    head = f"napi/{ifname}-"
    return comm.startswith(head) and comm[len(head):].isdigit()


def threads(ifname: str) -> list[int]:
    """PIDs of the NAPI kernel threads of interfaces named `ifname` (in any namespace: the thread name
    carries no namespace, so give testbed interfaces names no other namespace uses)."""
    head = f"napi/{ifname}-"
    pids, cut = [], False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().rstrip("\n")
        except OSError:  # the task ended while we looked
            continue
        if is_thread_of(comm, ifname):
            pids.append(int(entry))
        elif len(head) >= COMM_LEN and comm == head[:COMM_LEN]:
            cut = True  # this kernel cut the name before the id: it could be anyone's whose name starts so
    if cut:
        raise EnvironmentProblem(
            f"this kernel cuts thread names at {COMM_LEN} characters, so the NAPI threads of {ifname!r} cannot "
            f"be told from other interfaces': use an interface name of at most {COMM_LEN - 7} characters "
            "(a testbed --prefix of at most 6), or Linux >= 5.17"
        )
    return sorted(pids)


def online_cpus() -> set[int]:
    """The CPUs the kernel has online ("0-3,6" in sysfs); all configured ones where sysfs cannot say."""
    try:
        with open(CPU_ONLINE) as f:
            text = f.read().strip()
        cpus: set[int] = set()
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
        return cpus
    except (OSError, ValueError):
        return set(range(os.cpu_count() or 1))


def require_cpus(cpus: set[int] | list[int] | tuple[int, ...], what: str) -> None:
    """EnvironmentProblem naming the need unless every CPU in `cpus` is online."""
    online = online_cpus()
    missing = sorted(set(cpus) - online)
    if missing:
        raise EnvironmentProblem(
            f"{what} needs {len(set(cpus))} CPUs ({', '.join(map(str, sorted(cpus)))}: generator and receiver "
            f"each on its own core); this machine has {len(online)} online ({_ranges(online)}): run it on a "
            f"machine or VM with at least {max(cpus) + 1} CPUs"
        )


def _ranges(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus)) or "none"


def pin(ifname: str, cpu: int) -> list[int]:
    """Pin every NAPI thread of `ifname` to `cpu`; returns their PIDs. Call it again after something
    re-creates the NAPI instances (attaching the first XDP program to a veth can). A CPU the threads cannot
    run on (or threads that cannot be told apart) is an EnvironmentProblem; threaded NAPI this process
    switched on for `ifname` is switched off again first, so a failed placement leaves the interface as
    veth has it."""
    try:
        return _pin(ifname, cpu)
    except EnvironmentProblem:
        _undo_threaded(ifname)
        raise


def _pin(ifname: str, cpu: int) -> list[int]:
    pids = threads(ifname)
    for pid in pids:
        try:
            os.sched_setaffinity(pid, {cpu})
        except ProcessLookupError:
            pass
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            raise EnvironmentProblem(
                f"cannot pin the NAPI threads of {ifname} to CPU {cpu}: {e.strerror} (CPUs online: "
                f"{_ranges(online_cpus())}); receive-work placement needs at least 2 CPUs: run on a machine "
                "with more, or use placement 'sender'"
            ) from None
    return pids


def _undo_threaded(ifname: str) -> None:
    if ifname in _threaded_here:
        try:
            set_threaded(ifname, _threaded_here[ifname], False)
        except EnvironmentProblem:
            pass  # the error being raised matters more


def place(ifname: str, netns: str | None, cpu: int) -> list[int]:
    """Run `ifname`'s receive work as NAPI threads on `cpu`; returns the thread PIDs (none: the interface
    has no NAPI instance yet, e.g. a veth without GRO or XDP). On failure threaded NAPI is off again."""
    set_threaded(ifname, netns, True)
    try:
        return pin(ifname, cpu)
    except BaseException:
        _undo_threaded(ifname)
        raise
