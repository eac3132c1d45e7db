"""The control plane (kbypass.cp.server) against hostile clients and its own end: a client that asks and
then blocks, more clients than a process has fds, a client that dies with its request in flight, SIGTERM
with clients connected, `kbypass cp stop` with nothing to stop; and its log, one line per state change."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from kbypass.cp import paths, protocol
from kbypass.cp.client import ControlPlaneClient, ControlPlaneError
from kbypass.cp.lock import terminate
from tests.kb import kbypass, xdp_attached
from tests.netns.test_cp import hosts, sink, sockets_of, status, wait_for  # noqa: F401 (hosts: a fixture)

QUICK = 0.1  # seconds: a request of a well-behaved client is answered within this, whatever others do


def raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    s.settimeout(5)
    return s


def hello(s: socket.socket) -> dict:
    try:
        s.send(protocol.request("hello", version=protocol.VERSION))
    except BrokenPipeError:  # turned away: the reason waits in the socket, the server has hung up
        pass
    return json.loads(s.recv(protocol.MAX_MESSAGE))


def slowest_answer(cp: ControlPlaneClient, iface: str, n: int = 20) -> float:
    """The longest any of n requests (status, add, remove) took to be answered."""
    worst = 0.0
    for i in range(n):
        t0 = time.monotonic()
        cp.remove_rule(iface, cp.add_rule(iface, f"udp dport {40000 + i}"))
        cp.status()
        worst = max(worst, (time.monotonic() - t0) / 3)
    return worst


def exited(pid: int) -> bool:
    """Gone, or a zombie (an auto-started control plane is this test process's child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def log_since(name: str, offset: int) -> str:
    with open(paths.log_path(name), "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_size(name: str) -> int:
    try:
        return os.path.getsize(paths.log_path(name))
    except FileNotFoundError:
        return 0


def test_a_client_that_asks_and_then_blocks_stalls_nobody(hosts):
    _, b = hosts
    with ControlPlaneClient(b.netns, command="witness") as witness:
        path = paths.socket_path(paths.namespace_name(b.netns))
        mute = raw(path)  # connected, never says a word
        asker = raw(path)  # asks, then blocks forever without reading the answer
        assert hello(asker)["ok"]
        asker.send(protocol.request("add", iface=b.iface, rule="udp dport 5000"))
        asker.send(protocol.request("status"))
        stopped = subprocess.Popen([sys.executable, "-c", (  # a client process stopped between two requests
            "import os,signal,socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\n"
            f"s.connect({path!r})\ns.send(b'{{\"op\":\"hello\",\"version\":{protocol.VERSION}}}')\ns.recv(4096)\n"
            "s.send(b'{\"op\":\"status\"}')\nprint('asked',flush=True)\nos.kill(os.getpid(),signal.SIGSTOP)\n")],
            stdout=subprocess.PIPE, text=True)
        try:
            assert stopped.stdout.readline().strip() == "asked"
            assert slowest_answer(witness, b.iface) < QUICK
            assert len(status(b)["clients"]) == 3  # the witness, the asker, the stopped one (mute said no hello)
        finally:
            stopped.kill()
            stopped.wait()
            mute.close()
            asker.close()
        wait_for("the asker's rule to go", lambda: not status(b)["interfaces"])


def test_more_than_1024_clients_at_once_are_all_served(hosts):
    _, b = hosts
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, old[1]))  # the usual soft limit, which the control plane
    try:                                                           # that the witness starts inherits
        witness = ControlPlaneClient(b.netns, command="witness")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
    with witness:
        witness.add_rule(b.iface, "udp dport 5000")
        path = paths.socket_path(paths.namespace_name(b.netns))
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(old[0], 4096), old[1]))
        conns = []
        try:
            for _ in range(1100):
                conns.append(raw(path))
            replies = [hello(c) for c in conns]
            assert [r for r in replies if not r["ok"]] == []
            assert slowest_answer(witness, b.iface) < QUICK
            st = witness.status()  # the witness steers: listed first; the 1100 idle ones mostly counted
            assert st["clients"][0]["client"] == witness.client_id
            assert len(st["clients"]) + st["clients_not_listed"] == 1101
        finally:
            for c in conns:
                c.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, old)
        wait_for("the 1100 clients to go", lambda: len(status(b)["clients"]) == 1)
        assert [r["rule"] for r in witness.counters(b.iface)] == ["udp dport 5000 redirect"]


def test_out_of_fds_it_turns_new_clients_away_with_a_reason_and_keeps_serving(hosts):
    _, b = hosts
    name = paths.namespace_name(b.netns)
    with ControlPlaneClient(b.netns, command="witness") as witness:
        witness.add_rule(b.iface, "udp dport 5000")
        pid = witness.server_pid
        offset = log_size(name)
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 10, old[1]))  # the soft limit: no privilege needed
        path = paths.socket_path(name)
        conns = []
        try:
            for _ in range(40):
                conns.append(raw(path))
            replies = [hello(c) for c in conns]
            turned_away = [r for r in replies if not r["ok"]]
            assert 20 <= len(turned_away) < 40
            assert all("no file descriptor left" in r["error"] for r in turned_away)
            assert slowest_answer(witness, b.iface) < QUICK
        finally:
            for c in conns:
                c.close()
            resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
        wait_for("the clients to go", lambda: len(status(b)["clients"]) == 1)
        with raw(path) as again:
            assert hello(again)["ok"]  # accepting again
        log = log_since(name, offset)
        assert log.count("out of file descriptors") == 1, log  # one line per shortage, not one per turn
        assert "accepting clients again" in log


