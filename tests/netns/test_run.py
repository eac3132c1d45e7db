"""`kbypass run -- APP` on the testbed: unmodified programs (sockperf, socat, python) with the preload shim,
against plain kernel peers in the other namespace. Each test proves the datagrams went through the rings
with the shim's own counters (`kbypass run --status --json`: rx/tx through AF_XDP, rx_kernel/tx_kernel
through the placeholder kernel socket), not only that the program worked."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from kbypass.cp import paths
from kbypass.cp.client import ControlPlaneClient, ControlPlaneMissing
from kbypass.cp.lock import terminate
from kbypass.tools.run import SHIM
from tests.kb import (
    skip_unless_nobody_runs_kbypass,
    tcp_listening,
    udp_bound,
    wait_until,
    xdp_attached,
)

KB = os.path.join(os.path.dirname(sys.executable), "kbypass")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]

pytestmark = pytest.mark.skipif(not os.path.exists(SHIM), reason="the preload shim is not built: make setup")


def _stop_control_planes(hosts) -> None:
    for h in hosts:
        terminate(paths.namespace_name(h.netns))


@pytest.fixture(scope="module")
def _run_hosts(testbed_hosts):
    """The module's tests share the control plane `kbypass run` starts (--users all, 60 s idle exit), as apps
    do: none is running when the module starts (another module's, started otherwise, would not admit
    uid 65534), and none is left when it ends. Each test's apps are gone when it ends (`stop`), and the
    control plane drops what they had as they go."""
    _stop_control_planes(testbed_hosts)
    yield testbed_hosts
    _stop_control_planes(testbed_hosts)


@pytest.fixture
def hosts(_run_hosts):
    return _run_hosts


@pytest.fixture
def own_cp(_run_hosts):
    """For a test about how a control plane is started (or that none is): none runs when it begins, and the
    one it made (root only, --iface) is not left to the next test."""
    _stop_control_planes(_run_hosts)
    yield _run_hosts
    _stop_control_planes(_run_hosts)


def in_ns(host, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", host.netns, *argv]


def run_app(host, *argv: str, spin: int = 0, user: list[str] = (), **kw) -> subprocess.Popen:
    """APP under `kbypass run --log` in host's namespace (user: a setpriv prefix for the app only)."""
    cmd = in_ns(host, KB, "run", "--log", "--spin", str(spin), "--", *user, *argv)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def status_cli(host) -> list[dict]:
    """The accelerated sockets as `kbypass run --status --json` lists them."""
    out = subprocess.run(in_ns(host, KB, "run", "--status", "--json"), capture_output=True, text=True, check=True)
    return [dict(s, pid=app["pid"], command=app["command"]) for app in json.loads(out.stdout)["apps"]
            for s in app["sockets"]]


def status(host) -> list[dict]:
    """The same list, read from the control plane in this process (what `run --status` prints, without a
    kbypass process per look: the tests poll it)."""
    try:
        with ControlPlaneClient(host.netns, start=False, command="test_run status") as cp:
            clients = cp.status()["clients"]
    except ControlPlaneMissing:
        return []
    return [dict(s, pid=c["pid"], command=c["command"]) for c in clients if "shim" in c for s in c["shim"]]


def wait_for(pred, timeout: float = 30.0, what: str = "it"):  # a bound, not a wait: a loaded machine starts apps slowly
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sockets_of(host, port: int) -> list[dict]:
    return [s for s in status(host) if s["local"].endswith(f":{port}")]


def stop(p: subprocess.Popen) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
    out, _ = p.communicate()
    return out


def observations(out: str) -> int:
    m = re.search(r"Total (\d+) observations", out)
    return int(m.group(1)) if m else 0


def test_sockperf_server_under_run_answers_a_kernel_sockperf(hosts):
    a, b = hosts
    srv = run_app(b, "sockperf", "server", "-i", b.ipv4, "-p", "11111")
    try:
        wait_for(lambda: sockets_of(b, 11111), what="the server's socket to be accelerated")
        cli = subprocess.run(in_ns(a, "sockperf", "ping-pong", "-i", b.ipv4, "-p", "11111", "-t", "1"),
                             capture_output=True, text=True, timeout=60)
        assert observations(cli.stdout + cli.stderr) > 100, cli.stdout + cli.stderr
        (s,) = sockets_of(b, 11111)
        assert s["rx"] > 100 and s["tx"] > 100  # through the rings, both ways
        assert s["rx_kernel"] == 0 and s["rx_dropped"] == 0
        (cli_view,) = [x for x in status_cli(b) if x["local"].endswith(":11111")]  # the command says the same
        assert cli_view["pid"] == s["pid"] and cli_view["rx"] >= s["rx"] and cli_view["tx"] >= s["tx"]
    finally:
        out = stop(srv)
    assert "accelerated on" in out, out


