"""The built-in testbed: two hosts, "a" and "b", as network namespaces joined by one veth pair.

Every tool, test and benchmark targets it by default, so a newcomer needs no NIC, no second machine and no
hugepages. Built over netlink with pyroute2 (no `ip` subprocesses but one: XPS, CPU c transmitting on
queue c mod N, is set through the namespace's own /sys, which `ip netns exec` mounts).

Ownership: before `up` creates anything it writes a marker, /run/kbypass/testbed-<prefix>, naming each
namespace it is about to create (the name goes in before the namespace exists). The marker is how `up` and
`down` tell a testbed kbypass made, even one built only part-way (a crash, Ctrl-C or a failed create between
the steps), from a namespace someone else made with the same name; kbypass never touches the latter. `down`
removes what the marker names, then the marker. Each veth also carries the interface alias
``kbypass-testbed <prefix>``, which `status` checks and which still marks testbeds made before markers
existed. /run is a tmpfs, like /var/run/netns: a reboot clears markers and namespaces together. `up` and
`down` of one prefix hold an exclusive lock (/run/kbypass/testbed-<prefix>.lock), so two at once take turns
instead of tripping over each other. `status` reads everything back from the kernel and never creates.

What veth needs for the bypass path: native XDP works as is; a frame that XDP redirects or transmits into a
veth is only accepted when the peer runs an XDP program or has GRO on, so GRO is switched on at both ends.
TX checksum offload is switched off, so frames from kernel sockets carry finished checksums, as on a wire.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import mmap
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from kbypass import netns
from kbypass.errors import EnvironmentProblem, PermissionProblem, TestbedError, UsageError, require_root
from kbypass.host import xps
from kbypass.xsk import multibuf

HOSTS = ("a", "b")
ALIAS_TAG = "kbypass-testbed"
DEFAULT_PREFIX = "kb"
DEFAULT_SUBNET = "10.77.0.0/24"
DEFAULT_MTU = 1500  # a new testbed's, when `up` is not given one
MAX_QUEUES = 64  # veth's own limit is higher, but more queues than cores only costs memory here
MIN_MTU, MAX_MTU = 68, 65535  # IPv4's minimum; veth's maximum
# The MTU limits of XDP on veth (the kernel's veth_xdp_set refuses an XDP program with ERANGE above them).
# A program that does not declare multi-buffer (frags) support runs only when a whole frame fits one page:
# PAGE_SIZE less XDP_PACKET_HEADROOM (256) and skb_shared_info (320 bytes on x86-64), less the 14-byte
# Ethernet header: 3506 with 4 KiB pages. A frags-aware one (section xdp.frags: kbypass's steering program and
# live generator) takes that plus a page per frag (MAX_SKB_FRAGS, 17): past veth's own maximum, 65535. Every
# XDP program kbypass attaches is frags-aware; the one-page limit is what another program imposes.
XDP_MAX_MTU = mmap.PAGESIZE - 256 - 320 - 14
XDP_MTU_WHY = (f"veth takes an XDP program without multi-buffer support (section 'xdp', not 'xdp.frags') only up "
               f"to MTU {XDP_MAX_MTU}: one {mmap.PAGESIZE}-byte page less 256 bytes of XDP headroom and 320 of "
               "skb_shared_info, less the 14-byte Ethernet header")
# the kernel's compile-time frag limit per packet: kbypass.xsk.multibuf says why this one and not the sysctl
FRAGS_MAX_MTU = min(MAX_MTU, XDP_MAX_MTU + mmap.PAGESIZE * multibuf.MAX_SKB_FRAGS)
# Interface names are "<prefix>-a" and "<prefix>-b". A NAPI thread is named "napi/<ifname>-<id>", and kernels
# before 5.17 show only its first 15 characters: with a prefix of at most 6, "napi/<prefix>-a-" plus at least
# one digit of the id always survives the cut, so kbypass.host.napi tells host a's threads from host b's (and from
# those of a testbed whose prefix merely starts with this one).
MAX_PREFIX = 6
RUN_DIR = "/run/kbypass"  # ownership markers and locks (see the module doc)
LOCK_TIMEOUT = 30.0  # seconds `up`/`down` wait for another `up`/`down` of the same prefix

SIOCETHTOOL = 0x8946
ETHTOOL_SGRO = 0x0000002C
ETHTOOL_STXCSUM = 0x00000017


def _netns_socket(name: str, **kw):
    """pyroute2's NetNS for namespace `name`, to change it. pyroute2 takes ~170 ms to import, so it is imported
    only when a namespace is really opened: the CLI's option parsing reads this module's names (HOSTS,
    TestbedConfig)."""
    from pyroute2 import NetNS

    return NetNS(name, **kw)


@contextlib.contextmanager
def rtnl(name: str) -> Iterator:
    """An rtnetlink socket (pyroute2's IPRoute) in namespace `name`, to look: made by this thread while it is
    in the namespace (kbypass.netns.entered; the socket stays there), as kbypass.host.ifstats reads its
    counters. pyroute2's NetNS forks a helper process per namespace for the same answers, which every
    `--host` paid twice. A missing namespace is an error, never created."""
    from pyroute2 import IPRoute

    with netns.entered(name), IPRoute() as ipr:
        yield ipr


def _pr_netns():
    from pyroute2 import netns

    return netns


def __getattr__(name: str):
    if name == "pr_netns":  # as it was imported before (tests replace its functions)
        return _pr_netns()
    raise AttributeError(name)


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
    # None: keep the MTU of a testbed that is up, DEFAULT_MTU for a new one; a number: that MTU, changed in
    # place on a testbed that is up (the one setting `up` changes in place)
    mtu: int | None = None
    subnet: str = DEFAULT_SUBNET

    def validate(self) -> None:
        _check_prefix_chars(self.prefix)
        if len(self.prefix) > MAX_PREFIX:
            raise UsageError(
                f"testbed prefix {self.prefix!r} is too long: use at most {MAX_PREFIX} characters (longer "
                "interface names make the hosts' NAPI thread names ambiguous)"
            )
        if not 1 <= self.queues <= MAX_QUEUES:
            raise UsageError(f"--queues {self.queues}: choose a queue count from 1 to {MAX_QUEUES}")
        if self.mtu is not None and not MIN_MTU <= self.mtu <= FRAGS_MAX_MTU:
            raise UsageError(
                f"--mtu {self.mtu}: choose an MTU from {MIN_MTU} (IPv4's minimum) to {FRAGS_MAX_MTU} (veth's "
                "maximum; above " f"{XDP_MAX_MTU} the XDP programs must be frags-aware, as kbypass's are)"
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


def _check_prefix_chars(prefix: str) -> None:
    # also keeps the prefix safe in the marker's and the lock's file names
    if not prefix or not all(c.isascii() and (c.isalnum() or c in "-_") for c in prefix):
        raise UsageError(f"testbed prefix {prefix!r}: use letters, digits, '-' or '_'")


def _names(prefix: str) -> list[str]:
    return [f"{prefix}-{host}" for host in HOSTS]


def _marker_path(prefix: str) -> str:
    return os.path.join(RUN_DIR, f"testbed-{prefix}")


def _lock_path(prefix: str) -> str:
    return _marker_path(prefix) + ".lock"


def _read_marker(prefix: str) -> list[str] | None:
    """The namespaces the marker says kbypass made (or was about to make), or None without a marker."""
    try:
        with open(_marker_path(prefix)) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    names = _names(prefix)
    try:
        claimed = json.loads(text)["netns"]
    except (ValueError, KeyError, TypeError):  # a marker cut short by a crash: it still says "ours"
        return names
    return [n for n in names if n in claimed]  # never more than this testbed's own names


def _write_marker(prefix: str, names: list[str]) -> None:
    os.makedirs(RUN_DIR, exist_ok=True)
    path = _marker_path(prefix)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"prefix": prefix, "netns": names, "pid": os.getpid()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: a reader sees the old list or the new one


def _remove_marker(prefix: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_marker_path(prefix))


@contextlib.contextmanager
def _locked(prefix: str, timeout: float | None = None) -> Iterator[None]:
    """Hold this prefix's lock for the body; waits up to `timeout` seconds for another holder."""
    os.makedirs(RUN_DIR, exist_ok=True)
    path = _lock_path(prefix)
    deadline = time.monotonic() + (LOCK_TIMEOUT if timeout is None else timeout)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                        raise TestbedError(
                            f"testbed {prefix!r} is being changed by another kbypass process (pid {holder}): "
                            "wait for it to finish, then run the command again"
                        ) from None
                    time.sleep(0.05)
            mine = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # the holder removed the lock file as it finished: lock the one there now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            if not os.path.exists(_marker_path(prefix)):
                os.unlink(path)  # nothing of this testbed is left: leave no lock file either
        except OSError:
            pass
        os.close(fd)


def _ours(prefix: str, name: str) -> bool:
    """Does namespace `name` hold a veth marked as this testbed's? Only looks: a namespace removed meanwhile
    is not created again (rtnl never creates one; pyroute2's NetNS would by default)."""
    try:
        with rtnl(name) as ns:
            return any(link.get("IFLA_IFALIAS") == f"{ALIAS_TAG} {prefix}" for link in ns.get_links())
    except Exception:
        return False


def _claimed(prefix: str) -> list[str]:
    """This testbed's namespace names that kbypass made: named in the marker, or (a testbed made before
    markers existed) holding the veth with this testbed's alias. Decided for both hosts before anything is
    removed: removing one namespace deletes the veth pair, and with it the alias in the other."""
    marked = _read_marker(prefix) or []
    return [n for n in _names(prefix) if n in marked or (netns.exists(n) and _ours(prefix, n))]


def _ethtool_set(iface: str, cmd: int, on: bool) -> None:
    # struct ethtool_value { u32 cmd; u32 data; } passed through SIOCETHTOOL; called inside the namespace.
    value = ctypes.create_string_buffer(struct.pack("II", cmd, 1 if on else 0))
    ifreq = struct.pack("16sP16x", iface.encode(), ctypes.addressof(value))  # sizeof(struct ifreq) == 40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)


def up(config: TestbedConfig) -> list[Host]:
    """Bring the testbed up. Idempotent: an identical testbed already up is left as it is; one built only
    part-way (by a `up` that crashed or was interrupted) is removed and built again."""
    config.validate()
    require_root("kbypass testbed up")
    with _locked(config.prefix):
        return _up(config)


def _up(config: TestbedConfig) -> list[Host]:
    prefix = config.prefix
    names = _names(prefix)
    claimed = _claimed(prefix)
    present = [n for n in names if netns.exists(n)]
    for name in present:
        if name not in claimed:
            raise TestbedError(
                f"network namespace {name!r} exists but kbypass did not make it: remove it "
                f"('ip netns del {name}') or choose another --prefix"
            )
    if len(present) == len(names):
        hosts = status(prefix)
        if hosts is not None:
            if config.mtu is not None and hosts[0].mtu != config.mtu:
                _change_mtu(config, hosts)  # the one setting an existing testbed changes in place
                hosts = status(prefix)
            _check_matches(config, hosts)
            if _read_marker(prefix) != names:  # a testbed from before markers: mark it now
                _write_marker(prefix, names)
            return hosts
    if present or _read_marker(prefix) is not None:  # part of a testbed: start again from nothing
        _down(prefix, claimed)

    made: list[str] = []
    try:
        # Ctrl-C or SIGTERM while pyroute2 forks to make a namespace lands in its fork handlers, where Python
        # prints "Exception ignored" and carries on: hold them while building, and act on one that came
        # meanwhile right after, here inside the try, so the except below removes everything made.
        with _signals_held():  # status() forks pyroute2 too: a signal there came out as "did not come up"
            _make(config, names, made)
            hosts = status(prefix)
        if hosts is None:
            raise TestbedError(f"testbed {prefix!r} did not come up; run 'kbypass doctor'")
        return hosts
    except BaseException:
        for name in made:
            _remove_netns(name)
        _remove_marker(prefix)
        raise


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Block SIGINT/SIGTERM for the body; one that came meanwhile is delivered on exit."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _make(config: TestbedConfig, names: list[str], made: list[str]) -> None:
    """Create the namespaces (each claimed in the marker first, and listed in `made`) and the link."""
    prefix = config.prefix
    for name in names:
        # Claim the name before the namespace exists: whenever this stops from here on (a crash, Ctrl-C,
        # a create that fails after making /var/run/netns/NAME), `down` and the next `up` know it is ours.
        made.append(name)
        _write_marker(prefix, made)
        try:
            _pr_netns().create(name)
        except FileExistsError:
            made.remove(name)  # someone else made it just now: not ours to remove
            raise TestbedError(
                f"network namespace {name!r} was just made by someone else: remove it "
                f"('ip netns del {name}') or choose another --prefix"
            ) from None
    _build_link(config)


def _build_link(config: TestbedConfig) -> None:
    a, b = (config.netns_name(h) for h in HOSTS)
    with _netns_socket(a, flags=0) as ns:
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
        with _netns_socket(config.netns_name(host), flags=0) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
            idx = ns.link_lookup(ifname=config.iface_name(host))[0]
            ns.link("set", index=idx, address=config.mac(host), mtu=config.mtu or DEFAULT_MTU, ifalias=config.alias())
            ns.addr("add", index=idx, address=config.ipv4(host), prefixlen=config.prefixlen())
            ns.link("set", index=idx, state="up")
        with netns.entered(config.netns_name(host)):
            _ethtool_set(config.iface_name(host), ETHTOOL_SGRO, True)
            # Without TX checksum offload the kernel finishes every checksum before the frame crosses the
            # veth, as a real wire would see it; with it, frames carry only the pseudo-header sum, and a
            # userspace receiver (or a reflector sending them back) would see "bad" checksums.
            _ethtool_set(config.iface_name(host), ETHTOOL_STXCSUM, False)
        # CPU c transmits on queue c mod N: on a veth the sender's queue is the receiver's, so a sender's CPU
        # picks the queue its flows reach (kbypass.host.xps), the testbed's RSS. A kernel without XPS keeps
        # its hash: the testbed works, flows just spread by it.
        try:
            xps.spread_by_cpu(config.iface_name(host), config.netns_name(host), config.queues)
        except EnvironmentProblem:
            pass


def _change_mtu(config: TestbedConfig, hosts: list[Host]) -> None:
    """Set the MTU of both veth ends of a testbed that is up (`up --mtu N` again). The kernel refuses an MTU
    above what an attached XDP program takes (a program without frags support: XDP_MAX_MTU); then both
    ends go back to the MTU they had, and the error names the program and the fix."""
    done: list[Host] = []
    try:
        for h in sorted(hosts, key=lambda h: h.mtu < config.mtu):  # lowering: either order; raising: see below
            with _netns_socket(h.netns, flags=0) as ns:
                ns.link("set", index=h.ifindex, mtu=config.mtu)
            done.append(h)
    except Exception as e:  # NetlinkError (pyroute2): EINVAL "mtu greater than device maximum", or ERANGE
        for h in done:
            with _netns_socket(h.netns, flags=0) as ns:
                ns.link("set", index=h.ifindex, mtu=h.mtu)
        blockers = _xdp_programs(hosts)
        if blockers and config.mtu > XDP_MAX_MTU:
            raise TestbedError(
                f"--mtu {config.mtu}: the kernel refused it on testbed {config.prefix!r} because of an XDP program "
                f"that is not frags-aware: {'; '.join(blockers)}. {XDP_MTU_WHY}. Remove it (the 'xdp off' "
                f"command above; a kbypass tool's program goes when the tool stops) or keep --mtu {XDP_MAX_MTU} or "
                "less; the MTU is unchanged") from None
        raise TestbedError(f"--mtu {config.mtu}: the kernel refused it on testbed {config.prefix!r} ({e}); the MTU "
                           f"is unchanged at {hosts[0].mtu}: run 'kbypass testbed down' and 'up --mtu "
                           f"{config.mtu}' to rebuild it") from None


def _xdp_programs(hosts: list[Host]) -> list[str]:
    """The XDP programs attached to the testbed's veths, each with the command that removes it."""
    from kbypass.bpf import libbpf

    found = []
    for h in hosts:
        with netns.entered(h.netns):
            ids = libbpf.xdp_query(h.ifindex).ids
        for i in ids:
            name = libbpf.prog_name(i)
            found.append(f"program id {i} ({name!r}) on {h.iface} in {h.netns}: "
                         f"'ip -n {h.netns} link set dev {h.iface} xdp off'")
    return found


def _check_matches(config: TestbedConfig, hosts: list[Host]) -> None:
    got = (hosts[0].queues, hosts[0].mtu, f"{ipaddress.IPv4Interface(f'{hosts[0].ipv4}/{hosts[0].prefixlen}').network}")
    want = (config.queues, hosts[0].mtu if config.mtu is None else config.mtu, str(ipaddress.IPv4Network(config.subnet)))
    if got != want:
        raise TestbedError(
            f"testbed {config.prefix!r} is already up with queues={got[0]} mtu={got[1]} subnet={got[2]}: "
            f"run 'kbypass testbed down' first to rebuild it differently (only --mtu changes in place)"
        )


def _remove_netns(name: str) -> None:
    try:
        _pr_netns().remove(name)
    except FileNotFoundError:
        pass


def down(prefix: str | None = None) -> list[str]:
    """Remove what `up` made (deleting a namespace deletes its veth end, and so the pair), a testbed built
    only part-way included, then the marker. Returns the names removed. Namespaces with the testbed's names
    that kbypass did not make are left alone."""
    prefix = prefix or default_prefix()
    _check_prefix_chars(prefix)  # no length cap: a testbed made under an older, longer limit still goes
    require_root("kbypass testbed down")
    with _locked(prefix):
        return _down(prefix, _claimed(prefix))


def _down(prefix: str, claimed: list[str]) -> list[str]:
    from kbypass.cp.lock import terminate

    removed = []
    for name in claimed:
        terminate(name, forget=True)  # a control plane in the namespace would keep it alive after the delete
        if netns.exists(name):
            _remove_netns(name)
            removed.append(name)
    _remove_marker(prefix)  # last: until both are gone, the marker is what says they are ours
    return removed


def status(prefix: str | None = None) -> list[Host] | None:
    """The testbed as the kernel has it now, or None when it is not (completely) up."""
    prefix = prefix or default_prefix()
    if os.geteuid() != 0 and any(netns.exists(n) for n in _names(prefix)):
        # entering a namespace needs root: without it every look below fails, and "not up" would be a lie
        raise PermissionProblem(f"testbed {prefix!r} exists, but reading it needs root: run the command as "
                                "root (sudo)")
    hosts = []
    for host in HOSTS:
        name = f"{prefix}-{host}"
        if not netns.exists(name):
            return None
        try:
            with rtnl(name) as ns:  # only look
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
