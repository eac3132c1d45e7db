"""`kbypass gen`: send stamped UDP frames from a testbed host. Engine `live` (BPF_PROG_RUN live frames)."""

from __future__ import annotations

import json

from kbypass import testbed
from kbypass.errors import UsageError, require_root
from kbypass.gen.live import LiveGenerator
from kbypass.gen.stamp import ETH_IPV4_UDP, STAMP_SIZE
from kbypass.gen.template import udp_template
from kbypass.tools._common import pin_cpu

ENGINES = ("live",)


def register(sub) -> None:
    p = sub.add_parser("gen", help="generate stamped UDP traffic (live frames: the fastest sender)")
    p.add_argument("--host", choices=testbed.HOSTS, default="a", help="testbed host to send from (default a)")
    p.add_argument("--iface", help="interface (default: the host's veth)")
    p.add_argument("--netns", help="namespace of --iface (default: the host's)")
    p.add_argument("--dst-mac", help="destination MAC (default: the other testbed host's)")
    p.add_argument("--dst", help="destination IP:PORT (default: the other host, port 4321)")
    p.add_argument("--src", help="source IP:PORT (default: this host, port 9)")
    p.add_argument("--size", type=int, default=60, help="frame size in bytes without FCS (default 60)")
    p.add_argument("--count", type=int, help="packets to send")
    p.add_argument("--duration", type=float, help="seconds to send")
    p.add_argument("--engine", choices=ENGINES, default="live")
    p.add_argument("--cpu", type=int, help="pin to this CPU")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def _endpoint(text: str | None, default_ip: str, default_port: int, what: str) -> tuple[str, int]:
    if text is None:
        return default_ip, default_port
    ip, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--{what} {text!r}: give IP:PORT, e.g. 10.77.0.2:4321")
    return ip, int(port)


def run(args) -> int:
    require_root("kbypass gen")
    if args.count is None and args.duration is None:
        raise UsageError("say how much to send: --count N or --duration SECONDS")
    hosts = {h.name: h for h in testbed.require()}
    me = hosts[args.host]
    peer = hosts["b" if args.host == "a" else "a"]
    src_ip, sport = _endpoint(args.src, me.ipv4, 9, "src")
    dst_ip, dport = _endpoint(args.dst, peer.ipv4, 4321, "dst")
    iface, ns = args.iface or me.iface, args.netns or me.netns
    mtu = me.mtu
    if args.size > mtu + 14:
        raise UsageError(f"--size {args.size}: above the MTU ({mtu}) plus the Ethernet header; use at most {mtu + 14}")
    if args.size < ETH_IPV4_UDP + STAMP_SIZE:
        raise UsageError(f"--size {args.size}: a stamped UDP frame needs at least {ETH_IPV4_UDP + STAMP_SIZE} bytes")
    frame = udp_template(me.mac, args.dst_mac or peer.mac, src_ip, sport, dst_ip, dport, args.size)
    pin_cpu(args.cpu)
    with LiveGenerator(iface, frame, netns_name=ns) as gen:
        res = gen.run(count=args.count, duration=args.duration)
    summary = {"engine": args.engine, "packets": res.packets, "seconds": round(res.seconds, 6),
               "pps": round(res.pps, 1), "size": args.size}
    print(json.dumps(summary, indent=2) if args.json else
          f"sent {res.packets} packets in {res.seconds:.3f} s: {res.pps / 1e6:.3f} Mpps")
    return 0
