"""`kbypass run` and servers whose fork's children inherit a listening socket (csrc/preload/kbp_tcpadopt.c), C
programs of tests/netns/progs/tcp_adopt.c judged by kernel clients in the other namespace: a child forked from a
thread other than the one that started the shim's Python adopts and serves (the embedded CPython's fork protocol,
csrc/preload/kbp_py.c), and a blocking prefork server (children each in accept()) is not squeezed onto the one
child that would adopt: its requests are served at once by different children, as on the kernel."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time

import pytest

from tests.netns import test_run
from tests.netns.test_run import in_ns, run_app, sockets_of, stop, wait_for

_run_hosts, hosts = test_run._run_hosts, test_run.hosts


@pytest.fixture(scope="module")
def prog(tmp_path_factory):
    out = tmp_path_factory.mktemp("progs") / "tcp_adopt"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-pthread", "-o", str(out),
                    os.path.join(os.path.dirname(__file__), "progs", "tcp_adopt.c")], check=True)
    return str(out)


def listening(app: subprocess.Popen) -> str:
    """The app's output (the shim's log lines first) up to its "listening"."""
    out = ""
    while (line := app.stdout.readline()) and line.strip() != "listening":
        out += line
    assert line, out
    return out


def ask(host, ip: str, port: int) -> tuple[float, str]:
    t = time.monotonic()
    r = subprocess.run(in_ns(host, "socat", "-t", "30", "-T", "30", "-", f"TCP:{ip}:{port}"), input="hi\n",
                       capture_output=True, text=True, timeout=60)
    return time.monotonic() - t, r.stdout.strip() or r.stderr.strip()


def test_a_child_forked_from_a_second_thread_adopts_the_listener_and_serves(hosts, prog):
    a, b = hosts
    srv = run_app(b, prog, "thread", b.ipv4, "8441", "0")
    try:
        listening(srv)
        lst = wait_for(lambda: [s for s in sockets_of(b, 8441) if s["role"] == "listener" and s["state"] == "LISTEN"
                                and s["pid"] != srv.pid], what="the child to adopt the listening socket")
        _, got = ask(a, b.ipv4, 8441)
        srv.wait(30)
    finally:
        log = stop(srv)
    assert got.startswith("child "), got + log
    assert [f"child {s['pid']}" for s in lst] == [got], (lst, got)  # the child's listener, on the rings
    assert "Fatal Python error" not in log and "child status 0" in log, log
    assert "inherited at the fork is this process's on the rings now" in log, log


def test_a_blocking_prefork_server_serves_concurrent_requests_by_different_children(hosts, prog):
    a, b = hosts
    srv = run_app(b, prog, "prefork", b.ipv4, "8442", "4", start_new_session=True)
    try:
        listening(srv)
        time.sleep(0.5)  # the children in their accept()
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            res = list(ex.map(lambda _: ask(a, b.ipv4, 8442), range(4)))
    finally:
        os.killpg(srv.pid, signal.SIGKILL)
        log = srv.communicate(timeout=30)[0]
    # each takes 2 s at the server: at once by 4 children, not one after another by the one that adopted
    assert all(r[1].startswith("served by ") for r in res), (res, log)
    assert max(r[0] for r in res) < 3.5, res
    assert len({r[1] for r in res}) == 4, res
