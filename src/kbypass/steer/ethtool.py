"""Hardware steering through the NIC: ntuple rules and the RSS indirection table, by the SIOCETHTOOL ioctl.

ef_vi's "hidden queue" on a real NIC is two settings: an ntuple (flow steering) rule per flow that sends it
to queue N, and an RSS indirection table in which no hash bucket points at N, so N gets the chosen flows
and nothing else. Both are plain ethtool requests (`ethtool -N DEV flow-type udp4 ... action N`,
`ethtool -X DEV weight ...`). Ethtool netlink carries neither ntuple rules (no message for them up to at
least Linux 6.18) nor, before 6.17, a writable indirection table, and pyroute2's ethtool module covers
link modes, features, rings, channels, coalescing and statistics only; so this is the ioctl, as ethtool 6.1 itself sends it:
ETHTOOL_SRXCLSRLINS / SRXCLSRLDEL with `struct ethtool_rxnfc` around a `struct ethtool_rx_flow_spec`, and
ETHTOOL_GRXFHINDIR / SRXFHINDIR with `struct ethtool_rxfh_indir` (layouts from linux/ethtool.h below;
the unit tests compare them byte for byte with what the ethtool binary sends).

This module encodes and decodes and talks to one device (`Ethtool`); who owns what was applied and undoes
it after a crash is kbypass.port.hidden_queue's.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct

from kbypass.errors import UsageError
from kbypass.netns import entered

from .rules import Rule

SIOCETHTOOL = 0x8946
ETHTOOL_GFLAGS = 0x25
ETHTOOL_GRXRINGS = 0x2D
ETHTOOL_GRXCLSRLCNT = 0x2E
ETHTOOL_GRXCLSRLALL = 0x30
ETHTOOL_SRXCLSRLDEL = 0x31
ETHTOOL_SRXCLSRLINS = 0x32
ETHTOOL_GRXFHINDIR = 0x38
ETHTOOL_SRXFHINDIR = 0x39
ETH_FLAG_NTUPLE = 1 << 27
TCP_V4_FLOW, UDP_V4_FLOW = 0x01, 0x02
RX_CLS_LOC_ANY = 0xFFFFFFFF
RX_CLS_LOC_SPECIAL = 0x80000000
FLOW_TYPES = {"tcp": TCP_V4_FLOW, "udp": UDP_V4_FLOW}

# struct ethtool_tcpip4_spec inside the 52-byte union ethtool_flow_union: ip4src, ip4dst (be32), psrc,
# pdst (be16), tos; ethtool_flow_ext is 20 bytes (padding, h_dest, vlan_etype, vlan_tci, data).
TCPIP4 = struct.Struct("!4s4sHHB")
FLOW_UNION, FLOW_EXT = 52, 20
# struct ethtool_rx_flow_spec: flow_type, h_u, h_ext, m_u, m_ext, (pad to 8) ring_cookie u64, location
FLOW_SPEC = struct.Struct(f"=I{FLOW_UNION}s{FLOW_EXT}s{FLOW_UNION}s{FLOW_EXT}s4xQI4x")  # 168 bytes
# struct ethtool_rxnfc: cmd, flow_type, data u64, fs, rule_cnt (rss_context), then rule_locs[]: 192 bytes
RXNFC = struct.Struct(f"=IIQ{FLOW_SPEC.size}sI4x")
RULE_LOCS = 188  # offsetof(struct ethtool_rxnfc, rule_locs): right after rule_cnt, before the tail padding
VALUE = struct.Struct("=II")  # struct ethtool_value: cmd, data
INDIR_HEAD = struct.Struct("=II")  # struct ethtool_rxfh_indir: cmd, size, then u32 ring_index[size]
IFREQ = struct.Struct("@16sP16x")  # struct ifreq: ifr_name, ifr_data (a pointer), the rest of the union
MAX_INDIR = 1 << 16  # no NIC has a larger table; bounds what a reply may make us allocate
MAX_RULES = 1 << 16  # the same for the ntuple rule table


class HardwareSteeringError(UsageError):
    """The device cannot do what hardware steering needs (no ntuple, no RSS table), or refused it."""


def flow_spec(rule: Rule, queue: int, location: int = RX_CLS_LOC_ANY) -> bytes:
    """The `struct ethtool_rx_flow_spec` that sends `rule`'s packets to `queue`. Refuses what an ntuple
    rule cannot say: it matches one IPv4 TCP or UDP flow shape (addresses with prefixes, ports), and only
    a redirect rule means "put it on the queue"."""
    if rule.action != "redirect":
        raise HardwareSteeringError(f"rule '{rule}': only redirect rules go to the NIC (an ntuple rule places a "
                                    "flow on a queue): drop --hw or make the rule a redirect")
    if rule.proto not in FLOW_TYPES:
        raise HardwareSteeringError(f"rule '{rule}': an ntuple rule matches tcp or udp flows, not "
                                    f"'{rule.proto}': name udp or tcp, or drop --hw")
    if rule.vlan is not None or rule.family == 6:
        what = "a VLAN" if rule.vlan is not None else "IPv6"
        raise HardwareSteeringError(f"rule '{rule}': hardware steering here matches untagged IPv4 only, not "
                                    f"{what}: drop --hw (software steering matches it)")
    h, m = {}, {}
    for field in ("src", "dst"):
        value = getattr(rule, field)
        net = ipaddress.ip_network(value or "0.0.0.0/0")
        h[field], m[field] = net.network_address.packed, net.netmask.packed if value else bytes(4)
    for field in ("sport", "dport"):
        value = getattr(rule, field)
        h[field], m[field] = value or 0, 0xFFFF if value is not None else 0
    h_u = TCPIP4.pack(h["src"], h["dst"], h["sport"], h["dport"], 0).ljust(FLOW_UNION, b"\0")
    m_u = TCPIP4.pack(m["src"], m["dst"], m["sport"], m["dport"], 0).ljust(FLOW_UNION, b"\0")
    return FLOW_SPEC.pack(FLOW_TYPES[rule.proto], h_u, bytes(FLOW_EXT), m_u, bytes(FLOW_EXT), queue, location)


def rxnfc(cmd: int, fs: bytes = bytes(FLOW_SPEC.size), data: int = 0, flow_type: int = 0) -> bytearray:
    return bytearray(RXNFC.pack(cmd, flow_type, data, fs, 0))


def rxnfc_location(buf: bytes) -> int:
    """fs.location of an ethtool_rxnfc reply: where the driver put a rule inserted at RX_CLS_LOC_ANY."""
    return FLOW_SPEC.unpack(RXNFC.unpack_from(buf)[3])[-1]


def indir_request(cmd: int, table: list[int] | int) -> bytearray:
    """An ethtool_rxfh_indir: for SRXFHINDIR the table; for GRXFHINDIR a room of `table` entries (0: the
    size only)."""
    if isinstance(table, int):
        return bytearray(INDIR_HEAD.pack(cmd, table) + bytes(4 * table))
    return bytearray(INDIR_HEAD.pack(cmd, len(table)) + struct.pack(f"={len(table)}I", *table))


def indir_table(buf: bytes) -> list[int]:
    _, size = INDIR_HEAD.unpack_from(buf)
    room = (len(buf) - INDIR_HEAD.size) // 4
    if size > room:
        raise HardwareSteeringError(f"the driver answered an indirection table of {size} entries into {room}")
    return list(struct.unpack_from(f"={size}I", buf, INDIR_HEAD.size))


def is_default(table: list[int], rings: int) -> bool:
    """The table the kernel fills in when nobody set one (ethtool_rxfh_indir_default: bucket i on queue
    i % rings): restored by a reset rather than written back, so the interface is left unconfigured."""
    return table == [i % rings for i in range(len(table))]


def hidden_table(table: list[int], hidden: set[int], rings: int) -> list[int]:
    """The indirection table with no bucket on the `hidden` queues: every bucket keeps its queue unless
    hidden, and hidden buckets go round-robin to the queues that remain (so the spread of the others
    stays what it was). Refuses to hide every queue: the kernel's own traffic needs one."""
    others = [q for q in range(rings) if q not in hidden]
    if not others:
        raise HardwareSteeringError(f"hiding queue(s) {sorted(hidden)} of {rings} would leave the kernel no RSS "
                                    "queue: the device needs more queues (ethtool -L DEV combined N)")
    out, turn = [], 0
    for q in table:
        if q in hidden:
            q, turn = others[turn % len(others)], turn + 1
        out.append(q)
    return out


