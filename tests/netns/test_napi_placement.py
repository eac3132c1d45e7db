"""Threaded NAPI placement on the testbed (what the benchmarks' "sut" placement relies on)."""

import os

import pytest

from kbypass import benchkit, napi

pytestmark = pytest.mark.netns


def _threaded(host) -> str:
    import subprocess

    return subprocess.run(["ip", "netns", "exec", host.netns, "cat", f"/sys/class/net/{host.iface}/threaded"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_receive_work_moves_to_a_pinned_thread_and_back(testbed_hosts):
    a, b = testbed_hosts
    cpu = os.cpu_count() - 1
    pids = napi.place(b.iface, b.netns, cpu)
    try:
        assert _threaded(b) != "0"
        assert pids, "the testbed veth has GRO on, so it has NAPI instances: each should get a thread"
        assert all(os.sched_getaffinity(pid) == {cpu} for pid in pids)
        assert napi.threads(a.iface) == []  # only the interface asked for
    finally:
        benchkit.place_receive_work(b, "sender")
    assert _threaded(b) == "0"
    with pytest.raises(ValueError, match="placement"):
        benchkit.place_receive_work(b, "elsewhere")
