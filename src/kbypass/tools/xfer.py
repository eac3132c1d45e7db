"""`kbypass xfer send | recv`: move a file or a generated stream over the reliable transport on the
bypass path (AF_XDP by default), in UDP or raw Ethernet frames, and report goodput, retransmissions, RTT.

    kbypass xfer recv --host b -p 7000 --loss 0.01 --json &
    kbypass xfer send --host a --dst 10.77.0.2:7000 --size 100M --loss 0.01 --json

Loss injection acts on the frames THIS end receives: --loss P on the receiver drops data, on the sender
only the receiver's ACKs. For loss on the path give it to both ends. --loss drops in the XDP steering
program (afxdp backend; --loss-at user for the seeded userspace link instead); --faults SPEC puts the
seeded userspace FaultyLink (kbypass.proto.faults.parse_spec: loss, burst, reorder, duplicate, corrupt, delay,
...) on the datagrams this end receives. The summary counts what each dropped (drops.loss_xdp,
drops.loss_user).

--idle-timeout S is how long either end waits without a word from its peer: the sender's handshake, the
receiver's wait for a sender (default: for ever) and, during the transfer, the dead-peer time (default
10 s), so a killed peer is noticed in S seconds; the countdown is printed on stderr once the peer falls
silent. Progress: a bar on stderr when it is a terminal, JSON lines on stderr about once a second with
--json; SIGINT/SIGTERM print the partial summary (marked "interrupted") and exit 130/143.

--poll busy (AF_XDP busy polling, spins a CPU while waiting) keeps the round trip under a millisecond on
veth; with the default need_wakeup the receive path waits for the kernel's softirq, the RTT is a few
milliseconds, so a loss repaired by a timeout costs more. Random loss alone does not shrink the window:
--congestion bbr paces at a model of the bottleneck's rate, which loss does not move; reno
(LossTolerantReno) cuts only when the recent loss rate passes 2%.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

from kbypass.host import testbed
from kbypass.proto.transport.config import CONTROLLERS, ConnConfig
from kbypass.errors import UsageError, require_root
from kbypass.tools import _options as opt
from kbypass.tools._common import partial_path, pin_cpu, written_in_place
from kbypass.tools._digest import DIGESTS, open_digest
from kbypass.tools._output import emit

DEFAULT_CONTROLLER = ConnConfig.congestion
BLOCK = 1 << 20
CHUNK = 256 * 1024
IDLE_DEFAULT = 10.0  # seconds without a word from the peer: the handshake, and the dead-peer time
SILENT_AFTER = 1.0  # a peer quiet this long is reported on stderr (its ACKs normally come every few ms)


def _ethertype(text: str) -> int:
    """An EtherType (0x0600-0xffff: smaller values are 802.3 lengths, not types), in hex or decimal."""
    try:
        v = int(text.strip(), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give an EtherType like 0x88b5") from None
    if not 0x0600 <= v <= 0xFFFF or v in (0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8):
        raise argparse.ArgumentTypeError(f"{text!r}: give an unassigned EtherType from 0x0600 to 0xffff (not IP, "
                                         "ARP or VLAN), e.g. 0x88b5")
    return v


def _loss(text: str) -> float:
    v = opt._number(text, float, "a probability")
    if not 0.0 <= v < 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text!r}: give a probability 0 <= P < 1 (1 drops every frame: the "
                                         "transfer cannot finish)")
    return v


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
            opt.add_dst(v, help="receiver address (udp); with eth, an IP of a testbed host names its MAC")
            v.add_argument("--dst-mac", metavar="MAC", type=opt.mac_address,
                           help="receiver MAC (default: the testbed host with --dst's address, or ARP)")
            opt.add_port(v, help="local UDP port (default 0: a free one)", default=0)
            what = v.add_mutually_exclusive_group()
            what.add_argument("--file", help="send this file ('-': standard input)")
            what.add_argument("--size", help="send a generated stream of this many bytes (K/M/G suffixes)")
            opt.add_duration(v, help="send a generated stream for this many seconds")
            opt.add_idle_timeout(v, help=f"give up after this many seconds without a word from the receiver: "
                                         f"the handshake and a peer gone silent (default {IDLE_DEFAULT:g})")
        else:
            opt.add_port(v, help="port to listen on, UDP (TCP with --proto tcp) (default 7000)", default=7000,
                         what="a port (UDP, or TCP with --proto tcp)")
            v.add_argument("-w", "--write", metavar="FILE", type=opt.output_file(allow_stdout=True),
                           help="write what arrives to this file ('-': standard output; the summary then "
                                "goes to stderr)")
            opt.add_idle_timeout(v, help=f"give up after this many seconds without a word from the sender: "
                                         f"waiting for one (default: for ever) and a sender gone silent "
                                         f"(default {IDLE_DEFAULT:g})")
        v.set_defaults(func=run)


def _common(v) -> None:
    opt.add_where(v, host_help="a testbed host: sets --iface, --netns (and --ip)")
    v.add_argument("--proto", choices=("transport", "tcp"), default="transport",
                   help="transport (kbypass's reliable transport, default) or tcp (kbypass's userspace TCP: "
                        "kernel programs such as nc and iperf3 are the peer)")
    if v.prog.endswith("recv"):
        v.add_argument("--iperf3", action="store_true",
                       help="tcp: answer one 'iperf3 -c' test (iperf3's server protocol) instead of one stream")
        opt.add_dst(v, help="tcp: connect to this server and take what it sends, instead of listening")
    v.add_argument("--ip", help="udp: local IPv4 address (default: the interface's)")
    v.add_argument("--encap", choices=("udp", "eth"), default="udp",
                   help="udp: IPv4/UDP frames (routable); eth: raw Ethernet, EtherType --ethertype")
    v.add_argument("--ethertype", type=_ethertype, help="eth: the EtherType (default 0x88b5)")
    v.add_argument("--backend", choices=("afxdp", "packet_mmap", "socket"), default="afxdp",
                   help="the packet path: afxdp (the bypass, default), packet_mmap (TPACKET_V3 raw socket) or "
                        "socket (a kernel UDP socket; udp only)")
    v.add_argument("--poll", choices=("wakeup", "busy"), help="afxdp: wait mode (default wakeup)")
    v.add_argument("--queue", type=opt.int_range(0, 4095, "a queue id"),
                   help="afxdp: the one receive queue to take (default: every queue); two transfers on one "
                        "host take one queue each (on a veth, the sender's queue is the receiver's)")
    opt.add_no_cp(v)
    v.add_argument("--loss", type=_loss, default=0.0,
                   help="drop this share of the frames THIS end receives (on the sender: the ACKs); give it to "
                        "both ends for loss on the path")
    v.add_argument("--loss-at", choices=("xdp", "user"), help="where --loss drops: the steering program "
                                                              "(afxdp only, its default) or the userspace link")
    v.add_argument("--faults", default="", help="userspace faults on received datagrams, e.g. "
                                                "'loss=0.02,reorder=0.05,duplicate=0.01,corrupt=0.01'")
    v.add_argument("--seed", type=opt.int_range(0, 2**63 - 1, "a seed"), default=1,
                   help="seed of the userspace faults and the generated stream")
    v.add_argument("--lane", choices=("c", "python"),
                   help="per-datagram bulk work (in-order arrivals, encoding, framing) and the port's batch "
                        "bookkeeping in C (kbypass._fastxfer, _fastbatch) or all in Python (no C module loaded); "
                        "default: C when it is built")
    v.add_argument("--mtu", type=opt.int_range(576, 65535, "an MTU"),
                   help="size datagrams for this MTU (default: the interface's; the encapsulation's headers are "
                        "counted); past one frame as chains of frames on a multi-buffer AF_XDP port, else refused")
    v.add_argument("--congestion", choices=CONTROLLERS,
                   help="the sender's congestion controller: bbr (a model of the bottleneck's rate and the path's "
                        "RTT, paced; random loss does not slow it) or reno (cuts once the recent loss rate passes "
                        f"2%%); default {DEFAULT_CONTROLLER}")
    v.add_argument("--digest", choices=DIGESTS, default=None,
                   help="the end-to-end check of the bytes moved, printed by each end (the ends do not compare "
                        "them: give both the same and compare the two values): sha256 (default: what sha256sum "
                        "prints), crc64 (CRC-64/XZ, xz's check, ~20x cheaper; the C lane) or none")
    opt.add_cpu(v)
    opt.add_json(v, help="print the summary as JSON (and progress as JSON lines on stderr)")


def _size(text: str, option: str = "--size") -> int:
    """--size (or `option`): bytes >= 0, a whole number or a number with a K/M/G suffix (binary: 1K = 1024)."""
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b")
    try:
        n = float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else int(t)
    except ValueError:
        n = None
    if n is None or not math.isfinite(n) or n < 0 or n > 1 << 50:
        raise UsageError(f"{option} {text!r}: give a number of bytes >= 0, e.g. 4096, 64K, 100M, 1G (at most 1P)")
    return int(n)


def _check(args) -> None:
    """Every check that needs no network, before any port is opened or file written."""
    _faults(args)
    if args.backend != "afxdp" and args.poll is not None:
        raise UsageError(f"--poll is the AF_XDP wait mode: --backend {args.backend} does not use it; leave it out")
    if args.backend != "afxdp" and args.queue is not None:
        raise UsageError(f"--queue picks the AF_XDP socket's queue: --backend {args.backend} has none; leave it out")
    if args.backend != "afxdp" and args.no_cp:
        raise UsageError(f"--no-cp is about the XDP steering program: --backend {args.backend} has none; leave it out")
    if args.loss_at and not args.loss:
        raise UsageError("--loss-at says where --loss drops: give --loss P too, or leave --loss-at out")
    if args.loss_at == "xdp" and args.backend != "afxdp":
        raise UsageError(f"--loss-at xdp drops in the steering program, which --backend {args.backend} does not "
                         "load: use --loss-at user")
    if args.encap == "udp" and args.ethertype is not None:
        raise UsageError("--ethertype is for --encap eth (udp frames are IPv4): leave it out or add --encap eth")
    if args.encap == "eth" and args.ip is not None:
        raise UsageError("--ip is for --encap udp (raw Ethernet frames carry no IP address): leave it out")
    if args.verb == "send":
        if args.file is None and args.size is None and args.duration is None:
            raise UsageError("what to send: --file PATH, --size N or --duration S")
        if args.file is not None and args.duration is not None:
            raise UsageError("--duration is for a generated stream: give --file or --duration, not both")
        if args.size is not None:
            _size(args.size)
        if args.file not in (None, "-") and not os.path.isfile(args.file):
            why = "is a directory" if os.path.isdir(args.file) else "no such file"
            raise UsageError(f"--file {args.file}: {why}: give a file to send (or '-' for standard input)")
    elif args.write not in (None, "-") and written_in_place(args.write):
        # a FIFO or device: not opened to try (an open and close would end a FIFO reader's stream)
        if not os.access(args.write, os.W_OK):
            raise UsageError(f"--write {args.write}: Permission denied: give a file you can write")
    elif args.write not in (None, "-") and os.path.exists(args.write):
        try:
            open(args.write, "ab").close()  # opens for writing without truncating
        except OSError as e:
            raise UsageError(f"--write {args.write}: {e.strerror}: give a file you can write") from None


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
        return args.iface or h.iface, args.netns or h.netns, ip or (h.ipv4 if args.encap == "udp" else None)
    if not args.iface:
        raise UsageError("say where: --iface IF (with --netns NS), or --host a|b for the testbed")
    return args.iface, args.netns, ip


def _faults(args) -> dict | None:
    from kbypass.proto.faults import parse_spec

    try:
        kw = parse_spec(args.faults) if args.faults else {}
    except ValueError as e:
        raise UsageError(f"--faults: {e}") from None
    if kw.get("loss", 0.0) >= 1.0:
        raise UsageError(f"--faults loss={kw['loss']}: that drops every datagram, the transfer cannot finish: "
                         "give 0 <= loss < 1")
    if args.loss and _loss_at(args) == "user":
        if "loss" in kw:
            raise UsageError("--loss and --faults loss=...: give the loss once")
        kw["loss"] = args.loss
    return kw or None


def _loss_at(args) -> str:
    return args.loss_at or ("xdp" if args.backend == "afxdp" else "user")


def _peer(args) -> tuple[tuple[str, int] | None, str | None]:
    to, mac = args.dst, args.dst_mac
    peer = None
    if to:
        ip, sep, port = to.rpartition(":")
        if not sep:
            ip, port = to, "0"
        try:
            peer = (ip, int(port))
        except ValueError:
            raise UsageError(f"--dst {to!r}: write IP:PORT, e.g. 10.77.0.2:7000") from None
        if args.encap == "udp" and not 0 < peer[1] <= 0xFFFF:
            raise UsageError(f"--dst {to!r}: the udp encapsulation needs a port 1-65535 (IP:PORT)")
        if mac is None:
            hosts = testbed.status() or []
            mac = next((h.mac for h in hosts if h.ipv4 == ip), None)
    if args.encap == "udp" and peer is None:
        raise UsageError("send needs the receiver: --dst IP:PORT")
    if args.encap == "eth" and mac is None:
        raise UsageError("the eth encapsulation addresses the receiver by MAC: give --dst-mac, or --dst with the "
                         "address of a testbed host")
    return peer, mac


def _open(args, **kw):
    from kbypass import backend
    from kbypass.xfer import TransportEndpoint

    backend.select(args.lane)  # the lane, chosen once for this process: the port's batches and the codec

    iface, netns, ip = _where(args)
    faults = _faults(args)
    xdp_loss = args.loss if (args.loss and _loss_at(args) == "xdp") else 0.0
    options = {"poll": args.poll or "wakeup", "control_plane": not args.no_cp} if args.backend == "afxdp" else {}
    if args.queue is not None:
        options["queue"] = args.queue
    extra = {} if args.ethertype is None else {"ethertype": args.ethertype}
    if args.congestion:
        extra["congestion"] = args.congestion
    if args.mtu:
        extra["mtu"] = args.mtu
    return TransportEndpoint.open(iface=iface, netns=netns, encap=args.encap, backend=args.backend,
                                  local_ip=ip, xdp_loss=xdp_loss, faults_rx=faults, seed=args.seed,
                                  port_options=options, idle_timeout=args.idle_timeout or IDLE_DEFAULT,
                                  codec=backend.codec(args.lane), **extra, **kw)


def digest_fields(args, value: str | None) -> dict:
    """The summary's digest: {"digest": its name, name: the value} ({"digest": "none"} for none)."""
    return {"digest": args.digest} | ({} if args.digest == "none" else {args.digest: value})


