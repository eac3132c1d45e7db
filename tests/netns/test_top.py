"""`kbypass top` on the testbed while `gen` runs into a `sink`, judged by the kernel's counters read another way:
`ethtool -S` (the command) per queue and the control plane's own rule counters; and the live view in tmux."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from kbypass.cp.client import ControlPlaneClient
from tests.kb import kbypass, wait_until

pytestmark = pytest.mark.netns
PORT = 4321
RULE = f"udp dport {PORT} redirect"


def _sink(seconds: float) -> subprocess.Popen:
    # queue 0: the afxdp generator below sends on host a's transmit queue 0, which is host b's queue 0
    return subprocess.Popen([sys.executable, "-m", "kbypass", "sink", "--host", "b", "--rule", f"udp dport {PORT}",
                             "--queue", "0", "-t", str(seconds), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _status(b) -> dict:
    with ControlPlaneClient(b.netns, start=False, command="test_top") as cp:
        return cp.status()


def _rule_packets(b) -> int:
    return sum(r["packets"] for i in _status(b)["interfaces"] for r in i["rules"] if r["rule"] == RULE)


def _ethtool(b, name: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", b.netns, "ethtool", "-S", b.iface], capture_output=True,
                         text=True, check=True).stdout
    return int(re.search(rf"^\s*{name}: (\d+)$", out, re.M).group(1))


def _ready(b, sink: subprocess.Popen) -> None:
    def has_rule() -> bool:
        try:
            return any(r["rule"] == RULE for i in _status(b)["interfaces"] for r in i["rules"])
        except Exception:
            return False

    wait_until(has_rule, "the sink's rule in the control plane", proc=sink)


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


def _gen(b, count: int, rate: str) -> list[str]:
    return ["gen", "--host", "a", "--backend", "afxdp", "--queue", "0", "--rate", rate, "-c", str(count),
            "--dst", f"{b.ipv4}:{PORT}"]


def test_top_rates_match_the_kernels_counters_and_name_the_owners(testbed_hosts):
    a, b = testbed_hosts
    sink = _sink(40)
    top = None
    try:
        _ready(b, sink)
        top = subprocess.Popen([sys.executable, "-m", "kbypass", "top", "--netns", b.netns, "--json",
                                "--interval", "0.5", "-c", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        first = json.loads(top.stdout.readline())  # top's window is open from here on
        rule0, q0 = _rule_packets(b), _ethtool(b, "rx_queue_0_xdp_packets")
        gen = kbypass(*_gen(b, 30000, "20k"), "--json", check=True)
        assert json.loads(gen.stdout)["packets"] == 30000
        time.sleep(0.3)
        rule1, q1 = _rule_packets(b), _ethtool(b, "rx_queue_0_xdp_packets")
        t1 = time.time()
        recs = []
        while not recs or recs[-1]["time"] <= t1:  # until top's window covers the traffic, then Ctrl-C
            line = top.stdout.readline()
            assert line, f"top ended before its window covered the traffic: {top.stderr.read()}"
            recs.append(json.loads(line))
        top.send_signal(signal.SIGINT)
        out, err = top.communicate(timeout=60)
        assert top.returncode == 0, err
        recs += [json.loads(line) for line in out.splitlines()]
        server = _status(b)["server_pid"]
    finally:
        _stop(sink, *([top] if top else []))
    assert recs and recs[-1]["time"] > t1, "top's window must cover the traffic"
    assert rule1 - rule0 == 30000, "every generated frame is the rule's (the kernel's count)"

    def program(rec):
        return next(p for p in rec["programs"] if p["name"] == "kbypass_steer")

    def rule(rec):
        return next(r for r in program(rec)["rules"] if r["rule"] == RULE)

    def queue0(rec):
        return next(i for i in rec["interfaces"] if i["iface"] == b.iface)["queues"]["rx0"]["xdp_packets"]

    top_rule = sum(rule(r)["pps"] * r["seconds"] for r in recs)
    top_q0 = sum(queue0(r) * r["seconds"] for r in recs)
    assert abs(top_rule - (rule1 - rule0)) <= 0.05 * (rule1 - rule0), (top_rule, rule1 - rule0)
    assert abs(top_q0 - (q1 - q0)) <= 0.05 * (q1 - q0), (top_q0, q1 - q0)
    busy = [r for r in recs if rule(r)["pps"] > 5000]
    assert busy, "no interval saw the 20 kpps flow"
    for r in busy:  # one interval, two kernel counters of the same frames: the rule's and the driver's
        assert abs(queue0(r) - rule(r)["pps"]) <= 0.05 * rule(r)["pps"], (queue0(r), rule(r)["pps"])
    link = program(first)["links"][0]
    assert (link["netns"], link["iface"]) == (b.netns, b.iface)
    assert server in {o["pid"] for o in link["owners"]}, "the control plane holds the link"
    mine = [s for s in first["sockets"] if sink.pid in {o["pid"] for o in s["owners"]}]
    assert len(mine) == 1 and mine[0]["netns"] == b.netns and "kbypass sink" in mine[0]["owners"][0]["command"]
    assert set(mine[0]["stats"]) >= {"rx_dropped", "rx_ring_full", "rx_fill_ring_empty_descs"}
    assert all(s["netns"] == b.netns for s in first["sockets"]), "--netns shows that namespace only"
    assert 0 < recs[-1]["self"]["cpu_seconds"]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_top_under_tmux_shows_the_rule_and_queue_rates(testbed_hosts):
    a, b = testbed_hosts
    sock = f"kbtop-{os.getpid()}"  # a tmux server of this test's own
    tmux = ["tmux", "-L", sock]
    sink = _sink(40)
    gen = None
    try:
        _ready(b, sink)
        # the pane's size, not a COLUMNS/LINES this test inherited, is what the view must fit
        cmd = f"env -u COLUMNS -u LINES {sys.executable} -m kbypass top --netns {b.netns} --interval 0.5"
        subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "220", "-y", "70", cmd], check=True)
        gen = subprocess.Popen([sys.executable, "-m", "kbypass", *_gen(b, 200000, "20k")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        seen: dict[str, float] = {}
        panes = [""]

        def shows_rates() -> bool:
            pane = subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True,
                                  text=True).stdout
            panes[:] = [pane]
            for line in pane.splitlines():
                cells = [c.strip() for c in line.split("│")]
                if RULE in cells:  # prog, id, rule, group, pps, Mbit/s, packets
                    seen["rule"] = float(cells[cells.index(RULE) + 2].replace(",", ""))
                if "queue rx0" in cells:  # netns, iface, where, rx pps, ...
                    seen["rx0"] = float(cells[cells.index("queue rx0") + 1].replace(",", ""))
            return seen.get("rule", 0) > 5000 and seen.get("rx0", 0) > 5000

        try:
            wait_until(shows_rates, "top's pane showing the flow's rule and queue 0 at its rate", timeout=30,
                       interval=0.3)
        except AssertionError as e:
            raise AssertionError(f"{e}; gen exit {gen.poll()}; the pane:\n{panes[0]}") from None
        # in the steady state (the first interval may catch the generator starting between the two reads),
        # one record's two counters of the same frames, read a few milliseconds apart, agree
        time.sleep(2)
        seen.clear()
        assert shows_rates(), panes[0]
        assert abs(seen["rule"] - seen["rx0"]) <= 0.05 * seen["rule"], seen
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        _stop(sink, *([gen] if gen else []))


def test_top_shows_where_the_receive_work_runs(testbed_hosts):
    """Threaded NAPI pinned to CPU 0: top names the threads, the CPUs they may run on and the one they ran on."""
    from kbypass.host import napi

    a, b = testbed_hosts
    sink = _sink(30)
    try:
        _ready(b, sink)
        pids = napi.place(b.iface, b.netns, 0)
        assert pids, "the veth has NAPI instances once XDP is attached"
        kbypass(*_gen(b, 2000, "20k"), check=True)  # queue 0's thread runs (there) after its pinning
        rec = json.loads(kbypass("top", "--netns", b.netns, "--json", "--once", check=True).stdout)
        iface = next(i for i in rec["interfaces"] if i["iface"] == b.iface)
        threads = iface["napi_threads"]
        assert {t["pid"] for t in threads} == set(pids)
        assert all(t["cpus"] == "0" for t in threads) and any(t["last_cpu"] == 0 for t in threads), threads
        assert iface["irqs"] == []  # a veth has no interrupt
    finally:
        napi.set_threaded(b.iface, b.netns, False)
        _stop(sink)
