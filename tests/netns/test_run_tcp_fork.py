"""`kbypass run` TCP and fork, and TCP when the control plane dies: unmodified fork-per-connection servers
(socat fork, a C server that forks per connection: tests/netns/progs/tcp_forks.c) under `kbypass run`, judged
by kernel peers in the other namespace that check every byte they get back. At a fork the shim hands each
accelerated connection to the kernel's TCP (TCP_REPAIR, csrc/preload/kbp_tcprepair.c), so the child that serves
it owns a real connection; connections the listener had completed but the app not accepted yet are handed over
and kept for its accept (csrc/preload/kbp_tcpwake.c); the port's rule goes at once, so the kernel's listener
takes the next SYNs and a new listen() on the port works while a child's connection lives."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from kbypass.cp import paths
from kbypass.cp.client import ControlPlaneClient, ControlPlaneError
from tests.netns import test_run
from tests.netns.test_run import in_ns, run_app, sockets_of, stop, wait_for

_run_hosts, hosts, own_cp = test_run._run_hosts, test_run.hosts, test_run.own_cp
NO_NET_ADMIN = ["setpriv", "--bounding-set=-net_admin"]  # root without CAP_NET_ADMIN: no TCP_REPAIR

# N kernel clients at once, each sends its own random bytes, half-closes and reads the echo to the end
ECHO_CLIENTS = r"""
import os, socket, sys, threading
ip, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
res = [None] * n
def one(i):
    data = os.urandom(size)
    try:
        s = socket.create_connection((ip, port), timeout=10)
        def push():
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=push)
        t.start()
        got = bytearray()
        while b := s.recv(65536):
            got += b
        t.join()
        s.close()
        res[i] = "ok" if got == data else f"bad:{len(got)}"
    except OSError as e:
        res[i] = type(e).__name__
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
print(" ".join(res))
"""


def echo_clients(host, ip: str, port: int, n: int, size: int) -> list[str]:
    r = subprocess.run(in_ns(host, sys.executable, "-c", ECHO_CLIENTS, ip, str(port), str(n), str(size)),
                       capture_output=True, text=True, timeout=60)
    return r.stdout.split() or [r.stderr]


def listening(app: subprocess.Popen) -> None:
    line = app.stdout.readline()
    assert line.strip() == "listening", line


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    prog = tmp_path_factory.mktemp("progs") / "tcp_forks"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(prog),
                    os.path.join(os.path.dirname(__file__), "progs", "tcp_forks.c")], check=True)
    return str(prog)


def test_socat_fork_echo_server_serves_concurrent_clients_every_byte(hosts):
    a, b = hosts
    srv = run_app(b, "socat", f"TCP-LISTEN:9501,bind={b.ipv4},fork,reuseaddr", "EXEC:cat")
    try:
        wait_for(lambda: sockets_of(b, 9501), what="socat's listening socket to be accelerated")
        first = echo_clients(a, b.ipv4, 9501, 8, 300_000)
        again = echo_clients(a, b.ipv4, 9501, 4, 100_000)  # after the fork: the kernel's listener
    finally:
        log = stop(srv)
    assert first == ["ok"] * 8, (first, log)
    assert again == ["ok"] * 4, (again, log)
    assert "handed to the kernel's TCP" in log, log  # the first connection was ours until the fork
    assert "Connection reset" not in log and "Traceback" not in log, log
    # a parent that forked never adopts its listener again (kbp_tcpadopt.c), nor do the children that do not
    # accept from it: one rule in all, none made and removed per connection
    assert log.count("9501, listening) accelerated on") == 1 and "inherited at the fork" not in log, log


def test_socat_fork_http_serves_concurrent_curls_intact(hosts, tmp_path):
    a, b = hosts
    body = os.urandom(1_000_000)
    (tmp_path / "body").write_bytes(body)
    os.chmod(tmp_path, 0o755)
    answer = tmp_path / "answer.sh"  # the request's head read, then the answer (a plain HTTP/1.0 responder)
    answer.write_text(f"#!/bin/sh\nsed -u '/^\\r$/q' >/dev/null\n"
                      f"printf 'HTTP/1.0 200 OK\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n'\ncat {tmp_path / 'body'}\n")
    answer.chmod(0o755)
    srv = run_app(b, "socat", f"TCP-LISTEN:9502,bind={b.ipv4},fork,reuseaddr", f"EXEC:{answer}")
    try:
        wait_for(lambda: sockets_of(b, 9502), what="socat's listening socket to be accelerated")
        curls = [subprocess.Popen(in_ns(a, "curl", "-sS", "--max-time", "20", "-o", str(tmp_path / f"got{i}"),
                                        f"http://{b.ipv4}:9502/"), stderr=subprocess.PIPE, text=True)
                 for i in range(6)]
        errs = [c.communicate(timeout=40)[1] for c in curls]
    finally:
        log = stop(srv)
    assert [c.returncode for c in curls] == [0] * 6, (errs, log)
    digest = hashlib.sha256(body).hexdigest()
    assert [hashlib.sha256((tmp_path / f"got{i}").read_bytes()).hexdigest() for i in range(6)] == [digest] * 6


def test_a_c_server_that_forks_per_connection(hosts, forks):
    a, b = hosts
    srv = run_app(b, forks, "fork", b.ipv4, "9503", "6")
    try:
        wait_for(lambda: sockets_of(b, 9503), what="the listening socket to be accelerated")
        got = echo_clients(a, b.ipv4, 9503, 6, 200_000)
        out, _ = srv.communicate(timeout=20)
    finally:
        out = stop(srv) if srv.poll() is None else out
    assert got == ["ok"] * 6, (got, out)
    assert "children done, 0 failed" in out, out
    assert "handed to the kernel's TCP" in out, out


MESSAGES_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
for m in (b"one", b"two", b"three"):
    s.sendall(m)
    print(m.decode(), s.recv(100) == m, flush=True)
    time.sleep(0.2)
s.close()
"""


