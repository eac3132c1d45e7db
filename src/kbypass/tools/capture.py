"""`kbypass capture`: write the steered flows (or every Nth packet of them) to a pcap file.

On the afxdp backend the matched packets are redirected, not copied: while capture runs the kernel does
not see them (a ping to the host stops being answered). The start-up line, the help and the README say
so; `--backend packet_mmap` is the tap that leaves the kernel its traffic. `--every N` writes one packet
in N of what the rules take; the other N-1 are dropped, not handed back (an AF_XDP socket cannot give a
frame to the kernel's stack), which the summary counts as `not_written`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from typing import TYPE_CHECKING

from kbypass.errors import UsageError
from kbypass.tools import _options
from kbypass.tools._backend import add_backend_option, open_backend
from kbypass.tools._common import partial_path, written_in_place
from kbypass.tools._port import (add_port_options, announce, control_plane_lost, emit, progress_printer,
                                 rules_or_default, takes_note, unreached_warnings, warn)
from kbypass.tools._workers import add_worker_options, emit_team, exit_code, run_team, wants_workers, worker_args

if TYPE_CHECKING:  # numpy and the port stack load with the capture, not with its options
    from kbypass.apps.pcap import PcapWriter

MAX_SNAPLEN = 262144  # tcpdump's largest


def register(sub) -> None:
    p = sub.add_parser(
        "capture", help="write steered traffic to a pcap file (tcpdump/tshark read it); on afxdp the "
                        "captured packets are taken from the kernel",
        description="Write the steered flows to a pcap file. With --backend afxdp (the default) the matched "
                    "packets are taken from the kernel while capture runs: its sockets, ping and tcpdump do "
                    "not see them. --backend packet_mmap is a tap that copies them instead. Time stamps "
                    "(nanoseconds) are when kbypass read each packet from the ring, spread evenly over the "
                    "interval since the previous read, not wire times.")
    add_backend_option(p)
    add_port_options(p, default_rule_help="default on a testbed host: every IP packet; --iface needs a rule "
                                          "(on afxdp, what is captured does not reach the kernel)")
    p.add_argument("-w", "--write", required=True, metavar="FILE.pcap", type=_options.output_file(allow_stdout=True),
                   help="output file; '-' writes the pcap to standard output (the summary then goes to stderr)")
    p.add_argument("--snaplen", type=_options.int_range(14, MAX_SNAPLEN, "a snap length"), default=65535,
                   help=f"bytes kept of each frame, 14 to {MAX_SNAPLEN} (default 65535)")
    p.add_argument("--every", type=_options.positive_int(what="a sampling interval"), default=1, metavar="N",
                   help="write one packet in N; on afxdp all matched packets are still taken from the kernel, "
                        "the other N-1 are dropped (counted as not_written)")
    add_worker_options(p)
    p.set_defaults(func=run)


def _check(args) -> None:
    if args.snaplen < 14:
        raise UsageError(f"--snaplen {args.snaplen}: keep at least the 14-byte Ethernet header")
    if args.every < 1:
        raise UsageError(f"--every {args.every}: give 1 (every packet) or more")
    if getattr(args, "backend", "afxdp") == "socket":
        raise UsageError("capture --backend socket would write made-up headers (a kernel socket gives "
                         "payloads, not frames): use --backend afxdp or packet_mmap")
    if args.write == "-" and sys.stdout.isatty():
        raise UsageError("-w - writes binary pcap to standard output, which is a terminal: pipe it "
                         "(| tcpdump -r -) or give a file")


def record(args, pcap: PcapWriter, sp, human) -> dict:
    """Capture on the open port `sp` into `pcap` (announced on `human`, unless None); the summary."""
    from kbypass.apps.capture import capture

    with sp, pcap:
        if human is not None:
            note = takes_note(args)
            if args.every > 1:
                note += f"; 1 in {args.every} is written, the rest " + ("dropped" if note else "not written")
            announce(args, sp, note)
        res = capture(sp.port, pcap, batch=args.batch, every=args.every, duration=args.duration,
                      count=args.count, report=progress_printer(not args.json, file=human))
        port = sp.port
        summary = {"packets": res.packets, "seen": res.seen, "not_written": res.seen - res.packets,
                   "file": args.write, "seconds": round(res.seconds, 6),
                   "mode": getattr(port, "bind_mode", None) or port.mode, "queues": sp.queues,
                   "stats": port.stats, "rules": sp.rule_counters()}
        warnings = unreached_warnings(sp)
        if warnings:
            summary["warnings"] = warnings
    return summary


def work(worker, args, rules: list[str]) -> dict:
    """One worker of `capture --workers`: its queue into its own file (args.write + .qN), which the parent
    merges in time-stamp order when the team ends."""
    from kbypass.apps.pcap import PcapWriter

    mine = worker_args(args, worker, rules)
    mine.write = worker_file(args.worker_files, worker.queue)
    pcap = PcapWriter(mine.write, args.snaplen, name=args.write)
    try:
        sp = open_backend(mine, mine.rule)
    except BaseException:
        pcap.close()
        os.unlink(mine.write)
        raise
    worker.ready()
    summary = record(mine, pcap, sp, None)
    if sp.control_lost:
        summary["error"] = sp.control_lost
    return summary


def worker_file(base: str, queue: int) -> str:
    return f"{base}.q{queue}"


HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def run_workers(args, rules: list[str]) -> int:
    """capture --workers: each worker its own file, merged into one pcap in time-stamp order at the end (a
    single writer shared by processes would serialise the workers on it; a merge at the end costs a read
    and a write of the capture). A failed start leaves no file behind, nor changes an existing one. The
    merge is not cut by a second Ctrl-C (held until it is done), and a merge that fails keeps the workers'
    files, named on stderr."""
    from kbypass.apps.pcap import PcapWriter, merge

    to_stdout = args.write == "-"
    in_place = to_stdout or written_in_place(args.write)  # stdout, /dev/null, a FIFO: merged straight into it
    human = sys.stderr if to_stdout else sys.stdout
    # the workers' files: hidden beside the target, named by this process's pid; for -w - (or a device or
    # FIFO) in a directory of this process's own (0700), not a guessable name in /tmp
    private = tempfile.mkdtemp(prefix="kbypass-capture-") if in_place else None
    args.worker_files = os.path.join(private, "capture") if private else partial_path(args.write)
    files = [worker_file(args.worker_files, q) for q in (args.worker_queues or range(args.workers or 0))]
    state = {"merging": False, "merged": False}
    target = args.write if in_place else partial_path(args.write)
    # a device or FIFO is opened now, while a signal still stops us: a FIFO's open waits for its reader, and
    # opened in finish() (signals held) it could only be killed; a device we cannot write fails up front
    early = None
    if in_place and not to_stdout:
        try:
            early = PcapWriter(target, args.snaplen, name=args.write)
        except BaseException:
            _remove(files, private)
            raise

    def finish(summary, outcomes) -> None:
        state["merging"] = True
        # a signal now (the second Ctrl-C of an impatient user) waits for the merge and the clean-up: cut
        # short, it lost the whole capture
        old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            with early or PcapWriter(target, args.snaplen, name=args.write) as out:
                summary["merged"] = merge([p for p in files if os.path.exists(p)], out)
            if not in_place:
                os.replace(target, args.write)
            state["merged"] = True
            _remove(files, private)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        summary["file"] = args.write
        for row in summary["workers"]:  # their own files are merged and gone: the one file is the summary's
            row.pop("file", None)

    try:
        summary, outcomes = run_team(args, work, rules, totals=("packets", "seen", "not_written"), finish=finish)
    finally:
        if early is not None and not state["merged"]:
            early.close()
        if not state["merging"]:  # the team did not start, or failed: nothing of it is kept
            _remove(files, private)
        elif not state["merged"]:
            if not in_place and os.path.exists(target):
                os.unlink(target)  # a partial merge
            kept = [p for p in files if os.path.exists(p)]
            print(f"kbypass capture: the merge into {args.write} did not finish; the workers' files are kept: "
                  f"{' '.join(kept) or '(none)'}", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(human):
        emit_team(summary, args.json)
    return exit_code(outcomes)


def _remove(files: list[str], private: str | None) -> None:
    for p in files:
        if os.path.exists(p):
            os.unlink(p)
    if private is not None:
        os.rmdir(private)


def run(args) -> int:
    from kbypass.apps.pcap import PcapWriter

    _check(args)
    rules = rules_or_default(args, "any", "every IP packet")
    if wants_workers(args):
        return run_workers(args, rules)
    to_stdout = args.write == "-"
    in_place = to_stdout or written_in_place(args.write)  # stdout, /dev/null, a FIFO: written as they are
    # The file first: a path we cannot write fails before any port is opened or XDP program attached. It is
    # a partial file beside the target until the port is open, so a capture that cannot start leaves an
    # existing file as it was (and no empty one behind).
    path = args.write if in_place else partial_path(args.write)
    pcap = PcapWriter(path, args.snaplen, name=args.write)
    try:
        sp = open_backend(args, rules)
    except BaseException:
        pcap.close()
        if not in_place and os.path.isfile(path):
            os.unlink(path)
        raise
    if not in_place:
        os.replace(path, args.write)  # the capture starts: from here on the file is the capture
    # With -w - standard output is the pcap: everything for people goes to stderr.
    human = sys.stderr if to_stdout else sys.stdout
    summary = record(args, pcap, sp, human)
    warnings = summary.get("warnings", [])
    warn(args.command, warnings)
    with contextlib.redirect_stdout(human):
        emit(summary, args.json)
    control_plane_lost(sp)
    return 0
