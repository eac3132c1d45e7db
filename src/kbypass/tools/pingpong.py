"""`kbypass pingpong server | client`: UDP ping-pong latency over the bypass (or a kernel socket), wire-
compatible with sockperf (see kbypass.apps.pingpong)."""

from __future__ import annotations

from kbypass import testbed
from kbypass.apps.loop import Stopper
from kbypass.apps.pingpong import GIVE_UP, check_client_options, client_error, ping, plot_histogram, serve
from kbypass.errors import UsageError, require_root
from kbypass.tools._common import pin_cpu, print_json


def register(sub) -> None:
    p = sub.add_parser("pingpong", help="UDP ping-pong latency (sockperf-compatible) over AF_XDP or a socket")
    roles = p.add_subparsers(dest="role", metavar="ROLE")
    roles.required = True
    server = roles.add_parser("server", help="answer ping-pong messages (a sockperf ping-pong client works)")
    client = roles.add_parser("client", help="measure round trips to a server (a sockperf server works)")
    for q in (server, client):
        where = q.add_argument_group("where")
        where.add_argument("--iface", help="interface (default: the testbed host's veth)")
        where.add_argument("--netns", help="network namespace of --iface")
        where.add_argument("--host", choices=testbed.HOSTS, help="a testbed host: sets --iface, --netns and --ip")
        where.add_argument("--ip", help="local address (default: the testbed host's)")
        where.add_argument("--dedicated", action="store_true",
                           help="--ip is an address the kernel does not have: kbypass answers ARP and ping for it")
        where.add_argument("--gateway", metavar="IP",
                           help="afxdp: an on-link router, the next hop for peers outside --ip's subnet "
                                "(without it such peers are refused; the socket backend uses the kernel's routes)")
        how = q.add_argument_group("how")
        how.add_argument("--backend", choices=("afxdp", "socket"), default="afxdp",
                         help="afxdp (the bypass, default) or socket (a kernel UDP socket, the baseline)")
        how.add_argument("--poll", choices=("busy", "wakeup"), default="wakeup", help="spin, or sleep in poll()")
        how.add_argument("--xdp-mode", choices=("native", "skb", "auto"), default="native", help="XDP attach mode")
        how.add_argument("--lane", choices=("c", "python"),
                         help="afxdp: per-message ring work in C (default when built) or in pure Python")
        how.add_argument("--frame-size", type=int, choices=(2048, 4096), default=2048,
                         help="afxdp: UMEM frame size; a frame holds one packet, so on a jumbo-MTU link "
                              "4096 is needed for messages above 1750 bytes (default 2048)")
        how.add_argument("--duration", type=float, help="stop after this many seconds")
        how.add_argument("--count", type=int, help="stop after this many messages (client: measured samples)")
        how.add_argument("--cpu", type=int, help="pin to this CPU")
        how.add_argument("--json", action="store_true", help="print the summary as JSON")
    server.add_argument("--port", type=int, default=11111, help="UDP port to answer on (default 11111, sockperf's)")
    server.add_argument("--idle-timeout", type=float, help="stop after this many seconds without a message")
    client.add_argument("--port", type=int, default=0, help="local UDP port (default: a free one)")
    client.add_argument("--server", required=True, metavar="IP:PORT", help="the server to measure")
    client.add_argument("--size", type=int, default=64, help="message size in bytes (>= 14, sockperf's header)")
    client.add_argument("--warmup", type=int, default=100, help="round trips not recorded at the start (default 100)")
    client.add_argument("--reply-timeout", type=float, default=1.0,
                        help="seconds (> 0) before a message counts as lost (default 1)")
    client.add_argument("--give-up", type=float, default=GIVE_UP,
                        help=f"stop with an error when no answer at all came for this many seconds (default "
                             f"{GIVE_UP:g}); a run that measured nothing exits with an error too")
    client.add_argument("--histogram", metavar="FILE.png", help="write the latency distribution as a PNG")
    p.set_defaults(func=run)


