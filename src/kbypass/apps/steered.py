"""A steered AF_XDP port: the steering program on the interface, the user's rules, and one AF_XDP socket
on one queue registered as that queue's redirect target.

This is the ef_vi "hidden RX queue plus filters" shape: only the named flows reach the ring; whatever no
rule matches passes to the kernel. Closing (or the process dying) removes the rules with the program,
since the program lives in a bpf_link that dies with its fd.
"""

from __future__ import annotations

from kbypass.errors import UsageError
from kbypass.netns import entered
from kbypass.port.afxdp import AfXdpPort
from kbypass.port.group import PortGroup
from kbypass.xsk.socket import rx_queue_count
from kbypass.steer.rules import Rule
from kbypass.steer.steering import Steering


def rule_list(rules) -> list[Rule | str]:
    """`rules` as a list: one rule (text or Rule) is a list of one. A bare string is not iterated, which
    would parse "udp dport 1" letter by letter; anything else that is not a list or tuple is refused."""
    if isinstance(rules, (str, Rule)):
        return [rules]
    if not isinstance(rules, (list, tuple)):
        raise UsageError(f"rules: give a list of rules (text or Rule), e.g. [\"udp dport 4321\"], not "
                         f"{type(rules).__name__}")
    for r in rules:
        if not isinstance(r, (str, Rule)):
            raise UsageError(f"rules: each rule is text like \"udp dport 4321\" or a Rule, not {type(r).__name__}")
    return list(rules)


class SteeredPort:
    """Open with `with SteeredPort(...) as sp:`; `sp.port` is the Port to use (a PortGroup when several
    queues are open), `sp.steering` the program. After the `with` block `sp.port` is a UsageError.

    queue: one queue id, or None for every receive queue of the interface (a flow lands on whichever queue
    the NIC's or veth's hash picks, so "all" is what a sink of named flows wants). Rules: a list of text or
    `Rule`s (one rule alone is taken as a list of one); a rule without an action redirects to the socket of
    the queue the packet arrived on."""

    def __init__(self, ifname: str, queue: int | None = 0, rules: list[Rule | str] = (), *,
                 netns: str | None = None, xdp_mode: str = "native", **port_options) -> None:
        rules = rule_list(rules)  # before anything is attached
        self._port = None
        self.ports: list[AfXdpPort] = []
        self.steering = Steering(ifname, netns=netns, mode=xdp_mode)
        try:
            self.rule_ids = [self.steering.add(r) for r in rules]
            self.queues = [queue] if queue is not None else list(range(_queue_count(ifname, netns)))
            for q in self.queues:
                port = AfXdpPort(ifname, q, netns=netns, **port_options)
                self.ports.append(port)
                self.steering.register_xsk(q, port.fd)
            self.steering.attach()
        except BaseException:
            self.close()
            raise
        self._port = self.ports[0] if len(self.ports) == 1 else PortGroup(self.ports)

    @property
    def port(self):
        if self._port is None:
            raise UsageError("the steered port is closed: use sp.port inside its `with SteeredPort(...)` block")
        return self._port

    def rule_counters(self) -> list[dict]:
        counters = self.steering.counters()
        rules = self.steering.rules()
        return [
            {"rule": str(rules[i]), "packets": counters.get(i, (0, 0))[0], "bytes": counters.get(i, (0, 0))[1]}
            for i in self.rule_ids
            if i in rules
        ]

    def unreached(self) -> int:
        """Packets a redirect rule matched that none of our sockets got (received, dropped for a full ring
        or an empty fill ring, or waiting in the ring): they arrived on a queue with no socket, where the
        program's redirect falls back to XDP_PASS, or had malformed headers, which are never redirected.
        Either way the kernel got them."""
        counters, rules = self.steering.counters(), self.steering.rules()  # first: sockets only lag the count
        matched = sum(counters.get(i, (0, 0))[0] for i in self.rule_ids if i in rules and rules[i].action == "redirect")
        got = 0
        for p in self.ports:
            s = p.stats
            got += s["rx_packets"] + s.get("rx_dropped", 0) + s.get("rx_ring_full", 0) + p._rx.available()
        return max(0, matched - got)

    def close(self) -> None:
        # Detach first so no new frames are steered to sockets that are going away.
        self._port = None
        self.steering.close()
        for port in self.ports:
            port.close()

    def __enter__(self) -> SteeredPort:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _queue_count(ifname: str, netns: str | None) -> int:
    with entered(netns):
        n = rx_queue_count(ifname)
    return n or 1