def one_client(hosts, forks, mode: str, port: int, client: str):
    """tcp_forks MODE under run on b, and CLIENT (a Python script) run once against it from a: the client's
    completed process and the app's output."""
    a, b = hosts
    srv = run_app(b, forks, mode, b.ipv4, str(port))
    try:
        wait_for(lambda: sockets_of(b, port), what="the listening socket to be accelerated")
        cli = subprocess.run(in_ns(a, sys.executable, "-c", client, b.ipv4, str(port)), capture_output=True,
                             text=True, timeout=30)
        out, _ = srv.communicate(timeout=20)
    finally:
        out = stop(srv) if srv.poll() is None else out
    return cli, out


def test_an_epoll_app_that_forks_a_helper_keeps_its_connection(hosts, forks):
    """The connection, a member of the app's epoll set, is handed to the kernel at the fork: the kernel
    socket takes its place in the set (same events, same data) and epoll_wait reports it from then on."""
    cli, out = one_client(hosts, forks, "epollfork", 9506, MESSAGES_CLIENT)
    assert cli.stdout.split("\n")[:3] == ["one True", "two True", "three True"], cli.stdout + cli.stderr + out
    assert "epoll done 3" in out and "handed to the kernel's TCP" in out, out


def test_a_server_that_execs_its_handler_on_the_connection(hosts, forks):
    """inetd's way: the connection as stdin and stdout of an exec'd cat, which must hold a real connection."""
    cli, out = one_client(hosts, forks, "exec", 9507, MESSAGES_CLIENT)
    assert cli.stdout.split("\n")[:3] == ["one True", "two True", "three True"], cli.stdout + cli.stderr + out
    assert "handed to the kernel's TCP" in out, out


def test_a_connection_handed_for_an_exec_that_fails_goes_on_in_the_app(hosts, forks):
    """exec hands the inherited connection to the kernel's TCP first; when the exec fails the app goes on, its
    listener still on the rings: the connection's segments must reach its kernel socket (a pass rule)."""
    cli, out = one_client(hosts, forks, "execfail", 9509, MESSAGES_CLIENT)
    assert cli.stdout.split("\n")[:3] == ["one True", "two True", "three True"], cli.stdout + cli.stderr + out
    assert "exec failed: No such file or directory" in out and "handed to the kernel's TCP" in out, out