@pytest.mark.parametrize("mux", ["e", "p", "s"], ids=["epoll", "poll", "select"])
def test_sockperf_server_multiplexing_an_accelerated_and_a_kernel_socket(hosts, tmp_path, mux):
    """sockperf's server on two sockets (-f feed file) waiting in epoll/poll/select (-F): one on the
    testbed address (accelerated), one on loopback (the kernel's); both answer their ping-pong."""
    a, b = hosts
    feed = tmp_path / "feed.txt"
    feed.write_text(f"U:{b.ipv4}:11121\nU:127.0.0.1:11122\n")
    srv = run_app(b, "sockperf", "server", "-f", str(feed), "-F", mux)
    try:
        wait_for(lambda: sockets_of(b, 11121), what="the server's testbed socket to be accelerated")
        # both clients at once: the server's one wait serves the two sockets side by side
        clients = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in (
            in_ns(a, "sockperf", "ping-pong", "-i", b.ipv4, "-p", "11121", "-t", "1"),
            in_ns(b, "sockperf", "ping-pong", "-i", "127.0.0.1", "-p", "11122", "-t", "1"))]
        try:
            over_rings, kernel = (c.communicate(timeout=60)[0] for c in clients)
        finally:
            for c in clients:
                if c.poll() is None:
                    c.kill()
                    c.wait()
        assert observations(over_rings) > 100, over_rings
        assert observations(kernel) > 100, kernel
        (s,) = sockets_of(b, 11121)
        assert s["rx"] > 100 and s["tx"] > 100 and s["rx_kernel"] == 0
    finally:
        out = stop(srv)
    assert "127.0.0.1:11122) not accelerated: loopback" in out, out


def test_sockperf_client_under_run_measures_a_kernel_sockperf_server(hosts):
    a, b = hosts
    srv = subprocess.Popen(in_ns(b, "sockperf", "server", "-i", b.ipv4, "-p", "11112"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: udp_bound(b.netns, 11112), "the kernel sockperf server's socket", proc=srv)
        cli = run_app(a, "sockperf", "ping-pong", "-i", b.ipv4, "-p", "11112", "-t", "2", spin=200)
        mid = wait_for(lambda: [s for s in status(a) if s["rx"] > 50], what="the client's datagrams on the rings")
        out, _ = cli.communicate(timeout=60)
    finally:
        srv.kill()
        srv.wait()
    assert cli.returncode == 0, out
    assert observations(out) > 100, out
    assert mid[0]["tx"] > 50 and mid[0]["rx_dropped"] == 0


def test_socat_recv_and_sendto_under_run(hosts, tmp_path):
    a, b = hosts
    got = tmp_path / "got.txt"
    recv = run_app(b, "socat", "-u", f"UDP-RECV:5555,bind={b.ipv4}", f"OPEN:{got},creat,trunc")
    try:
        wait_for(lambda: sockets_of(b, 5555), what="socat's socket")
        lines = "".join(f"line {i}\n" for i in range(20))
        send = run_app(a, "socat", "-u", "-b", "8", "-", f"UDP-SENDTO:{b.ipv4}:5555", stdin=subprocess.PIPE)
        out, _ = send.communicate(lines, timeout=30)
        assert "accelerated on" in out, out
        wait_for(lambda: got.exists() and got.read_text().count("\n") == 20, what="socat to write every line")
        (s,) = sockets_of(b, 5555)
        assert s["rx"] >= 10 and s["rx_kernel"] == 0  # socat reads 8 bytes at a time: a datagram each
    finally:
        stop(recv)
    assert got.read_text() == lines


def test_kill_9_of_the_app_frees_its_rule_and_port_at_once(hosts):
    a, b = hosts
    first = run_app(b, "sockperf", "server", "-i", b.ipv4, "-p", "11113")
    wait_for(lambda: sockets_of(b, 11113), what="the first app's socket")
    first.kill()
    first.wait()
    wait_for(lambda: not _rules(b), timeout=1.0, what="its rule to go within a second")
    second = run_app(b, "sockperf", "server", "-i", b.ipv4, "-p", "11113")
    try:
        wait_for(lambda: sockets_of(b, 11113), what="the next app on the same port")
        cli = subprocess.run(in_ns(a, "sockperf", "ping-pong", "-i", b.ipv4, "-p", "11113", "-t", "1"),
                             capture_output=True, text=True, timeout=60)
        assert observations(cli.stdout) > 100
    finally:
        stop(second)


def _rules(host) -> list:
    with ControlPlaneClient(host.netns, start=False) as cp:
        return [r for i in cp.status()["interfaces"] for r in i["rules"]]


def test_kill_9_of_the_control_plane_one_error_and_the_app_goes_on_on_the_kernel(own_cp):
    a, b = own_cp
    srv = run_app(b, "sockperf", "server", "-i", b.ipv4, "-p", "11114")
    try:
        wait_for(lambda: sockets_of(b, 11114), what="the server's socket")
        pid = int(open(paths.lock_path(paths.namespace_name(b.netns))).read().strip())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not xdp_attached(b), timeout=2.0, what="the steering program to go with its owner")
        time.sleep(0.3)
        cli = subprocess.run(in_ns(a, "sockperf", "ping-pong", "-i", b.ipv4, "-p", "11114", "-t", "1"),
                             capture_output=True, text=True, timeout=60)
        assert observations(cli.stdout) > 100, cli.stdout  # answered by the kernel socket now
        assert srv.poll() is None
    finally:
        out = stop(srv)
    assert out.count("the control plane went away") == 1, out
    assert "Traceback" not in out


