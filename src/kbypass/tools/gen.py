"""`kbypass gen`: send stamped UDP traffic from a testbed host (or any interface in a namespace).

Engines: `live` (BPF_PROG_RUN live frames: the fastest; one fixed frame, no rate limit), `afxdp` (frames
built in UMEM, fields varied per packet, rate limit), `packet_mmap` (the same through a PACKET_MMAP TX ring,
where the backend is available).
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import socket
import struct
import sys

from kbypass import netns
from kbypass.errors import TestbedError, UsageError, require_root
from kbypass.gen.afxdp import MAX_BATCH
from kbypass.gen.ranges import parse_ip_range, parse_range
from kbypass.gen.rate import parse_rate
from kbypass.host import testbed
from kbypass.tools._common import pin_cpu
from kbypass.tools._options import (
    add_count,
    add_cpu,
    add_dst,
    add_duration,
    add_json,
    add_where,
    int_range,
    mac_address,
    power_of_two,
)
from kbypass.tools._output import emit
from kbypass.xsk import multibuf

BACKENDS = ("live", "afxdp", "packet_mmap")
DEFAULT_BATCH = 2048
MAX_TIME_EVERY = 1 << 20
MAX_COUNT = 1 << 48  # 2.8e14 frames: days at the fastest rate; a larger count is a typo
ETH_HLEN = 14
AFXDP_FRAME, AFXDP_HEADROOM = 2048, 0  # the UMEM frames of the AF_XDP TX port (_tx_port)
PACKET_MMAP_FRAME = 2048  # PACKET_MMAP TX slot size (_tx_port); frame data starts TX_DATA bytes in
SIOCGIFMTU, SIOCGIFHWADDR = 0x8921, 0x8927


BACKEND_HELP = (
    "how frames are sent: live = BPF_PROG_RUN live frames (the kernel copies one template frame and an XDP "
    "program stamps and transmits each copy; the fastest, no rate limit, one fixed flow; --time-every "
    "applies); afxdp = an AF_XDP socket, frames built in UMEM with ports, addresses and sizes varied per "
    "packet, --rate, --queue and --batch apply; packet_mmap = a PACKET_MMAP TX ring (the kernel's packet "
    "socket), the same flows and --rate as afxdp, no --queue (default live)")
# The options each backend ignores, and why: given anyway, they are refused rather than silently dropped.
IGNORED = {
    "live": {"rate": "the live backend sends at full speed; use --backend afxdp for a rate limit",
             "queue": "the live backend transmits through the interface's XDP path, not a chosen TX queue; "
                      "use --backend afxdp to pick a queue",
             "batch": "the live backend batches in the kernel (64 frames); use --backend afxdp or packet_mmap "
                      "to set the frames per transmit"},
    "afxdp": {"time_every": "only the live backend samples its time stamps; drop --time-every"},
    "packet_mmap": {"queue": "a PACKET_MMAP socket sends through the kernel's queue selection; use --backend "
                             "afxdp to pick a TX queue",
                    "time_every": "only the live backend samples its time stamps; drop --time-every"},
}
# Achieved below the asked rate by more than this fraction: the summary says so (the generator, or the
# core it runs on, is the limit, not the rate limiter).
RATE_SHORTFALL = 0.05
MAX_QUEUE = 1023  # more TX queues than any NIC here has; the kernel names the real limit when binding


def size_text(text: str) -> str:
    """--size N or N-M, checked for form and bounds now (the MTU's limit is checked once the interface is
    known); kept as text for the summary."""
    try:
        parse_range(text, "--size", 1, 1 << 16)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--size ")) from None
    return text


def rate_text(text: str) -> str:
    """--rate, checked for form and bounds now (a bit rate becomes packets/s once the size is known: the
    smallest stamped frame gives the most packets per second)."""
    try:
        parse_rate(text, 60)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--rate {text!r}: ")) from None
    return text


def register(sub) -> None:
    p = sub.add_parser("gen", help="generate stamped UDP traffic (live frames, AF_XDP or PACKET_MMAP)")
    add_where(p, iface_help="interface to send from (default: the host's veth); its MTU and MAC are used",
              host_help="testbed host to send from (default a, unless --iface names another interface)",
              netns_help="namespace of --iface (default: the --host's if given, else where kbypass runs)")
    add_dst(p, "destination IP:PORT[-PORT] (default: the other host, port 4321)", metavar="IP:PORT")
    p.add_argument("--dst-mac", type=mac_address, metavar="MAC", help="destination MAC (default: the other testbed host's)")
    p.add_argument("--src", help="source IP[-IP][:PORT[-PORT]] (default: this host, port 9)")
    p.add_argument("--size", default="60", type=size_text, help="frame size N or range N-M, bytes without FCS (default 60)")
    p.add_argument("--rate", type=rate_text, help="rate limit: packets/s (100k, 1.5Mpps) or bits/s (10Mbit); afxdp and "
                                  "packet_mmap backends")
    add_count(p, "packets to send", limit=MAX_COUNT)
    add_duration(p, "seconds to send")
    p.add_argument("--backend", choices=BACKENDS, default="live", help=BACKEND_HELP)
    p.add_argument("--queue", type=int_range(0, MAX_QUEUE, "a TX queue number"),
                   help="TX queue (afxdp backend; default 0)")
    p.add_argument("--batch", type=int_range(1, MAX_BATCH, "a batch size"),
                   help=f"frames per transmit, 1 to {MAX_BATCH} (afxdp/packet_mmap backends; default {DEFAULT_BATCH})")
    p.add_argument("--time-every", type=power_of_two(MAX_TIME_EVERY, "a power of two"), metavar="N",
                   help="live backend: stamp the send time on one frame in N (a power of two; default 1 = every "
                        "frame); sequence numbers stay on every frame. 64 lets the generator run near its limit")
    add_cpu(p)
    add_json(p)
    p.set_defaults(func=run)


def _split_endpoint(text: str, what: str) -> tuple[str, str | None]:
    ip, sep, port = text.rpartition(":")
    return (ip, port) if sep else (text, None)


def afxdp_frame(mtu: int) -> int:
    """The UMEM frame size of the AF_XDP TX port: 2048, or 4096 when the MTU needs multi-buffer, so that a
    packet of any MTU up to 65535 spans no more frames than the kernel sends as one (kbypass.xsk.multibuf)."""
    return 4096 if multibuf.needs_multi_buffer(mtu, AFXDP_FRAME, AFXDP_HEADROOM) else AFXDP_FRAME


def _tx_port(engine: str, iface: str, queue: int, ns: str | None, mtu: int = 1500):
    """A port for sending only: no steering program (nothing is received), frames from its own memory;
    multi-buffer (packets larger than a frame as chains) when the MTU needs it."""
    if engine == "afxdp":
        from kbypass.port.afxdp import AfXdpPort

        return AfXdpPort(iface, queue, netns=ns, frames=8192, tx_size=4096, comp_size=4096, fill_size=64,
                         rx_size=64, frame_size=afxdp_frame(mtu), headroom=AFXDP_HEADROOM)
    from kbypass.port.packet_mmap import PacketMmapPort

    return PacketMmapPort(iface, netns=ns, frame_size=PACKET_MMAP_FRAME)


def size_limit(engine: str, mtu: int, iface: str) -> tuple[int, str]:
    """The largest frame (bytes, no FCS) `engine` can send out of `iface` with this MTU, and which limit
    that is, in words for the error message: the MTU, or what the engine's frames can hold."""
    limits = [(mtu + ETH_HLEN, f"the MTU of {iface}, {mtu}, + the {ETH_HLEN}-byte Ethernet header")]
    if engine == "afxdp" and afxdp_frame(mtu) == AFXDP_FRAME:
        limits.append((AFXDP_FRAME - AFXDP_HEADROOM, f"the {AFXDP_FRAME}-byte AF_XDP UMEM frame"
                       + (f" less {AFXDP_HEADROOM} bytes of headroom" if AFXDP_HEADROOM else "")))
    elif engine == "afxdp":  # multi-buffer: a packet is a chain of at most MAX_SKB_FRAGS + 1 frames
        frame = afxdp_frame(mtu)
        limits.append((multibuf.max_tx_packet(frame, AFXDP_HEADROOM),
                       f"{multibuf.tx_frame_limit()} AF_XDP frames of {frame} bytes, the most the kernel sends as "
                       f"one packet (the kernel's MAX_SKB_FRAGS {multibuf.MAX_SKB_FRAGS} + 1)"))
    elif engine == "packet_mmap":
        from kbypass.port.packet_mmap import TX_DATA

        limits.append((PACKET_MMAP_FRAME - TX_DATA, f"the {PACKET_MMAP_FRAME}-byte PACKET_MMAP TX slot less its "
                       f"{TX_DATA}-byte header"))
    else:
        from kbypass.gen.live import MAX_FRAME

        limits.append((MAX_FRAME, "the live engine's one page less the kernel's XDP headroom and tailroom; "
                       "--backend afxdp sends up to the MTU"))
    return min(limits, key=lambda lim: lim[0])


