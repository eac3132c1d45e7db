"""The built-in testbed: two hosts, "a" and "b", as network namespaces joined by one veth pair.

Every tool, test and benchmark targets it by default, so a newcomer needs no NIC, no second machine and no
hugepages. Built over netlink with pyroute2 (no `ip` subprocesses).

Ownership: each veth carries the interface alias ``kbypass-testbed <prefix>``. That alias, kept by the
kernel, is how `up` and `down` tell a testbed kbypass made from a namespace someone else made with the same
name; kbypass never touches the latter. `status` reads everything back from the kernel, so there is no state
file to go stale.

What veth needs for the bypass path: native XDP works as is; a frame that XDP redirects or transmits into a
veth is only accepted when the peer runs an XDP program or has GRO on, so GRO is switched on at both ends.
TX checksum offload is switched off, so frames from kernel sockets carry finished checksums, as on a wire.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import asdict, dataclass

from pyroute2 import NetNS, netns as pr_netns

from kbypass import netns
from kbypass.errors import TestbedError, UsageError, require_root

HOSTS = ("a", "b")
ALIAS_TAG = "kbypass-testbed"
DEFAULT_PREFIX = "kb"
DEFAULT_SUBNET = "10.77.0.0/24"
MAX_QUEUES = 64  # veth's own limit is higher, but more queues than cores only costs memory here
MIN_MTU, MAX_MTU = 68, 65535  # IPv4's minimum; veth's maximum

SIOCETHTOOL = 0x8946
ETHTOOL_SGRO = 0x0000002C
ETHTOOL_STXCSUM = 0x00000017


def default_prefix() -> str:
    """Tools find the testbed through $KBYPASS_TESTBED (the test fixture sets it), else "kb"."""
    return os.environ.get("KBYPASS_TESTBED", DEFAULT_PREFIX)


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    iface: str
    ifindex: int
    mac: str
    ipv4: str
    prefixlen: int
    queues: int
    mtu: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TestbedConfig:
    """What `up` builds. Names derive from `prefix`, so two prefixes never collide."""

    __test__ = False  # not a pytest test class

    prefix: str = DEFAULT_PREFIX
    queues: int = 2
    mtu: int = 1500
    subnet: str = DEFAULT_SUBNET

    def validate(self) -> None:
        if not self.prefix or not all(c.isalnum() or c in "-_" for c in self.prefix):
            raise UsageError(f"testbed prefix {self.prefix!r}: use letters, digits, '-' or '_'")
        if len(self.prefix) > 12:  # interface names are at most 15 bytes: prefix + "-a"
            raise UsageError(f"testbed prefix {self.prefix!r} is too long: use at most 12 characters")
        if not 1 <= self.queues <= MAX_QUEUES:
            raise UsageError(f"--queues {self.queues}: choose a queue count from 1 to {MAX_QUEUES}")
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise UsageError(
                f"--mtu {self.mtu}: choose an MTU from {MIN_MTU} (IPv4's minimum) to {MAX_MTU}"
            )
        try:
            net = ipaddress.IPv4Network(self.subnet, strict=True)
        except ValueError as e:
            raise UsageError(f"--subnet {self.subnet!r}: {e}; give an IPv4 network like 10.77.0.0/24") from None
        if net.num_addresses < 4:
            raise UsageError(f"--subnet {self.subnet}: needs room for two hosts; use a /30 or larger")

    def netns_name(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def iface_name(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def alias(self) -> str:
        return f"{ALIAS_TAG} {self.prefix}"

    def mac(self, host: str) -> str:
        # Locally administered, unicast; the last byte is the host's number (1 for a, 2 for b).
        return "02:6b:62:00:00:%02x" % (HOSTS.index(host) + 1)

    def ipv4(self, host: str) -> str:
        return str(ipaddress.IPv4Network(self.subnet)[HOSTS.index(host) + 1])

    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen


def _ours(prefix: str, name: str) -> bool:
    """Does namespace `name` hold a veth marked as this testbed's?"""
    try:
        with NetNS(name) as ns:
            return any(link.get("IFLA_IFALIAS") == f"{ALIAS_TAG} {prefix}" for link in ns.get_links())
    except Exception:
        return False


def _ethtool_set(iface: str, cmd: int, on: bool) -> None:
    # struct ethtool_value { u32 cmd; u32 data; } passed through SIOCETHTOOL; called inside the namespace.
    value = ctypes.create_string_buffer(struct.pack("II", cmd, 1 if on else 0))
    ifreq = struct.pack("16sP16x", iface.encode(), ctypes.addressof(value))  # sizeof(struct ifreq) == 40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)


def up(config: TestbedConfig) -> list[Host]:
    """Bring the testbed up. Idempotent: an identical testbed already up is left as it is."""
    config.validate()
    require_root("kbypass testbed up")
    names = [config.netns_name(h) for h in HOSTS]
    present = [n for n in names if netns.exists(n)]
    for name in present:
        if not _ours(config.prefix, name):
            raise TestbedError(
                f"network namespace {name!r} exists but kbypass did not make it: remove it "
                f"('ip netns del {name}') or choose another --prefix"
            )
    if len(present) == len(names):
        hosts = status(config.prefix)
        if hosts is not None:
            _check_matches(config, hosts)
            return hosts
    if present:  # half a testbed (a crash mid-`up`): start again from nothing
        down(config.prefix)

    made: list[str] = []
    try:
        for name in names:
            pr_netns.create(name)
            made.append(name)
        _build_link(config)
        hosts = status(config.prefix)
        if hosts is None:
            raise TestbedError(f"testbed {config.prefix!r} did not come up; run 'kbypass doctor'")
        return hosts
    except BaseException:
        for name in made:
            _remove_netns(name)
        raise