def test_an_unprivileged_app_is_accelerated_by_a_root_control_plane(hosts):
    a, b = hosts
    srv = run_app(b, "sockperf", "server", "-i", b.ipv4, "-p", "11115", user=UNPRIVILEGED)
    try:
        (s,) = wait_for(lambda: sockets_of(b, 11115), what="the unprivileged app's socket")
        assert int(subprocess.check_output(["stat", "-c", "%u", f"/proc/{s['pid']}"])) == 65534
        cli = subprocess.run(in_ns(a, "sockperf", "ping-pong", "-i", b.ipv4, "-p", "11115", "-t", "1"),
                             capture_output=True, text=True, timeout=60)
        assert observations(cli.stdout) > 100
        assert sockets_of(b, 11115)[0]["rx"] > 100
    finally:
        stop(srv)


EPOLL_APP = r"""
import select, socket, sys
acc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); acc.bind((sys.argv[1], 7001))
ker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); ker.bind(("127.0.0.1", 7002))
ep = select.epoll(); ep.register(acc.fileno(), select.EPOLLIN); ep.register(ker.fileno(), select.EPOLLIN)
print("ready", flush=True)
seen = set()
while len(seen) < 2:
    for fd, ev in ep.poll(10):
        s = acc if fd == acc.fileno() else ker
        data, peer = s.recvfrom(100)
        seen.add(fd)
        print("got", "accelerated" if s is acc else "kernel", data.decode(), flush=True)
        if s is acc:
            ker.sendto(b"from-kernel", ("127.0.0.1", 7002))
"""


def test_epoll_over_an_accelerated_and_a_kernel_socket(hosts):
    a, b = hosts
    app = run_app(b, sys.executable, "-c", EPOLL_APP, b.ipv4)
    try:
        wait_for(lambda: sockets_of(b, 7001), what="the accelerated socket")
        subprocess.run(in_ns(a, sys.executable, "-c", f"import socket; socket.socket(socket.AF_INET, "
                             f"socket.SOCK_DGRAM).sendto(b'from-a', ('{b.ipv4}', 7001))"), check=True)
        out, _ = app.communicate(timeout=20)
    finally:
        stop(app)
    assert "got accelerated from-a" in out and "got kernel from-kernel" in out, out
    assert "127.0.0.1:7002) not accelerated: loopback" in out, out