def _summary(args, ep, nbytes: int, seconds: float, digest: str | None) -> dict:
    st = ep.stats
    drops = st["drops"]
    return {
        "verb": args.verb, "encap": args.encap, "backend": args.backend, "lane": "c" if ep.native else "python",
        "congestion": ep.config.congestion, "mtu": ep.encap.mtu, "datagram": ep.config.max_datagram_size,
        "bytes": nbytes,
        "seconds": round(seconds, 6), "goodput_bps": round(nbytes * 8 / seconds) if seconds > 0 else 0,
        "retransmits": st["retransmits"], "fast_retransmits": st["fast_retransmits"], "timeouts": st["timeouts"],
        "spurious_timeouts": st["spurious_timeouts"], "tail_probes": st["tail_probes"],
        "rtt_ms": None if st["rtt_ms"] is None else round(st["rtt_ms"], 3), **digest_fields(args, digest),
        "loss": args.loss, "loss_at": _loss_at(args) if args.loss else None,
        # what --loss acts on, and what it dropped: a sender's --loss only ever drops ACKs
        "loss_applies_to": (None if not args.loss else
                            "frames this end receives: the receiver's ACKs" if args.verb == "send" else
                            "frames this end receives: the sender's data"),
        "loss_dropped": drops.get("loss_xdp", 0) + drops.get("loss_user", 0) if args.loss else 0,
        "faults": args.faults or None,
        "datagrams_sent": st["datagrams_sent"], "datagrams_received": st["datagrams_received"],
        "duplicates": st["duplicates"], "drops": drops,
        "faults_rx": st.get("faults_rx"),
        "clean_close": ep.closed_cleanly,
        "cc": st.get("cc"),
    }


