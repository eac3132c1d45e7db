"""Threaded NAPI placement on the testbed (what the benchmarks' "sut" placement relies on)."""

import os

import pytest

from kbypass.bench import kit as benchkit
from kbypass.host import napi

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


def test_each_hosts_threads_are_its_own(testbed_hosts):
    """Both ends threaded at once: host a's NAPI threads and host b's are found apart (the thread names
    differ only in "-a-"/"-b-"), and the session's testbed prefix is within the cap that guarantees it."""
    from kbypass.host import testbed

    a, b = testbed_hosts
    assert len(a.netns[:-2]) <= testbed.MAX_PREFIX
    try:
        for h in (a, b):
            napi.set_threaded(h.iface, h.netns, True)
        ta, tb = napi.threads(a.iface), napi.threads(b.iface)
        assert ta and tb and not set(ta) & set(tb)
        for pid in ta + tb:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            mine = a if pid in ta else b
            assert napi.is_thread_of(comm, mine.iface), comm
    finally:
        for h in (a, b):
            napi.set_threaded(h.iface, h.netns, False)
    assert _threaded(a) == "0" and _threaded(b) == "0"


def test_pinning_to_a_cpu_that_is_not_there_is_one_clear_error(testbed_hosts):
    from kbypass.errors import EnvironmentProblem

    a, b = testbed_hosts
    missing = max(napi.online_cpus()) + 1
    with pytest.raises(EnvironmentProblem, match=f"CPU {missing}"):
        napi.place(b.iface, b.netns, missing)
    assert _threaded(b) == "0", "a failed placement left threaded NAPI on"