def test_an_address_off_the_served_interfaces_stays_on_the_kernel_with_one_line(hosts):
    a, b = hosts
    code = "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 7003))"
    out = subprocess.run(in_ns(b, KB, "run", "--log", "--", sys.executable, "-c", code), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    assert out.stderr.count("not accelerated") == 1, out.stderr


def test_no_control_plane_and_none_startable_one_warning_and_the_kernel(own_cp):
    skip_unless_nobody_runs_kbypass()  # kbypass itself runs as uid 65534 here
    a, b = own_cp
    code = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('%s', 7004)); "
            "print('bound', flush=True)" % b.ipv4)
    out = subprocess.run(in_ns(b, *UNPRIVILEGED, KB, "run", "--", "/usr/bin/python3", "-c", code),
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "bound" in out.stdout
    assert out.stderr.count("warning") == 1 and "kernel sockets" in out.stderr, out.stderr


def test_iperf3_udp_under_run_on_both_ends(hosts):
    """iperf3's TCP control connection passes through to the kernel; its UDP data goes over the rings."""
    a, b = hosts
    srv = run_app(b, "iperf3", "-4", "-s", "-1", "-p", "5301")
    try:
        # its UDP socket is made when the client connects: nothing to see before its control connection listens
        wait_until(lambda: tcp_listening(b.netns, 5301), "iperf3's control connection", proc=srv)
        cli = run_app(a, "iperf3", "-4", "-c", b.ipv4, "-p", "5301", "-u", "-b", "20M", "-t", "3")
        mid = wait_for(lambda: [s for s in sockets_of(b, 5301) if s["proto"] == "udp" and s["rx"] > 100],
                       what="iperf3's data on the rings")  # its TCP control connection is on the rings too
        out, _ = cli.communicate(timeout=60)
        assert cli.returncode == 0, out
        assert re.search(r"receiver", out), out
    finally:
        stop(srv)
    assert mid[0]["rx_kernel"] == 0
    assert "iperf Done." in out


ASYNCIO_ECHO = r"""
import asyncio, sys
class Echo(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr): self.t.sendto(data, addr)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Echo, local_addr=(sys.argv[1], 7010))
    await asyncio.sleep(30)
if sys.argv[2] == "uvloop":
    import uvloop; uvloop.run(main())
else:
    asyncio.run(main())
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_unmodified_asyncio_echo_server_under_run(hosts, loop):
    """uvloop's libuv registers fds through io_uring when it may: the shim answers io_uring_setup ENOSYS, so
    libuv's epoll_ctl calls come through the shim and the accelerated socket's datagrams reach the loop."""
    a, b = hosts
    srv = run_app(b, sys.executable, "-c", ASYNCIO_ECHO, b.ipv4, loop)
    try:
        wait_for(lambda: sockets_of(b, 7010), what="the asyncio server's socket")
        code = (f"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
                f"for i in range(50):\n    s.sendto(b'ping%d' % i, ('{b.ipv4}', 7010)); "
                f"assert s.recv(100) == b'ping%d' % i\nprint('echoed')")
        out = subprocess.run(in_ns(a, sys.executable, "-c", code), capture_output=True, text=True, timeout=60)
        assert "echoed" in out.stdout, out.stderr
        (s,) = sockets_of(b, 7010)
        assert s["rx"] >= 50 and s["tx"] >= 50
    finally:
        stop(srv)


PEER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 7020)); s.settimeout(10)
for i in range(4):
    s.sendto(b"m%d" % i, (sys.argv[2], 7021))
s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
got = [s.recvmsg(100, 64) for _ in range(3)]
tos = {anc[0][2][0] for _, anc, _, _ in got}
print(" ".join(d.decode() for d, _, _, _ in got), got[0][3][1], "tos", *tos)
"""


def test_the_calls_apps_make_beyond_recvfrom_and_sendto(hosts, tmp_path):
    """SO_RCVTIMEO, SO_TIMESTAMPNS, IP_TOS, poll, FIONREAD, recvmsg, dup/dup2 and close of the first fd,
    recvmmsg/sendmmsg, O_NONBLOCK, fork (the child on the kernel socket), write/connect: a C program under
    kbypass run (tests/netns/progs/udp_calls.c), its datagrams over the rings."""
    a, b = hosts
    prog = tmp_path / "udp_calls"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(prog),
                    os.path.join(os.path.dirname(__file__), "progs", "udp_calls.c")], check=True)
    app = run_app(b, str(prog), b.ipv4, "7021")
    lines = []
    try:
        for line in app.stdout:
            lines.append(line.strip())
            if line.startswith(("ready", "FAIL")):
                break
        assert lines[-1] == "ready", lines
        peer = subprocess.run(in_ns(a, sys.executable, "-c", PEER, a.ipv4, b.ipv4), capture_output=True, text=True,
                              timeout=30)
        assert peer.stdout.split() == ["r0", "r1", "after-fork", "7021", "tos", "16"], peer.stdout + peer.stderr
        for line in app.stdout:
            lines.append(line.strip())
            if line.startswith(("done", "FAIL")):
                break
        assert lines[-1] == "done", lines
        (s,) = sockets_of(b, 7021)
        assert s["rx"] == 4 and s["tx"] == 3 and s["rx_kernel"] == 0 and s["tx_kernel"] == 0, s
    finally:
        out = stop(app)
    assert not [ln for ln in lines + out.splitlines() if ln.startswith("FAIL")], lines + out.splitlines()
    assert any("fork: this child's copies of 1 accelerated socket(s) are kernel sockets" in ln
               for ln in lines + out.splitlines()), lines + out.splitlines()