def _print(summary: dict, args, to_stderr: bool = False) -> None:
    if to_stderr:  # -w -: standard output carries the data
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):
            emit(summary, args.json, title=None if args.json else f"kbypass xfer {args.verb}")
        return
    emit(summary, args.json, title=None if args.json else f"kbypass xfer {args.verb}")


class Progress:
    """Progress on stderr, fed by the endpoint's on_tick about once a second: a rich bar when stderr is a
    terminal (without --json), a JSON line per tick with --json, nothing on a pipe; and in every mode the
    countdown once the peer has gone silent, which ends in the dead-peer give-up."""

    def __init__(self, args, ep, total: int | None, counter: str) -> None:
        self.args, self.ep, self.total, self.counter = args, ep, total, counter
        self.idle = args.idle_timeout or IDLE_DEFAULT
        self.t0 = None
        self.warned = False
        self.bar = None
        if not args.json and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress as Bar, TextColumn, TimeElapsedColumn,
                                       TransferSpeedColumn)

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                           TimeElapsedColumn(), console=Console(stderr=True), transient=True, auto_refresh=False)
            self.task = self.bar.add_task(f"xfer {args.verb}", total=total)
            self.bar.start()
        ep.on_tick = self.tick

    def tick(self, ep, now: float) -> None:
        if ep.connected_at is None:
            return
        if self.t0 is None:
            self.t0 = ep.connected_at
        done = ep.stats[self.counter]
        silent = ep.silent_for
        if self.args.json:
            line = {"event": "progress", "verb": self.args.verb, "bytes": done, "total": self.total,
                    "seconds": round(now - self.t0, 3), "goodput_bps": round(done * 8 / max(now - self.t0, 1e-9)),
                    "retransmits": ep.stats["retransmits"], "peer_silent_s": round(silent, 1)}
            if silent >= SILENT_AFTER:
                line["gives_up_in_s"] = round(max(0.0, self.idle - silent), 1)
            print(json.dumps(line), file=sys.stderr, flush=True)
        elif self.bar is not None:
            desc = f"xfer {self.args.verb}"
            if silent >= SILENT_AFTER:
                desc = f"[bold red]peer silent {silent:.0f} s, giving up in {max(0.0, self.idle - silent):.0f} s"
            self.bar.update(self.task, completed=done, description=desc)
            self.bar.refresh()
        elif silent >= SILENT_AFTER and not self.warned:
            print(f"kbypass xfer {self.args.verb}: the peer has been silent for {silent:.0f} s; giving up after "
                  f"{self.idle:g} s without a word (--idle-timeout)", file=sys.stderr, flush=True)
        self.warned = silent >= SILENT_AFTER  # once per silence on a pipe

    def close(self) -> None:
        self.ep.on_tick = None
        if self.bar is not None:
            self.bar.stop()


