"""`kbypass xfer send | recv`: move a file or a generated stream over the reliable transport on the
bypass path (AF_XDP by default), in UDP or raw Ethernet frames, and report goodput, retransmissions, RTT.

    kbypass xfer recv --host b --port 7000 --json &
    kbypass xfer send --host a --to 10.77.0.2:7000 --size 100M --loss 0.01 --json

Loss injection: --loss P drops that share of the frames this end receives, in the XDP steering program
(afxdp backend; --loss-at user for the seeded userspace link instead); --faults SPEC puts the seeded
userspace FaultyLink (kbypass.faults.parse_spec: loss, burst, reorder, duplicate, corrupt, delay, ...)
on the datagrams this end receives. Give them on both ends for faults in both directions.

--poll busy (AF_XDP busy polling, spins a CPU while waiting) keeps the round trip under a millisecond on
veth; with the default need_wakeup the receive path waits for the kernel's softirq, the RTT is a few
milliseconds, so a loss repaired by a timeout costs more. Random loss alone does not shrink the window:
the congestion controller (LossTolerantReno) cuts only when the recent loss rate passes 2%.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import sys
import time

from kbypass import testbed
from kbypass.errors import UsageError, require_root
from kbypass.tools._common import pin_cpu, print_json

BLOCK = 1 << 20
CHUNK = 256 * 1024


def register(subparsers) -> None:
    p = subparsers.add_parser("xfer", help="reliable transfer over the bypass path (TCP bypass)",
                              description=__doc__.split("\n\n")[0])
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    for verb, text in (("send", "connect to a receiver and send a file or a generated stream"),
                       ("recv", "accept one sender and receive until it closes")):
        v = verbs.add_parser(verb, help=text)
        _common(v)
        if verb == "send":
            v.add_argument("--to", metavar="IP:PORT", help="receiver address (udp); with eth, an IP of a testbed "
                                                          "host names its MAC")
            v.add_argument("--to-mac", help="receiver MAC (default: the testbed host with --to's address, or ARP)")
            v.add_argument("--port", type=int, default=0, help="local UDP port (default: a free one)")
            what = v.add_mutually_exclusive_group()
            what.add_argument("--file", help="send this file")
            what.add_argument("--size", help="send a generated stream of this many bytes (K/M/G suffixes)")
            v.add_argument("--duration", type=float, help="send a generated stream for this many seconds")
        else:
            v.add_argument("--port", type=int, default=7000, help="UDP port to listen on (default 7000)")
            v.add_argument("--out", help="write what arrives to this file")
            v.add_argument("--duration", type=float, help="give up waiting for a sender after this many seconds")
        v.set_defaults(func=run)


def _common(v) -> None:
    v.add_argument("--iface", help="interface (default: the testbed host's veth)")
    v.add_argument("--netns", help="network namespace of --iface")
    v.add_argument("--host", choices=testbed.HOSTS, help="a testbed host: sets --iface, --netns (and --ip)")
    v.add_argument("--ip", help="local IPv4 address (default: the interface's)")
    v.add_argument("--encap", choices=("udp", "eth"), default="udp",
                   help="udp: IPv4/UDP frames (routable); eth: raw Ethernet, EtherType --ethertype")
    v.add_argument("--ethertype", type=lambda s: int(s, 0), default=0x88B5, help="EtherType for eth (0x88b5)")
    v.add_argument("--backend", choices=("afxdp", "packet_mmap", "socket"), default="afxdp")
    v.add_argument("--poll", choices=("wakeup", "busy"), default="wakeup", help="AF_XDP wait mode")
    v.add_argument("--loss", type=float, default=0.0, help="drop this share of the frames received here")
    v.add_argument("--loss-at", choices=("xdp", "user"), help="where --loss drops: the steering program "
                                                              "(default with afxdp) or the userspace link")
    v.add_argument("--faults", default="", help="userspace faults on received datagrams, e.g. "
                                                "'loss=0.02,reorder=0.05,duplicate=0.01,corrupt=0.01'")
    v.add_argument("--seed", type=int, default=1, help="seed of the userspace faults and the generated stream")
    v.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the handshake (send) "
                                                               "or the close")
    v.add_argument("--lane", choices=("c", "python"),
                   help="per-datagram bulk work (in-order arrivals, encoding, framing) in C (kbypass._fastxfer) "
                        "or Python; default: C when it is built")
    v.add_argument("--cpu", type=int, help="pin to this CPU")
    v.add_argument("--json", action="store_true", help="print the summary as JSON")


def _size(text: str) -> int:
    """--size: bytes >= 0, a whole number or a number with a K/M/G suffix (binary: 1K = 1024)."""
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    try:
        n = float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else int(t)
    except ValueError:
        n = None
    if n is None or not math.isfinite(n) or n < 0:
        raise UsageError(f"--size {text!r}: give a number of bytes >= 0, e.g. 4096, 64K, 100M, 1G")
    return int(n)


def _seconds(option: str, value: float | None, hint: str = "") -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):  # refuses NaN, inf, 0, negatives
        raise UsageError(f"{option} {value}: give a finite number of seconds > 0{hint}")


def _check(args) -> None:
    """Every check that needs no network, before any port is opened or file written."""
    if not 0 <= args.port <= 0xFFFF:
        raise UsageError(f"--port {args.port}: give a UDP port 0-65535 (0 picks a free one)")
    _seconds("--timeout", args.timeout, ", e.g. --timeout 10")
    _seconds("--duration", args.duration,
             ", e.g. --duration 10" if args.verb == "send" else ", or leave it out to wait for a sender forever")
    _faults(args)
    if args.verb == "send":
        if args.file is None and args.size is None and args.duration is None:
            raise UsageError("what to send: --file PATH, --size N or --duration S")
        if args.size is not None:
            _size(args.size)
    elif args.out:
        _check_out(args.out)


def _check_out(path: str) -> None:
    """--out must be a file we can write, without truncating it (that waits until the endpoint is open)."""
    if os.path.isdir(path):
        raise UsageError(f"--out {path}: is a directory: give a file name")
    if os.path.exists(path):
        try:
            open(path, "ab").close()  # opens for writing without truncating
        except OSError as e:
            raise UsageError(f"--out {path}: {e.strerror}: give a file you can write") from None
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"--out {path}: no directory {parent}: create it or give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: cannot create a file in {parent}: give a writable directory")


def _open_file(path: str, mode: str, option: str):
    try:
        return open(path, mode)  # noqa: SIM115 (the caller closes it)
    except OSError as e:
        raise UsageError(f"{option} {path}: {e.strerror}: give a file you can "
                         f"{'read' if 'r' in mode else 'write'}") from None


def _where(args) -> tuple[str, str | None, str | None]:
    ip = args.ip
    if args.host:
        h = testbed.host(args.host)
        return args.iface or h.iface, args.netns or h.netns, ip or h.ipv4
    if not args.iface:
        raise UsageError("say where: --iface IF (with --netns NS), or --host a|b for the testbed")
    return args.iface, args.netns, ip


def _faults(args) -> dict | None:
    from kbypass.faults import parse_spec

    try:
        kw = parse_spec(args.faults) if args.faults else {}
    except ValueError as e:
        raise UsageError(f"--faults: {e}") from None
    if kw.get("loss", 0.0) >= 1.0:
        raise UsageError(f"--faults loss={kw['loss']}: that drops every datagram, the transfer cannot finish: "
                         "give 0 <= loss < 1")
    if not 0.0 <= args.loss < 1.0:  # also refuses NaN
        raise UsageError(f"--loss {args.loss}: give a probability 0 <= P < 1 (1 drops every frame: the "
                         "transfer cannot finish)")
    if args.loss and _loss_at(args) == "user":
        if "loss" in kw:
            raise UsageError("--loss and --faults loss=...: give the loss once")
        kw["loss"] = args.loss
    return kw or None


def _loss_at(args) -> str:
    return args.loss_at or ("xdp" if args.backend == "afxdp" else "user")


def _peer(args) -> tuple[tuple[str, int] | None, str | None]:
    to, mac = args.to, args.to_mac
    peer = None
    if to:
        ip, sep, port = to.rpartition(":")
        if not sep:
            ip, port = to, "0"
        try:
            peer = (ip, int(port))
        except ValueError:
            raise UsageError(f"--to {to!r}: write IP:PORT, e.g. 10.77.0.2:7000") from None
        if args.encap == "udp" and not 0 < peer[1] <= 0xFFFF:
            raise UsageError(f"--to {to!r}: the udp encapsulation needs a port 1-65535 (IP:PORT)")
        if mac is None:
            hosts = testbed.status() or []
            mac = next((h.mac for h in hosts if h.ipv4 == ip), None)
    if args.encap == "udp" and peer is None:
        raise UsageError("send needs the receiver: --to IP:PORT")
    if args.encap == "eth" and mac is None:
        raise UsageError("the eth encapsulation addresses the receiver by MAC: give --to-mac, or --to with the "
                         "address of a testbed host")
    return peer, mac


def _open(args, **kw):
    from kbypass.xfer import TransportEndpoint

    iface, netns, ip = _where(args)
    faults = _faults(args)
    xdp_loss = args.loss if (args.loss and _loss_at(args) == "xdp") else 0.0
    options = {"poll": args.poll} if args.backend == "afxdp" else {}
    return TransportEndpoint.open(iface=iface, netns=netns, encap=args.encap, backend=args.backend,
                                  local_ip=ip, ethertype=args.ethertype, xdp_loss=xdp_loss,
                                  faults_rx=faults, seed=args.seed, port_options=options,
                                  native=None if args.lane is None else args.lane == "c", **kw)


def _summary(args, ep, nbytes: int, seconds: float, sha: str) -> dict:
    st = ep.stats
    return {
        "verb": args.verb, "encap": args.encap, "backend": args.backend, "lane": "c" if ep.native else "python",
        "bytes": nbytes,
        "seconds": round(seconds, 6), "goodput_bps": round(nbytes * 8 / seconds) if seconds > 0 else 0,
        "retransmits": st["retransmits"], "fast_retransmits": st["fast_retransmits"], "timeouts": st["timeouts"],
        "rtt_ms": None if st["rtt_ms"] is None else round(st["rtt_ms"], 3), "sha256": sha,
        "loss": args.loss, "loss_at": _loss_at(args) if args.loss else None, "faults": args.faults or None,
        "datagrams_sent": st["datagrams_sent"], "datagrams_received": st["datagrams_received"],
        "duplicates": st["duplicates"], "drops": st["drops"],
        "faults_rx": st.get("faults_rx"),
        "clean_close": ep.closed_cleanly,
    }


def _print(summary: dict, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    rtt = "-" if summary["rtt_ms"] is None else f"{summary['rtt_ms']:.3f} ms"
    print(f"{summary['verb']}: {summary['bytes']} bytes in {summary['seconds']:.3f} s = "
          f"{summary['goodput_bps'] / 1e6:.1f} Mbit/s goodput; {summary['retransmits']} retransmits; RTT {rtt}; "
          f"sha256 {summary['sha256']}")
    if summary["drops"]:
        print(f"drops: {summary['drops']}")


def _stream(seed: int):
    """The generated stream: one seeded random 1 MiB block, each copy stamped with its index (so a
    misplaced block changes the hash)."""
    block = bytearray(random.Random(seed).randbytes(BLOCK))
    i = 0
    while True:
        block[0:8] = i.to_bytes(8, "big")
        yield bytes(block)
        i += 1


def run(args) -> int:
    _check(args)
    require_root(f"kbypass xfer {args.verb}")
    pin_cpu(args.cpu)
    return _send(args) if args.verb == "send" else _recv(args)


def _send(args) -> int:
    size = _size(args.size) if args.size is not None else None
    src = _open_file(args.file, "rb", "--file") if args.file else None
    try:
        peer, mac = _peer(args)
        ep = _open(args, local_port=args.port, peer=peer if args.encap == "udp" else None, peer_mac=mac)
        with ep:
            ep.connect(timeout=args.timeout)
            h = hashlib.sha256()
            sent = 0
            t0 = time.monotonic()
            gen = None if src else _stream(args.seed)
            pending = memoryview(b"")
            while True:
                if args.duration is not None and time.monotonic() - t0 >= args.duration:
                    break
                if src is not None:
                    chunk = src.read(CHUNK)
                else:
                    if not pending:
                        pending = memoryview(next(gen))  # chunks are views of the block: no copy to cut them
                    want = CHUNK if size is None else min(CHUNK, size - sent)
                    chunk, pending = pending[:want], pending[want:]
                if not chunk:
                    break
                ep.send(chunk)
                h.update(chunk)
                sent += len(chunk)
            # goodput counts until the receiver acknowledged the last byte and closed (not our linger)
            ep.close(timeout=max(args.timeout, 30.0))
            seconds = (ep.closed_at or time.monotonic()) - t0
        summary = _summary(args, ep, sent, seconds, h.hexdigest())
        summary["acked"] = ep.stats["bytes_acked"]
    finally:
        if src is not None:
            src.close()
    _print(summary, args.json)
    return 0 if ep.closed_cleanly and ep.lost is None else 1


def _recv(args) -> int:
    out = None
    try:
        ep = _open(args, local_port=args.port)
        with ep:
            # truncate --out only now that the endpoint is open (_check made sure it can be written)
            out = _open_file(args.out, "wb", "--out") if args.out else None
            where = f"{ep.encap.name} " + (f"{args.ip or ''}:{ep.encap.port}" if args.encap == "udp"
                                           else f"ethertype {args.ethertype:#06x}")
            print(f"kbypass xfer recv: listening ({where}, backend {args.backend}); Ctrl-C to stop",
                  file=sys.stderr, flush=True)
            ep.accept(timeout=args.duration)
            t0 = ep.connected_at
            h = hashlib.sha256()
            got = 0
            while True:
                chunk = ep.recv(timeout=None)
                if not chunk:
                    break
                h.update(chunk)
                got += len(chunk)
                if out is not None:
                    out.write(chunk)
            seconds = time.monotonic() - t0
            ep.close(timeout=args.timeout)
        summary = _summary(args, ep, got, seconds, h.hexdigest())
    finally:
        if out is not None:
            out.close()
    _print(summary, args.json)
    return 0 if ep.lost is None else 1
