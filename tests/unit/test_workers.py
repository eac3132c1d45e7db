"""The worker team without a network: the plan's checks, the rules a worker holds, processes that each run
pinned and report back, a death reported while the others go on, a refusal that stops the team, and the
capture files merged in time-stamp order."""

from __future__ import annotations

import os
import signal
import struct
import time

import pytest

from kbypass.apps import pcap
from kbypass.apps.workers import WorkerTeam, merge, on_queue, plan
from kbypass.errors import KbypassError, UsageError
from kbypass.steer.rules import Rule


def test_plan_pairs_queues_with_cpus_and_refuses_what_cannot_run() -> None:
    assert plan([0, 1], None, queue_count=2, cpu_count=2) == [(0, 0), (1, 1)]
    assert plan([1, 3], [1, 0], queue_count=4, cpu_count=2) == [(1, 1), (3, 0)]
    assert plan([0, 1], [1, 1], queue_count=4, cpu_count=2) == [(0, 1), (1, 1)]
    for queues, cpus, words in [
        ([0, 1, 2], None, "3 workers but the interface has 2 receive queues"),
        ([0, 0], None, "name a queue twice"),
        ([0, 5], None, "queue 5 does not exist"),
        ([0], [0, 0, 0], "3 CPUs listed but this machine has 2"),
        ([0, 1], [0], "2 workers (queues [0, 1]) but 1 CPUs"),
        ([0], [7], "CPU 7 does not exist"),
        ([], None, "no workers"),
    ]:
        with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace("]", r"\]")):
            plan(queues, cpus, queue_count=2, cpu_count=2)
    with pytest.raises(UsageError, match="3 workers but this machine has 2 CPUs"):
        plan([0, 1, 2], None, queue_count=4, cpu_count=2)


def test_a_worker_holds_the_rules_on_its_queue_and_refuses_one_on_another() -> None:
    assert on_queue(["udp dport 4321", Rule("tcp", queue=1)], 1) == [Rule("udp", dport=4321, queue=1),
                                                                      Rule("tcp", queue=1)]
    with pytest.raises(UsageError, match="names queue 1, but its worker reads queue 0"):
        on_queue(["udp queue 1"], 0)


# Targets run in spawned processes: module-level, importable.

