"""`sink --workers`: one process per receive queue, each a control-plane client with its rules on its queue.

Flows are placed on queues the way test_cp does it: host a sends from CPU q, and XPS maps CPU q to transmit
queue q, which on a veth is the receiver's queue q. Every count is checked three ways: the worker's own,
the steering program's counter of that worker's rule, and the veth's per-queue `rx_queue_N_xdp_redirect`
(ethtool -S); the total against what the sender sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kbypass.host import ifstats
from tests.kb import kbypass_for, one_real, xdp_attached
from tests.netns import test_cp
from tests.netns.test_cp import send_udp, sockets_of, status, stop_at, wait_for

hosts = test_cp.hosts  # the fixture: the testbed with XPS on host a (CPU q sends on queue q), no control plane

pytestmark = pytest.mark.skipif(os.cpu_count() < 2, reason="needs two CPUs: one worker and transmit queue each")


def workers(*extra: str) -> subprocess.Popen:
    # a process group of its own, as a shell gives a job: a terminal's Ctrl-C goes to all of it
    return subprocess.Popen([sys.executable, "-m", "kbypass", "sink", "--host", "b", "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def redirected(b) -> dict[int, int]:
    """rx_queue_N_xdp_redirect of host b's veth: what its XDP program redirected on each queue."""
    driver = ifstats.sample(b.iface, b.netns).driver
    return {q: driver[f"rx_queue_{q}_xdp_redirect"] for q in (0, 1)}


def rule_packets(b) -> dict[str, int]:
    return {r["rule"]: r["packets"] for r in status(b)["interfaces"][0]["rules"]}


def both_ready(b) -> bool:
    return sockets_of(b) == {f"{b.iface}:0", f"{b.iface}:1"}


@contextlib.contextmanager
def ready(b, team: subprocess.Popen):
    """`team` once both its workers hold their socket on host b; killed and reaped on the way out if it
    still runs (a test that fails midway leaves no process)."""
    try:
        wait_for("a socket per queue", lambda: both_ready(b), timeout=20)
        yield team
    finally:
        if team.poll() is None:
            team.kill()
            team.wait()


def test_two_workers_each_count_their_queue_exactly_and_sigint_to_the_parent_stops_both(hosts):
    a, b = hosts
    with ready(b, workers("--workers", "2", "-t", "60")) as team:
        assert sorted(rule_packets(b)) == ["udp queue 0 redirect", "udp queue 1 redirect"]
        pids = {c["pid"] for c in status(b)["clients"]}
        assert len(pids) == 2 and team.pid not in pids  # two processes, neither the parent
        assert {c["command"] for c in status(b)["clients"]} == {
            f"kbypass sink --host b --json --workers 2 -t 60 [worker of pid {team.pid}]"}
        before = redirected(b)
        send_udp(a, b, 5000, 300, cpu=0)
        send_udp(a, b, 5001, 200, cpu=1)
        send_udp(a, b, 5002, 100, cpu=0)
        time.sleep(0.3)
        per_rule = rule_packets(b)
        after = redirected(b)
        team.send_signal(signal.SIGINT)
        out, err = team.communicate(timeout=30)
    assert team.returncode == 0, err
    summary = json.loads(out)
    got = {w["queue"]: w["packets"] for w in summary["workers"]}
    assert got == {0: 400, 1: 200}
    assert got == {0: per_rule["udp queue 0 redirect"], 1: per_rule["udp queue 1 redirect"]}
    assert got == {q: after[q] - before[q] for q in (0, 1)}
    assert summary["packets"] == 600  # what the sender sent
    assert {w["cpu"] for w in summary["workers"]} == {0, 1} and all("died" not in w for w in summary["workers"])
    wait_for("nothing attached after the parent exits", lambda: not xdp_attached(b), timeout=2)


def test_kill_9_of_one_worker_leaves_the_other_every_packet_and_its_rule_and_socket_go_within_a_second(hosts):
    a, b = hosts
    with ready(b, workers("--workers", "2", "-t", "60")) as team:
        send_udp(a, b, 5000, 100, cpu=0)
        send_udp(a, b, 5001, 100, cpu=1)
        victim = next(c["pid"] for c in status(b)["clients"] if c["sockets"] == [f"{b.iface}:0"])
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for("the victim's socket and rule to go", lambda: sockets_of(b) == {f"{b.iface}:1"}, timeout=1.0)
        assert time.monotonic() - t0 < 1.0
        assert list(rule_packets(b)) == ["udp queue 1 redirect"]
        send_udp(a, b, 5001, 150, cpu=1)
        send_udp(a, b, 5000, 50, cpu=0)  # queue 0 has nobody now: the kernel's
        stop_at(team, b, "udp queue 1", 250)  # (a team's run ending at -t: test_write_in_place's capture team)
        out, err = team.communicate(timeout=60)
    assert team.returncode == 1, err  # a worker died: said, and the exit code says so
    assert f"worker on queue 0 (pid {victim}" in err and "killed by SIGKILL" in err
    summary = json.loads(out)
    first, second = summary["workers"]
    assert (first["queue"], first["died"]) == (0, "killed by SIGKILL")
    assert (second["queue"], second["packets"]) == (1, 250)
    assert summary["packets"] == 250
    wait_for("nothing attached after the parent exits", lambda: not xdp_attached(b), timeout=2)