def _raw_call(sock, payload: bytes, fds=()) -> dict:
    import array

    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([payload], anc)
    data, anc, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16))
    return json.loads(data)


def test_garbage_on_the_control_socket_leaves_the_apps_accelerated(hosts):
    """A peer of the control plane sending garbage, a pipe or an IPv6 socket as its socket to steer, an unsealed
    counters page: each refused with one line, and the accelerated app goes on."""
    a, b = hosts
    srv = run_app(b, "sockperf", "server", "-i", b.ipv4, "-p", "11116")
    try:
        wait_for(lambda: sockets_of(b, 11116), what="the app's socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
            c.connect(paths.socket_path(paths.namespace_name(b.netns)))
            assert _raw_call(c, b'{"op":"hello","version":1}')["ok"]
            assert "JSON object" in _raw_call(c, b"\xff\x00garbage")["error"]
            assert "file descriptor" in _raw_call(c, b'{"op":"accelerate"}')["error"]
            r, w = os.pipe()
            tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                assert "bound UDP or TCP socket" in _raw_call(c, b'{"op":"accelerate"}', [r])["error"]
                tcp.bind(("::1", 0))
                assert "only IPv4 UDP and TCP" in _raw_call(c, b'{"op":"accelerate"}', [tcp.fileno()])["error"]
                memfd = os.memfd_create("x")
                os.ftruncate(memfd, 8192)
                assert "seal" in _raw_call(c, b'{"op":"shim_page"}', [memfd])["error"]
                os.close(memfd)
                assert "open a socket" in _raw_call(c, b'{"op":"next_hop","iface":"lo","dst":"1.2.3.4"}')["error"]
            finally:
                os.close(r)
                os.close(w)
                tcp.close()
        cli = subprocess.run(in_ns(a, "sockperf", "ping-pong", "-i", b.ipv4, "-p", "11116", "-t", "1"),
                             capture_output=True, text=True, timeout=60)
        assert observations(cli.stdout) > 100
        assert sockets_of(b, 11116)[0]["rx"] > 100
    finally:
        stop(srv)


def test_a_port_taken_in_the_kernel_is_the_apps_eaddrinuse_as_without_kbypass(hosts):
    a, b = hosts
    code = ("import socket, sys\nt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); t.bind((sys.argv[1], 7030))\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n    s.bind((sys.argv[1], 7030))\nexcept OSError as e:\n    print('refused', e.errno)\n")
    out = subprocess.run(in_ns(b, KB, "run", "--log", "--", sys.executable, "-c", code, b.ipv4),
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["refused", "98"], out.stdout + out.stderr  # EADDRINUSE
    assert out.stderr.count("accelerated on") == 1, out.stderr  # the first socket only


def test_iface_limits_what_is_accelerated(own_cp):
    """--iface names the interfaces a control plane started by kbypass run serves: an address on another
    stays on the kernel, with one line saying why."""
    a, b = own_cp
    code = "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 7031))"
    out = subprocess.run(in_ns(b, KB, "run", "--log", "--iface", "lo", "--", sys.executable, "-c", code, b.ipv4),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    (line,) = [ln for ln in out.stderr.splitlines() if "7031" in ln]
    assert "not accelerated" in line and "does not serve" in line, out.stderr


EXEC_APP = r"""
import os, socket, sys, time
if len(sys.argv) == 2:  # the first image: an accelerated socket, then exec with it inherited
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 7040)); s.set_inheritable(True)
    os.execv(sys.executable, [sys.executable, "-c", SECOND_IMAGE, sys.argv[1], str(s.fileno())])
"""
EXEC_SECOND = r"""
import socket, sys, time
s = socket.socket(fileno=int(sys.argv[2]))
print("second image", flush=True)
data, peer = s.recvfrom(100)
print("got", data.decode(), flush=True)
"""


def test_exec_leaves_the_new_image_a_kernel_socket_and_frees_the_rule(hosts):
    """exec: the control plane connection is close-on-exec, so the old image's rule goes and the socket the
    new image inherits is the kernel socket it always also was; the datagram reaches it there."""
    a, b = hosts
    first = EXEC_APP.replace("SECOND_IMAGE", repr(EXEC_SECOND))
    app = run_app(b, sys.executable, "-c", first, b.ipv4)
    try:
        lines = []
        for line in app.stdout:
            lines.append(line.strip())
            if "second image" in line:
                break
        assert any("7040) accelerated on" in ln for ln in lines), lines
        wait_for(lambda: not _rules(b), timeout=2.0, what="the first image's rule to go")
        subprocess.run(in_ns(a, sys.executable, "-c", f"import socket; socket.socket(socket.AF_INET, "
                             f"socket.SOCK_DGRAM).sendto(b'to-the-kernel', ('{b.ipv4}', 7040))"), check=True)
        out, _ = app.communicate(timeout=20)
    finally:
        stop(app)
    assert "got to-the-kernel" in out, out


def test_an_unprivileged_app_kept_out_by_a_root_only_control_plane_warns_once(own_cp):
    """A control plane started for root only (`kbypass cp start`): the unprivileged app cannot connect, says
    so once and runs on its kernel sockets."""
    a, b = own_cp
    subprocess.run(in_ns(b, KB, "cp", "start"), check=True, capture_output=True)
    code = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 7050)); "
            "t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); t.bind((sys.argv[1], 7051)); print('bound')")
    out = subprocess.run(in_ns(b, KB, "run", "--", *UNPRIVILEGED, "/usr/bin/python3", "-c", code, b.ipv4),
                         capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0 and "bound" in out.stdout, out.stderr
    (line,) = out.stderr.splitlines()
    assert "cannot reach the control plane" in line and "Permission denied" in line and "kernel sockets" in line


BURST_THEN_SLEEP = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 7050))
s.sendto(b"warm", (sys.argv[2], 7051))  # the next hop gets known (this one may go through the kernel)
time.sleep(0.3)
print("sending", flush=True)
for i in range(int(sys.argv[3])):
    s.sendto(b"burst%05d" % i, (sys.argv[2], 7051))
