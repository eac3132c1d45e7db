"""`kbypass pingpong server | client`: UDP ping-pong latency over the bypass (or a kernel socket), wire-
compatible with sockperf (see kbypass.apps.pingpong)."""

from __future__ import annotations

import contextlib
import os
import sys

from kbypass.apps.pingpong import (
    GIVE_UP,
    check_client_options,
    client_error,
    ping,
    plot_histogram,
    serve,
)
from kbypass.errors import KbypassError, UsageError, require_root
from kbypass.host import testbed
from kbypass.port.loop import Stopper
from kbypass.tools import _options as opt
from kbypass.tools._backend import default_frame_size
from kbypass.tools._common import peer_errors, pin_cpu
from kbypass.tools._output import emit

# the afxdp-only options and their defaults: given with --backend socket they are refused (it ignores them)
AFXDP_ONLY = {"xdp_mode": "native", "lane": None, "frame_size": 2048, "dedicated": False, "gateway": None,
              "no_cp": False}
MAX_UDP_PAYLOAD = 65507


def register(sub) -> None:
    p = sub.add_parser("pingpong", help="UDP ping-pong latency (sockperf-compatible) over AF_XDP or a socket")
    roles = p.add_subparsers(dest="role", metavar="ROLE")
    roles.required = True
    server = roles.add_parser("server", help="answer ping-pong messages (a sockperf ping-pong client works)")
    client = roles.add_parser("client", help="measure round trips to a server (a sockperf server works)")
    for q in (server, client):
        where = q.add_argument_group("where")
        opt.add_where(where, host_help="a testbed host: sets --iface, --netns and --ip")
        where.add_argument("--ip", help="local address (default: the testbed host's)")
        where.add_argument("--dedicated", action="store_true", default=None,
                           help="afxdp: --ip is an address the kernel does not have: kbypass answers ARP and "
                                "ping for it")
        where.add_argument("--gateway", metavar="IP",
                           help="afxdp: an on-link router, the next hop for peers outside --ip's subnet "
                                "(without it such peers are refused; the socket backend uses the kernel's routes)")
        how = q.add_argument_group("how")
        how.add_argument("--tcp", action="store_true",
                         help="sockperf's TCP mode (sockperf --tcp): messages on a TCP connection of kbypass's "
                              "userspace TCP (afxdp backend)")
        how.add_argument("--backend", choices=("afxdp", "socket"), default="afxdp",
                         help="afxdp (the bypass, default) or socket (a kernel UDP socket, the baseline)")
        how.add_argument("--poll", choices=("busy", "wakeup"), default="wakeup",
                         help="spin, or sleep in poll() (default wakeup; socket: busy sets SO_BUSY_POLL)")
        how.add_argument("--xdp-mode", choices=("native", "skb", "auto"), help="afxdp: XDP attach mode (native)")
        opt.add_no_cp(how)
        how.add_argument("--lane", choices=("c", "python"),
                         help="afxdp: per-message ring work in C (default when built) or in pure Python")
        how.add_argument("--frame-size", type=int, choices=(2048, 4096),
                         help="afxdp: UMEM frame size (default 2048, or 4096 when the MTU does not fit one "
                              "2048-byte frame: a message then spans several frames, multi-buffer AF_XDP, "
                              "on either lane)")
        opt.add_duration(how, help="stop after this many seconds" + (" (default 5 unless --count)"
                                                                       if q is client else ""))
        opt.add_count(how, help="stop after this many messages" if q is server else
                      "stop after this many measured samples")
        opt.add_cpu(how)
        opt.add_json(how)
    opt.add_port(server, help="port to answer on, UDP (TCP with --tcp) (default 11111, sockperf's)", default=11111,
                 what="a port (UDP, or TCP with --tcp)")
    opt.add_idle_timeout(server, help="stop after this many seconds without a message (from the start)")
    opt.add_port(client, help="local port, UDP (TCP with --tcp) (default 0: a free one)", default=0,
                 what="a port (UDP, or TCP with --tcp)")
    opt.add_dst(client, help="the server to measure, e.g. 10.77.0.2:11111", required=True)
    client.add_argument("--size", type=opt.int_range(14, MAX_UDP_PAYLOAD, "a message size in bytes"), default=64,
                        help="message size in bytes (14, sockperf's header, to 65507; default 64)")
    client.add_argument("--warmup", type=opt.int_range(0, 10**9, "a number of messages"), default=100,
                        help="round trips not recorded at the start (default 100)")
    client.add_argument("--reply-timeout", type=opt.seconds, default=1.0, metavar="S",
                        help="seconds before a message counts as lost (default 1)")
    opt.add_idle_timeout(client, default=GIVE_UP,
                         help=f"give up (with an error) after this many seconds without any answer (default "
                              f"{GIVE_UP:g}); a run that measured nothing exits with an error too")
    client.add_argument("--histogram", metavar="FILE.png", type=opt.output_file(),
                        help="write the latency distribution as a PNG")
    p.set_defaults(func=run)