@pytest.mark.parametrize("mode", ["execfail", "spawn"])
def test_with_no_room_for_a_pass_rule_the_listener_goes_back_to_the_kernel(hosts, forks, mode):
    """Every steering slot taken but the listener's: the handed connection's pass rule is refused, so the app's
    listeners go back to the kernel as at a fork (slower, never a connection whose segments nobody takes)."""
    a, b = hosts
    with ControlPlaneClient(b.netns, command="filler") as filler:
        taken = []
        with pytest.raises(ControlPlaneError, match="rule slots"):
            while True:
                taken.append(filler.add_rule(b.iface, f"udp dst {b.ipv4} dport {20000 + len(taken)}"))
        filler.remove_rule(b.iface, taken[-1])  # the listener's
        srv = run_app(b, forks, mode, b.ipv4, "9510")
        try:
            wait_for(lambda: sockets_of(b, 9510), what="the listening socket to be accelerated")
            clients = [subprocess.run(in_ns(a, sys.executable, "-c", MESSAGES_CLIENT, b.ipv4, "9510"),
                                      capture_output=True, text=True, timeout=30)
                       for _ in range(2 if mode == "spawn" else 1)]  # spawn's app echoes one more itself
            out, _ = srv.communicate(timeout=20)
        finally:
            out = stop(srv) if srv.poll() is None else out
    for cli in clients:
        assert cli.stdout.split("\n")[:3] == ["one True", "two True", "three True"], cli.stdout + cli.stderr + out
    assert "no pass rule" in out and "the listening socket is the kernel's again" in out, out


MESSAGES_HELD_CLIENT = MESSAGES_CLIENT.replace("s.close()", "input()  # the test looks at the rules meanwhile\ns.close()")


def pass_rules(host) -> list[str]:
    with ControlPlaneClient(host.netns, start=False, command="test_run_tcp_fork rules") as cp:
        return [r["rule"] for i in cp.status()["interfaces"] for r in i["rules"] if r["rule"].endswith(" pass")]


@pytest.mark.parametrize("mode", ["spawn", "spawnfd"], ids=["file-actions", "inherited"])
def test_a_server_that_spawns_its_handler_on_the_connection(hosts, forks, mode):
    """posix_spawnp execs in a child that never runs the shim's execve: the connection it gets (dup2'd onto its
    stdin and stdout by the file actions, or inherited as fd 9 by a shell) must be a real connection there. The
    parent keeps its listener on the rings: the handed connection's segments reach the kernel through a pass rule
    of its 4-tuple, which goes when the kernel is done with the connection; the next connection is the rings'."""
    a, b = hosts
    srv = run_app(b, forks, mode, b.ipv4, "9508")
    try:
        wait_for(lambda: sockets_of(b, 9508), what="the listening socket to be accelerated")
        cli = subprocess.Popen(in_ns(a, sys.executable, "-c", MESSAGES_HELD_CLIENT, b.ipv4, "9508"), text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = [cli.stdout.readline().strip() for _ in range(3)]
        held = pass_rules(b)
        got = cli.communicate("\n", timeout=30)[0]
        wait_for(lambda: not pass_rules(b), timeout=10, what="the pass rule to go with the kernel's connection")
        again = subprocess.run(in_ns(a, sys.executable, "-c", MESSAGES_CLIENT, b.ipv4, "9508"), capture_output=True,
                               text=True, timeout=30)
        out, _ = srv.communicate(timeout=20)
    finally:
        out = stop(srv) if srv.poll() is None else out
    assert lines == ["one True", "two True", "three True"], lines + [got, out]
    assert len(held) == 1 and f"src {a.ipv4} " in held[0] and f"dst {b.ipv4} " in held[0], held
    assert "dport 9508 pass" in held[0], held
    assert again.stdout.split("\n")[:3] == ["one True", "two True", "three True"], again.stdout + again.stderr + out
    assert "handed to the kernel's TCP" in out and "spawned child done 0" in out, out
    assert out.count("handed to the kernel's TCP") == 1, out  # the second connection stayed on the rings
    assert out.index("handed to the kernel's TCP") < out.index("spawned child done"), out


RELISTEN_CLIENT = r"""
import socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
def echo(s, data):
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        got += s.recv(65536)
    return got == data
first = socket.create_connection((ip, port), timeout=10)
print("first", echo(first, b"x" * 70000), flush=True)
deadline = time.monotonic() + 10
while True:  # the new listener: after the parent closed the old one and listened again
    try:
        second = socket.create_connection((ip, port), timeout=10)
        break
    except ConnectionRefusedError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
print("second", echo(second, b"y" * 70000), flush=True)
print("first-again", echo(first, b"z" * 70000), flush=True)
first.close(); second.close()
"""


def test_listen_again_on_the_port_while_a_childs_connection_lives(hosts, forks):
    cli, out = one_client(hosts, forks, "relisten", 9504, RELISTEN_CLIENT)
    assert cli.stdout.split("\n")[:3] == ["first True", "second True", "first-again True"], cli.stdout + cli.stderr
    assert "relisten ok" in out and "done 0 0" in out, out
    # the child's connection is the kernel's: a rule for the port would take its segments, so the new listener
    # stays the kernel's until it ends (the control plane says why)
    assert "live kernel connection(s)" in out, out


CP_CLIENT = r"""
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((ip, port), timeout=10)
s.sendall(b"one")
print("one", s.recv(100) == b"one", flush=True)
sys.stdin.readline()  # the control plane is killed meanwhile
try:
    s.sendall(b"two")
    got = s.recv(100)
    print("two", got == b"two", flush=True)
except OSError as e:
    print("two", type(e).__name__, flush=True)
"""


def _kill_the_control_plane(host) -> None:
    pid = int(open(paths.lock_path(paths.namespace_name(host.netns))).read().strip())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not test_run.xdp_attached(host), timeout=2.0, what="the steering program to go with its owner")