class _LentBlocks:
    """The generated stream's blocks, lent instead of copied: a block (a bytearray holding the seeded random
    block) is stamped and handed out again only once nothing but this pool holds a reference to it, which
    its reference count says (the transport's send buffer keeps views of a block until its last byte is
    acknowledged; any other holder of it or of a view of it counts too). Copying each block out (bytes())
    was one more copy of every byte on the sender. At most `cap` blocks: past them, copies."""

    def __init__(self, template: bytes, cap: int = 32) -> None:
        self.template, self.cap = template, cap
        self.blocks: list[bytearray] = [bytearray(template)]
        self._free = min(self._refcounts())  # what a block only the pool holds counts, in this very code

    def _refcounts(self) -> list[int]:
        return [sys.getrefcount(b) for b in self.blocks]

    def take(self, stamp: bytes):
        """A block stamped with `stamp` at its start: a free one of the pool, a new one, or past `cap` a
        copy (bytes)."""
        free = self._free
        for i, n in enumerate(self._refcounts()):
            if n <= free:
                block = self.blocks[i]
                break
        else:
            if len(self.blocks) >= self.cap:
                return b"".join((stamp, memoryview(self.template)[len(stamp):]))  # one copy
            block = bytearray(self.template)
            self.blocks.append(block)
        block[:len(stamp)] = stamp
        return block


