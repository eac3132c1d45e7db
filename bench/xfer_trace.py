#!/usr/bin/env python3
"""Where a `kbypass xfer` transfer spends its time: a timeline of both ends, one record per pump() turn.

The sender's records: time, frames taken (ACKs), datagrams sent (new data and retransmissions), the
congestion window, the pipe (RFC 6675: in flight, neither SACKed nor deemed lost), SACKed bytes, the
pacer's allowance, the peer's window room, srtt, and the loss-recovery counters; the receiver's: time,
frames taken, datagrams sent (ACKs), time spent in the turn. From them it says what bounded the sender
in each turn (the window, the pacer, the peer's window, nothing to send), how long the ACK stream went
silent and how often, and how long the receiver went without a turn (descheduled).

Usage (the testbed is brought up and down with --prefix, at --mtu, loss injected as the bench does):
    .venv/bin/python bench/xfer_trace.py --prefix ic --mtu 65535 --loss 0.01 --seconds 3 [--json FILE]

(Run under the benchmark lock: flock /tmp/kb-bench.lock ...)

What it showed on 2026-12-06 (MTU 65535, 1% loss, busy 2-core machine, 3 s): the sender held back by
its pacer 81-86% of the time, by the window 5-11%, by the peer's window 4-8%; the ACK stream silent for
2 ms or more 1.7-1.9 s of the 3 (0.9 s loss-free), mostly while the receiver was inside one pump() turn
(36-47 turns with frames lasting over 5 ms, 0.5 s in all; up to 160 ms: the receiving process
descheduled, or its SHA-256 thread holding the pinned core) or had acknowledged and the ACK had not
reached the sender's loop yet; RTOs (1-5 a run) came after 25-40 ms of such silence and the next ACK
showed nearly all of them spurious (Eifel undid them), retransmissions matched the frames dropped (no
flight resent). One ACK per receive batch of up to 64 jumbo datagrams was part of it (ConnConfig.ack_bytes).
The simulator (sim.measure_goodput, same config, no scheduling noise) loses ~1% of the goodput to 1% loss:
the protocol is not what 1% loss costs here, the two processes' scheduling is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = 7000


# ---------------------------------------------------------------- the child: one end, traced
def traced_main(out_path: str, argv: list[str]) -> int:
    """Run `kbypass ARGV` with TransportEndpoint.pump wrapped to record a timeline into out_path."""
    from kbypass import cli
    from kbypass.xfer import endpoint as ep_mod

    records: list[tuple] = []
    orig = ep_mod.TransportEndpoint.pump
    clock = time.monotonic

    def pump(self, timeout: float = 0.0) -> bool:
        t0 = clock()
        c = self.conn
        st0 = (c.stats.datagrams_received, c.stats.datagrams_sent, c.stats.retransmits) if c else (0, 0, 0)
        moved = orig(self, timeout)
        c = self.conn
        if c is not None:
            sb, cc, s = c.sbuf, c.cc, c.stats
            pipe = sum(len(g.data) for g in sb.inflight if not g.sacked and not g.lost) if sb.inflight else 0
            records.append((round(t0, 6), round(clock() - t0, 6), s.datagrams_received - st0[0],
                            s.datagrams_sent - st0[1], s.retransmits - st0[2], cc.cwnd, pipe, sb.sacked_bytes,
                            sb.inflight_bytes, int(getattr(cc, "_tokens", 0)), c._peer_right - sb.snd_nxt,
                            sb.unsent, c.rtt.srtt, s.timeouts, s.spurious_timeouts, s.tail_probes,
                            int(getattr(cc, "pacing_rate", 0)), int(getattr(cc, "btl_bw", 0)),
                            getattr(cc, "mode", ""), round(timeout, 6)))
        return moved

    ep_mod.TransportEndpoint.pump = pump
    if os.environ.get("XFER_TRACE_ACK_BYTES"):  # --ack-bytes: the receiver's ConnConfig.ack_bytes, to compare
        default_config = ep_mod.default_config
        ack_bytes = int(os.environ["XFER_TRACE_ACK_BYTES"])
        ep_mod.default_config = lambda *a, **kw: default_config(*a, **{"ack_bytes": ack_bytes, **kw})
    try:
        return cli.main(argv)
    finally:
        Path(out_path).write_text(json.dumps(records))


FIELDS = ("t", "busy", "rx", "tx", "retx", "cwnd", "pipe", "sacked", "inflight", "tokens", "room", "unsent",
          "srtt", "timeouts", "spurious", "tlp", "pacing", "btl_bw", "mode", "timeout")


# ---------------------------------------------------------------- analysis
def gaps(times: list[float], threshold: float) -> dict:
    d = [b - a for a, b in zip(times, times[1:]) if b - a >= threshold]
    return {"count": len(d), "total_ms": round(sum(d) * 1e3, 1), "max_ms": round(max(d) * 1e3, 2) if d else 0.0}


def _away(records: list[dict], threshold: float) -> dict:
    d = [b["t"] - a["t"] - a["busy"] for a, b in zip(records, records[1:])]
    d = [x for x in d if x >= threshold]
    return {"count": len(d), "total_ms": round(sum(d) * 1e3, 1), "max_ms": round(max(d) * 1e3, 2) if d else 0.0}


def long_turns(records: list[dict], threshold: float) -> dict:
    """pump() turns that took frames and lasted longer than `threshold`: the ACK waits for the turn's end."""
    d = [r["busy"] for r in records if r["rx"] and r["busy"] >= threshold]
    return {"count": len(d), "total_ms": round(sum(d) * 1e3, 1), "max_ms": round(max(d) * 1e3, 2) if d else 0.0}