time.sleep(30)  # clock_nanosleep: a call the shim does not see
"""


def _burst_to_kernel_peer(hosts, then: str, counters: bool = False) -> None:
    """The app sends a warm-up datagram, then K in a burst, then `then` (python): the kernel peer in host b
    gets all K, in order, while the app is still in `then` (counters: and they went through the rings)."""
    a, b = hosts
    k = 100
    code = ("import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 7051)); s.settimeout(20)\n"
            "got = [s.recv(100) for _ in range(int(sys.argv[2]) + 1)][1:]\n"
            "print(' '.join(g.decode() for g in got), flush=True)\n")
    rx = subprocess.Popen(in_ns(b, sys.executable, "-c", code, b.ipv4, str(k)), stdout=subprocess.PIPE, text=True)
    wait_until(lambda: udp_bound(b.netns, 7051), "the kernel peer's socket", proc=rx)
    # every send after the first counts as the burst's (however slow a busy machine makes Python)
    app = run_app(a, sys.executable, "-c", BURST_THEN_SLEEP.replace("time.sleep(30)", then), a.ipv4, b.ipv4,
                  str(k), env={**os.environ, "KBYPASS_TX_BURST_US": "10000000"})
    try:
        wait_for(lambda: "sending" in app.stdout.readline(), what="the burst")
        out, _ = rx.communicate(timeout=10)
        assert out.split() == ["burst%05d" % i for i in range(k)]
        assert app.poll() is None  # still in `then`: nothing the app did later sent them
        if counters:
            (s,) = sockets_of(a, 7050)
            assert s["tx"] >= k and s["tx_kernel"] <= 1  # the burst through the rings
    finally:
        rx.kill()
        stop(app)


def test_a_burst_then_an_exec_reaches_the_kernel_peer(hosts):
    """exec takes the flusher and the rings away: the exec family flushes first (kbp_exec.c)."""
    _burst_to_kernel_peer(hosts, "import os; os.execv('/bin/sleep', ['sleep', '30'])")


def test_a_burst_then_a_sleep_reaches_the_kernel_peer_within_the_flush_bound(hosts):
    """Sends in a burst leave their kick to a batch (kbp_iface_send); the app then sleeps in a call the shim
    does not see: the flusher thread still gets every datagram out (TX_FLUSH_NS, 0.2 ms), long before the
    app wakes. K = 100 is not a multiple of the batch (32), so a tail waits for the flusher."""
    _burst_to_kernel_peer(hosts, "time.sleep(30)", counters=True)


SIGNALLED = r"""
import select, signal, socket, sys, time
class Stop(Exception): pass
def stop(*a): raise Stop()
signal.signal(signal.SIGALRM, stop)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 7030))
p = select.poll(); p.register(s, select.POLLIN); e = select.epoll(); e.register(s, select.EPOLLIN)
wait = {"recv": lambda: s.recv(100), "poll": lambda: p.poll(10000), "epoll": lambda: e.poll(10)}[sys.argv[2]]
t = time.monotonic(); signal.alarm(1)
try: wait(); print("returned")
except Stop: print("interrupted after %.2f s" % (time.monotonic() - t), flush=True)
"""


@pytest.mark.parametrize("call", ["recv", "poll", "epoll"])
def test_a_signal_ends_a_spinning_wait_as_the_kernel_would(hosts, call):
    """SIGALRM arrives while recv/poll/epoll_wait spins on the rings (KBYPASS_SPIN_US 5 s): the handler's
    exception is raised after ~1 s (the call returned EINTR), not after the spin, nor never."""
    a, b = hosts
    app = run_app(b, sys.executable, "-c", SIGNALLED, b.ipv4, call, spin=5_000_000)
    try:
        out, _ = app.communicate(timeout=30)
    finally:
        out = out if app.poll() is not None else stop(app)
    assert "accelerated on" in out, out
    m = re.search(r"interrupted after ([\d.]+) s", out)
    assert m and 0.9 <= float(m.group(1)) < 3.0, out


REFUSED = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0)); s.connect((sys.argv[2], 7039))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 3, 0))
s.send(b"x"); time.sleep(0.3)
t = time.monotonic()
try: s.recv(10); print("received")
except OSError as e: print(type(e).__name__, "after %.2f s" % (time.monotonic() - t))
"""