def _server_addr(text: str) -> tuple[str, int]:
    import ipaddress

    ip, sep, port = text.rpartition(":")
    try:
        if not sep:
            raise ValueError
        ipaddress.IPv4Address(ip)
        port_n = int(port)
        if not 1 <= port_n <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f"--dst {text!r}: give IP:PORT, e.g. 10.77.0.2:11111") from None
    return ip, port_n


def _check(args) -> None:
    """Every check that needs no network, before anything is opened."""
    if args.tcp:
        if args.backend != "afxdp":
            raise UsageError("--tcp runs kbypass's userspace TCP, over the afxdp backend: for the kernel's TCP "
                             "use sockperf --tcp itself")
        given = [k for k in ("dedicated", "gateway", "lane") if getattr(args, k)]
        if given or args.frame_size not in (None, 2048):
            name = "--" + (given[0] if given else "frame_size").replace("_", "-")
            raise UsageError(f"{name} is for UDP: the TCP endpoint uses the interface's own address, on-link "
                             "peers, 2048-byte frames and its Python segment path; leave it out with --tcp")
    if args.backend != "afxdp":
        given = [k for k, default in AFXDP_ONLY.items() if getattr(args, k) not in (default, None)]
        if given:
            name = "--" + given[0].replace("_", "-")
            why = ("a kernel socket uses the kernel's routes" if given[0] == "gateway"
                   else "it is about the XDP program and the AF_XDP socket")
            raise UsageError(f"{name} is for the afxdp backend, which --backend {args.backend} is not ({why}): "
                             f"leave it out or use --backend afxdp")
    if args.gateway:
        import ipaddress

        try:
            ipaddress.IPv4Address(args.gateway)
        except ValueError:
            raise UsageError(f"--gateway {args.gateway!r}: give an IPv4 address, e.g. 10.77.0.254") from None
    if args.role == "client":
        _server_addr(args.dst)
        check_client_options(reply_timeout=args.reply_timeout, give_up=args.idle_timeout, warmup=args.warmup)


@contextlib.contextmanager
def _open_tcp(args):
    """sockperf messages over kbypass's TCP: the server listens on --port, the client connects to --dst."""
    from kbypass.apps.tcpmsg import TcpMessages
    from kbypass.endpoint.tcpio import TcpHost

    iface, ns, ip = _where(args)
    require_root(f"kbypass pingpong {args.role} --tcp")
    pin_cpu(args.cpu)
    with TcpHost(iface, ip, netns=ns, poll=args.poll, xdp_mode=args.xdp_mode or "native",
                 control_plane=not args.no_cp) as host:
        if args.role == "server":
            # pongs in C (TcpMessages pongs): not with --count, which C would answer past
            ep = TcpMessages(host, listener=host.listen(args.port), pongs=args.count is None)
        else:
            with peer_errors(f"kbypass pingpong client --tcp to {args.dst}"):
                sock = host.connect(_server_addr(args.dst), timeout=args.idle_timeout, local_port=args.port)
            ep = TcpMessages(host, sock=sock)
        try:
            yield ep
        finally:
            ep.close()


def _where(args) -> tuple[str, str, str]:
    iface, ns, ip = args.iface, args.netns, args.ip
    if args.host:
        h = testbed.host(args.host)
        iface, ns, ip = iface or h.iface, ns or h.netns, ip or h.ipv4
    if not ip:
        raise UsageError("say which address to use: --ip IP (with --iface IF), or --host a|b for the testbed")
    if not iface and (args.backend == "afxdp" or args.tcp):
        raise UsageError("the afxdp backend needs an interface: --iface IF (with --netns NS), or --host a|b")
    return iface, ns, ip