def _stream(seed: int):
    """The generated stream: one seeded random 1 MiB block, each copy stamped with its index (so a
    misplaced block changes the hash). Lent blocks (_LentBlocks): the caller may keep a block, or views of
    it, as long as it likes, but must not change it; send it with lent=True."""
    pool = _LentBlocks(random.Random(seed).randbytes(BLOCK))
    i = 0
    while True:
        yield pool.take(i.to_bytes(8, "big"))
        i += 1


def chunks(src, size: int | None, seed: int, whole: bool = False):
    """What a sender sends, in CHUNK pieces: the file's bytes, or the generated stream up to `size` bytes
    (None: endless). Pieces of the stream are views of its block: no copy to cut them. whole: the stream in
    whole blocks (lent: the transport's send buffer keeps them without a copy when its buffer is large
    enough to take one at once: TransportEndpoint.takes_whole), the last one cut short. The stream's blocks
    and pieces are lent (_stream): never changed by the caller."""
    if src is not None:
        while chunk := src.read(CHUNK):
            yield chunk
        return
    left = size
    for block in _stream(seed):
        if whole and (left is None or left >= len(block)):
            if left is not None:
                left -= len(block)
            yield block
            continue
        view = memoryview(block)
        while view:
            if left is not None and left <= 0:
                return
            want = CHUNK if left is None else min(CHUNK, left)
            chunk, view = view[:want], view[want:]
            if left is not None:
                left -= len(chunk)
            yield chunk


