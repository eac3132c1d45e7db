#!/usr/bin/env python3
"""The sans-IO TCP's own cost (kbypass.proto.tcp), in one run beside its in-house anchor, the reliable
transport's sans-IO (kbypass.proto.transport), both in pure Python:

    bulk      N bytes one way over a lossless simulated link, every segment encoded and parsed (checksums
              included), the receiver's ACKs too: CPU microseconds per data segment and MB/s of CPU
    rr        request/response of 100-byte messages on an established connection, no codec:
              microseconds per round trip (two data segments, two application events)

The ratios tcp/transport say how lean the TCP path is next to the transport the project already runs at
line rate with its C lane; absolute numbers depend on the machine (it is shared: compare within a run).

Usage:  .venv/bin/python bench/tcp_sansio.py [--mb 20] [--rr 20000] [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from kbypass.proto import tcp
from kbypass.proto.faults import FaultyLink
from kbypass.proto.tcp.sim import App, TcpPair
from kbypass.proto.transport import ConnConfig, DataReceived
from kbypass.proto.transport.sim import PairSim


def tcp_bulk(size: int) -> tuple[float, int]:
    data = random.randbytes(size)
    p = TcpPair(FaultyLink(1), FaultyLink(2), client=App(data=data), server=App())
    t = time.process_time()
    p.run()
    dt = time.process_time() - t
    assert p.server.received == data
    return dt, p.client.conn.stats.segs_out


def transport_bulk(size: int) -> tuple[float, int]:
    data = random.randbytes(size)
    sim = PairSim(FaultyLink(1), FaultyLink(2), ConnConfig())
    sim.client.stream = data
    sim.start()
    t = time.process_time()
    sim.run(lambda s: s.client.finished and s.server.finished)
    dt = time.process_time() - t
    assert bytes(sim.server.received) == data
    return dt, sim.client.conn.stats.datagrams_sent


def tcp_rr(n: int) -> float:
    p = TcpPair(client=App(shutdown_when_sent=False), server=App(shutdown_when_sent=False))
    p.run(until=1, stop=lambda p: p.server.conn is not None and p.client.conn.state is tcp.State.ESTABLISHED)
    c, s = p.client.conn, p.server.conn
    now, q, r = 1.0, b"q" * 100, b"r" * 100
    t = time.process_time()
    for _ in range(n):
        now += 5e-5
        c.send(q)
        for seg in c.segments_to_send(now):
            s.receive(seg, now)
        s.next_event()
        s.send(r)
        for seg in s.segments_to_send(now):
            c.receive(seg, now)
        c.next_event()
        c.segments_to_send(now)
    return (time.process_time() - t) / n


def transport_rr(n: int) -> float:
    sim = PairSim(FaultyLink(1), FaultyLink(2), ConnConfig())
    sim.client.close_when_done = sim.server.close_when_done = False
    sim.start()
    sim.run(lambda s: s.client.connected and s.server.connected, max_time=5)
    c, s = sim.client.conn, sim.server.conn
    now, q, r = sim.now + 1, b"q" * 100, b"r" * 100
    t = time.process_time()
    for _ in range(n):
        now += 5e-5
        c.send(q, now)
        for d in c.datagrams_to_send(now):
            s.receive_datagram(d, now)
        while not isinstance(s.next_event(), (DataReceived, type(None))):
            pass
        s.send(r, now)
        for d in s.datagrams_to_send(now):
            c.receive_datagram(d, now)
        c.next_event()
        c.datagrams_to_send(now)
    return (time.process_time() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--rr", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    size = a.mb * 1_000_000
    rows = {"tcp bulk us/segment": [], "transport bulk us/datagram": [], "tcp bulk MB/s": [],
            "transport bulk MB/s": [], "tcp rr us": [], "transport rr us": []}
    for _ in range(a.runs):
        dt, segs = tcp_bulk(size)
        rows["tcp bulk us/segment"].append(dt / segs * 1e6)
        rows["tcp bulk MB/s"].append(size / dt / 1e6)
        dt, dgrams = transport_bulk(size)
        rows["transport bulk us/datagram"].append(dt / dgrams * 1e6)
        rows["transport bulk MB/s"].append(size / dt / 1e6)
        rows["tcp rr us"].append(tcp_rr(a.rr) * 1e6)
        rows["transport rr us"].append(transport_rr(a.rr) * 1e6)
    med = {k: statistics.median(v) for k, v in rows.items()}
    med["ratio bulk MB/s tcp/transport"] = med["tcp bulk MB/s"] / med["transport bulk MB/s"]
    med["ratio rr us tcp/transport"] = med["tcp rr us"] / med["transport rr us"]
    for k, v in med.items():
        print(f"{k:34s} {v:10.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "median": med, "runs": rows}, f, indent=1)


if __name__ == "__main__":
    main()