def test_an_icmp_port_unreachable_is_the_connected_apps_error(hosts):
    """A connected socket's datagram to a closed port: the kernel's ICMP error reaches the app's recv as
    ConnectionRefusedError at once (the shim's peek at the kernel socket takes it: it must hand it on)."""
    a, b = hosts
    out = subprocess.run(in_ns(b, KB, "run", "--log", "--", sys.executable, "-c", REFUSED, b.ipv4, a.ipv4),
                         capture_output=True, text=True, timeout=60)
    assert "accelerated on" in out.stderr + out.stdout, out.stderr
    m = re.search(r"ConnectionRefusedError after ([\d.]+) s", out.stdout)
    assert m and float(m.group(1)) < 1.0, out.stdout + out.stderr


DOORS_PEER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(7):
    if i == 6: time.sleep(0.5)
    s.sendto(b"d%d" % i, (sys.argv[1], 7031))
"""


def test_fortified_and_vector_calls_take_the_rings(hosts, tmp_path):
    """A program built with -D_FORTIFY_SOURCE=2 (__recv_chk, __recvfrom_chk, __read_chk, __poll_chk), readv,
    epoll_pwait2 and recvmmsg (tests/netns/progs/udp_doors.c) gets its datagrams through the rings, and recvmmsg
    waits for all it asked for as the kernel's does."""
    a, b = hosts
    prog = tmp_path / "udp_doors"
    subprocess.run(["gcc", "-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Werror", "-o", str(prog),
                    os.path.join(os.path.dirname(__file__), "progs", "udp_doors.c")], check=True)
    app = run_app(b, str(prog), b.ipv4, "7031")
    lines = []
    try:
        for line in app.stdout:
            lines.append(line.strip())
            if line.startswith(("ready", "FAIL")):
                break
        assert lines[-1] == "ready", lines
        wait_for(lambda: sockets_of(b, 7031), what="the socket to be accelerated")
        subprocess.run(in_ns(a, sys.executable, "-c", DOORS_PEER, b.ipv4), check=True, timeout=30)
        for line in app.stdout:
            lines.append(line.strip())
            if line.startswith(("done", "FAIL")):
                break
        assert lines[-1] == "done", lines
        (s,) = sockets_of(b, 7031)
        assert s["rx"] == 7 and s["rx_kernel"] == 0, s
    finally:
        stop(app)


REUSEPORT = r"""
import socket, sys, time
for i in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((sys.argv[1], 7032)); globals()["s%d" % i] = s
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x", ("127.0.0.1", 7033))
print("ready", u.getsockname()[1], flush=True); time.sleep(30)
"""


