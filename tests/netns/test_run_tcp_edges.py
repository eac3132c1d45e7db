"""`kbypass run` TCP at its edges, judged by kernel peers in the other namespace (and, for recv(len 0) and
SHUT_RD, by the same program on kernel sockets): reconnecting while the shim's TCP holds TIME_WAIT, a socket
bound to the wildcard with a port, an app that makes no call of the shim for seconds, recv of length 0 and
data after shutdown(SHUT_RD). The C programs are tests/netns/progs/tcp_*.c."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests.kb import tcp_listening, wait_until
from tests.netns import test_run
from tests.netns.test_run import in_ns, run_app, stop

_run_hosts, hosts = test_run._run_hosts, test_run.hosts  # test_run's fixtures: one control plane for the module
PROGS = os.path.join(os.path.dirname(__file__), "progs")


def build(tmp_path, name: str) -> str:
    exe = str(tmp_path / name)
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", exe, os.path.join(PROGS, name + ".c")], check=True)
    return exe


def kernel_server(host, script: str, *args: str) -> subprocess.Popen:
    """A Python server on kernel sockets in host's namespace; returns once it printed "ready"."""
    p = subprocess.Popen(in_ns(host, sys.executable, "-c", textwrap.dedent(script), *args), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    assert line.strip() == "ready", line + p.stdout.read()
    return p


def finish(p: subprocess.Popen, timeout: float = 30) -> str:
    try:
        return p.communicate(timeout=timeout)[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


OK_SERVER = """
    import socket, sys, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(512)
    print("ready", flush=True)
    def serve(c):
        with c:
            c.recv(8); c.sendall(b"ok"); c.recv(8)  # then the client's FIN: it closes first
    s.settimeout(10)
    try:
        while True:
            c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
    except socket.timeout:
        pass
"""


@pytest.mark.parametrize("src_port, count", [(0, 400), (45321, 3)], ids=["ephemeral", "fixed"])
def test_reconnects_while_earlier_connections_are_in_time_wait(hosts, tmp_path, src_port, count):
    """The client closes first, so each of its connections ends in TIME_WAIT in the shim's TCP. Ephemeral: the
    kernel hands out ports again (the shim lets a port go at TIME_WAIT) and the shim's TCP takes over its own
    TIME_WAIT of that 4-tuple; fixed source port (SO_REUSEADDR): every reconnect reuses it, as Linux does
    with timestamps. Neither may fail, and no connect may hang (SO_SNDTIMEO ends the program's wait)."""
    a, b = hosts
    exe = build(tmp_path, "tcp_reconnect")
    srv = kernel_server(a, OK_SERVER, a.ipv4, "8331")
    try:
        out = finish(run_app(b, exe, a.ipv4, "8331", str(src_port), str(count)), timeout=90)
    finally:
        stop(srv)
    assert f"all {count} done" in out, out[-3000:]
    assert "connecting) accelerated on" in out, out[-3000:]
    if src_port:
        assert out.count(f"ok from {b.ipv4}:{src_port}") == count, out[-3000:]  # the route's source, not 0.0.0.0


def test_iperf3_with_a_fixed_client_port_sends_from_the_routes_address(hosts):
    """iperf3 --cport binds its data connection to 0.0.0.0:PORT before connecting: the shim's TCP must send
    from the address the route picks (as the kernel's connect fills in), or the SYN leaves from 0.0.0.0."""
    a, b = hosts
    srv = subprocess.Popen(in_ns(a, "iperf3", "-s", "-1", "-B", a.ipv4, "-p", "5331"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: tcp_listening(a.netns, 5331), "iperf3 -s to listen", proc=srv)
        cli = run_app(b, "iperf3", "-c", a.ipv4, "-p", "5331", "-t", "1", "--cport", "45331", "-J")
        out = finish(cli, timeout=60)
    finally:
        srv.kill()
        srv.wait()
    assert cli.returncode == 0, out
    assert "(tcp 0.0.0.0:45331, connecting) accelerated on" in out, out  # the data connection was ours
    report = out[out.index("{"):]
    assert f'"local_host":\t"{b.ipv4}"' in report and '"local_port":\t45331' in report, report[:2000]
    assert '"bytes":' in report and '"sum_received"' in report, report[-2000:]


IDLE_PEER = """
    import socket, sys, time
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
    if sys.argv[3] == "bulk":
        t = time.monotonic(); s.sendall(b"y" * 200_000)
        print(f"sendall took {time.monotonic() - t:.2f} s", flush=True)
    else:  # keepalive probes every second from the first, given up after two unanswered
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, v in ((socket.TCP_KEEPIDLE, 1), (socket.TCP_KEEPINTVL, 1), (socket.TCP_KEEPCNT, 2)):
            s.setsockopt(socket.IPPROTO_TCP, opt, v)
    try:
        print("peer got", s.recv(100), flush=True)
    except OSError as e:
        print("peer got", type(e).__name__, flush=True)
    s.close()
"""


@pytest.mark.parametrize("mode", ["bulk", "keepalive"])
def test_an_app_asleep_in_no_call_of_the_shim_keeps_its_connection_going(hosts, tmp_path, mode):
    """The app accepts, then sleeps 5 s (in nanosleep, which the shim does not see). bulk: the kernel peer's
    sendall of 200 kB ends at once on the kernel; under run it must not wait for the app to wake (the shim's
    flusher thread takes the segments and ACKs them). keepalive: the peer probes from 1 s on and gives up
    after two unanswered probes (3 s); the shim must answer them, so the peer reads the app's "awake"."""
    a, b = hosts
    exe = build(tmp_path, "tcp_idle_app")
    app = run_app(b, exe, b.ipv4, "8332", "5")
    try:
        for line in app.stdout:  # the shim's log lines first
            if line.strip() == "ready":
                break
        peer = subprocess.Popen(in_ns(a, sys.executable, "-c", textwrap.dedent(IDLE_PEER), b.ipv4, "8332", mode),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        said = finish(peer)
        out = finish(app)
    finally:
        stop(app)
    assert "peer got b'awake'" in said, said + out
    if mode == "bulk":
        took = float(said.split("sendall took ")[1].split()[0])
        assert took < 2.0, said  # 5 s without the flusher: nothing was ACKed while the app slept
        assert "app read 200000" in out, out


SHUTRD_PEER = """
    import socket, sys
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((sys.argv[1], int(sys.argv[2]))); l.listen(4)
    print("ready", flush=True)
    c, _ = l.accept(); c.settimeout(10)
    c.sendall(b"before")
    try:
        assert c.recv(2) == b"go"
        c.sendall(b"after" * 1000)
        print("peer got", c.recv(2), flush=True)
    except OSError as e:
        print("peer got", type(e).__name__, flush=True)
"""


def test_recv_of_length_zero_and_shut_rd_as_on_kernel_sockets(hosts, tmp_path):
    """The same program, on kernel sockets and under run, against the same kernel peer: recv(len 0) with data
    queued returns 0 at once, with nothing queued waits (SO_RCVTIMEO: 0 after it) or EAGAIN (MSG_DONTWAIT);
    after shutdown(SHUT_RD) poll says IN and RDHUP, recv returns 0 instead of waiting, and data the peer sends
    is still taken, ACKed and read (no RST): every line the same."""
    a, b = hosts
    exe = build(tmp_path, "tcp_shutrd")
    said = {}
    for how in ("kernel", "run"):
        port = "8333" if how == "kernel" else "8334"
        peer = kernel_server(a, SHUTRD_PEER, a.ipv4, port)
        app = subprocess.Popen(in_ns(b, exe, a.ipv4, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True) if how == "kernel" else run_app(b, exe, a.ipv4, port)
        out = finish(app)
        said[how] = ([line for line in out.splitlines() if not line.startswith("kbypass")], finish(peer))
    kernel, run = said["kernel"], said["run"]
    assert "read after SHUT_RD: 5000" in kernel[0] and "peer got b'ok'" in kernel[1], kernel  # the judge's view
    assert run == kernel


# (source port, server port(s)) of the kernel's run and of kbypass run's, for each case of the test below
PORTS = {"same": (("45335", "8335"), ("45336", "8336")),
         "other": (("45337", "8337", "8339"), ("45338", "8338", "8340"))}


@pytest.mark.parametrize("peers", ["same", "other"])
def test_a_reconnect_onto_a_time_wait_without_timestamps_fails_as_the_kernels_does(hosts, tmp_path, peers):
    """The peer's timestamps off (its namespace's sysctl): a TIME_WAIT cannot be told from a new connection,
    so Linux's connect from the same fixed port fails with EADDRNOTAVAIL; under run the host refuses the
    4-tuple and the shim must say so at once (the rule and the socket's sid dropped), not wait forever.
    other: the second connect from that port goes to another port of the peer, a 4-tuple of its own: Linux
    connects, and so must run while the first one's rule (steered by its 4-tuple) still holds TIME_WAIT."""
    a, b = hosts
    exe = build(tmp_path, "tcp_reconnect")
    sysctl = "net.ipv4.tcp_timestamps"
    old = subprocess.run(in_ns(a, "sysctl", "-n", sysctl), capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(in_ns(a, "sysctl", "-qw", f"{sysctl}=0"), check=True)
    said = {}
    try:
        # each case its own ports: the other's TIME_WAITs (60 s) are not in its way
        for how, (src, *ports) in zip(("kernel", "run"), PORTS[peers]):
            servers = [kernel_server(a, OK_SERVER, a.ipv4, port) for port in ports]
            try:
                args = (exe, a.ipv4, ",".join(ports), src, "2")
                app = run_app(b, *args) if how == "run" else subprocess.Popen(
                    in_ns(b, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                said[how] = [line for line in finish(app).splitlines() if not line.startswith("kbypass")]
            finally:
                for srv in servers:
                    stop(srv)
    finally:
        subprocess.run(in_ns(a, "sysctl", "-qw", f"{sysctl}={old}"), check=True)
    (src, *ports), (run_src, *run_ports) = PORTS[peers]
    if peers == "same":
        assert said["kernel"][-1] == "1: connect: Cannot assign requested address", said
    else:
        assert said["kernel"][-2:] == [f"1: ok from {b.ipv4}:{src} to {ports[1]}", "all 2 done"], said
    moved = dict(zip((src, *ports), (run_src, *run_ports)))
    assert said["run"] == [re.sub(r"\b\d{4,5}\b", lambda m: moved.get(m[0], m[0]), line) for line in said["kernel"]]


COUNT_SERVER = """
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
    print("ready", flush=True)
    for _ in range(2):  # the program natively, then under run
        c, _ = s.accept()
        with c:
            want = int(sys.argv[3])
            while want:
                want -= len(c.recv(min(want, 1 << 20)))
            c.sendall(b"ok"); c.recv(8)
"""


def test_tcp_info_under_run_says_what_the_kernels_says_of_the_same_exchange(hosts, tmp_path):
    """getsockopt(TCP_INFO): under run the kernel socket behind the fd is a placeholder (CLOSE, RTT 0); the shim
    answers from its own TCP. The same program natively judges it: state, options, MSS, path MTU and the byte
    counts match; RTT and cwnd are the connection's (not zero)."""
    a, b = hosts
    exe = build(tmp_path, "tcp_info")
    n = 1_000_000
    srv = kernel_server(a, COUNT_SERVER, a.ipv4, "8341", str(n))
    try:
        native = subprocess.run(in_ns(b, exe, a.ipv4, "8341", str(n)), capture_output=True, text=True, timeout=30)
        under = finish(run_app(b, exe, a.ipv4, "8341", str(n)), timeout=60)
    finally:
        stop(srv)
    assert native.returncode == 0, native.stderr
    assert "connecting) accelerated on" in under, under[-3000:]
    kernel = dict(line.split() for line in native.stdout.splitlines())
    ours = dict(m.groups() for m in re.finditer(r"^(\w+) (\d+)$", under, re.M))
    for k in ("len", "state", "options", "snd_mss", "advmss", "pmtu", "unacked", "bytes_acked", "bytes_received",
              "notsent_bytes"):
        assert ours[k] == kernel[k], (k, sorted(ours.items()), sorted(kernel.items()))
    assert ours["bytes_acked"] == str(n + 1) and ours["bytes_received"] == "2" and ours["state"] == "1"
    assert int(ours["rtt"]) > 0 and int(ours["snd_cwnd"]) >= 10, ours
    assert int(ours["segs_out"]) >= n // 65536 and int(ours["segs_in"]) >= 2, ours