def run(args) -> int:
    if getattr(args, "iperf3", False) and args.digest not in (None, "none"):
        raise UsageError(f"--digest {args.digest}: an iperf3 test's bytes are thrown away, not a stream to check; "
                         "leave --digest out")
    args.digest = args.digest or ("none" if getattr(args, "iperf3", False) else "sha256")
    if args.proto == "tcp":
        from kbypass.tools import _xfer_tcp
        from kbypass.tools._common import peer_errors

        _xfer_tcp.check(args)
        require_root(f"kbypass xfer {args.verb} --proto tcp")
        pin_cpu(args.cpu)
        with peer_errors(f"kbypass xfer {args.verb} --proto tcp"):
            return _xfer_tcp.run(args)
    if getattr(args, "iperf3", False) or (args.verb == "recv" and args.dst):
        raise UsageError(f"--{'iperf3' if args.iperf3 else 'dst'} on recv is for --proto tcp: add --proto tcp or "
                         "leave it out")
    _check(args)
    require_root(f"kbypass xfer {args.verb}")
    pin_cpu(args.cpu)
    return _send(args) if args.verb == "send" else _recv(args)


def _signal_name(e: BaseException) -> str:
    return "SIGINT" if isinstance(e, KeyboardInterrupt) else "SIGTERM"


def _send(args) -> int:
    from kbypass.cli import Terminated
    from kbypass.xfer import TransferError

    size = _size(args.size) if args.size is not None else None
    if args.file == "-":
        src = sys.stdin.buffer
    else:
        src = _open_file(args.file, "rb", "--file") if args.file else None
    total = size if src is None else (os.fstat(src.fileno()).st_size if args.file != "-" else None)
    if args.loss and not args.json:
        print(f"kbypass xfer send: --loss {args.loss:g} drops only what this end receives (the receiver's ACKs); "
              "give --loss to 'xfer recv' too for loss on the data path", file=sys.stderr, flush=True)
    stopped = failed = None
    h = open_digest(args.digest, args.lane)  # the integrity check (sha256: hashed while the transport waits)
    sent = 0
    t0 = None
    try:
        peer, mac = _peer(args)
        ep = _open(args, local_port=args.port, peer=peer if args.encap == "udp" else None, peer_mac=mac)
        with ep:
            progress = Progress(args, ep, total, "bytes_acked")
            try:
                ep.connect(timeout=args.idle_timeout or IDLE_DEFAULT)
                t0 = time.monotonic()
                for chunk in chunks(src, size, args.seed, whole=ep.takes_whole(BLOCK)):
                    if args.duration is not None and time.monotonic() - t0 >= args.duration:
                        break
                    ep.send(chunk, lent=src is None)  # the generated stream's blocks are lent (_stream)
                    h.update(chunk)
                    sent += len(chunk)
                # goodput counts until the receiver acknowledged the last byte and closed (not our linger);
                # a receiver that dies meanwhile is noticed after --idle-timeout (the connection is lost)
                ep.close(timeout=max(args.idle_timeout or IDLE_DEFAULT, 30.0))
            except (KeyboardInterrupt, Terminated) as e:
                stopped = e
                ep.abort()  # RST to the receiver: it stops at once instead of waiting out its idle timeout
            except TransferError as e:
                failed = e
                ep.abort()
            finally:
                progress.close()
            seconds = ((ep.closed_at or time.monotonic()) - t0) if t0 is not None else 0.0
        summary = _summary(args, ep, sent, seconds, h.hexdigest())
        summary["acked"] = ep.stats["bytes_acked"]
    finally:
        h.close()  # an error exit (UsageError/OSError from _open, LocalProtocolError) leaves no hashing thread
        if src is not None and args.file != "-":
            src.close()
    return _finish(args, summary, stopped, failed, ok=ep.closed_cleanly and ep.lost is None)