def analyse(send: list[dict], recv: list[dict], mss: int) -> dict:
    span = send[-1]["t"] - send[0]["t"]
    # what held the sender at the end of each turn, weighted by the time until the next turn
    bound = {"window": 0.0, "pacer": 0.0, "peer_window": 0.0, "nothing": 0.0}
    for r, nxt in zip(send, send[1:]):
        dt = nxt["t"] - r["t"]
        if not r["unsent"] and r["pipe"] < r["cwnd"]:
            bound["nothing"] += dt
        elif r["room"] < mss:
            bound["peer_window"] += dt
        elif r["pipe"] + mss > r["cwnd"]:
            bound["window"] += dt
        else:
            bound["pacer"] += dt
    ack_times = [r["t"] for r in send if r["rx"]]
    recv_turns = [r["t"] for r in recv]
    cw = [r["cwnd"] for r in send]
    return {
        "seconds": round(span, 3),
        "sender_bound_share": {k: round(v / span, 3) for k, v in bound.items()},
        "ack_silences_over_2ms": gaps(ack_times, 2e-3),
        "ack_silences_over_10ms": gaps(ack_times, 10e-3),
        "receiver_turn_gaps_over_2ms": gaps(recv_turns, 2e-3),
        "receiver_turn_gaps_over_10ms": gaps(recv_turns, 10e-3),
        "sender_turn_gaps_over_2ms": gaps([r["t"] for r in send], 2e-3),
        "sender_away_from_pump_over_10ms": _away(send, 10e-3),
        "receiver_away_from_pump_over_10ms": _away(recv, 10e-3),
        "receiver_turns_with_frames_over_5ms": long_turns(recv, 5e-3),
        "cwnd_median": statistics.median(cw), "pipe_median": statistics.median(r["pipe"] for r in send),
        "sacked_median": statistics.median(r["sacked"] for r in send),
        "srtt_ms_median": round(statistics.median(r["srtt"] for r in send if r["srtt"]) * 1e3, 3),
        "timeouts": send[-1]["timeouts"], "spurious": send[-1]["spurious"], "tail_probes": send[-1]["tlp"],
        "sender_turns": len(send), "sender_busy_share": round(sum(r["busy"] for r in send) / span, 3),
        "receiver_turns": len(recv), "receiver_busy_share": round(sum(r["busy"] for r in recv) / span, 3),
        "receiver_frames_per_busy_turn": round(statistics.mean([r["rx"] for r in recv if r["rx"]] or [0]), 1),
    }


def timeouts_context(send: list[dict], window: float = 0.03) -> list[list[dict]]:
    """The records around each RTO: what the pipe and the ACK stream did before it fired."""
    out = []
    for i, r in enumerate(send[1:], 1):
        if r["timeouts"] > send[i - 1]["timeouts"]:
            t = r["t"]
            out.append([{k: x[k] for k in ("t", "rx", "tx", "retx", "cwnd", "pipe", "sacked", "inflight", "srtt")}
                        | {"t": round(x["t"] - t, 4)} for x in send if t - window <= x["t"] <= t + window / 3])
    return out


# ---------------------------------------------------------------- the parent
def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return traced_main(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefix", default=os.environ.get("KBYPASS_TESTBED", "tr"))
    ap.add_argument("--mtu", type=int, default=65535)
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--ack-bytes", type=int, default=None,
                    help="both ends' ConnConfig.ack_bytes (default: xfer's own)")
    ap.add_argument("--json", default=None, help="write the records and the analysis here")
    args = ap.parse_args()
    from kbypass.host import testbed

    a, b = testbed.up(testbed.TestbedConfig(prefix=args.prefix, queues=2, mtu=args.mtu))
    tmp = Path(f"/tmp/xfer_trace.{os.getpid()}")
    common = ["--json"] + (["--loss", str(args.loss)] if args.loss else [])
    me = [sys.executable, __file__, "--child"]
    if args.ack_bytes is not None:
        os.environ["XFER_TRACE_ACK_BYTES"] = str(args.ack_bytes)
    try:
        recv = subprocess.Popen(["taskset", "-c", "1", *me, f"{tmp}.recv", "xfer", "recv", "--host", "b", "--port",
                                 str(PORT), "--idle-timeout", "30", *common],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = recv.stderr.readline()
        if "listening" not in line:
            raise SystemExit(f"receiver: {line}{recv.stderr.read()}")
        send = subprocess.run(["taskset", "-c", "0", *me, f"{tmp}.send", "xfer", "send", "--host", "a", "--dst",
                               f"{b.ipv4}:{PORT}", "-t", str(args.seconds), *common],
                              capture_output=True, text=True, timeout=args.seconds + 120)
        rout, _ = recv.communicate(timeout=60)
    finally:
        testbed.down(args.prefix)
    s = json.loads(send.stdout)
    r = json.loads(rout)
    srec = [dict(zip(FIELDS, x)) for x in json.loads(Path(f"{tmp}.send").read_text())]
    rrec = [dict(zip(FIELDS, x)) for x in json.loads(Path(f"{tmp}.recv").read_text())]
    for p in (f"{tmp}.send", f"{tmp}.recv"):
        os.unlink(p)
    t0 = srec[0]["t"]
    for x in srec + rrec:
        x["t"] -= t0
    # the transfer proper: from the first datagram that carried data to the last
    srec = [x for x in srec if x["inflight"] or x["unsent"]]
    result = {"goodput_mbps": round(r["goodput_bps"] / 1e6, 1), "retransmits": s["retransmits"],
              "timeouts": s["timeouts"], "spurious_timeouts": s["spurious_timeouts"], "tail_probes": s["tail_probes"],
              "analysis": analyse(srec, rrec, s["datagram"]), "rto_context": timeouts_context(srec)[:3]}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result | {"send": srec, "recv": rrec}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
