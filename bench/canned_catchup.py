#!/usr/bin/env python3
"""The Python catch-up after canned answers sent in C (TcpHost._answered), timed without a network.

16 established server connections (as wrk -c16 keeps) each take keep-alive exchanges: per burst, one request
per connection that acks the previous answer, told to the host as kbypass._fasttcp.rx_canned reports it
(the hit tuples: the frame is not sent here). Reports microseconds per exchange; --profile prints cProfile's
top entries instead. The machine is shared: compare a change against its parent in the same sitting.

Usage:  .venv/bin/python bench/canned_catchup.py [--bursts 20000] [--connections 16] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import time

from kbypass import backend
from kbypass.endpoint.tcp import TcpSocket
from kbypass.endpoint.tcpio import TcpHost
from kbypass.proto import tcp
from kbypass.proto.tcp import sim
from kbypass.proto.tcp.segment import ACK, PSH

ETH = bytes.fromhex("020000000001" "020000000002" "0800")
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
ANSWER = (b"A" * 1200, 200, 1024)
M = 0xFFFFFFFF


def server_conn() -> tuple:
    p = sim.TcpPair(client=sim.App(shutdown_when_sent=False), server=sim.App(shutdown_when_sent=False), seed=5)
    p.run(until=1, stop=lambda p: p.server.conn is not None and p.server.conn.state is tcp.State.ESTABLISHED)
    p.run(until=p.now + 0.01)
    return p.server.conn, p.now


def host_with(n: int, fast) -> tuple:
    """A TcpHost with only what _answered touches (no interface), and n sockets armed for canned answers."""
    host = TcpHost.__new__(TcpHost)
    host.ip = sim.SERVER_IP
    host.counters = dict.fromkeys(("rx_segments", "rx_predicted", "tx_segments", "rx_canned"), 0)
    host._scheduled, host._timers, host._seq, host._dirty = {}, [], 0, set()
    host.eth_head = lambda ip: ETH  # every peer on link: TcpSocket.answered re-arms with it
    base, now = server_conn()
    socks = []
    for i in range(n):
        sock = TcpSocket(host, copy.deepcopy(base), (sim.CLIENT_IP, sim.CLIENT_PORT + i), sim.SERVER_PORT)
        sock.canned_prediction = fast.Canned()
        sock.canned = {GET: ANSWER}  # the application's table (TcpSocket.answered arms again from it)
        sock.canned_prediction.arm(ETH, {GET: ANSWER}, *sock.conn.canned_state())
        socks.append(sock)
    return host, socks, now


def hit(sock, now_ms: int) -> tuple:
    c = sock.conn
    return (sock, c.rcv_nxt & M, c.sq.snd_max & M, ACK | PSH, c.snd_wnd >> c.snd_wscale, now_ms & M,
            c.ts_recent, GET, [ANSWER], b"")


def run(host, socks, now: float, bursts: int) -> float:
    t0 = time.perf_counter()
    for _ in range(bursts):
        now += 0.0005
        ms = int(now * 1000)
        host._answered([hit(s, ms) for s in socks], now)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bursts", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    fast = backend.native_module("tcp")
    host, socks, now = host_with(args.connections, fast)
    run(host, socks, now, 200)  # warm
    now += 1.0
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        run(host, socks, now, args.bursts)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return
    took = run(host, socks, now, args.bursts)
    n = args.bursts * args.connections
    bad = [s for s in socks if not s.canned_prediction.armed]
    print(f"{took / n * 1e6:.2f} us per exchange ({n} exchanges, {len(bad)} connections disarmed)")


if __name__ == "__main__":
    main()
