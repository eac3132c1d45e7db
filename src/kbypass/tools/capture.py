"""`kbypass capture`: write the steered flows (or every Nth packet of them) to a pcap file."""

from __future__ import annotations

import os
import time

import numpy as np

from kbypass.apps.loop import Ticker, receive_batches
from kbypass.errors import UsageError
from kbypass.pcap import PcapWriter
from kbypass.tools._backend import add_backend_option, open_backend
from kbypass.tools._port import add_port_options, announce, emit, progress_printer, rules_or_default


def register(sub) -> None:
    p = sub.add_parser("capture", help="write steered traffic to a pcap file (tcpdump/tshark read it)")
    add_backend_option(p)
    add_port_options(p, default_rule_help="default on a testbed host: every IP packet; --iface needs a rule "
                                          "(what is captured does not reach the kernel)")
    p.add_argument("--write", "-w", required=True, metavar="FILE.pcap", help="output file")
    p.add_argument("--snaplen", type=int, default=65535, help="bytes kept of each frame (default 65535)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="keep one packet in N (sampling)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.snaplen < 14:
        raise UsageError(f"--snaplen {args.snaplen}: keep at least the 14-byte Ethernet header")
    if args.every < 1:
        raise UsageError(f"--every {args.every}: give 1 (every packet) or more")
    rules = rules_or_default(args, "any", "every IP packet")
    # The file first: a path we cannot write fails before any port is opened or XDP program attached.
    created = not os.path.lexists(args.write)
    pcap = PcapWriter(args.write, args.snaplen)
    try:
        sp = open_backend(args, rules)
    except BaseException:
        pcap.close()
        if created and os.path.isfile(args.write):
            os.unlink(args.write)  # leave no empty capture behind when the port could not be opened
        raise
    with sp, pcap:
        announce(args, sp)
        port, seen = sp.port, 0
        ticker = Ticker(progress_printer(not args.json))
        until = None if args.count is None else lambda: pcap.packets >= args.count
        for batch in receive_batches(port, args.batch, duration=args.duration, until=until):
            # Keep packets whose running number is a multiple of N: sampling without a per-packet loop.
            keep = (seen + np.arange(len(batch))) % args.every == 0
            seen += len(batch)
            chosen = batch[keep]
            if args.count is not None:
                chosen = chosen[: args.count - pcap.packets]
            pcap.write_batch(chosen)
            port.free(batch)
            ticker.tick(seen, time.monotonic())
        summary = {"packets": pcap.packets, "seen": seen, "file": args.write,
                   "mode": getattr(port, "bind_mode", None) or port.mode, "stats": port.stats}
    emit(summary, args.json)
    return 0