def interface_info(iface: str, ns: str | None) -> tuple[str, int]:
    """MAC and MTU of `iface` in namespace `ns`, by ioctl on a socket made inside the namespace (/sys would
    show the namespace it was mounted in, not the one this thread entered)."""
    where = f" in namespace {ns!r}" if ns else " here"
    raw = iface.encode()
    if not raw or len(raw) > 15 or b"/" in raw or b"\0" in raw:
        raise UsageError(f"--iface {iface!r} is not an interface name (1 to 15 bytes, no '/')")
    ifr = struct.pack("16s16x", raw)
    with netns.entered(ns):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                mtu = struct.unpack_from("i", fcntl.ioctl(s.fileno(), SIOCGIFMTU, ifr), 16)[0]
                hw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, ifr)[18:24]
        except OSError:
            hint = "" if ns else ", or give --netns NS (or --host a|b for the testbed)"
            raise UsageError(f"no interface {iface!r}{where}: check the name with 'ip link'{hint}") from None
    return ":".join(f"{b:02x}" for b in hw), mtu


def _where(args) -> tuple[str, str | None, str, int, dict | None]:
    """iface, namespace, source MAC and MTU to send with, and the testbed's hosts when its defaults are
    needed (None otherwise: with --iface, --src, --dst and --dst-mac no testbed is needed)."""
    defaults_needed = args.iface is None or args.host is not None or not (args.src and args.dst and args.dst_mac)
    hosts = None
    if defaults_needed:
        try:
            hosts = {h.name: h for h in testbed.require()}
        except TestbedError as e:
            if args.iface is None or args.host is not None:
                raise
            missing = [opt for opt, v in (("--src", args.src), ("--dst", args.dst), ("--dst-mac", args.dst_mac))
                       if not v]
            raise UsageError(f"{e}; or, to send from --iface {args.iface} without the testbed, give "
                             f"{', '.join(missing)} too") from None
    me = hosts[args.host or "a"] if hosts else None
    if args.iface is None:
        iface, ns = me.iface, args.netns or me.netns
    else:
        iface, ns = args.iface, args.netns or (me.netns if args.host else None)
    if me is not None and (iface, ns) == (me.iface, me.netns):
        return iface, ns, me.mac, me.mtu, hosts
    mac, mtu = interface_info(iface, ns)
    return iface, ns, mac, mtu, hosts


