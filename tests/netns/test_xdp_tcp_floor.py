"""The TCP latency floor (bpf/tcppong.bpf.c, kbypass.apps.xdp_tcp_pong) against kernel TCP clients."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from kbypass.bench.latency import sockperf_percentiles

PORT = 11433


def _ss(netns: str, port: int) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htan", f"( sport = :{port} or dport = :{port} )"],
                          capture_output=True, text=True).stdout


def test_the_floor_answers_a_kernel_client_in_the_driver_and_the_connection_closes(testbed_hosts):
    """A kernel client's sockperf messages come back from XDP with the client flag cleared, in sequence (the
    client's kernel takes them: seq, ack and checksums right, odd lengths too), with TSecr = the message's
    TSval and TSvals that never go back; a warm-up message gets an ACK and no answer; the client's ACKs
    never reach the kernel; its close resets the kernel's socket and then its own: nothing lingers."""
    from kbypass.apps.xdp_tcp_pong import HandshakeListener, XdpTcpPong

    a, b = testbed_hosts
    n = 40
    with HandshakeListener(b.ipv4, PORT, netns=b.netns) as listener, \
            XdpTcpPong(b.iface, PORT, netns=b.netns, peer=(a.iface, a.netns)) as pong:
        proc = subprocess.run(["ip", "netns", "exec", a.netns, sys.executable,
                               str(Path(__file__).parent / "tcp_floor_client.py"), a.iface, b.ipv4, str(PORT), str(n)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(proc.stdout)
        end = time.monotonic() + 5
        while (_ss(a.netns, PORT) or _ss(b.netns, PORT).count("ESTAB")) and time.monotonic() < end:
            time.sleep(0.1)
        counters = pong.counters()
        assert listener.accepted == 1 and listener.ended == 1  # the kernel dropped its socket (the RST)
    assert _ss(a.netns, PORT) == ""  # the client's socket is gone too: reset, no FIN_WAIT, no TIME_WAIT
    for i, (q, ans) in enumerate(zip(r["sent"], r["answers"])):
        q = bytes.fromhex(q)
        if i == 3:
            assert ans is None
            continue
        assert bytes.fromhex(ans) == q[:9] + bytes([q[9] & ~1]) + q[10:], i  # only the client flag cleared
    assert counters["answered"] == n - 1 and counters["acked"] == 1 and counters["reset"] >= 1
    segs = r["segments"]
    data_from_client = [s for s in segs if s["from_client"] and s["len"]]
    from_server = [s for s in segs if not s["from_client"] and "S" not in s["flags"] and "R" not in s["flags"]]
    assert len(data_from_client) == n and len(from_server) == n  # n-1 answers and the warm-up's ACK
    synack = next(s for s in segs if not s["from_client"] and "S" in s["flags"])
    last = synack["ts"][0]
    for q, ans in zip(data_from_client, from_server):
        assert ans["seq"] == q["ack"] and ans["ack"] == q["seq"] + q["len"]
        assert ans["ts"][1] == q["ts"][0]  # TSecr echoes the message's TSval
        assert ans["ts"][0] >= last  # TSval in the kernel's clock, never going back
        last = ans["ts"][0]
    assert counters["absorbed"] == sum(1 for s in segs if s["from_client"] and s["flags"] == "A" and s["ack"] >
                                       synack["seq"] + 1)  # every ACK of our answers was kept from the kernel


def test_a_real_sockperf_tcp_client_measures_the_floor(testbed_hosts):
    """`sockperf ping-pong --tcp` against the floor: answers for every message it measured, it exits 0, and its
    connection closes on both hosts (the kernel's socket reset by the program, the client's by the listener)."""
    from kbypass.apps.xdp_tcp_pong import HandshakeListener, XdpTcpPong

    a, b = testbed_hosts
    with HandshakeListener(b.ipv4, PORT, netns=b.netns) as listener, \
            XdpTcpPong(b.iface, PORT, netns=b.netns, peer=(a.iface, a.netns)) as pong:
        p = subprocess.run(["ip", "netns", "exec", a.netns, "sockperf", "ping-pong", "--tcp", "-i", b.ipv4, "-p",
                            str(PORT), "-t", "1", "-m", "64"], capture_output=True, text=True, timeout=60)
        end = time.monotonic() + 5
        while (_ss(a.netns, PORT) or listener.ended < 1) and time.monotonic() < end:
            time.sleep(0.1)
        counters = pong.counters()
        accepted, ended, left = listener.accepted, listener.ended, _ss(a.netns, PORT) + _ss(b.netns, PORT)
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    assert sockperf_percentiles(p.stdout)["p50_us"] > 0
    assert accepted == 1 and counters["answered"] > 1000 and counters["passed"] <= 5, counters
    assert ended == 1 and counters["reset"] >= 1, counters
    assert [ln for ln in left.splitlines() if not ln.startswith("LISTEN")] == [], left  # no socket lingers
