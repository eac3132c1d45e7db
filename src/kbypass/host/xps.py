"""Transmit queue by CPU (XPS): CPU c sends on queue c mod N, so a sender picks its queue by its CPU.

On a veth the peer receives a frame on the queue it was sent on, so on the testbed the sender's CPU is the
receiver's queue: the testbed's "RSS". `kbypass testbed up` sets this on both hosts; a kernel sender pinned
with `taskset -c Q` (or `kbypass gen --cpu Q`, whose live frames take the same rule in veth's XDP transmit)
then lands on queue Q, and so on a worker of `--workers`. On a real NIC the NIC's hash spreads flows
instead, and XPS only spreads what this host sends.
"""

from __future__ import annotations

import os
import subprocess

from kbypass.errors import EnvironmentProblem


def cpu_mask(cpus: set[int]) -> str:
    """A CPU set as sysfs writes it: hex, in comma-separated groups of 32 bits (bitmap_parse's format)."""
    bits = sum(1 << c for c in cpus)
    text = f"{bits:x}"
    groups = []
    while text:
        groups.insert(0, text[-8:])
        text = text[:-8]
    return ",".join(groups) or "0"


def masks(queues: int, cpus: int | None = None) -> list[str]:
    """xps_cpus of each transmit queue for CPU c -> queue c mod `queues` (a queue no CPU maps to: "0")."""
    cpus = cpus or os.cpu_count() or 1
    return [cpu_mask({c for c in range(cpus) if c % queues == q}) for q in range(queues)]


def spread_by_cpu(ifname: str, netns: str | None, queues: int) -> None:
    """Set XPS on `ifname` so that CPU c transmits on queue c mod `queues` (the sysfs files are per
    namespace: `ip netns exec` mounts the namespace's own /sys)."""
    # the interface's name goes in as "$1", never into the script's text
    script = "; ".join(f'echo {m} > "/sys/class/net/$1/queues/tx-{q}/xps_cpus"' for q, m in enumerate(masks(queues)))
    argv = ["sh", "-c", script, "sh", ifname]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise EnvironmentProblem(f"cannot set XPS on {ifname}: {proc.stderr.strip()} (it needs CONFIG_XPS "
                                 "and root)")


def read(ifname: str, netns: str | None, queues: int) -> list[str]:
    """xps_cpus of each transmit queue, as the kernel shows it (leading zero groups included)."""
    argv = ["sh", "-c", "; ".join(f'cat "/sys/class/net/$1/queues/tx-{q}/xps_cpus"' for q in range(queues)), "sh",
            ifname]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