def test_a_second_reuseport_socket_and_a_loopback_send_stay_on_the_kernel_and_say_so(hosts):
    """Two SO_REUSEPORT sockets of one app on one port: the first is accelerated, the control plane refuses
    the second one's duplicate rule (it stays on the kernel, with its log line saying why); an unbound
    socket's first send to loopback asks the control plane nothing (no rule for 0.0.0.0:its port)."""
    a, b = hosts
    app = run_app(b, sys.executable, "-c", REUSEPORT, b.ipv4)
    lines = []
    try:
        for line in app.stdout:
            lines.append(line.strip())
            if line.startswith("ready"):
                break
        assert lines and lines[-1].startswith("ready"), lines
        ephemeral = lines[-1].split()[1]
        assert len(sockets_of(b, 7032)) == 1
        rules = json.dumps(_rules(b))
        assert rules.count("dport 7032") == 1 and f"dport {ephemeral}" not in rules, rules
    finally:
        out = stop(app)
    said = "\n".join(lines) + out
    assert said.count("accelerated on") == 1, said
    assert re.search(r"7032\) not accelerated: .*SO_REUSEPORT", said), said


ANCILLARY = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for opt in (8, 13, 12):  # IP_PKTINFO, IP_RECVTOS, IP_RECVTTL
    s.setsockopt(socket.IPPROTO_IP, opt, 1)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
s.bind(("0.0.0.0", 7034)); s.settimeout(10)
print("ready", flush=True)
d, anc, flags, src = s.recvmsg(100, 256)
for level, kind, data in anc:
    if (level, kind) == (socket.IPPROTO_IP, 8):
        ifindex, spec, dst = struct.unpack("i4s4s", data)
        print("pktinfo", ifindex == socket.if_nametoindex(sys.argv[1]), socket.inet_ntoa(spec), socket.inet_ntoa(dst))
    elif (level, kind) == (socket.IPPROTO_IP, socket.IP_TOS):
        print("tos", data[0])
    elif (level, kind) == (socket.IPPROTO_IP, socket.IP_TTL):
        print("ttl", struct.unpack("i", data)[0])
    else:
        print("cmsg", level, kind)
print("flags", flags, flush=True)
"""


def test_pktinfo_tos_and_ttl_ancillary_data_come_from_the_frame(hosts):
    """IP_PKTINFO (ifindex, local and destination address), IP_RECVTOS and IP_RECVTTL on an accelerated
    socket: recvmsg gives them as the kernel would, in its order, after the timestamp."""
    a, b = hosts
    app = run_app(b, sys.executable, "-c", ANCILLARY, b.iface)
    try:
        for line in app.stdout:
            if line.startswith("ready"):
                break
        wait_for(lambda: sockets_of(b, 7034), what="the socket to be accelerated")
        send = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x28); s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 7)\n"
                f"s.sendto(b'x', ('{b.ipv4}', 7034))")
        subprocess.run(in_ns(a, sys.executable, "-c", send), check=True, timeout=30)
        app.wait(15)
    finally:
        out = stop(app)
    got = [ln for ln in out.splitlines() if not ln.startswith("kbypass[")]
    assert got == ["cmsg 1 35", f"pktinfo True {b.ipv4} {b.ipv4}", "ttl 7", "tos 40", "flags 0"], out


def test_a_queue_held_by_another_program_is_said_without_an_option_run_lacks(own_cp):
    """Another client's AF_XDP socket on queue 0: the app stays on the kernel, and its log line says what to do
    with kbypass run (the control plane's own answer suggests --share-queue, which kbypass run has not). A
    control plane of its own: the reason names the holder (client number, command line) and the shim keeps 255
    characters of it (csrc/preload/kbp_socket.c), so a long runner command line plus a shared control plane's
    larger client numbers cut off its end (seen)."""
    a, b = own_cp
    subprocess.run(in_ns(b, KB, "run", "--", "true"), check=True, timeout=60)  # starts the control plane
    with ControlPlaneClient(b.netns, start=False, command="holder") as cp:
        xsk, umem, _ = cp.open_socket(b.iface, 0, frames=256, frame_size=2048, rx_size=64, tx_size=64,
                                      fill_size=64, comp_size=64)
        try:
            code = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(('{b.ipv4}', 7035))"
            out = subprocess.run(in_ns(b, KB, "run", "--log", "--", sys.executable, "-c", code), capture_output=True,
                                 text=True, timeout=60).stderr
        finally:
            os.close(xsk)
            os.close(umem)
    assert "7035) not accelerated: no AF_XDP socket for queue 0" in out and "stop that program" in out, out
    assert "--share-queue" not in out, out
