#!/usr/bin/env python3
"""Where one TCP ping-pong round trip's time goes on the kbypass side: `kbypass pingpong server --tcp`'s loop
run in this process with time stamps at its stages, against `sockperf ping-pong --tcp` from host a.

Each round trip is cut at: the request's frame off the RX ring (RX) -> the connection has taken it (C header
prediction + TcpConnection.receive_hit) -> the sockets have its events -> the message is framed -> the answer
is built -> the answer's frame is handed to the lane (send_one: on veth, the TX kick runs the peer's receive
path, the kernel client's TCP included) -> the answer's send() returned (re-arming the prediction and the
timers, off the round trip's path) ... -> the next request's RX (the client's turnaround and our wake-up). The
stamps cost a little themselves; the machine is shared: read the stages against each other, within a run.

    .venv/bin/python bench/tcp_rtt_breakdown.py [--prefix P] [--poll busy|wakeup] [--seconds 4]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

from kbypass.apps import pingpong
from kbypass.apps.tcpmsg import TcpMessages
from kbypass.endpoint.tcpio import TcpHost
from kbypass.host import testbed

PORT = 11412
STAGES = ("RX", "taken by the connection", "events to the sockets", "message framed", "answer built",
          "answer to the lane", "kick returned", "send() returned")


def _stamp(obj, name: str, label: str, log: list) -> None:
    orig = getattr(obj, name)

    def stamped(*a, **k):
        r = orig(*a, **k)
        log.append((label, time.perf_counter_ns()))
        return r
    setattr(obj, name, stamped)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefix", default=os.environ.get("KBYPASS_TESTBED", "kbt"))
    ap.add_argument("--poll", choices=("busy", "wakeup"), default="busy")
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    os.environ["KBYPASS_TESTBED"] = args.prefix
    a, b = testbed.up(testbed.TestbedConfig(prefix=args.prefix, queues=2))
    os.sched_setaffinity(0, {1})
    log: list = []
    ns = time.perf_counter_ns
    with TcpHost(b.iface, b.ipv4, netns=b.netns, poll=args.poll) as host:
        ep = TcpMessages(host, listener=host.listen(PORT))
        for lane in host._lanes:
            def rx(orig=lane.receive_udp):
                f = orig()
                if f is not None:
                    log.append(("RX", ns()))
                return f
            lane.receive_udp = rx
        _stamp(host, "_predicted", "taken by the connection", log)
        _stamp(host, "receive", "events to the sockets", log)
        _stamp(ep, "_take", "message framed", log)
        _stamp(pingpong, "answer", "answer built", log)
        lane0 = host._lanes[0]

        def send_one(f, orig=lane0.send_one):
            log.append(("answer to the lane", ns()))
            r = orig(f)
            log.append(("kick returned", ns()))
            return r
        lane0.send_one = send_one
        _stamp(ep, "sendto", "send() returned", log)
        client = subprocess.Popen(["ip", "netns", "exec", a.netns, "taskset", "-c", "0", "sockperf", "ping-pong",
                                   "--tcp", "-i", b.ipv4, "-p", str(PORT), "-t", str(int(args.seconds)), "-m", "64"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        res = pingpong.serve(ep, duration=args.seconds + 1.5, idle_timeout=3.0)
        out = client.communicate()[0]
        ep.close()
    pairs = collections.defaultdict(list)
    last_sent = None
    seen: set | None = None  # the stages stamped since a request's RX (idle loops and pure ACKs stamp them too)
    for (la, ta), (lb, tb) in zip(log, log[1:]):
        if la == "RX":
            seen = {"RX"}
            if last_sent is not None:
                pairs[("send() returned", "RX")].append(ta - last_sent)
                last_sent = None
        if seen is not None and la in seen and lb not in seen and (la, lb) in zip(STAGES, STAGES[1:]):
            pairs[(la, lb)].append(tb - ta)
            seen.add(lb)
        if lb == "send() returned":
            last_sent, seen = tb, None
    print(f"{res.received} round trips answered, poll {args.poll}; sockperf: "
          + " ".join(line.split("sockperf: ")[-1] for line in out.splitlines() if "percentile 50.000" in line))
    print("stage (p50 over the round trips, us)")
    for (la, lb) in [*zip(STAGES, STAGES[1:]), ("send() returned", "RX")]:
        v = sorted(pairs.get((la, lb), []))
        if v:
            print(f"  {la:>25s} -> {lb:25s} {v[len(v) // 2] / 1000:8.2f}   (n={len(v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
