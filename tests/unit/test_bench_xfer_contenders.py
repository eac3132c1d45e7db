"""bench/xfer_vs_iperf3.py --contenders: each contender once, unknown names refused."""

from __future__ import annotations

from tests.kb import bench_script


def _script():
    return bench_script("xfer_vs_iperf3")


def test_contenders_named_twice_run_once():
    pick = _script().pick_contenders
    assert pick("xfer,xfer", False) == ["xfer"]
    assert pick(" tcp cubic , xfer,tcp cubic", False) == ["tcp cubic", "xfer"]


def test_contenders_default_and_refused():
    pick = _script().pick_contenders
    assert pick(None, False) == ["tcp cubic", "tcp bbr", "udp", "xfer"]
    assert pick(None, True)[-1] == "xfer reno"
    assert pick("xfer reno", False) == ["xfer reno"]
    assert pick("xfer,quic", False) == [] and pick(" , ", False) == []


def test_a_baseline_runs_beside_xfer():
    pick = _script().pick_contenders
    assert pick("tcp cubic,xfer", False, True) == ["tcp cubic", "xfer", "xfer baseline"]
    assert pick(None, False, True)[-2:] == ["xfer", "xfer baseline"]
    assert pick("tcp bbr", False, True) == ["tcp bbr"]  # nothing to compare it with


def test_run_delay_counts_the_time_a_process_waited_for_its_core():
    """Two processes spinning on one core for 0.6 s: each waits about half of it to run, and RunDelay's
    samples say so (the bench's xfer rows carry each end's, to tell a busy machine's runs apart)."""
    import subprocess
    import sys

    script = _script()
    spin = ("import os, time; os.sched_setaffinity(0, {0}); t = time.monotonic()\n"
            "while time.monotonic() - t < 0.6: pass")
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    with script.RunDelay([p.pid for p in procs], interval=0.01) as waited:
        for p in procs:
            p.wait(timeout=30)
    assert set(waited) == {p.pid for p in procs}
    assert all(0.1 <= w <= 2.0 for w in waited.values()), waited
    assert script.run_delay(procs[0].pid) is None  # gone: its counters went with it
