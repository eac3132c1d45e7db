"""Where an interface's receive work runs: threaded NAPI, pinned to a chosen CPU.

A NIC raises its interrupt on the CPU its IRQ affinity names, and the receive work (the driver's NAPI poll:
XDP, the copy into an AF_XDP ring, the kernel stack) runs there in softirq. A veth has no interrupt: the
sender's transmit schedules the peer's NAPI on the *sender's* CPU. On the testbed that puts the receiver's
XDP and copy work on the generator's core, so a benchmark scores how fast the generator gets through a
frame, not what the receiver can handle. Threaded NAPI (/sys/class/net/IF/threaded, Linux >= 5.12) runs
each NAPI instance as a kernel thread "napi/IF-ID" instead; pinning those threads to the system under test's
CPU gives the NIC-like placement: the receiver's core does all of the receive work, and nothing else does.
"""

from __future__ import annotations

import os
import subprocess

from kbypass.errors import EnvironmentProblem

COMM_LEN = 15  # a task name is at most 15 characters (TASK_COMM_LEN - 1): longer names are cut


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


def threads(ifname: str) -> list[int]:
    """PIDs of the NAPI kernel threads of interfaces named `ifname` (in any namespace: the thread name
    carries no namespace, so give testbed interfaces names no other namespace uses)."""
    prefix = f"napi/{ifname}-"[:COMM_LEN]
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:  # the task ended while we looked
            continue
        if comm.startswith(prefix):
            pids.append(int(entry))
    return sorted(pids)


def pin(ifname: str, cpu: int) -> list[int]:
    """Pin every NAPI thread of `ifname` to `cpu`; returns their PIDs. Call it again after something
    re-creates the NAPI instances (attaching the first XDP program to a veth can)."""
    pids = threads(ifname)
    for pid in pids:
        try:
            os.sched_setaffinity(pid, {cpu})
        except ProcessLookupError:
            pass
    return pids


def place(ifname: str, netns: str | None, cpu: int) -> list[int]:
    """Run `ifname`'s receive work as NAPI threads on `cpu`; returns the thread PIDs (none: the interface
    has no NAPI instance yet, e.g. a veth without GRO or XDP)."""
    set_threaded(ifname, netns, True)
    return pin(ifname, cpu)