def where_am_i(worker, tag: str) -> dict:
    worker.ready()
    return {"tag": tag, "queue": worker.queue, "pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0))}


def die_on_queue_0(worker) -> dict:
    worker.ready()
    if worker.queue == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(1.0)  # outlives the other one: its death is seen while this one runs
    return {"packets": 5, "bytes": 50, "pps": 1.0}


def refuse_on_queue_1(worker) -> dict:
    if worker.queue == 1:
        raise UsageError("queue 1 of eth9 is taken")
    return sigterm_bounded(worker, 30)  # the team ends it (SIGTERM) when the other one refuses


def wait_for_sigterm(worker) -> dict:
    from kbypass.port.loop import Stopper

    worker.ready()
    with Stopper() as stop:
        while not stop.stopped:
            time.sleep(0.01)
    return {"packets": 1, "pps": 0.0}


def test_each_worker_is_its_own_process_pinned_to_its_cpu() -> None:
    ready = []
    outcomes = WorkerTeam(where_am_i, [0, 1], [1, 0], args=("x",), on_ready=lambda: ready.append(1)).run()
    assert ready == [1]
    assert [(o.queue, o.cpu, o.result["queue"], o.result["cpus"], o.result["tag"]) for o in outcomes] == [
        (0, 1, 0, [1], "x"), (1, 0, 1, [0], "x")]
    assert len({o.pid for o in outcomes} | {os.getpid()}) == 3
    assert all(o.result["pid"] == o.pid for o in outcomes)


def test_a_dead_worker_is_reported_at_once_and_the_other_keeps_going() -> None:
    seen = []
    outcomes = WorkerTeam(die_on_queue_0, [0, 1], [0, 1], on_exit=lambda o: seen.append((o.queue, o.died))).run()
    assert seen == [(0, "killed by SIGKILL"), (1, None)]
    summary = merge(outcomes, ("packets", "bytes"))
    assert (summary["packets"], summary["bytes"], summary["pps"]) == (5, 50, 1.0)
    assert summary["workers"][0]["died"] == "killed by SIGKILL" and summary["workers"][1]["packets"] == 5


def test_a_worker_that_refuses_to_start_stops_the_team_with_its_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(KbypassError, match="queue 1 of eth9 is taken"):
        WorkerTeam(refuse_on_queue_1, [0, 1], [0, 1]).run()
    assert time.monotonic() - t0 < 20  # the other worker was ended, not waited for


def test_stop_ends_every_worker_with_its_result() -> None:
    team = WorkerTeam(wait_for_sigterm, [0, 1], [0, 1])
    team.on_ready = team.stop
    outcomes = team.run()
    assert [o.result for o in outcomes] == [{"packets": 1, "pps": 0.0}] * 2


def write_pcap(path, stamps_ns: list[int]) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", pcap.PCAP_MAGIC_NS, 2, 4, 0, 0, 65535, pcap.LINKTYPE_ETHERNET))
        for t in stamps_ns:
            data = t.to_bytes(8, "big") + bytes(6)
            f.write(struct.pack("<IIII", t // 10**9, t % 10**9, len(data), len(data)) + data)


def test_capture_files_merge_in_time_stamp_order_and_a_torn_tail_ends_a_file(tmp_path) -> None:
    write_pcap(tmp_path / "q0", [1, 5, 9 * 10**9])
    write_pcap(tmp_path / "q1", [2, 3, 10**9, 10**10])
    with open(tmp_path / "q1", "ab") as f:
        f.write(struct.pack("<IIII", 20, 0, 100, 100) + b"torn")  # its writer was killed mid-record
    with pcap.PcapWriter(str(tmp_path / "all")) as out:
        assert pcap.merge([str(tmp_path / "q0"), str(tmp_path / "q1")], out) == 7
    stamps = [t for t, _ in pcap.records(str(tmp_path / "all"))]
    assert stamps == [1, 2, 3, 5, 10**9, 9 * 10**9, 10**10]


def a_second_sigterm_after_the_loop(worker) -> dict:
    """The loop takes the parent's SIGTERM; another comes while the worker finishes (its parent's death, a
    kill): it must not cost the summary."""
    wait_for_sigterm(worker)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)  # the handler has run by now
    return {"packets": 2, "pps": 0.0}


def sigterm_before_the_loop(worker, bound: float) -> dict:
    """A SIGTERM between ready() and the loop: the loop, once it runs, still stops at once."""
    from kbypass.port.loop import Stopper

    worker.ready()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    t0 = time.monotonic()
    with Stopper() as stop:
        while not stop.stopped and time.monotonic() - t0 < bound:
            time.sleep(0.01)
    return {"stopped": stop.stopped}


def sigterm_bounded(worker, bound: float) -> dict:
    """wait_for_sigterm, but ends by itself after `bound` seconds (a SIGTERM that never came)."""
    from kbypass.port.loop import Stopper

    worker.ready()
    t0 = time.monotonic()
    with Stopper() as stop:
        while not stop.stopped and time.monotonic() - t0 < bound:
            time.sleep(0.01)
    return {"stopped": stop.stopped}


def deaf_to_sigterm(worker) -> dict:
    worker.ready()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # hung, as far as a stop goes
    time.sleep(60)
    return {}


def never_ready(worker) -> dict:
    time.sleep(60)
    return {}


def test_a_second_sigterm_while_a_worker_finishes_keeps_its_result() -> None:
    team = WorkerTeam(a_second_sigterm_after_the_loop, [0], [0])
    team.on_ready = team.stop
    assert [(o.result, o.died) for o in team.run()] == [({"packets": 2, "pps": 0.0}, None)]


def test_a_sigterm_before_the_loop_starts_still_stops_the_loop() -> None:
    team = WorkerTeam(sigterm_before_the_loop, [0], [0], args=(20.0,))
    assert [o.result for o in team.run()] == [{"stopped": True}]


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid, self.exitcode = pid, None


def test_stop_sends_each_worker_one_sigterm_however_often_it_is_called(monkeypatch) -> None:
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    team = WorkerTeam(where_am_i, [0, 1], [0, 1])
    team.procs = [FakeProcess(101), FakeProcess(102)]
    team.stop()
    team.stop()  # a second Ctrl-C
    team.procs.append(FakeProcess(103))  # started meanwhile
    team.stop()
    assert sent == [(101, signal.SIGTERM), (102, signal.SIGTERM), (103, signal.SIGTERM)]


def test_ctrl_c_during_start_up_starts_no_more_workers_and_stops_those_started(monkeypatch) -> None:
    from multiprocessing.context import SpawnProcess

    start = SpawnProcess.start

    def start_then_ctrl_c(self) -> None:
        start(self)
        os.kill(os.getpid(), signal.SIGINT)  # the team's handler: stop()

    monkeypatch.setattr(SpawnProcess, "start", start_then_ctrl_c)
    t0 = time.monotonic()
    first, second = WorkerTeam(sigterm_bounded, [0, 1], [0, 1], args=(20.0,)).run()
    assert time.monotonic() - t0 < 15  # the first was stopped, not left to its own end
    assert first.pid and first.result != {"stopped": False}
    assert (second.pid, second.result, second.died) == (0, None, "not started: the team was stopped during start-up")


def test_a_worker_hung_after_stop_is_killed_at_the_deadline_and_said_so() -> None:
    team = WorkerTeam(deaf_to_sigterm, [0], [0], stop_timeout=0.5)
    team.on_ready = team.stop
    t0 = time.monotonic()
    [o] = team.run()
    assert time.monotonic() - t0 < 10
    assert o.result is None and o.died == "killed by SIGKILL: still running 0.5 s after it was asked to stop"


def test_a_worker_that_never_says_ready_fails_the_team_at_the_ready_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(KbypassError, match=r"the worker on queue 1 \(pid \d+\) did not say it was ready within "
                                           r"1 s: the team is stopped"):
        WorkerTeam(never_ready, [1], [0], ready_timeout=1.0).run()
    assert time.monotonic() - t0 < 15