def _build_link(config: TestbedConfig) -> None:
    a, b = (config.netns_name(h) for h in HOSTS)
    with NetNS(a) as ns:
        ns.link(
            "add",
            ifname=config.iface_name("a"),
            kind="veth",
            num_rx_queues=config.queues,
            num_tx_queues=config.queues,
            peer={
                "ifname": config.iface_name("b"),
                "net_ns_fd": b,
                "num_rx_queues": config.queues,
                "num_tx_queues": config.queues,
            },
        )
    for host in HOSTS:
        with NetNS(config.netns_name(host)) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
            idx = ns.link_lookup(ifname=config.iface_name(host))[0]
            ns.link("set", index=idx, address=config.mac(host), mtu=config.mtu, ifalias=config.alias())
            ns.addr("add", index=idx, address=config.ipv4(host), prefixlen=config.prefixlen())
            ns.link("set", index=idx, state="up")
        with netns.entered(config.netns_name(host)):
            _ethtool_set(config.iface_name(host), ETHTOOL_SGRO, True)
            # Without TX checksum offload the kernel finishes every checksum before the frame crosses the
            # veth, as a real wire would see it; with it, frames carry only the pseudo-header sum, and a
            # userspace receiver (or a reflector sending them back) would see "bad" checksums.
            _ethtool_set(config.iface_name(host), ETHTOOL_STXCSUM, False)


def _check_matches(config: TestbedConfig, hosts: list[Host]) -> None:
    got = (hosts[0].queues, hosts[0].mtu, f"{ipaddress.IPv4Interface(f'{hosts[0].ipv4}/{hosts[0].prefixlen}').network}")
    want = (config.queues, config.mtu, str(ipaddress.IPv4Network(config.subnet)))
    if got != want:
        raise TestbedError(
            f"testbed {config.prefix!r} is already up with queues={got[0]} mtu={got[1]} subnet={got[2]}: "
            f"run 'kbypass testbed down' first to rebuild it differently"
        )


def _remove_netns(name: str) -> None:
    try:
        pr_netns.remove(name)
    except FileNotFoundError:
        pass


def down(prefix: str | None = None) -> list[str]:
    """Remove what `up` made (deleting a namespace deletes its veth end, and so the pair). Returns the names
    removed. Namespaces with the testbed's names that kbypass did not make are left alone."""
    prefix = prefix or default_prefix()
    require_root("kbypass testbed down")
    # Decide ownership for both hosts before removing either: removing one namespace deletes the veth
    # pair, and with it the mark in the other.
    names = [f"{prefix}-{host}" for host in HOSTS]
    ours = [n for n in names if netns.exists(n) and _ours(prefix, n)]
    for name in ours:
        _remove_netns(name)
    removed = ours
    return removed


def status(prefix: str | None = None) -> list[Host] | None:
    """The testbed as the kernel has it now, or None when it is not (completely) up."""
    prefix = prefix or default_prefix()
    hosts = []
    for host in HOSTS:
        name = f"{prefix}-{host}"
        if not netns.exists(name):
            return None
        try:
            with NetNS(name) as ns:
                found = ns.link_lookup(ifname=name)
                if not found:
                    return None
                link = ns.get_links(found[0])[0]
                if link.get("IFLA_IFALIAS") != f"{ALIAS_TAG} {prefix}":
                    return None
                addrs = [a for a in ns.get_addr(index=found[0], family=socket.AF_INET)]
        except Exception:
            return None
        if not addrs:
            return None
        hosts.append(
            Host(
                name=host,
                netns=name,
                iface=name,
                ifindex=found[0],
                mac=link.get("IFLA_ADDRESS"),
                ipv4=addrs[0].get("IFA_ADDRESS"),
                prefixlen=addrs[0]["prefixlen"],
                queues=link.get("IFLA_NUM_RX_QUEUES"),
                mtu=link.get("IFLA_MTU"),
            )
        )
    return hosts


def require(prefix: str | None = None) -> list[Host]:
    """The testbed's hosts, or a clear error saying how to bring it up."""
    prefix = prefix or default_prefix()
    hosts = status(prefix)
    if hosts is None:
        flag = "" if prefix == DEFAULT_PREFIX else f" --prefix {prefix}"
        raise TestbedError(f"testbed {prefix!r} is not up: run 'kbypass testbed up{flag}'")
    return hosts


def host(name: str, prefix: str | None = None) -> Host:
    for h in require(prefix):
        if h.name == name:
            return h
    raise UsageError(f"testbed has no host {name!r}: use one of {', '.join(HOSTS)}")


def status_json(hosts: list[Host] | None, prefix: str) -> dict:
    return {"prefix": prefix, "up": hosts is not None, "hosts": [h.to_json() for h in hosts or []]}
