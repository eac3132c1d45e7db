"""`kbypass demo`: the headline run on the built-in testbed.

Brings the testbed up (idempotent), runs the doctor, then shows one real exchange between the hosts: a
UDP datagram from a kernel socket in host a to a kernel socket in host b, and back. Later steps (the
bypass receive benchmark) are added here as they land.
"""

from __future__ import annotations

import socket
import time

from kbypass import doctor, netns, testbed
from kbypass.errors import KbypassError
from kbypass.tools import doctor as doctor_tool
from kbypass.tools._common import add_prefix_option, console


def register(sub) -> None:
    p = sub.add_parser("demo", help="testbed up, doctor, and the headline demo")
    add_prefix_option(p)
    p.set_defaults(func=run)


def udp_exchange(a: testbed.Host, b: testbed.Host, port: int = 47000, payload: bytes = b"hello from a") -> float:
    """Send one datagram a -> b and have b echo it; returns the round trip in microseconds."""
    with netns.entered(b.netns):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.entered(a.netns):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server, client:
        server.bind((b.ipv4, port))
        server.settimeout(2)
        client.settimeout(2)
        start = time.perf_counter()
        client.sendto(payload, (b.ipv4, port))
        data, peer = server.recvfrom(2048)
        server.sendto(data, peer)
        echoed, _ = client.recvfrom(2048)
        rtt = (time.perf_counter() - start) * 1e6
    if data != payload or echoed != payload:
        raise KbypassError("the testbed mangled a datagram: run 'kbypass doctor' and 'kbypass testbed status'")
    return rtt


def run(args) -> int:
    prefix = args.prefix or testbed.default_prefix()
    out = console()
    out.rule("1. testbed")
    hosts = testbed.up(testbed.TestbedConfig(prefix=prefix))
    for h in hosts:
        out.print(f"host {h.name}: netns {h.netns}, {h.iface} {h.mac} {h.ipv4}/{h.prefixlen}, {h.queues} queues")
    out.rule("2. doctor")
    results = doctor.run()
    doctor_tool.show(results)
    if not doctor.healthy(results):
        out.print("[red]a required check failed: fix it as shown above, then run 'make demo' again[/]")
        return 1
    out.rule("3. one real exchange")
    rtt = udp_exchange(hosts[0], hosts[1])
    out.print(f"UDP {hosts[0].ipv4} -> {hosts[1].ipv4} and back through the kernel stack: {rtt:.0f} us round trip")
    out.print(f"\nthe testbed stays up for you: 'kbypass testbed status', 'kbypass testbed down'")
    return 0