@pytest.mark.parametrize("user", ["root", "no CAP_NET_ADMIN"])
def test_a_connection_when_the_control_plane_dies(own_cp, forks, user):
    """root: the kernel's TCP carries the connection on (the app and the peer see nothing); without
    CAP_NET_ADMIN (no TCP_REPAIR): a reset both ends see, ECONNRESET, never a hang."""
    a, b = own_cp
    srv = run_app(b, forks, "echo", b.ipv4, "9505", user=NO_NET_ADMIN if user != "root" else ())
    cli = None
    try:
        wait_for(lambda: sockets_of(b, 9505), what="the listening socket to be accelerated")
        cli = subprocess.Popen(in_ns(a, sys.executable, "-c", CP_CLIENT, b.ipv4, "9505"), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert cli.stdout.readline().split() == ["one", "True"]
        assert len(wait_for(lambda: sockets_of(b, 9505) if len(sockets_of(b, 9505)) == 2 else [],
                            what="the accepted connection")) == 2
        _kill_the_control_plane(b)
        time.sleep(0.2)
        cli.stdin.write("go\n")
        cli.stdin.flush()
        said = cli.stdout.readline().split()
        cli.wait(10)
        srv.wait(10)  # the connection ended (root) or the app's read failed: it ends 2 s later
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
        out = stop(srv)
    # its keepalive timer was armed when the rings went: the shim's timers must not run on them (SIGSEGV)
    assert "echo done" in out and srv.returncode == (0 if user == "root" else 1), (srv.returncode, out)
    assert out.count("the control plane went away") == 1, out
    if user == "root":
        assert said == ["two", "True"], (said, out)
        assert "handed to the kernel's TCP" in out, out
    else:
        assert said == ["two", "ConnectionResetError"], (said, out)
        assert "read: ECONNRESET" in out, out
    assert "Traceback" not in out, out


HOLDING_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
got = b""
while len(sys.argv) > 3 and not got.endswith(sys.argv[3].encode() + b"\n"):  # the server's word first
    got += s.recv(100)
print("held", flush=True)
sys.stdin.readline()  # held open (its connection still the app's) while the others connect
"""


def held_client(host, ip: str, port: int, *word: str) -> subprocess.Popen:
    """A kernel client that connects (and reads `word` when given), then keeps its end open until killed."""
    c = subprocess.Popen(in_ns(host, sys.executable, "-c", HOLDING_CLIENT, ip, str(port), *word),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = c.stdout.readline()
    assert line.split() == ["held"], line
    return c


def test_a_connection_that_cannot_be_handed_leaves_the_port_to_the_kernels_listener(hosts):
    """Without CAP_NET_ADMIN the connection open at socat's fork stays the parent's (no TCP_REPAIR): its
    4-tuple keeps a rule, the port's rule goes, so the next clients' SYNs reach the kernel's listener the
    children accept from (with the whole port's rule they were dropped on the rings: connect timed out)."""
    a, b = hosts
    srv = run_app(b, "socat", f"TCP-LISTEN:9508,bind={b.ipv4},fork,reuseaddr", "EXEC:cat", user=NO_NET_ADMIN)
    first = None
    try:
        wait_for(lambda: sockets_of(b, 9508), what="socat's listening socket to be accelerated")
        first = held_client(a, b.ipv4, 9508)
        time.sleep(0.5)  # socat accepted it and forked
        later = echo_clients(a, b.ipv4, 9508, 3, 50_000)
    finally:
        if first is not None:
            first.kill()
            first.wait()
        log = stop(srv)
    assert later == ["ok"] * 3, (later, log)
    assert "keep their 4-tuples' rules" in log, log


@pytest.mark.parametrize("how", ["nonblock", "block"])
def test_a_connect_under_way_when_the_control_plane_dies_is_reset(own_cp, forks, how):
    """A connect still in progress when the rings go cannot go on (the kernel never saw its SYN): the app gets
    ECONNRESET, as a connection that could not be handed does, not a bound-only socket that says nothing."""
    a, b = own_cp
    nobody = b.ipv4.rsplit(".", 1)[0] + ".213"  # on the link, never answers: the connect stays under way
    srv = run_app(b, forks, "connecting", b.ipv4, "9509", nobody, "9", how, stdin=subprocess.PIPE)
    try:
        for line in srv.stdout:
            if line.strip() == "connecting":
                break
        if how == "block":
            time.sleep(1.5)  # in connect (the next hop waited for first)
        _kill_the_control_plane(b)
        time.sleep(0.2)
        if how != "block":
            srv.stdin.write("go\n")
            srv.stdin.flush()
        srv.wait(10)
    finally:
        out = stop(srv)
    assert "connect: ECONNRESET" in out or "read: ECONNRESET" in out, out


def test_a_forks_child_does_not_keep_the_parents_flusher_eventfd(hosts, forks):
    """The flusher's eventfd is one object shared by the copies: a child's flusher would drain the parent's
    kicks (the parent's then sleeps untimed, its TCP timers late). The child closes its copy."""
    a, b = hosts
    srv = run_app(b, forks, "forkfds", b.ipv4, "9510")
    out, _ = srv.communicate(timeout=20)
    assert "accelerated" in out and "child eventfds 0" in out, out


def test_a_closed_connection_still_finishing_at_a_fork_keeps_only_its_4_tuple(hosts, forks):
    """root: at the fork the served connection is handed to the kernel (a live kernel connection on the port)
    and the one the app closed earlier, whose FIN is out, is not (FIN_WAIT2 stays ours): its 4-tuple keeps a
    rule, the handed connection's segments and the next SYNs go to the kernel."""
    a, b = hosts
    srv = run_app(b, forks, "closefork", b.ipv4, "9511", "3")
    held = None
    try:
        wait_for(lambda: sockets_of(b, 9511), what="the listening socket to be accelerated")
        held = held_client(a, b.ipv4, 9511, "bye")
        first = echo_clients(a, b.ipv4, 9511, 1, 200_000)  # the fork: it is handed, the closed one is not
        later = echo_clients(a, b.ipv4, 9511, 2, 200_000)  # the kernel's listener
        out, _ = srv.communicate(timeout=20)
    finally:
        if held is not None:
            held.kill()
            held.wait()
        out = stop(srv) if srv.poll() is None else out
    assert first == ["ok"] and later == ["ok"] * 2, (first, later, out)
    assert "children done, 0 failed" in out and "keep their 4-tuples' rules" in out, out