def test_a_client_that_dies_with_its_request_in_flight_leaves_nothing(hosts):
    _, b = hosts
    with ControlPlaneClient(b.netns, command="witness") as witness:
        witness.add_rule(b.iface, "udp dport 5000")
        path = paths.socket_path(paths.namespace_name(b.netns))
        # 200 children: each says hello, asks for a rule and exits without reading the answer; every other
        # one sends its request and closes in the same breath
        script = (
            "import os,socket\n"
            "for i in range(200):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            f"        s.connect({path!r})\n"
            f"        s.send(b'{{\"op\":\"hello\",\"version\":{protocol.VERSION}}}')\n"
            "        s.recv(4096)\n"
            f"        s.send(b'{{\"op\":\"add\",\"iface\":\"{b.iface}\",\"rule\":\"udp dport %d\"}}'"
            " % (30000 + i))\n"
            "        if i % 2:\n"
            "            s.close()\n"
            "        os._exit(0)\n"
            "    os.waitpid(pid, 0)\n")
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        st = wait_for("only the witness's rule", lambda: (lambda s: s if len(s["interfaces"][0]["rules"]) == 1
                                                          and len(s["clients"]) == 1 else None)(status(b)))
        assert st["server_pid"] == witness.server_pid
        assert [r["rule"] for r in witness.counters(b.iface)] == ["udp dport 5000 redirect"]


def test_sigterm_removes_every_rule_detaches_and_clients_hear_it_went_away(hosts):
    _, b = hosts
    name = paths.namespace_name(b.netns)
    one, two = ControlPlaneClient(b.netns, command="one"), ControlPlaneClient(b.netns, command="two")
    try:
        one.add_rule(b.iface, "udp dport 5000")
        two.add_rule(b.iface, "udp dport 5001")
        assert xdp_attached(b)
        offset = log_size(name)
        pid = one.server_pid
        os.kill(pid, signal.SIGTERM)
        wait_for("the program to go", lambda: not xdp_attached(b), timeout=1.0)
        for cp in (one, two):
            with pytest.raises(ControlPlaneError, match="went away"):
                cp.counters(b.iface)
        wait_for("the control plane to exit", lambda: exited(pid), timeout=2.0)
        assert not os.path.exists(paths.socket_path(name))
        log = log_since(name, offset)
        assert "stopping on SIGTERM with 2 client(s) connected" in log
        assert len(re.findall(r"removed rule \d+ 'udp dport 500[01] redirect'", log)) == 2
        assert "detached the steering program" in log and log.rstrip().endswith("stopped")
    finally:
        one.close()
        two.close()


def test_cp_stop_with_nothing_running_says_so_in_one_line_and_succeeds(hosts):
    _, b = hosts
    assert terminate(paths.namespace_name(b.netns)) is None  # nothing runs (the fixture stopped any)
    proc = kbypass("cp", "stop", "--host", "b")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == [f"no control plane serves namespace {b.netns}: nothing to stop"]


def test_every_state_change_is_one_line_of_the_log(hosts):
    _, b = hosts
    name = paths.namespace_name(b.netns)
    offset = log_size(name)
    with ControlPlaneClient(b.netns, command="first") as one, ControlPlaneClient(b.netns, command="second") as two:
        rid = one.add_rule(b.iface, "udp dport 5000")
        with pytest.raises(ControlPlaneError):
            two.add_rule(b.iface, "udp dport 5000")  # a conflict
        one.remove_rule(b.iface, rid)
        receiver = sink(b, "udp dport 5002", 0, 30)
        try:
            wait_for("the sink's socket", lambda: sockets_of(b) == {f"{b.iface}:0"})
            receiver.kill()  # dies without a word
            receiver.wait()
        finally:
            if receiver.poll() is None:
                receiver.kill()
        wait_for("the sink's socket to go", lambda: not sockets_of(b) or None)
        stop = kbypass("cp", "stop", "--host", "b", "--force")
        assert stop.returncode == 0, stop.stderr
    wait_for("the control plane to exit", lambda: terminate(name) is None)
    log = log_since(name, offset)
    first, second = rf"client {one.client_id} \(pid \d+, [^)]*\)", rf"client {two.client_id} \(pid \d+, [^)]*\)"
    for line in (r"serving namespace \S+ on ",
                 rf"{first} connected",
                 r"attached the steering program to ",
                 rf"{first}: rule \d+ 'udp dport 5000 redirect' on ",
                 rf"{second}: refused add: rule 'udp dport 5000 redirect' overlaps",
                 rf"{first}: removed rule \d+ 'udp dport 5000 redirect'",
                 r"detached the steering program from ",
                 r"kbypass sink .*: AF_XDP socket for queue 0 of ",
                 r"kbypass sink .*: removed the socket of queue 0 of ",
                 r"kbypass sink .*\) left: (it closed the connection|its connection failed)",  # EOF or a reset: dead
                 r"kbypass cp stop [^)]*\) asked to stop",
                 rf"{first} left: the control plane stops",
                 r"stopped$"):
        assert re.search(line, log, re.M), f"no line {line!r} in the log:\n{log}"
    assert all(re.match(r"\S+ \S+ kbypass cp: ", x) for x in log.splitlines()), log  # one line each