def refuse_ignored(args) -> None:
    """An option the chosen backend would ignore is an error naming why, not a silent no-op."""
    for option, why in IGNORED[args.backend].items():
        if getattr(args, option) is not None:
            raise UsageError(f"--{option.replace('_', '-')} with --backend {args.backend}: {why}")


def rate_summary(offered: float | None, achieved: float) -> dict:
    """The offered (asked) and achieved rates for the summary, and a note when the generator fell short."""
    if not offered:
        return {}
    out = {"rate_pps": round(offered, 1), "offered_pps": round(offered, 1), "achieved_pps": round(achieved, 1),
           "achieved_fraction": round(achieved / offered, 4)}
    if achieved < offered * (1 - RATE_SHORTFALL):
        out["rate_note"] = (f"asked for {offered:,.0f} pps, achieved {achieved:,.0f} ({achieved / offered:.0%}): "
                            "the generator's core is the limit, not --rate")
    return out


def run(args) -> int:
    # numpy and the port stack: loaded to run, not to parse options
    from kbypass.gen.flows import FlowSpec
    from kbypass.gen.template import udp_template

    refuse_ignored(args)
    require_root("kbypass gen")
    if args.count is None and args.duration is None:
        raise UsageError("say how much to send: --count N or --duration SECONDS")
    time_every = args.time_every or 1
    batch = args.batch or DEFAULT_BATCH
    iface, ns, src_mac, mtu, hosts = _where(args)
    me_name = args.host or "a"
    me = hosts[me_name] if hosts else None
    peer = hosts["b" if me_name == "a" else "a"] if hosts else None

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
    limit, why = size_limit(args.backend, mtu, iface)
    spec = FlowSpec(sport=sport, dport=dport, src_ip=src_ip, size=size, max_size=limit, max_size_why=why)
    rate = parse_rate(args.rate, sum(size) / 2) if args.rate else None

    template = udp_template(src_mac, args.dst_mac or peer.mac, str(ipaddress.IPv4Address(src_ip[0])), sport[0],
                            dst_ip_text, dport[0], size[1])
    if args.backend == "live" and (spec.size[0] != spec.size[1] or sport[0] != sport[1] or dport[0] != dport[1]
                                   or src_ip[0] != src_ip[1]):
        raise UsageError("ranges (--size N-M, port or address ranges) need --backend afxdp")
    pin_cpu(args.cpu)
    stats = None
    if args.backend == "live":
        from kbypass.gen.live import LiveGenerator

        with LiveGenerator(iface, template, netns_name=ns, time_every=time_every) as gen:
            res = gen.run(count=args.count, duration=args.duration)
    else:
        from kbypass.gen.afxdp import PortGenerator

        with _tx_port(args.backend, iface, args.queue or 0, ns, mtu) as port:
            gen = PortGenerator(port, template, spec, batch=batch)
            res = gen.run(count=args.count, duration=args.duration, rate=rate)
            stats = port.stats
    packets, seconds = res.packets, res.seconds
    pps = packets / seconds if seconds > 0 else 0.0
    # "engine" is the old name of "backend", kept so --json readers of either find it.
    summary = {"engine": args.backend, "backend": args.backend, "packets": packets, "seconds": round(seconds, 6),
               "pps": round(pps, 1), "size": args.size, "bytes": res.bytes}
    summary.update(rate_summary(rate, pps))
    if stats is not None:
        summary["stats"] = stats
    if "rate_note" in summary:
        print(f"kbypass: note: {summary['rate_note']}", file=sys.stderr)
    emit(summary if args.json else human(summary), args.json, title="kbypass gen")
    return 0


def human(summary: dict) -> dict:
    """The summary for the table: the note went to stderr already, and of the port's counters only the TX
    side a generator has (an empty TX ring is normal between batches, not an error worth red)."""
    out = {k: v for k, v in summary.items() if k not in ("rate_note", "stats", "engine", "rate_pps")}
    if "stats" in summary:
        out["stats"] = {k: v for k, v in summary["stats"].items()
                        if k.startswith("tx_") and k != "tx_ring_empty_descs"}
    return out
