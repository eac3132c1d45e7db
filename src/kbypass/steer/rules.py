"""Steering rules: a validated value object, its one-line text form, and its packed form for the BPF map.

A `Rule` says which IP packets it matches (protocol, source/destination address or prefix, ports; every
field may be a wildcard) and what the XDP program does with them (redirect to the queue's AF_XDP socket,
drop, pass to the kernel, or drop a sample of them). Text form, tokens separated by blanks:

    [udp|tcp|icmp|any] [vlan ID] [src ADDR[/LEN]] [dst ADDR[/LEN]] [sport N] [dport N] [queue Q]
    [redirect|drop|pass|sample | action WORD] [prob P]
    ether [ETHERTYPE] [vlan ID] [queue Q] [redirect|drop|pass|sample | action WORD] [prob P]

e.g. ``udp dst 10.0.0.2 dport 4321``, ``tcp src fd00::/64 drop``, ``udp dport 53 sample prob 0.01``.
The action defaults to redirect. A "sample" rule drops each matching packet with probability P and lets
the rest fall through to later rules (fault injection in front of a redirect rule). Rules match IPv4 and
IPv6 only, except "ether" rules, which match non-IP frames by EtherType (``ether 0x88b5``, a raw L2
protocol; without a type: any non-IP frame); ARP and other non-IP frames no rule names pass. "icmp" means
ICMP on IPv4 and ICMPv6 on IPv6. A rule matches untagged frames unless it names a VLAN (``vlan 100``):
then it matches the frames whose outer 802.1Q/802.1ad tag has that VLAN id, and no others. A tagged frame
belongs to the kernel's VLAN device (eth0.100) until a rule asks for its VLAN, and the consumers of the
untagged default (the UDP endpoint, xfer, reflect) never see a tag they do not parse. ``queue Q`` matches
only packets that arrived on receive queue Q (the NIC's RSS choice; on a veth the sender's transmit
queue): workers, one per queue, each hold the same flows on their own queue, so their rules never overlap.

The packed layout is `struct steer_rule` in bpf/steer.h; RULE_LAYOUT below is its only Python copy, and a
test checks it against the BTF of the built object.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from dataclasses import dataclass

from kbypass.errors import UsageError

PROTOS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17}  # STEER_PROTO_*
ACTIONS = {"redirect": 1, "drop": 2, "pass": 3, "sample": 4}  # STEER_ACT_*
FAMILY_ANY, FAMILY_ETHER, FAMILY_V4, FAMILY_V6 = 0, 1, 4, 6  # STEER_FAMILY_*
ETHER = "ether"  # the proto word of EtherType rules (not an IP protocol, so not in PROTOS)
# EtherTypes an ether rule may not name: the program parses these itself (IP) or looks through them (VLAN)
RESERVED_ETHERTYPES = {0x0800: "IPv4", 0x86DD: "IPv6", 0x8100: "an 802.1Q VLAN tag", 0x88A8: "an 802.1ad tag"}
SAMPLE_ALWAYS = 0xFFFFFFFF  # STEER_SAMPLE_ALWAYS

# struct steer_rule, field by field (name, struct code). Little-endian host order applies only to
# sample_thresh; ports, addresses and masks are byte strings already in network order.
RULE_LAYOUT: tuple[tuple[str, str], ...] = (
    ("action", "B"),
    ("proto", "B"),
    ("family", "B"),
    ("tagged", "B"),
    ("sample_thresh", "I"),
    ("sport", "2s"),
    ("sport_mask", "2s"),
    ("dport", "2s"),
    ("dport_mask", "2s"),
    ("src", "16s"),
    ("src_mask", "16s"),
    ("dst", "16s"),
    ("dst_mask", "16s"),
    ("vlan", "H"),
    ("group", "H"),
    ("queue", "H"),
    ("queue_mask", "H"),
)
RULE_STRUCT = struct.Struct("<" + "".join(code for _, code in RULE_LAYOUT))
RULE_SIZE = RULE_STRUCT.size  # 88
MAX_RULE_QUEUE = 4095  # the largest queue a rule names (the tools' --queue bound)


def rule_offsets() -> dict[str, int]:
    """Byte offset of every field of struct steer_rule, derived from RULE_LAYOUT."""
    offsets, codes = {}, ""
    for name, code in RULE_LAYOUT:
        offsets[name] = struct.calcsize("<" + codes)
        codes += code
    return offsets


class RuleError(UsageError):
    """A rule that cannot be built.

    `head` names the bad value ("bad dport '70000'"), `tail` explains (" (expected ...)"); `field` names
    the offending field so `Rule.parse` can put "at token N" between the two.
    """

    def __init__(self, head: str, tail: str = "", field: str | None = None) -> None:
        super().__init__(head + tail)
        self.head = head
        self.tail = tail
        self.field = field


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(text: str, field: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        if "host bits set" in str(e):
            fixed = ipaddress.ip_network(text, strict=False)
            raise RuleError(f"bad address '{text}'", f": host bits set (did you mean {fixed}?)", field) from None
        raise RuleError(f"bad address '{text}'", " (expected IPv4/IPv6 address or prefix)", field) from None


def _show(net: Network) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


@dataclass(frozen=True)
class Rule:
    """One steering rule (immutable, hashable). Build it directly or with `Rule.parse(text)`.

    `src`/`dst` are normalised on construction ("10.0.0.2/32" becomes "10.0.0.2").
    """

    proto: str = "any"
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    action: str = "redirect"
    probability: float | None = None
    ethertype: int | None = None  # only with proto "ether"; packed into the dport pair (see bpf/steer.h)
    vlan: int | None = None  # the outer VLAN tag's id; None: untagged frames only
    queue: int | None = None  # the receive queue the packet arrived on; None: any queue

    def __post_init__(self) -> None:
        if self.proto not in PROTOS and self.proto != ETHER:
            raise RuleError(f"unknown proto '{self.proto}'", " (expected udp, tcp, icmp, any or ether)", "proto")
        self._check_ether()
        v = self.vlan
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 4094):
            raise RuleError(f"bad vlan '{v}'", " (expected a VLAN id 0-4094)", "vlan")
        q = self.queue
        if q is not None and (isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= MAX_RULE_QUEUE):
            raise RuleError(f"bad queue '{q}'", f" (expected a receive queue 0-{MAX_RULE_QUEUE})", "queue")
        if self.action not in ACTIONS:
            raise RuleError(f"unknown action '{self.action}'", " (expected redirect, drop, pass or sample)", "action")
        nets = {}
        for field in ("src", "dst"):
            value = getattr(self, field)
            if value is None:
                continue
            if not isinstance(value, str):
                value = str(value)
            net = _network(value, field)
            nets[field] = net
            object.__setattr__(self, field, _show(net))
        if len(nets) == 2 and nets["src"].version != nets["dst"].version:
            raise RuleError(
                f"dst '{self.dst}'",
                f" is IPv{nets['dst'].version} but src '{self.src}' is IPv{nets['src'].version}"
                " (use one IP version per rule)",
                "dst",
            )
        for field in ("sport", "dport"):
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise RuleError(f"bad {field} '{value}'", " (expected a port number 0-65535)", field)
            if self.proto not in ("udp", "tcp"):
                raise RuleError(
                    f"{field} '{value}'", f" needs proto udp or tcp, not '{self.proto}' (put udp or tcp first)", field
                )
        p = self.probability
        if self.action == "sample":
            if p is None:
                raise RuleError("action 'sample'", " needs 'prob P' with 0 <= P <= 1", "action")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 <= p <= 1.0):
                raise RuleError(f"bad prob '{p}'", " (expected a number 0 <= P <= 1)", "probability")
            object.__setattr__(self, "probability", float(p))
        elif p is not None:
            raise RuleError(f"prob '{p}'", f" only goes with action sample, not '{self.action}'", "probability")

    def _check_ether(self) -> None:
        et = self.ethertype
        if self.proto != ETHER:
            if et is not None:
                raise RuleError(f"ethertype '{et}'", f" needs proto ether, not '{self.proto}' (write 'ether 0x88b5')",
                                "ethertype")
            return
        for field in ("src", "dst", "sport", "dport"):
            if getattr(self, field) is not None:
                raise RuleError(f"{field} '{getattr(self, field)}'", " does not go with ether: an ether rule matches "
                                "the EtherType of non-IP frames only (use udp/tcp rules for IP)", field)
        if et is None:
            return
        if isinstance(et, bool) or not isinstance(et, int) or not 0x0600 <= et <= 0xFFFF:
            raise RuleError(f"bad ethertype '{et}'", " (expected 0x0600-0xffff; smaller values are 802.3 lengths)",
                            "ethertype")
        if et in RESERVED_ETHERTYPES:
            raise RuleError(f"ethertype '{et:#06x}'", f" is {RESERVED_ETHERTYPES[et]}, which the program parses "
                            "itself: use an IP rule (udp/tcp/icmp/any) instead", "ethertype")

    @property
    def family(self) -> int:
        """4 or 6 when an address pins the IP version, 1 for ether rules, else 0 (the rule matches both)."""
        if self.proto == ETHER:
            return FAMILY_ETHER
        for value in (self.src, self.dst):
            if value is not None:
                return FAMILY_V6 if ":" in value else FAMILY_V4
        return FAMILY_ANY

    # ---- text form -------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse the text form (see module docstring); errors name the bad token and its position."""
        tokens = text.split()

        def fail(head: str, tail: str = "", pos: int | None = None) -> RuleError:
            at = f" at token {pos}" if pos is not None else ""
            return RuleError(f'rule "{text}": {head}{at}', tail)

        if not tokens:
            raise fail("empty rule", " (expected e.g. 'udp dport 4321')")
        kw: dict[str, object] = {}
        where: dict[str, int] = {}
        i = 0
        if tokens[0] in PROTOS or tokens[0] == ETHER:
            kw["proto"], where["proto"] = tokens[0], 1
            i = 1
        if tokens[0] == ETHER and len(tokens) > 1 and tokens[1][:1].isdigit():
            try:
                kw["ethertype"] = int(tokens[1], 0)
            except ValueError:
                raise fail(f"bad ethertype '{tokens[1]}'", " (expected a number such as 0x88b5)", 2) from None
            where["ethertype"] = 2
            i = 2
        while i < len(tokens):
            tok, pos = tokens[i], i + 1
            if tok in ACTIONS:
                key, value, vpos = "action", tok, pos
                i += 1
            elif tok in ("vlan", "src", "dst", "sport", "dport", "queue", "action", "prob"):
                if i + 1 >= len(tokens):
                    raise fail(f"'{tok}'", " needs a value", pos)
                key, value, vpos = tok, tokens[i + 1], pos + 1
                i += 2
            elif tok in PROTOS or tok == ETHER:
                raise fail(f"proto '{tok}'", " must come first", pos)
            else:
                raise fail(
                    f"unknown word '{tok}'",
                    " (expected vlan, src, dst, sport, dport, queue, action, prob or redirect/drop/pass/sample)",
                    pos,
                )
            field = "probability" if key == "prob" else key
            if field in kw:
                raise fail(f"'{tok}'", " given twice", pos)
            if key in ("sport", "dport"):
                # ASCII digits only: str.isdigit() also accepts e.g. '²', which int() refuses
                if not (value.isascii() and value.isdigit()) or int(value) > 65535:
                    raise fail(f"bad {key} '{value}'", " (expected a port number 0-65535)", vpos)
                value = int(value)
            elif key == "vlan":
                if not (value.isascii() and value.isdigit()) or int(value) > 4094:
                    raise fail(f"bad vlan '{value}'", " (expected a VLAN id 0-4094)", vpos)
                value = int(value)
            elif key == "queue":
                if not (value.isascii() and value.isdigit()) or int(value) > MAX_RULE_QUEUE:
                    raise fail(f"bad queue '{value}'", f" (expected a receive queue 0-{MAX_RULE_QUEUE})", vpos)
                value = int(value)
            elif key == "prob":
                try:
                    value = float(value)
                except ValueError:
                    raise fail(f"bad prob '{value}'", " (expected a number 0 <= P <= 1)", vpos) from None
                if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                    raise fail(f"bad prob '{tokens[vpos - 1]}'", " (expected a number 0 <= P <= 1)", vpos)
            elif key in ("src", "dst"):
                try:
                    _network(value, key)
                except RuleError as e:
                    raise fail(e.head, e.tail, vpos) from None
            kw[field] = value
            where[field] = vpos
        try:
            return cls(**kw)  # type: ignore[arg-type]
        except RuleError as e:
            pos = where.get(e.field or "")
            raise fail(e.head, e.tail, pos) from None

    def __str__(self) -> str:
        parts = [] if self.proto == "any" else [self.proto]
        if self.ethertype is not None:
            parts.append(f"{self.ethertype:#06x}")
        for field in ("vlan", "src", "dst", "sport", "dport", "queue"):
            value = getattr(self, field)
            if value is not None:
                parts += [field, str(value)]
        parts.append(self.action)
        if self.probability is not None:
            parts += ["prob", repr(self.probability)]
        return " ".join(parts)

    # ---- packed form -----------------------------------------------------------------------------

    def pack(self, group: int = 0) -> bytes:
        """The 88-byte `struct steer_rule` for the steer_rules map (see bpf/steer.h). `group`: whose
        AF_XDP sockets a redirect goes to (SteerProgram.register_xsk); 0 is in-process steering's."""
        if self.action == "sample":
            p = self.probability or 0.0
            thresh = SAMPLE_ALWAYS if p >= 1.0 else min(round(p * 2**32), SAMPLE_ALWAYS - 1)
        else:
            thresh = 0
        fields = {
            "action": ACTIONS[self.action],
            "proto": PROTOS.get(self.proto, 0),
            "family": self.family,
            "tagged": int(self.vlan is not None),
            "vlan": self.vlan or 0,
            "group": group,
            "queue": self.queue or 0,
            "queue_mask": 0xFFFF if self.queue is not None else 0,
            "sample_thresh": thresh,
        }
        for name in ("sport", "dport"):
            port = getattr(self, name)
            fields[name] = (port or 0).to_bytes(2, "big")
            fields[name + "_mask"] = b"\xff\xff" if port is not None else b"\0\0"
        if self.ethertype is not None:  # EtherType rules reuse the dport pair (bpf/steer.h)
            fields["dport"], fields["dport_mask"] = self.ethertype.to_bytes(2, "big"), b"\xff\xff"
        for name in ("src", "dst"):
            value = getattr(self, name)
            if value is None:
                fields[name] = fields[name + "_mask"] = bytes(16)
            else:
                net = ipaddress.ip_network(value)
                fields[name] = net.network_address.packed.ljust(16, b"\0")
                fields[name + "_mask"] = net.netmask.packed.ljust(16, b"\0")
        return RULE_STRUCT.pack(*(fields[name] for name, _ in RULE_LAYOUT))

    @classmethod
    def unpack(cls, raw: bytes) -> tuple[Rule, int]:
        """The rule and socket group of a packed `struct steer_rule`, as read back from the steer_rules map
        of a running program (`kbypass top`): the inverse of `pack`."""
        f = dict(zip((name for name, _ in RULE_LAYOUT), RULE_STRUCT.unpack(raw[:RULE_SIZE])))
        kw: dict[str, object] = {"action": next(k for k, v in ACTIONS.items() if v == f["action"])}
        if kw["action"] == "sample":
            t = f["sample_thresh"]
            # six significant digits: pack rounds P to a 32-bit threshold, and 0.05 should read back as 0.05
            kw["probability"] = 1.0 if t == SAMPLE_ALWAYS else float(f"{t / 2**32:.6g}")
        if f["tagged"]:
            kw["vlan"] = f["vlan"]
        if f["queue_mask"]:
            kw["queue"] = f["queue"]
        if f["family"] == FAMILY_ETHER:
            kw["proto"] = ETHER
            if f["dport_mask"] != b"\0\0":
                kw["ethertype"] = int.from_bytes(f["dport"], "big")
            return cls(**kw), f["group"]  # type: ignore[arg-type]
        kw["proto"] = next((k for k, v in PROTOS.items() if v == f["proto"]), "any")
        for name in ("sport", "dport"):
            if f[name + "_mask"] != b"\0\0":
                kw[name] = int.from_bytes(f[name], "big")
        width = 16 if f["family"] == FAMILY_V6 else 4
        for name in ("src", "dst"):
            mask = f[name + "_mask"][:width]
            if any(mask):
                addr = ipaddress.ip_address(f[name][:width])
                kw[name] = f"{addr}/{bin(int.from_bytes(mask, 'big')).count('1')}"
        return cls(**kw), f["group"]  # type: ignore[arg-type]


def overlap(a: Rule, b: Rule) -> bool:
    """Can one packet match both rules? Field by field, a wildcard overlaps everything and two values
    overlap when they are equal (ports, EtherTypes, VLANs, queues) or their prefixes intersect (addresses).
    The control plane refuses overlapping rules of two clients unless both share: whichever came first
    would silently take the other's packets."""
    if a.vlan != b.vlan:
        return False
    if a.queue is not None and b.queue is not None and a.queue != b.queue:
        return False  # a packet arrives on one queue only
    if (a.proto == ETHER) != (b.proto == ETHER):
        return False  # ether rules see non-IP frames only, IP rules IP packets only
    if a.proto == ETHER:
        return a.ethertype is None or b.ethertype is None or a.ethertype == b.ethertype
    if a.family and b.family and a.family != b.family:
        return False
    if "any" not in (a.proto, b.proto) and a.proto != b.proto:
        return False
    for field in ("sport", "dport"):
        x, y = getattr(a, field), getattr(b, field)
        if x is not None and y is not None and x != y:
            return False
    for field in ("src", "dst"):
        x, y = getattr(a, field), getattr(b, field)
        if x is not None and y is not None and not ipaddress.ip_network(x).overlaps(ipaddress.ip_network(y)):
            return False
    return True
