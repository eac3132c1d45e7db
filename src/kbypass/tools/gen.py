"""`kbypass gen`: send stamped UDP traffic from a testbed host (or any interface in a namespace).

Engines: `live` (BPF_PROG_RUN live frames: the fastest; one fixed frame, no rate limit), `afxdp` (frames
built in UMEM, fields varied per packet, rate limit), `packet_mmap` (the same through a PACKET_MMAP TX ring,
where the backend is available).
"""

from __future__ import annotations

import ipaddress
import json

from kbypass import testbed
from kbypass.errors import UsageError, require_root
from kbypass.gen.flows import FlowSpec, parse_ip_range, parse_range
from kbypass.gen.rate import parse_rate
from kbypass.gen.template import udp_template
from kbypass.tools._common import pin_cpu

ENGINES = ("live", "afxdp", "packet_mmap")


def register(sub) -> None:
    p = sub.add_parser("gen", help="generate stamped UDP traffic (live frames, AF_XDP or PACKET_MMAP)")
    p.add_argument("--host", choices=testbed.HOSTS, default="a", help="testbed host to send from (default a)")
    p.add_argument("--iface", help="interface (default: the host's veth)")
    p.add_argument("--netns", help="namespace of --iface (default: the host's)")
    p.add_argument("--dst-mac", help="destination MAC (default: the other testbed host's)")
    p.add_argument("--dst", help="destination IP:PORT[-PORT] (default: the other host, port 4321)")
    p.add_argument("--src", help="source IP[-IP][:PORT[-PORT]] (default: this host, port 9)")
    p.add_argument("--size", default="60", help="frame size N or range N-M, bytes without FCS (default 60)")
    p.add_argument("--rate", help="rate limit: packets/s (100k, 1.5Mpps) or bits/s (10Mbit); afxdp engine")
    p.add_argument("--count", type=int, help="packets to send")
    p.add_argument("--duration", type=float, help="seconds to send")
    p.add_argument("--engine", choices=ENGINES, default="live")
    p.add_argument("--queue", type=int, default=0, help="TX queue (afxdp engine)")
    p.add_argument("--batch", type=int, default=2048, help="frames per transmit (afxdp engine; default 2048)")
    p.add_argument("--time-every", type=int, default=1, metavar="N",
                   help="live engine: stamp the send time on one frame in N (a power of two; default 1 = every "
                        "frame); sequence numbers stay on every frame. 64 lets the generator run near its limit")
    p.add_argument("--cpu", type=int, help="pin to this CPU")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def _split_endpoint(text: str, what: str) -> tuple[str, str | None]:
    ip, sep, port = text.rpartition(":")
    return (ip, port) if sep else (text, None)


def _tx_port(engine: str, iface: str, queue: int, ns: str | None):
    """A port for sending only: no steering program (nothing is received), frames from its own memory."""
    if engine == "afxdp":
        from kbypass.port.afxdp import AfXdpPort

        return AfXdpPort(iface, queue, netns=ns, frames=8192, tx_size=4096, comp_size=4096, fill_size=64,
                         rx_size=64)
    from kbypass.port.packet_mmap import PacketMmapPort

    return PacketMmapPort(iface, netns=ns)


def run(args) -> int:
    require_root("kbypass gen")
    if args.count is None and args.duration is None:
        raise UsageError("say how much to send: --count N or --duration SECONDS")
    if args.count is not None and args.count <= 0:
        raise UsageError(f"--count {args.count}: give a positive number of packets")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration {args.duration}: give a positive number of seconds")
    hosts = {h.name: h for h in testbed.require()}
    me = hosts[args.host]
    peer = hosts["b" if args.host == "a" else "a"]
    iface, ns = args.iface or me.iface, args.netns or me.netns

    src_ip_text, sport_text = _split_endpoint(args.src, "src") if args.src else (me.ipv4, None)
    src_ip = parse_ip_range(src_ip_text, "--src")
    sport = parse_range(sport_text or "9", "--src port", 0, 65535)
    dst_ip_text, dport_text = _split_endpoint(args.dst, "dst") if args.dst else (peer.ipv4, None)
    if args.dst and dport_text is None:
        raise UsageError(f"--dst {args.dst!r}: give IP:PORT, e.g. 10.77.0.2:4321")
    dst_ip = parse_ip_range(dst_ip_text, "--dst")
    if dst_ip[0] != dst_ip[1]:
        raise UsageError("--dst: one destination address (vary --src or the ports instead)")
    dport = parse_range(dport_text or "4321", "--dst port", 0, 65535)
    size = parse_range(args.size, "--size", 1, 1 << 16)
    limit = me.mtu + 14 if args.iface is None else 65535
    if args.engine == "afxdp":
        limit = min(limit, 2048)
    spec = FlowSpec(sport=sport, dport=dport, src_ip=src_ip, size=size, max_size=limit)
    rate = parse_rate(args.rate, sum(size) / 2) if args.rate else None

    template = udp_template(me.mac, args.dst_mac or peer.mac, str(ipaddress.IPv4Address(src_ip[0])), sport[0],
                            dst_ip_text, dport[0], size[1])
    pin_cpu(args.cpu)
    if args.engine == "live":
        if rate is not None:
            raise UsageError("--rate: the live engine sends at full speed; use --engine afxdp for a rate limit")
        if spec.size[0] != spec.size[1] or sport[0] != sport[1] or dport[0] != dport[1] or src_ip[0] != src_ip[1]:
            raise UsageError("ranges (--size N-M, port or address ranges) need --engine afxdp")
        from kbypass.gen.live import LiveGenerator

        with LiveGenerator(iface, template, netns_name=ns, time_every=args.time_every) as gen:
            res = gen.run(count=args.count, duration=args.duration)
        packets, seconds = res.packets, res.seconds
    else:
        if args.time_every != 1:
            raise UsageError("--time-every: only the live engine samples its time stamps")
        from kbypass.gen.afxdp import PortGenerator

        with _tx_port(args.engine, iface, args.queue, ns) as port:
            gen = PortGenerator(port, template, spec, batch=args.batch)
            res = gen.run(count=args.count, duration=args.duration, rate=rate)
        packets, seconds = res.packets, res.seconds
    pps = packets / seconds if seconds > 0 else 0.0
    summary = {"engine": args.engine, "packets": packets, "seconds": round(seconds, 6), "pps": round(pps, 1),
               "size": args.size}
    if rate:
        summary["rate_pps"] = round(rate, 1)
    print(json.dumps(summary, indent=2) if args.json else
          f"sent {packets} packets in {seconds:.3f} s: {pps / 1e6:.3f} Mpps")
    return 0