def _server_addr(text: str) -> tuple[str, int]:
    ip, sep, port = text.rpartition(":")
    try:
        if not sep:
            raise ValueError
        import ipaddress

        ipaddress.IPv4Address(ip)
        port_n = int(port)
        if not 1 <= port_n <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f"--server {text!r}: give IP:PORT, e.g. 10.77.0.2:11111") from None
    return ip, port_n


def _open(args):
    from kbypass.endpoint import UdpEndpoint

    for name in ("duration", "count"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise UsageError(f"--{name} {v}: give a positive number")
    iface, ns, ip = args.iface, args.netns, args.ip
    if args.host:
        h = testbed.host(args.host)
        iface, ns, ip = iface or h.iface, ns or h.netns, ip or h.ipv4
    if not ip:
        raise UsageError("say which address to use: --ip IP (with --iface IF), or --host a|b for the testbed")
    if args.backend == "afxdp":
        if not iface:
            raise UsageError("the afxdp backend needs an interface: --iface IF (with --netns NS), or --host a|b")
        require_root(f"kbypass pingpong {args.role}")
    pin_cpu(args.cpu)
    if args.backend != "afxdp":
        if args.gateway:
            raise UsageError("--gateway is for the afxdp backend: a kernel socket uses the kernel's routes")
        return UdpEndpoint(iface, ip, args.port, netns=ns, dedicated=args.dedicated, poll=args.poll,
                           backend=args.backend)
    return UdpEndpoint(iface, ip, args.port, netns=ns, dedicated=args.dedicated, poll=args.poll,
                       backend=args.backend, xdp_mode=args.xdp_mode, gateway=args.gateway,
                       frame_size=args.frame_size, native=None if args.lane is None else args.lane == "c")


def run(args) -> int:
    if args.role == "client":
        server = _server_addr(args.server)
        if args.size < 14:
            raise UsageError(f"--size {args.size}: a sockperf message needs at least 14 bytes")
        check_client_options(reply_timeout=args.reply_timeout, give_up=args.give_up, warmup=args.warmup)
        if args.duration is None and args.count is None:
            args.duration = 5.0
    if args.gateway:
        import ipaddress

        try:
            ipaddress.IPv4Address(args.gateway)
        except ValueError:
            raise UsageError(f"--gateway {args.gateway!r}: give an IPv4 address, e.g. 10.77.0.254") from None
    failed = None
    with Stopper() as stopper, _open(args) as ep:
        stop = lambda: stopper.stopped  # noqa: E731
        base = {"role": args.role, "backend": ep.backend, "poll": args.poll, "local": f"{ep.ip}:{ep.port}"}
        if ep.backend == "afxdp":
            base["lane"] = "c" if ep.native else "python"
        if args.role == "server":
            if not args.json:
                print(f"kbypass pingpong server on {ep.ip}:{ep.port} ({ep.backend}, {args.poll} poll)", flush=True)
            res = serve(ep, duration=args.duration, count=args.count, idle_timeout=args.idle_timeout, stop=stop)
            summary = {**base, "received": res.received, "answered": res.answered, "seconds": round(res.seconds, 3)}
            if res.send_failed:
                summary["send_failed"] = res.send_failed  # answers the TX ring had no room for
        else:
            res = ping(ep, server, size=args.size, duration=args.duration, count=args.count, warmup=args.warmup,
                       reply_timeout=args.reply_timeout, give_up=args.give_up, stop=stop)
            summary = {**base, "server": args.server, "size": args.size, **res.summary()}
            failed = client_error(res, args.server, args.give_up)
            if args.histogram and not failed:
                plot_histogram(res, args.histogram,
                               f"kbypass pingpong {ep.backend}/{args.poll} to {args.server}, {args.size} B")
                summary["histogram"] = args.histogram
        if ep.backend == "afxdp":
            summary["drops"] = ep.stats["drops"]
    if args.json:
        print_json(summary)
    else:
        for k, v in summary.items():
            print(f"{k:>10}: {v}")
    if failed is not None:  # the summary above says what was sent; this says why nothing was measured
        raise failed
    return 0