class Ethtool:
    """SIOCETHTOOL requests to one interface, from a socket made in its network namespace. `call(buf)` is
    the one door to the kernel (tests replace it with a fake device)."""

    def __init__(self, ifname: str, netns: str | None = None) -> None:
        if not ifname or len(ifname.encode()) >= 16:
            raise UsageError(f"interface name {ifname!r}: give a name of 1 to 15 bytes")
        self.ifname, self.netns = ifname, netns
        with entered(netns):
            self.ifindex = socket.if_nametoindex(ifname)  # OSError when there is no such interface
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def call(self, buf: bytearray) -> None:
        """One ioctl with `buf` as ifr_data; the kernel's answer lands in `buf`. OSError on failure."""
        data = (ctypes.c_char * len(buf)).from_buffer(buf)
        ifr = bytearray(IFREQ.pack(self.ifname.encode(), ctypes.addressof(data)))
        try:
            fcntl.ioctl(self._sock.fileno(), SIOCETHTOOL, ifr)
        finally:
            del data  # releases the export of buf

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Ethtool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- questions --------------------------------------------------------------------------------

    def ntuple_on(self) -> bool:
        """The "ntuple-filters" feature (ETH_FLAG_NTUPLE): off, a driver that has it refuses rules."""
        buf = bytearray(VALUE.pack(ETHTOOL_GFLAGS, 0))
        self.call(buf)
        return bool(VALUE.unpack(buf)[1] & ETH_FLAG_NTUPLE)

    def rx_rings(self) -> int:
        buf = rxnfc(ETHTOOL_GRXRINGS)
        self.call(buf)
        return RXNFC.unpack(buf)[2]

    def rule_count(self) -> tuple[int, bool, int]:
        """(rules in the table, whether the driver picks locations itself (RX_CLS_LOC_ANY works), the size
        of its rule table)."""
        buf = rxnfc(ETHTOOL_GRXCLSRLCNT)
        self.call(buf)
        _, _, data, _, count = RXNFC.unpack(buf)
        return count, bool(data & RX_CLS_LOC_SPECIAL), data & ~RX_CLS_LOC_SPECIAL & 0xFFFFFFFF

    def free_location(self) -> int:
        """A free rule location for a driver that does not pick one: the highest free slot, as ethtool's
        own rule manager takes (the end of the table is the lowest priority)."""
        count, _, size = self.rule_count()
        if not 0 <= count <= MAX_RULES or not 0 < size <= MAX_RULES:
            raise HardwareSteeringError(f"{self.ifname} reports {count} ntuple rules in a table of {size}")
        buf = rxnfc(ETHTOOL_GRXCLSRLALL) + bytes(4 * count)
        RXNFC.pack_into(buf, 0, ETHTOOL_GRXCLSRLALL, 0, 0, bytes(FLOW_SPEC.size), count)
        self.call(buf)
        got = RXNFC.unpack_from(buf)[4]
        used = set(struct.unpack_from(f"={min(got, count)}I", buf, RULE_LOCS))
        for loc in range(size - 1, -1, -1):
            if loc not in used:
                return loc
        raise HardwareSteeringError(f"the ntuple rule table of {self.ifname} is full ({size} rules): 'ethtool -n "
                                    f"{self.ifname}' lists them")

    def indirection(self) -> list[int]:
        size_buf = indir_request(ETHTOOL_GRXFHINDIR, 0)
        self.call(size_buf)
        size = INDIR_HEAD.unpack_from(size_buf)[1]
        if not 0 < size <= MAX_INDIR:
            raise HardwareSteeringError(f"{self.ifname} reports an RSS indirection table of {size} entries")
        buf = indir_request(ETHTOOL_GRXFHINDIR, size)
        self.call(buf)
        return indir_table(buf)

    # ---- changes ----------------------------------------------------------------------------------

    def insert(self, rule: Rule, queue: int, location: int = RX_CLS_LOC_ANY) -> int:
        """Insert the ntuple rule for `rule` at `location` (RX_CLS_LOC_ANY: one the driver picks); returns
        where the driver put it."""
        buf = rxnfc(ETHTOOL_SRXCLSRLINS, flow_spec(rule, queue, location))
        self.call(buf)
        return rxnfc_location(buf)

    def delete(self, location: int) -> None:
        fs = FLOW_SPEC.pack(0, bytes(FLOW_UNION), bytes(FLOW_EXT), bytes(FLOW_UNION), bytes(FLOW_EXT), 0, location)
        self.call(rxnfc(ETHTOOL_SRXCLSRLDEL, fs))

    def set_indirection(self, table: list[int]) -> None:
        """Write the table; [] resets it to the driver's default spread (as `ethtool -X DEV default`), which
        also clears the kernel's "user configured" mark that makes later channel changes refuse."""
        self.call(indir_request(ETHTOOL_SRXFHINDIR, table))


def unsupported(e: OSError) -> bool:
    """The errno of a device that does not have the feature (veth: EOPNOTSUPP)."""
    return e.errno == errno.EOPNOTSUPP


def describe(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else str(e)
