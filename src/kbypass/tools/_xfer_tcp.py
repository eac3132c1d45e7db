"""`kbypass xfer send|recv --proto tcp`: the transfer over kbypass's userspace TCP, so kernel programs are the
peer: `nc -l` or a kernel socket receives what `xfer send` sends, `nc`/`iperf3 -c` sends what `xfer recv`
takes (recv --iperf3 speaks iperf3's server protocol, kbypass.apps.iperf3). recv --dst connects instead of
listening and takes what the server sends (a `nc -l < file`). Every byte is hashed (SHA-256) on both ends.

The transport's options (encapsulation, backend, faults, lane) do not apply and are refused; --loss drops in
the steering program, as for the transport."""

from __future__ import annotations

import sys
import time

from kbypass.errors import KbypassError, UsageError
from kbypass.port.loop import Stopper

NOT_FOR_TCP = {"encap": "udp", "ethertype": None, "backend": "afxdp", "faults": "", "loss_at": None, "lane": None,
               "dst_mac": None}


def check(args) -> None:
    for k, default in NOT_FOR_TCP.items():
        if getattr(args, k, default) != default:
            raise UsageError(f"--{k.replace('_', '-')} is for the transport (--proto transport): --proto tcp runs "
                             "kbypass's TCP over AF_XDP; leave it out")
    if args.verb == "send":
        if not args.dst:
            raise UsageError("send needs the receiver: --dst IP:PORT")
        if args.file is None and args.size is None and args.duration is None:
            raise UsageError("what to send: --file PATH, --size N or --duration S")
    elif args.iperf3 and (args.dst or args.write):
        raise UsageError("--iperf3 answers an iperf3 client's test: leave out --dst and --write")


def _host(args):
    from kbypass.endpoint.tcpio import TcpHost
    from kbypass.tools.xfer import _where

    iface, ns, ip = _where(args)
    if not ip:
        raise UsageError("--proto tcp needs the local address: --ip IP (or --host a|b)")
    return TcpHost(iface, ip, netns=ns, poll=args.poll or "wakeup", control_plane=not args.no_cp, loss=args.loss)


def _addr(text: str) -> tuple[str, int]:
    ip, sep, port = text.rpartition(":")
    try:
        return ip, int(port)
    except ValueError:
        raise UsageError(f"--dst {text!r}: write IP:PORT, e.g. 10.77.0.2:5201") from None


def run(args) -> int:
    from kbypass.tools._digest import open_digest

    check(args)
    h = open_digest(args.digest)
    try:
        return _run(args, h)
    finally:
        h.close()  # every exit: no hashing thread left behind


def _run(args, h) -> int:
    from kbypass.tools.xfer import _print, _size, chunks, digest_fields

    idle = args.idle_timeout or 10.0
    moved = 0
    summary: dict = {"verb": args.verb, "proto": "tcp"}
    done = False  # the transfer finished: a Ctrl-C while the host closes changes nothing
    seconds = 0.0
    with Stopper() as stopper, _host(args) as host:
        if args.verb == "send":
            size = _size(args.size) if args.size is not None else None
            src = open(args.file, "rb") if args.file else None  # noqa: SIM115
            try:
                sock = host.connect(_addr(args.dst), timeout=idle)
                sock.settimeout(idle)
                t0 = time.monotonic()
                for chunk in chunks(src, size, args.seed):
                    if (args.duration is not None and time.monotonic() - t0 >= args.duration) or stopper.stopped:
                        break
                    sock.sendall(chunk)
                    h.update(chunk)
                    moved += len(chunk)
                if not stopper.stopped:
                    sock.shutdown()
                    # done when the receiver has everything and closed too (its FIN), as the transport counts
                    while _recv(sock, stopper, idle):
                        pass
                    done = not stopper.stopped
                seconds = time.monotonic() - t0
                sock.close()
            finally:
                if src is not None:
                    src.close()
        elif args.iperf3:
            from kbypass.apps.iperf3 import serve_one

            lst = host.listen(args.port)
            print(f"kbypass xfer recv: listening on {host.ip}:{lst.port} for one iperf3 test (iperf3 server)",
                  file=sys.stderr, flush=True)
            lst.setblocking(False)
            s = serve_one(lst, host.wait, time.monotonic, timeout=args.idle_timeout, stop=lambda: stopper.stopped)
            lst.close()
            done = s.finished
            if s.error:
                raise KbypassError(f"the iperf3 client's test could not run: {s.error}")
            moved, seconds = s.received, s.seconds
            summary["iperf3_streams"] = s.expected_streams
        else:
            out = (sys.stdout.buffer if args.write == "-" else
                   open(args.write, "wb") if args.write else None)  # noqa: SIM115
            try:
                if args.dst:
                    sock = host.connect(_addr(args.dst), timeout=idle)
                else:
                    lst = host.listen(args.port)
                    print(f"kbypass xfer recv: listening on {host.ip}:{lst.port} (tcp)", file=sys.stderr, flush=True)
                    lst.settimeout(0.2)
                    waited = time.monotonic()
                    while not stopper.stopped:
                        try:
                            sock, _ = lst.accept()
                            break
                        except TimeoutError:
                            if args.idle_timeout and time.monotonic() - waited >= args.idle_timeout:
                                raise TimeoutError(f"no sender within {args.idle_timeout:g} s") from None
                    lst.close()
                    if stopper.stopped:
                        raise KeyboardInterrupt
                t0 = time.monotonic()
                while True:
                    chunk = _recv(sock, stopper, idle)
                    if not chunk:
                        done = not stopper.stopped
                        break
                    h.update(chunk)
                    moved += len(chunk)
                    if out is not None:
                        out.write(chunk)
                seconds = time.monotonic() - t0
                sock.close()
            finally:
                if out is not None and args.write != "-":
                    out.close()
        st = host.stats
    summary.update(bytes=moved, seconds=round(seconds, 6),
                   goodput_bps=round(moved * 8 / seconds) if seconds > 0 else 0,
                   **digest_fields(args, h.hexdigest()), loss=args.loss,
                   segments_sent=st["tx_segments"], segments_received=st["rx_segments"])
    if not done:
        summary["interrupted"] = True
    write = getattr(args, "write", None)
    if write:
        summary["write"] = write
    _print(summary, args, to_stderr=write == "-")
    if not done:
        raise KeyboardInterrupt  # the summary is out; the exit status says the run was cut short (130)
    return 0


def _recv(sock, stopper, idle: float) -> bytes:
    """The next bytes (b"" at the end of the stream, or when stopped); TimeoutError after `idle` silent s."""
    sock.settimeout(0.2)  # short waits, so a Ctrl-C (Stopper's flag) is seen
    quiet = time.monotonic()
    while not stopper.stopped:
        try:
            return sock.recv(1 << 20)
        except TimeoutError:
            if time.monotonic() - quiet >= idle:
                raise TimeoutError(f"the peer sent nothing for {idle:g} s") from None
    return b""
