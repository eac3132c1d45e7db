"""Interface counters, like `watch ethtool -S` and `ip -s link`: one sample, and rates between samples.

Interface totals come from netlink (IFLA_STATS64, through pyroute2); driver counters, which on veth and
most NICs include per-queue packet counts, come from the ethtool statistics ioctl (pyroute2's ethtool
module); where the driver has none, sysfs' per-queue directories at least tell the queue count.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.ethtool.ioctl import IoctlEthtool

from kbypass import netns
from kbypass.errors import UsageError

TOTALS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped")
# rx_queue_0_xdp_packets, rx-1.packets, tx_queue_3_packets ...: direction, queue number, counter name
QUEUE_STAT = re.compile(r"^(rx|tx)[_-](?:queue_)?(\d+)[_.](.+)$")


@dataclass
class Sample:
    time: float
    totals: dict[str, int]
    driver: dict[str, int] = field(default_factory=dict)


def sample(ifname: str, ns: str | None = None) -> Sample:
    with netns.entered(ns):
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                where = f"namespace {ns!r}" if ns else "this namespace"
                raise UsageError(f"no interface {ifname!r} in {where}: check 'ip link' (or --host a|b)")
            link = ipr.get_links(found[0])[0]
        stats = link.get("IFLA_STATS64") or {}
        driver: dict[str, int] = {}
        try:
            eth = IoctlEthtool(ifname)
            try:
                driver = {name: int(v) for name, v in eth.get_statistics()}
            finally:
                eth.close()
        except Exception:  # the driver exports no ethtool statistics: totals only
            driver = {}
    return Sample(time.monotonic(), {k: int(stats.get(k, 0)) for k in TOTALS}, driver)


def rates(before: Sample, after: Sample) -> dict:
    """Per-second rates of every counter between two samples, with per-queue counters grouped."""
    dt = max(after.time - before.time, 1e-9)
    totals = {k: (after.totals[k] - before.totals[k]) / dt for k in TOTALS}
    queues: dict[str, dict[str, float]] = {}
    for name, value in after.driver.items():
        m = QUEUE_STAT.match(name)
        if not m or name not in before.driver:
            continue
        key = f"{m.group(1)}{m.group(2)}"
        queues.setdefault(key, {})[m.group(3)] = (value - before.driver[name]) / dt
    return {"seconds": dt, "totals": totals, "queues": dict(sorted(queues.items()))}