def cpu_list_longer_than_the_machine() -> str:
    return ",".join(str(c) for c in range((os.cpu_count() or 1) + 1))


@pytest.mark.parametrize("real, args, words", one_real([
    (["--workers", "3"], "3 workers but the interface has 2 receive queues"),
    (["--worker-queues", "0", "--cpus", cpu_list_longer_than_the_machine()], "CPUs listed but this machine has"),
    (["--worker-queues", "0,1", "--cpus", "0"], "2 workers (queues [0, 1]) but 1 CPUs"),
    (["--workers", "2", "--worker-queues", "0"], "--workers 2 but --worker-queues names 1 queues"),
    (["--worker-queues", "0,7"], "queue 7 does not exist"),
    (["--workers", "2", "--queue", "1"], "--queue does not go with workers"),
    (["--workers", "2", "--backend", "packet_mmap"], "--workers needs --backend afxdp"),
    (["--workers", "2", "--rule", "udp dport 9 queue 1"], "names queue 1, but its worker reads queue 0"),
    (["--workers", "2", "--cpus", "0,0"], "each CPU number once"),
    (["--workers", "2", "--hw"], "--hw does not go with workers"),
]))
def test_bad_worker_input_is_one_error_line_and_leaves_nothing(hosts, real, args, words):
    _, b = hosts
    proc = kbypass_for(real)("sink", "--host", "b", "-t", "1", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbypass: error: ") and words in lines[0], proc.stderr
    assert not xdp_attached(b)


def stopped_summary(team: subprocess.Popen) -> dict:
    team.send_signal(signal.SIGINT)
    out, err = team.communicate(timeout=30)
    assert team.returncode == 0, err
    return json.loads(out)


def team_summary(b, argv: list[str], send) -> dict:
    """Run `kbypass ARGV --workers 2 -t 60 --json` on host b until both workers hold their socket, call
    send(), then Ctrl-C it: its summary (the process killed if the test fails midway)."""
    argv = [sys.executable, "-m", "kbypass", *argv, "--host", "b", "--workers", "2", "-t", "60", "--json"]
    with ready(b, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) as team:
        send()
        time.sleep(0.3)
        return stopped_summary(team)


def test_reflect_workers_each_send_back_their_queue(hosts):
    a, b = hosts

    def send():
        send_udp(a, b, 5000, 120, cpu=0)
        send_udp(a, b, 5001, 80, cpu=1)

    summary = team_summary(b, ["reflect"], send)
    assert [(w["queue"], w["packets"], w["sent"]) for w in summary["workers"]] == [(0, 120, 120), (1, 80, 80)]
    assert (summary["packets"], summary["sent"]) == (200, 200)


def test_capture_workers_write_one_pcap_in_time_stamp_order(hosts, tmp_path):
    from kbypass.apps import pcap

    a, b = hosts
    target = tmp_path / "both.pcap"

    def send():
        send_udp(a, b, 5000, 100, cpu=0)
        send_udp(a, b, 5000, 60, cpu=1)
        send_udp(a, b, 5000, 40, cpu=0)

    summary = team_summary(b, ["capture", "--rule", "udp dport 5000", "-w", str(target)], send)
    assert [(w["queue"], w["packets"]) for w in summary["workers"]] == [(0, 140), (1, 60)]
    stamps = [t for t, _ in pcap.records(str(target))]
    assert len(stamps) == summary["merged"] == 200 and stamps == sorted(stamps)
    # the sender numbered its datagrams 0..n-1 per run: the second run (queue 1) sits between the others
    first_of_each = [int.from_bytes(r[16 + 42:16 + 46], "big") for _, r in pcap.records(str(target))]
    assert first_of_each[:100] == list(range(100)) and first_of_each[100:160] == list(range(60))
    assert [p for p in os.listdir(tmp_path) if p != "both.pcap"] == []  # the workers' files are gone


def test_kill_9_of_the_parent_ends_the_workers_and_leaves_nothing_attached(hosts):
    _, b = hosts
    with ready(b, workers("--workers", "2")) as team:  # no -t: only the parent's death ends them
        pids = {c["pid"] for c in status(b)["clients"]}
        team.send_signal(signal.SIGKILL)
        team.wait(5)
        wait_for("the workers to go with their parent", lambda: not xdp_attached(b), timeout=3)
        wait_for("the workers' processes to end", lambda: not any(os.path.exists(f"/proc/{p}") for p in pids),
                 timeout=5)


def test_ctrl_c_on_a_terminal_reaches_every_process_and_each_worker_still_reports(hosts):
    a, b = hosts
    with ready(b, workers("--workers", "2", "-t", "60")) as team:
        send_udp(a, b, 5000, 50, cpu=0)
        send_udp(a, b, 5001, 70, cpu=1)
        time.sleep(0.3)
        os.killpg(team.pid, signal.SIGINT)  # the whole job: the parent and both workers
        out, err = team.communicate(timeout=30)
    assert team.returncode == 0, err
    assert [(w["queue"], w["packets"]) for w in json.loads(out)["workers"]] == [(0, 50), (1, 70)]
    wait_for("nothing attached", lambda: not xdp_attached(b), timeout=2)
