"""A steered AF_XDP port: the steering program on the interface, the user's rules, and one AF_XDP socket
on one queue registered as that queue's redirect target.

This is the ef_vi "hidden RX queue plus filters" shape: only the named flows reach the ring; whatever no
rule matches passes to the kernel. Closing (or the process dying) removes the rules with the program,
since the program lives in a bpf_link that dies with its fd.
"""

from __future__ import annotations

from kbypass.netns import entered
from kbypass.port.afxdp import AfXdpPort
from kbypass.port.group import PortGroup
from kbypass.xsk.socket import rx_queue_count
from kbypass.steer.rules import Rule
from kbypass.steer.steering import Steering


class SteeredPort:
    """Open with `with SteeredPort(...) as sp:`; `sp.port` is the Port to use (a PortGroup when several
    queues are open), `sp.steering` the program.

    queue: one queue id, or None for every receive queue of the interface (a flow lands on whichever queue
    the NIC's or veth's hash picks, so "all" is what a sink of named flows wants). Rules are text or
    `Rule`s; a rule without an action redirects to the socket of the queue the packet arrived on."""

    def __init__(self, ifname: str, queue: int | None = 0, rules: list[Rule | str] = (), *,
                 netns: str | None = None, xdp_mode: str = "native", **port_options) -> None:
        self.steering = Steering(ifname, netns=netns, mode=xdp_mode)
        self.ports: list[AfXdpPort] = []
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
        self.port = self.ports[0] if len(self.ports) == 1 else PortGroup(self.ports)

    def rule_counters(self) -> list[dict]:
        counters = self.steering.counters()
        rules = self.steering.rules()
        return [
            {"rule": str(rules[i]), "packets": counters.get(i, (0, 0))[0], "bytes": counters.get(i, (0, 0))[1]}
            for i in self.rule_ids
            if i in rules
        ]

    def close(self) -> None:
        # Detach first so no new frames are steered to sockets that are going away.
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
