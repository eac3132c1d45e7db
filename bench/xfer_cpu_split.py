#!/usr/bin/env python3
"""Where each end of a `kbypass xfer` transfer spends its CPU: the pump's parts in CPU seconds (the
thread's own clock, CLOCK_THREAD_CPUTIME_ID), not wall time, so a busy machine's preemption does not land
in whichever function was running (cProfile and perf_counter wrappers both charged it there: 1.38 s of a
4 s sender "in" select, 114 us "in" each 64 KiB zlib.crc32 that takes 16 us here).

Both ends run as in bench/xfer_vs_iperf3.py (receiver in host b on CPU 1, sender in host a on CPU 0,
--loss on both ends), each wrapped: every listed method charges the CPU time of its calls to its part
(inclusive: a part's nested parts are in it too; the table indents them; datagrams_to_send and the
send-out include the calls the mid-batch ACKs make). Per end: the process's CPU
(start-up included) and the pump's, each part's CPU seconds, its share of the pump's CPU, microseconds per
call and calls per GB delivered. "port receive and the rest" is the frames' intake minus its paths and the
mid-batch ACKs: what AfXdpPort.receive, the batch and the frames' return cost.

Usage (the testbed is brought up and down with --prefix; run under the benchmark lock):
    flock /tmp/kb-bench.lock .venv/bin/python bench/xfer_cpu_split.py --prefix oi --mtu 65535 --loss 0.01

What it showed on 2026-12-07 (MTU 65535, 4 s, busy 2-core machine), the sender, loss-free / 1% loss:
the pump 1.88 / 2.42 CPU s, of it the send-out (the C lane's CRC and copy into UMEM, then the copy-mode
TX kick, where the kernel also runs the veth peer's XDP and the copy into the receiver's UMEM) 68 / 72%,
the ACKs through the Connection 6.4 / 7.7% (64-79 us each batch), datagrams_to_send 7.4 / 6.4%, the port's
receive side ~8%: the per-ACK Python is not what bounds the jumbo sender.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PORT = 7000
# (part, module, class, method, depth in the table): the pump and what it calls, in call order
PARTS = (
    ("pump", "kbypass.xfer.endpoint", "TransportEndpoint", "pump", 0),
    ("frames' intake", "kbypass.xfer.datapath", "DataPath", "_take_frames", 1),
    ("C runs of in-order data (rx_run)", "kbypass.xfer.datapath", "DataPath", "_take_run", 2),
    ("general path (decode, Connection)", "kbypass.xfer.datapath", "DataPath", "_take_general", 2),
    ("Connection.receive_datagrams", "kbypass.proto.transport.connection", "Connection", "receive_datagrams", 3),
    ("ACKs sent mid-batch (ack_due)", "kbypass.xfer.datapath", "DataPath", "_ack_early", 2),
    ("timers", "kbypass.proto.transport.recovery", "LossRecovery", "next_timer", 1),
    ("datagrams_to_send", "kbypass.proto.transport.output", "Output", "datagrams_to_send", 1),
    ("send-out (encode, frames, TX kick)", "kbypass.xfer.datapath", "DataPath", "_send_out", 1),
    ("events to the application", "kbypass.xfer.endpoint", "TransportEndpoint", "_collect", 1),
)
REST = "port receive and the rest"


# ---------------------------------------------------------------- the child: one wrapped end
def child_main(out: str, argv: list[str]) -> int:
    import importlib

    acc = {}
    clock = time.thread_time
    for part, mod, cls_name, meth, _ in PARTS:
        cls = getattr(importlib.import_module(mod), cls_name, None)
        if cls is None or meth not in cls.__dict__:  # the method moved: say so rather than charge nothing
            raise SystemExit(f"xfer_cpu_split: {mod}.{cls_name}.{meth} is gone; update PARTS")
        acc[part] = cell = [0.0, 0]
        setattr(cls, meth, _charged(cls.__dict__[meth], cell, clock))
    t0 = time.process_time()
    from kbypass.cli import main

    try:
        rc = main(argv)
    finally:
        Path(out).write_text(json.dumps({"process_cpu": time.process_time() - t0, "parts": acc}))
    return rc or 0


def _charged(fn, cell, clock):
    def wrapper(*a, **k):
        t = clock()
        try:
            return fn(*a, **k)
        finally:
            cell[0] += clock() - t
            cell[1] += 1
    return wrapper


# ---------------------------------------------------------------- the parent
def table(name: str, rec: dict, nbytes: int) -> list[dict]:
    parts = rec["parts"]
    pump = parts["pump"][0] or 1e-9
    gb = max(nbytes, 1) / 1e9
    rows = [{"part": "process (start-up included)", "depth": 0, "cpu_s": rec["process_cpu"], "calls": 0}]
    for part, _, _, _, depth in PARTS:
        cpu, calls = parts[part]
        rows.append({"part": part, "depth": depth, "cpu_s": cpu, "calls": calls})
        if part == "ACKs sent mid-batch (ack_due)":
            rest = parts["frames' intake"][0] - sum(parts[p][0] for p in (
                "C runs of in-order data (rx_run)", "general path (decode, Connection)", part))
            rows.append({"part": REST, "depth": 2, "cpu_s": max(rest, 0.0), "calls": 0})
    for r in rows:
        r["end"] = name
        r["share_of_pump"] = round(r["cpu_s"] / pump, 3)
        r["us_per_call"] = round(r["cpu_s"] / r["calls"] * 1e6, 1) if r["calls"] else None
        r["calls_per_gb"] = round(r["calls"] / gb) if r["calls"] else None
        r["cpu_s_per_gb"] = round(r["cpu_s"] / gb, 3)
        r["cpu_s"] = round(r["cpu_s"], 3)
    return rows


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child_main(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefix", default=os.environ.get("KBYPASS_TESTBED", "cs"))
    ap.add_argument("--mtu", type=int, default=65535)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--digest", default="crc64", choices=("sha256", "crc64", "none"))
    ap.add_argument("--json", default=None, help="write the rows here too")
    args = ap.parse_args()
    from kbypass.host import testbed

    a, b = testbed.up(testbed.TestbedConfig(prefix=args.prefix, queues=2, mtu=args.mtu))
    tmp = f"/tmp/xfer_cpu_split.{os.getpid()}"
    common = ["--json", "--digest", args.digest] + (["--loss", str(args.loss)] if args.loss else [])
    me = [sys.executable, __file__, "--child"]
    env = {**os.environ, "KBYPASS_TESTBED": args.prefix}
    try:
        recv = subprocess.Popen([*me, f"{tmp}.recv", "xfer", "recv", "--host", "b", "--port", str(PORT), "--cpu", "1",
                                 "--idle-timeout", "30", *common],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            line = recv.stderr.readline()
            if "listening" not in line:
                raise SystemExit(f"receiver: {line}{recv.stderr.read()}")
            send = subprocess.run([*me, f"{tmp}.send", "xfer", "send", "--host", "a", "--dst", f"{b.ipv4}:{PORT}",
                                   "-t", str(args.seconds), "--cpu", "0", *common],
                                  capture_output=True, text=True, timeout=args.seconds + 120, env=env)
            rout, rerr = recv.communicate(timeout=60)
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.wait()
    finally:
        testbed.down(args.prefix)
    if send.returncode or recv.returncode:
        raise SystemExit(f"xfer failed: send {send.stderr.strip()[-300:]} / recv {rerr.strip()[-300:]}")
    s, r = json.loads(send.stdout), json.loads(rout)
    if s.get(args.digest) != r.get(args.digest):
        raise SystemExit("xfer delivered different bytes")
    rows = []
    for end in ("send", "recv"):
        path = Path(f"{tmp}.{end}")
        rows += table(end, json.loads(path.read_text()), r["bytes"])
        path.unlink()
    print(f"MTU {args.mtu}, loss {args.loss}, {args.seconds} s: {r['goodput_bps'] / 1e6:,.0f} Mbit/s, "
          f"{r['bytes'] / 1e9:.2f} GB, retransmits {s['retransmits']} (busy machine: compare within a run)")
    print(f"{'end':5} {'part':42} {'CPU s':>7} {'of pump':>8} {'us/call':>8} {'calls/GB':>9} {'s/GB':>6}")
    for x in rows:
        print(f"{x['end']:5} {'  ' * x['depth'] + x['part']:42} {x['cpu_s']:7.3f} {x['share_of_pump']:8.1%} "
              f"{x['us_per_call'] if x['us_per_call'] is not None else '':>8} "
              f"{x['calls_per_gb'] if x['calls_per_gb'] is not None else '':>9} {x['cpu_s_per_gb']:6.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"goodput_bps": r["goodput_bps"], "bytes": r["bytes"], "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