def _open(args):
    from kbypass.endpoint import UdpEndpoint

    if args.tcp:
        return _open_tcp(args)

    iface, ns, ip = _where(args)
    if args.backend == "afxdp":
        require_root(f"kbypass pingpong {args.role}")
    pin_cpu(args.cpu)
    if args.lane is not None:  # one choice for the whole process: the message lane and the batch bookkeeping
        from kbypass import backend

        backend.select(args.lane)
    if args.backend != "afxdp":
        return UdpEndpoint(iface, ip, args.port, netns=ns, poll=args.poll, backend=args.backend)
    return UdpEndpoint(iface, ip, args.port, netns=ns, dedicated=bool(args.dedicated), poll=args.poll,
                       backend=args.backend, xdp_mode=args.xdp_mode or "native", gateway=args.gateway,
                       frame_size=args.frame_size or default_frame_size(iface, ns),
                       native=None if args.lane is None else args.lane == "c",
                       control_plane=not args.no_cp)


def _write_histogram(res, path: str, title: str) -> KbypassError | None:
    """Write the PNG; a failure (disk full, the directory gone since the start) is returned, not raised, so
    the results are printed first. A file this run created and could not finish is removed."""
    existed = os.path.exists(path)
    try:
        plot_histogram(res, path, title)
    except (OSError, ValueError) as e:
        if not existed and os.path.exists(path):
            os.unlink(path)
        why = getattr(e, "strerror", None) or str(e)
        return KbypassError(f"--histogram {path}: could not write it ({why}); the results are above")
    return None


def run(args) -> int:
    _check(args)
    if args.role == "client" and args.duration is None and args.count is None:
        args.duration = 5.0
    failed = None
    with Stopper() as stopper, _open(args) as ep:
        stop = lambda: stopper.stopped  # noqa: E731
        base = {"role": args.role, "backend": ep.backend, "poll": args.poll, "local": f"{ep.ip}:{ep.port}"}
        if args.tcp:
            base["proto"] = "tcp"
        if ep.backend == "afxdp":
            base["lane"] = "c" if ep.native else "python"
        if args.role == "server":
            # on stderr with --json too, as the port tools' "receiving on" (tools/_port.announce): scripts and
            # benchmarks wait for it instead of guessing how long start-up takes
            print(f"kbypass pingpong server on {ep.ip}:{ep.port} ({ep.backend}{' tcp' if args.tcp else ''}, "
                  f"{args.poll} poll)", file=sys.stderr, flush=True)
            res = serve(ep, duration=args.duration, count=args.count, idle_timeout=args.idle_timeout, stop=stop)
            summary = {**base, "received": res.received, "answered": res.answered, "seconds": round(res.seconds, 3)}
            if args.tcp:
                summary["answered_in_c"] = res.answered_apart  # by the TCP fast path (kbypass.apps.tcpmsg pongs)
            if res.send_failed:
                summary["send_failed"] = res.send_failed  # answers the TX ring had no room for
        else:
            res = ping(ep, _server_addr(args.dst), size=args.size, duration=args.duration, count=args.count,
                       warmup=args.warmup, reply_timeout=args.reply_timeout, give_up=args.idle_timeout, stop=stop)
            summary = {**base, "server": args.dst, "size": args.size, **res.summary()}
            # interrupted before its first message or during an answered warm-up (a slow start: the control
            # plane starting, a peer not resolved yet): nothing was measured, which is not the server's silence
            failed = client_error(res, args.dst, args.idle_timeout, stopped=stopper.stopped)
            if args.histogram and not failed:
                failed = _write_histogram(res, args.histogram,
                                          f"kbypass pingpong {ep.backend}/{args.poll} to {args.dst}, {args.size} B")
                if failed is None:
                    summary["histogram"] = args.histogram
        if ep.backend == "afxdp":
            summary["drops"] = ep.stats["drops"]
        if stopper.stopped:
            summary["interrupted"] = True
    emit(summary, args.json, title=None if args.json else f"kbypass pingpong {args.role}")
    if failed is not None:  # the summary above says what was measured; this says what went wrong
        raise failed
    return 0