def _finish(args, summary: dict, stopped, failed, ok: bool, to_stderr: bool = False) -> int:
    """Print the summary (partial when a signal or a failure ended the run), then re-raise the signal
    (exit 130/143) or the failure (one error line, exit 2)."""
    if stopped is not None:
        summary["interrupted"] = _signal_name(stopped)
    if failed is not None:
        summary["error"] = str(failed)
    _print(summary, args, to_stderr)
    if stopped is not None:
        raise stopped
    if failed is not None:
        raise failed
    return 0 if ok else 1


def _recv(args) -> int:
    from kbypass.cli import Terminated
    from kbypass.xfer import TransferError

    out = None
    partial = None  # --write goes here first, and replaces the file only when the run has data to keep
    stopped = failed = None
    h = open_digest(args.digest, args.lane)  # the integrity check (sha256: hashed while the transport waits)
    got = 0
    t0 = None
    to_stdout = args.write == "-"
    try:
        ep = _open(args, local_port=args.port)
        with ep:
            # open --write only now that the endpoint is open (_check made sure it can be written)
            if to_stdout:
                out = sys.stdout.buffer
            elif args.write and written_in_place(args.write):
                out = _open_file(args.write, "wb", "--write")
            elif args.write:
                partial = partial_path(args.write)
                out = _open_file(partial, "wb", "--write")
            where = f"{ep.encap.name} " + (f"{args.ip or ''}:{ep.encap.port}" if args.encap == "udp"
                                           else f"ethertype {ep.encap.ethertype:#06x}")
            progress = Progress(args, ep, None, "bytes_delivered")
            try:  # from the "listening" line on, a signal gets its (empty) summary
                print(f"kbypass xfer recv: listening ({where}, backend {args.backend}); Ctrl-C to stop",
                      file=sys.stderr, flush=True)
                ep.accept(timeout=args.idle_timeout)
                t0 = ep.connected_at
                while True:
                    chunk = ep.recv_chunk(timeout=None)  # the pieces as they arrived: no copy to join them
                    if not chunk:
                        break
                    h.update(chunk)
                    got += len(chunk)
                    if out is not None:
                        out.write(chunk)
                seconds = time.monotonic() - t0
                ep.close(timeout=args.idle_timeout or IDLE_DEFAULT)
            except (KeyboardInterrupt, Terminated) as e:
                stopped = e
                ep.abort()
            except TransferError as e:
                failed = e
                ep.abort()
            finally:
                progress.close()
            if stopped or failed:
                seconds = time.monotonic() - t0 if t0 is not None else 0.0
        summary = _summary(args, ep, got, seconds, h.hexdigest())
    except BaseException:
        h.close()  # an error exit (OSError from _open or out.write, LocalProtocolError) leaves no hashing thread
        _drop_partial(out, partial)
        raise
    if out is not None and not to_stdout:
        out.close()
    elif to_stdout:
        sys.stdout.flush()
    if partial is not None and (failed is not None or (stopped is not None and not got)):
        _drop_partial(None, partial)  # a failed run leaves --write as it was; an interrupted one keeps what arrived
        summary["write"] = None
    elif partial is not None:
        os.replace(partial, args.write)
        summary["write"] = args.write
    elif args.write:
        summary["write"] = args.write
    return _finish(args, summary, stopped, failed, ok=ep.lost is None, to_stderr=to_stdout)


def _drop_partial(out, partial: str | None) -> None:
    """Close --write and remove its partial file after a run that failed: the target stays as it was (one
    written in place, a device or FIFO, is only closed)."""
    if out is not None and out is not sys.stdout.buffer:
        out.close()
    if partial is not None:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
