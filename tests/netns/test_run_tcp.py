"""`kbypass run -- APP` with TCP on the testbed: unmodified sockperf, nginx and curl with the preload shim
(their TCP is kbypass's, kbypass.sockapi.shimtcp in the shim's embedded CPython) against plain kernel peers
in the other namespace, which are the judges: sockperf counts its answers, curl checks HTTP and the bytes
(SHA-256) and says which errno it got. That the kernel's TCP of the accelerated side saw none of it is read
from its own counters (/proc/net/snmp: PassiveOpens, ActiveOpens, InSegs in that namespace)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from kbypass.cp import paths
from kbypass.cp.client import ControlPlaneClient
from kbypass.steer.rules import Rule
from tests.netns import test_run
from tests.netns.test_run import (
    in_ns,
    observations,
    run_app,
    sockets_of,
    stop,
    wait_for,
)

_run_hosts, hosts = test_run._run_hosts, test_run.hosts  # test_run's fixtures: one control plane for the module


def kernel_tcp(host) -> dict[str, int]:
    """The namespace's kernel TCP counters (/proc/net/snmp's Tcp lines)."""
    out = subprocess.run(in_ns(host, "cat", "/proc/net/snmp"), capture_output=True, text=True, check=True).stdout
    names, values = [line.split()[1:] for line in out.splitlines() if line.startswith("Tcp:")]
    return dict(zip(names, map(int, values)))


def grew(before: dict, after: dict, key: str) -> int:
    return after[key] - before[key]


def test_sockperf_tcp_server_answers_a_kernel_sockperf(hosts):
    a, b = hosts
    srv = run_app(b, "sockperf", "server", "--tcp", "-i", b.ipv4, "-p", "11311")
    try:
        (lst,) = wait_for(lambda: sockets_of(b, 11311), what="the listening socket to be accelerated")
        assert lst["proto"] == "tcp"
        k0 = kernel_tcp(b)
        cli = subprocess.Popen(in_ns(a, "sockperf", "ping-pong", "--tcp", "-i", b.ipv4, "-p", "11311", "-t", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        conn = wait_for(lambda: [s for s in sockets_of(b, 11311) if s["fd"] != lst["fd"] and s["rx"] > 1000],
                        what="the accepted connection to serve messages")
        # --status while it runs: the listener's accepted count, the connection's peer and state, bytes, the host's
        table = subprocess.run(in_ns(b, test_run.KB, "run", "--status"), capture_output=True, text=True).stdout
        (app,) = [x for x in json.loads(subprocess.run(in_ns(b, test_run.KB, "run", "--status", "--json"),
                                                       capture_output=True, text=True, check=True).stdout)["apps"]
                  if "sockperf" in x["command"]]
        out, _ = cli.communicate(timeout=60)
        k1 = kernel_tcp(b)
    finally:
        log = stop(srv)
    assert observations(out) > 100, out
    assert "# dropped messages = 0" in out and "ERROR" not in out, out
    assert conn[0]["proto"] == "tcp" and conn[0]["tx"] > 1000 and conn[0]["role"] == "accepted"
    assert conn[0]["state"] == "ESTABLISHED" and conn[0]["peer"].startswith(a.ipv4 + ":"), conn
    listener = [s for s in app["sockets"] if s["role"] == "listener"]
    assert listener and listener[0]["state"] == "LISTEN" and listener[0]["accepted"] >= 1, app
    assert app["tcp"]["rx_segments"] > 50 and app["tcp"]["rx_predicted"] > 20, app["tcp"]
    assert "retransmits" in app["tcp"] and "connections" in app["tcp"], app["tcp"]
    assert "TCP sockets (bytes)" in table and "ESTABLISHED" in table and "TCP host (segments)" in table, table
    assert grew(k0, k1, "PassiveOpens") == 0 and grew(k0, k1, "InSegs") < 20, (k0, k1)  # the kernel saw none of it
    assert "(tcp 10.77.0.2:11311, listening) accelerated on" in log.replace(b.ipv4, "10.77.0.2"), log
    assert "predicted segments are queued in C for the app" in log, log  # the messages took the C path


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{ listen {ip}:{port}; root {d}/www; }}
}}
"""


@pytest.fixture
def site(tmp_path):
    (tmp_path / "www").mkdir()
    body = os.urandom(10_000_000)
    (tmp_path / "www" / "big.bin").write_bytes(body)
    os.chmod(tmp_path, 0o755)
    return tmp_path, hashlib.sha256(body).hexdigest()


def start_nginx(host, d, port: int):
    """nginx with master_process off: one process, whose accelerated listener serves (nginx as installed, a
    master and its workers: tests/netns/test_run_nginx_workers.py)."""
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, ip=host.ipv4, port=port))
    return run_app(host, "nginx", "-c", str(d / "nginx.conf"))


def test_nginx_serves_a_file_with_sendfile_and_keepalive(hosts, site):
    a, b = hosts
    d, digest = site
    srv = start_nginx(b, d, 8311)
    try:
        wait_for(lambda: sockets_of(b, 8311), what="nginx's listening socket to be accelerated")
        k0 = kernel_tcp(b)
        url = f"http://{b.ipv4}:8311/big.bin"
        outs = [d / f"got{i}" for i in range(3)]
        args = [w for o in outs for w in ("-o", str(o))]
        r = subprocess.run(in_ns(a, "curl", "-sS", "--max-time", "60", *args, "-w", "%{num_connects} %{http_code}\n",
                                 url, url, url), capture_output=True, text=True, timeout=90)
        k1 = kernel_tcp(b)
    finally:
        log = stop(srv)
    assert r.returncode == 0, r.stderr + log
    assert r.stdout.split("\n")[:3] == ["1 200", "0 200", "0 200"], r.stdout  # three requests, one connection
    for o in outs:
        assert hashlib.sha256(o.read_bytes()).hexdigest() == digest
    assert grew(k0, k1, "PassiveOpens") == 0 and grew(k0, k1, "OutSegs") < 20, (k0, k1)


def test_curl_under_run_downloads_from_a_kernel_server(hosts, site):
    a, b = hosts
    d, digest = site
    srv = subprocess.Popen(in_ns(a, sys.executable, "-m", "http.server", "--bind", a.ipv4, "8312", "--directory",
                                 str(d / "www")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(in_ns(a, "ss", "-Hltn", "sport = :8312"), capture_output=True,
                                        text=True).stdout.strip(), what="the kernel server to listen")
        k0 = kernel_tcp(b)
        r = run_app(b, "curl", "-sS", "--max-time", "60", "-o", str(d / "got"), f"http://{a.ipv4}:8312/big.bin")
        out = r.communicate(timeout=90)[0]
        k1 = kernel_tcp(b)
    finally:
        srv.kill()
        srv.wait()
    assert r.returncode == 0, out
    assert "connecting) accelerated on" in out, out
    assert hashlib.sha256((d / "got").read_bytes()).hexdigest() == digest
    assert grew(k0, k1, "ActiveOpens") == 0 and grew(k0, k1, "InSegs") < 20, (k0, k1)


def test_connect_to_a_closed_port_is_refused(hosts):
    a, b = hosts
    r = run_app(b, "curl", "-v", "--max-time", "10", f"http://{a.ipv4}:9/")
    out = r.communicate(timeout=30)[0]
    assert r.returncode == 7, out  # CURLE_COULDNT_CONNECT
    assert "Connection refused" in out and "connecting) accelerated on" in out, out


_ACCEPT_ONE = """import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("ready", flush=True)
c, _ = s.accept()
"""


def accepting_peer(body: str) -> str:
    """A kernel peer's script: listens on argv[1]:argv[2], says "ready", accepts one connection as `c`, then runs
    `body` (indented as the scripts here are written)."""
    return _ACCEPT_ONE + textwrap.dedent(body)


RESETTER = accepting_peer("""
    import struct
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 100000\\r\\n\\r\\n" + b"x" * 1000)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST mid-body
""")


def test_a_peer_reset_is_econnreset(hosts):
    a, b = hosts
    srv = subprocess.Popen(in_ns(a, sys.executable, "-c", RESETTER, a.ipv4, "8313"), stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        r = run_app(b, "curl", "-sS", "--max-time", "10", "-o", "/dev/null", f"http://{a.ipv4}:8313/")
        out = r.communicate(timeout=30)[0]
    finally:
        srv.kill()
        srv.wait()
    assert r.returncode == 56 and "Connection reset by peer" in out, out  # CURLE_RECV_ERROR, strerror(ECONNRESET)


def test_the_apps_exit_releases_its_rules_and_port(hosts):
    """After the app under run exits nothing of it stays: no socket listed, and a plain kernel server on the
    same port is reached (no rule steers its segments away)."""
    a, b = hosts
    srv = run_app(b, "sockperf", "server", "--tcp", "-i", b.ipv4, "-p", "11314")
    wait_for(lambda: sockets_of(b, 11314), what="the listening socket to be accelerated")
    stop(srv)
    wait_for(lambda: not sockets_of(b, 11314), timeout=10, what="the socket to be gone")
    plain = subprocess.Popen(in_ns(b, "sockperf", "server", "--tcp", "-i", b.ipv4, "-p", "11314"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        cli = subprocess.run(in_ns(a, "sockperf", "ping-pong", "--tcp", "-i", b.ipv4, "-p", "11314", "-t", "1"),
                             capture_output=True, text=True, timeout=60)
    finally:
        plain.kill()
        plain.wait()
    assert observations(cli.stdout + cli.stderr) > 100, cli.stdout + cli.stderr


def test_log_says_why_a_tcp_socket_stays_on_the_kernel(hosts):
    """Loopback stays the kernel's (said with --log), and the app works as without kbypass."""
    _, b = hosts
    script = textwrap.dedent("""
        set -e
        sockperf server --tcp -i 127.0.0.1 -p 11315 & P=$!
        sleep 0.5
        sockperf ping-pong --tcp -i 127.0.0.1 -p 11315 -t 1 2>&1 | grep -c 'Summary: Latency'
        kill $P
    """)
    r = run_app(b, "sh", "-c", script)
    out = r.communicate(timeout=60)[0]
    assert "(tcp 127.0.0.1:11315, listening) not accelerated: loopback stays the kernel's" in out, out
    assert "\n1\n" in f"\n{out}", out


def test_a_python_apps_tcp_stays_on_the_kernel_and_works(hosts):
    """A Python app's TCP is not accelerated (the shim's TCP would share its GIL: kbp_py.c), said with --log,
    and it works as without kbypass."""
    a, b = hosts
    code = ("import socket; s=socket.socket(); s.bind(('%s', 8316)); s.listen(); print('ready', flush=True); "
            "c, _ = s.accept(); c.sendall(c.recv(100)); c.close()" % b.ipv4)
    srv = run_app(b, sys.executable, "-c", code)
    seen = []
    try:
        while not seen or "ready" not in seen[-1]:
            seen.append(srv.stdout.readline())
            assert seen[-1], seen
        r = subprocess.run(in_ns(a, sys.executable, "-c", "import socket; c=socket.create_connection(('%s', 8316), "
                                 "timeout=10); c.sendall(b'echo'); print(c.recv(100))" % b.ipv4),
                           capture_output=True, text=True, timeout=30)
        out = "".join(seen) + srv.communicate(timeout=30)[0]
    finally:
        stop(srv)
    assert "b'echo'" in r.stdout, r.stderr
    assert "listening) not accelerated: a Python app" in out, out


def test_without_log_one_line_says_tcp_stays_on_the_kernel(hosts):
    """Without --log, a TCP socket left on the kernel for a reason the user did not choose (here: a Python app) is
    said once, in one line (review finding 8: only --log said it, so a run accelerating nothing looked like one
    that did); further sockets add nothing."""
    _, b = hosts
    code = ("import socket\nfor p in (8321, 8322):\n    s = socket.socket(); s.bind(('%s', p)); s.listen()\n"
            "print('done', flush=True)" % b.ipv4)
    r = subprocess.run(in_ns(b, test_run.KB, "run", "--", sys.executable, "-c", code), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "done" in r.stdout, (r.stdout, r.stderr)
    said = [line for line in r.stderr.splitlines() if "stays on the kernel" in line]
    assert len(said) == 1 and "listening) stays on the kernel: a Python app" in said[0], r.stderr
    assert "--log says each" in said[0], said


CLIENT_RESETS = textwrap.dedent("""
    import socket, struct, sys
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    c.sendall(b"GET /big.bin HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    got = 0
    while got < 100000:
        got += len(c.recv(65536))
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST while nginx still has megabytes to send
    print("reset", flush=True)
""")


def test_nginx_sending_to_a_client_that_reset_gets_the_kernels_errors(hosts, site):
    """A client that resets mid-download: nginx's next sendfile fails as on the kernel (ECONNRESET, then
    EPIPE), which its error log names, and it goes on serving."""
    a, b = hosts
    d, digest = site
    srv = start_nginx(b, d, 8317)
    try:
        wait_for(lambda: sockets_of(b, 8317), what="nginx's listening socket to be accelerated")
        r = subprocess.run(in_ns(a, sys.executable, "-c", CLIENT_RESETS, b.ipv4, "8317"), capture_output=True,
                           text=True, timeout=30)
        assert "reset" in r.stdout, r.stderr
        again = subprocess.run(in_ns(a, "curl", "-sS", "--max-time", "30", "-o", str(d / "after"),
                                     f"http://{b.ipv4}:8317/big.bin"), capture_output=True, text=True, timeout=60)
        error_log = wait_for(lambda: (lambda t: t if "failed (104: Connection reset by peer)" in t
                                      or "failed (32: Broken pipe)" in t else "")((d / "error.log").read_text()),
                             timeout=10, what="nginx to log the reset")
    finally:
        stop(srv)
    assert again.returncode == 0 and hashlib.sha256((d / "after").read_bytes()).hexdigest() == digest, again.stderr
    assert "sendfile() failed" in error_log or "writev() failed" in error_log, error_log


@pytest.mark.parametrize("reverse", [False, True], ids=["send", "receive"])
def test_iperf3_client_under_run_against_a_kernel_iperf3_server(hosts, reverse):
    """Bulk both ways through the shim's TCP (two active opens: iperf3's control and data connections), judged
    by the kernel's iperf3 server; iperf3 -J reports the bytes each end counted."""
    a, b = hosts
    srv = subprocess.Popen(in_ns(a, "iperf3", "-s", "-1", "-p", "5311"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(in_ns(a, "ss", "-Hltn", "sport = :5311"), capture_output=True,
                                        text=True).stdout.strip(), what="iperf3 -s to listen")
        cli = run_app(b, "iperf3", "-c", a.ipv4, "-p", "5311", "-t", "2", "-J", *(["-R"] if reverse else []))
        out = cli.communicate(timeout=60)[0]
    finally:
        srv.kill()
        srv.wait()
    assert cli.returncode == 0, out
    assert out.count("connecting) accelerated on") == 2, out
    report = json.loads(out[out.index("{"):])
    assert report["end"]["sum_received"]["bytes"] > 1_000_000, report["end"]
    if not reverse:  # the sender's RTT and cwnd come from TCP_INFO: the shim's TCP answers it, not the placeholder
        sender = report["end"]["streams"][0]["sender"]
        assert sender["max_rtt"] > 0 and sender["max_snd_cwnd"] >= 10 * 1448, sender


TIMEOUTS_C = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    struct linger lg = {1, 0};
    if (argc > 3) setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)); /* "early": before the connect */
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) { perror("connect"); return 1; }
    struct timeval tv = {0, 300000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct timespec t0, t1;
    char buf[16];
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    int e = errno;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    printf("recv %zd %s after %ld ms\n", n, n < 0 ? strerror(e) : "-", ms);
    if (argc <= 3) setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    puts("closed");
    return 0;
}
"""

PEER = accepting_peer("""
    c.settimeout(10)
    try:
        print("peer got", c.recv(100), flush=True)
    except OSError as e:
        print("peer got", type(e).__name__, flush=True)
""")


@pytest.mark.parametrize("linger", ["late", "early"])
def test_so_rcvtimeo_and_so_linger_zero_as_the_kernel(hosts, tmp_path, linger):
    """A C client under run: recv with SO_RCVTIMEO 300 ms and nothing coming ends with EAGAIN after it,
    close with SO_LINGER {1, 0} resets (the kernel peer's recv: ConnectionResetError). Set before the connect
    ("early") it is still the app's at close: the control plane, which got the socket at the connect, leaves
    its options alone."""
    a, b = hosts
    (tmp_path / "t.c").write_text(TIMEOUTS_C.replace("#include <unistd.h>", "#include <unistd.h>\n#include <stdlib.h>"))
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "t"), str(tmp_path / "t.c")], check=True)
    srv = subprocess.Popen(in_ns(a, sys.executable, "-c", PEER, a.ipv4, "8318"), stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        cli = run_app(b, str(tmp_path / "t"), a.ipv4, "8318", *(["early"] if linger == "early" else []))
        out = cli.communicate(timeout=30)[0]
        peer = srv.communicate(timeout=30)[0]
    finally:
        srv.kill()
        srv.wait()
    assert "connecting) accelerated on" in out and "closed" in out, out
    m = re.search(r"recv -1 Resource temporarily unavailable after (\d+) ms", out)
    assert m and 280 <= int(m.group(1)) < 2000, out
    assert "peer got ConnectionResetError" in peer, peer


KEEPALIVE_C = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
int main(int argc, char **argv) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) { perror("connect"); return 1; }
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &one, sizeof(one));
    int two = 2;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &two, sizeof(two));
    puts("connected");
    fflush(stdout);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char buf[16];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    int e = errno;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    printf("recv %zd %s after %ld ms\n", n, n < 0 ? strerror(e) : "-", ms);
    return 0;
}
"""


def test_keepalive_finds_a_peer_that_vanished(hosts, tmp_path):
    """SO_KEEPALIVE with TCP_KEEPIDLE 1, TCP_KEEPINTVL 1, TCP_KEEPCNT 2 set by a C client under run: when the
    kernel peer's host drops everything from it (nftables), the flusher's keepalive timer probes twice and
    the blocked recv ends with ETIMEDOUT, as on the kernel."""
    a, b = hosts
    (tmp_path / "k.c").write_text(KEEPALIVE_C)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "k"), str(tmp_path / "k.c")], check=True)
    srv = subprocess.Popen(in_ns(a, sys.executable, "-c", PEER, a.ipv4, "8320"), stdout=subprocess.PIPE, text=True)
    table = "kbypass_test_keepalive"
    try:
        assert srv.stdout.readline().strip() == "ready"
        cli = run_app(b, str(tmp_path / "k"), a.ipv4, "8320")
        seen = []
        while not seen or "connected" not in seen[-1]:
            seen.append(cli.stdout.readline())
            assert seen[-1], seen
        subprocess.run(in_ns(a, "nft", f"add table inet {table}; add chain inet {table} in {{ type filter hook "
                             f"input priority 0; }}; add rule inet {table} in ip saddr {b.ipv4} drop"), check=True)
        out = "".join(seen) + cli.communicate(timeout=30)[0]
    finally:
        subprocess.run(in_ns(a, "nft", f"delete table inet {table}"), capture_output=True)
        srv.kill()
        srv.wait()
    m = re.search(r"recv -1 Connection timed out after (\d+) ms", out)
    assert m and 2000 <= int(m.group(1)) < 15000, out


HIJACKER = textwrap.dedent("""
    # an unprivileged app asks the control plane to steer a TCP port it cannot keep to itself
    import socket, sys
    from kbypass.cp.client import ControlPlaneClient
    from kbypass.cp.protocol import ProtocolError
    cp = ControlPlaneClient(None, start=False, command="hijacker")
    def accelerate(s):
        try:
            cp._call("accelerate", fds=(s.fileno(),))
            return "accelerated"
        except Exception as e:
            return "refused: " + str(e)
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    print("bound-only with SO_REUSEADDR:", accelerate(s), flush=True)
    s.listen()
    print("listening:", accelerate(s), flush=True)
    s.close()  # the rule stays with the connection: so must the port
    print("closed", flush=True)
    sys.stdin.readline()
""")


def _unprivileged_app(host, code: str, port: int, lines: int) -> tuple[subprocess.Popen, list[str]]:
    """code as uid 65534 under run (its stdin held open: the app waits there) and its first `lines` lines (the
    shim's --log lines left out: the app's own sockets stay the kernel's)."""
    app = run_app(host, *test_run.UNPRIVILEGED, sys.executable, "-c", code, host.ipv4, str(port),
                  stdin=subprocess.PIPE, cwd=test_run.ROOT)
    got: list[str] = []
    while len(got) < lines and (line := app.stdout.readline()):
        if not line.startswith("kbypass["):
            got.append(line.strip())
    return app, got


def test_an_unprivileged_app_cannot_take_over_a_port_it_let_go(hosts):
    """uid 65534 (--users all): a TCP socket bound with SO_REUSEADDR that does not listen proves nothing (root
    could bind and listen on the port after it, and its connections would go to this app's rings); a listening
    one does, and the control plane keeps the port taken in the kernel (a dup of that socket) while the rule
    lives, even after the app closed its socket: root's listen on it fails as if the app still listened."""
    a, b = hosts
    app, lines = _unprivileged_app(b, HIJACKER, 9201, 3)
    try:
        assert "bound-only with SO_REUSEADDR: refused: " in lines[0] and "listens" in lines[0], lines
        assert lines[1] == "listening: accelerated" and lines[2] == "closed", lines
        root = subprocess.run(in_ns(b, sys.executable, "-c", textwrap.dedent("""
            import socket, sys
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((sys.argv[1], 9201)); s.listen(); print("root listens")
            except OSError as e:
                print("root:", e.strerror)
        """), b.ipv4), capture_output=True, text=True, timeout=30)
        assert root.stdout.strip() == "root: Address already in use", root
    finally:
        stop(app)


UDP_HIJACKER = textwrap.dedent("""
    # an unprivileged app proves a UDP port it bound with SO_REUSEADDR, then closes its socket (the rule stays with
    # its connection to the control plane)
    import ctypes, socket, struct, sys
    from kbypass.cp.client import ControlPlaneClient
    cp = ControlPlaneClient(None, start=False, command="udp hijacker")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # bind(2) itself, past the shim's bind (which would have the port accelerated first): this request is the only one
    addr = struct.pack("=H2s4s8x", socket.AF_INET, int(sys.argv[2]).to_bytes(2, "big"), socket.inet_aton(sys.argv[1]))
    assert ctypes.CDLL(None, use_errno=True).syscall(49, s.fileno(), addr, len(addr)) == 0  # SYS_bind (x86_64)
    try:
        cp._call("accelerate", fds=(s.fileno(),))
        print("accelerated, SO_REUSEADDR", s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), flush=True)
    except Exception as e:
        print("refused:", e, flush=True)
    s.close()
    print("closed", flush=True)
    sys.stdin.readline()
""")

ROOT_UDP_BINDER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((sys.argv[1], int(sys.argv[2]))); print("root bound")
    except OSError as e:
        print("root:", e.strerror)
""")


def test_an_unprivileged_app_cannot_take_over_a_udp_port_it_let_go(hosts):
    """uid 65534 (--users all): a UDP socket bound with SO_REUSEADDR lets any user (root too) bind the port after
    it, and the rule would steer that socket's datagrams to this app's rings. The control plane clears
    SO_REUSEADDR on the socket it accepts as proof (and keeps a dup of it while the rule lives): root's bind with
    SO_REUSEADDR fails as if the app still had the port to itself, even after the app closed its socket."""
    a, b = hosts
    app, lines = _unprivileged_app(b, UDP_HIJACKER, 9211, 2)
    try:
        assert lines[0].startswith("accelerated") and lines[1] == "closed", lines
        # root's socket would share the port, and the rule would steer its datagrams to the app's rings
        root = subprocess.run(in_ns(b, sys.executable, "-c", ROOT_UDP_BINDER, b.ipv4, "9211"), capture_output=True,
                              text=True, timeout=30)
        assert root.stdout.strip() == "root: Address already in use", root
        assert lines[0] == "accelerated, SO_REUSEADDR 0", lines
    finally:
        stop(app)



SHARER = textwrap.dedent("""
    # an unprivileged app proves a port the kernel lets it keep to itself, then opens it to other users through the
    # very socket the control plane checked (it holds a dup of the same file description)
    import ctypes, os, socket, struct, sys
    from kbypass.cp.client import ControlPlaneClient
    ip, port, mode, iface, peer = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    libc = ctypes.CDLL(None, use_errno=True)
    cp = ControlPlaneClient(None, start=False, command="sharer")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if mode == "udp" else socket.SOCK_STREAM)
    if mode == "udp":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the control plane clears it
    addr = struct.pack("=H2s4s8x", socket.AF_INET, port.to_bytes(2, "big"), socket.inet_aton(ip))
    assert libc.syscall(49, s.fileno(), addr, len(addr)) == 0  # bind(2) past the shim (it accelerates UDP binds)
    if mode == "unlisten":
        s.listen()
    # active: as the shim's connect asks for its 4-tuple (the peer gets no SYN from here)
    cp._call("accelerate", fds=(s.fileno(),), **({"peer": peer, "peer_port": 9} if mode == "active" else {}))
    for q in (0, 1):  # its rings, where the rule steers the port's packets
        cp.open_socket(iface, q, frames=4096, frame_size=2048, rx_size=2048, tx_size=2048, fill_size=2048,
                       comp_size=2048)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # after the check: others may bind beside it now
    if mode == "unlisten":  # connect(AF_UNSPEC): the listener is a bound-only socket again
        assert libc.syscall(42, s.fileno(), bytes(16), 16) == 0
    print("shared", os.getpid(), flush=True)
    sys.stdin.readline()
""")

ROOT_SERVER = textwrap.dedent("""
    # root's server on the port the unprivileged app opened: what the peer sends must come to it
    import socket, sys
    udp = sys.argv[3] == "udp"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    if not udp:
        s.listen()
    print("bound", flush=True)
    s.settimeout(8)
    try:
        print("got", s.recvfrom(100)[0].decode() if udp else s.accept()[0].recv(100).decode(), flush=True)
    except socket.timeout:
        print("nothing in 8 s", flush=True)
""")

SENDER = textwrap.dedent("""
    import socket, sys, time
    to = (sys.argv[1], int(sys.argv[2]))
    if sys.argv[3] == "udp":
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(40):
            u.sendto(b"hello", to)
            time.sleep(0.2)
    else:
        socket.create_connection(to, timeout=8).sendall(b"hello")
""")


def _rules_of(host, pid: int) -> int:
    with ControlPlaneClient(host.netns, start=False, command="test_run_tcp") as cp:
        return next(c["rules"] for c in cp.status()["clients"] if c["pid"] == pid)


@pytest.mark.parametrize("mode, port", [("reuseaddr", 9221), ("unlisten", 9222), ("udp", 9223), ("active", 9226)])
def test_an_unprivileged_app_cannot_open_its_port_to_others_after_it_proved_it(hosts, mode, port):
    """uid 65534 proves a port with a socket that keeps it to itself (TCP bound without SO_REUSEADDR, or listening;
    UDP, whose SO_REUSEADDR the control plane clears), then changes that socket: SO_REUSEADDR set on it (again),
    and the listener connect(AF_UNSPEC)-ed back to bound-only. The kernel then lets root bind the port beside it
    with SO_REUSEADDR, and the rule would steer root's connections (datagrams) to the app's rings. The control
    plane looks at every non-root proof each PROOF_TICK: it removes that rule, and root's server gets them. An
    active open's rule (its 4-tuple) never took them, and goes too."""
    a, b = hosts
    proto = "udp" if mode == "udp" else "tcp"
    app = run_app(b, *test_run.UNPRIVILEGED, sys.executable, "-c", SHARER, b.ipv4, str(port), mode, b.iface, a.ipv4,
                  stdin=subprocess.PIPE, cwd=test_run.ROOT)
    root = None
    try:
        seen = [""]
        while not seen[-1].startswith("shared"):
            seen.append(app.stdout.readline())
            assert seen[-1], "".join(seen) + stop(app)
        line = seen[-1]
        root = subprocess.Popen(in_ns(b, sys.executable, "-c", ROOT_SERVER, b.ipv4, str(port), proto),
                                stdout=subprocess.PIPE, text=True)
        assert root.stdout.readline().strip() == "bound"  # the kernel lets root share the port now
        sender = subprocess.Popen(in_ns(a, sys.executable, "-c", SENDER, b.ipv4, str(port), proto),
                                  stderr=subprocess.DEVNULL)
        try:
            got = root.communicate(timeout=30)[0].strip()
        finally:
            sender.kill()
            sender.wait()
        assert got == "got hello", got
        pid = int(line.split()[1])
        # the app's rule went; its connection stays (an active open's 4-tuple rule never took root's connection, so
        # root may have it before the control plane's next look at the proofs: waited for, PROOF_TICK at most)
        wait_for(lambda: _rules_of(b, pid) == 0, timeout=5, what="the app's rule to go")
        with open(paths.log_path(paths.namespace_name(b.netns))) as f:
            said = [x for x in f if f"(pid {pid}," in x and "no longer the app's alone" in x]
        assert len(said) == 1, said  # one line: what, and why
    finally:
        if root is not None and root.poll() is None:
            root.kill()
            root.wait()
        stop(app)


OLD_SERVER = textwrap.dedent("""
    # a kernel server of uid 65534 that answers one connection and closes it first (its side goes to TIME_WAIT)
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
    print("listening", flush=True)
    c, _ = s.accept(); c.sendall(b"bye"); c.close()
""")

OLD_CLIENT = textwrap.dedent("""
    import socket, sys
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    print(c.recv(10).decode(), c.recv(10))
""")

RESTARTED = textwrap.dedent("""
    import os, socket, sys
    from kbypass.cp.client import ControlPlaneClient
    cp = ControlPlaneClient(None, start=False, command="restarted")
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
    try:
        cp._call("accelerate", fds=(s.fileno(),))
        print("accelerated", flush=True)
    except Exception as e:
        print("refused:", e, flush=True)
    print(os.getpid(), flush=True)
    sys.stdin.readline()
""")


def test_a_restarted_unprivileged_server_keeps_its_port_while_its_old_connections_linger(hosts):
    """uid 65534's kernel server closed its connection first and exited: the connection's TIME_WAIT socket stays
    a minute, shown as uid 0's in /proc/net/tcp (a timewait socket has no uid). The restarted server (SO_REUSEADDR,
    as the kernel wants for this) is accelerated, and stays so: TIME_WAIT sockets take no new connection."""
    a, b = hosts
    port = 9224
    old = subprocess.Popen(in_ns(b, *test_run.UNPRIVILEGED, sys.executable, "-c", OLD_SERVER, b.ipv4, str(port)),
                           stdout=subprocess.PIPE, text=True)
    assert old.stdout.readline().strip() == "listening"
    peer = subprocess.run(in_ns(a, sys.executable, "-c", OLD_CLIENT, b.ipv4, str(port)), capture_output=True, text=True,
                          timeout=30)
    assert peer.stdout.strip() == "bye b''", peer
    old.wait(timeout=10)
    table = subprocess.run(in_ns(b, "cat", "/proc/net/tcp"), capture_output=True, text=True, check=True).stdout
    assert any(f.split()[1].endswith(f":{port:04X}") and f.split()[3] == "06" for f in table.splitlines()[1:]), table
    app, lines = _unprivileged_app(b, RESTARTED, port, 2)
    try:
        assert lines[0] == "accelerated", lines
        time.sleep(0.5)  # a few of the control plane's looks at the proofs
        assert _rules_of(b, int(lines[1])) == 1
    finally:
        stop(app)


ONE_CONNECTION = textwrap.dedent("""
    # a kernel server: the client's address, then what it sends until it closes
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
    print("listening", flush=True)
    c, (ip, port) = s.accept()
    print(ip, port, flush=True)
    got = b""
    while chunk := c.recv(100):
        got += chunk
    print(got.decode(), flush=True)
""")


def test_an_active_open_is_steered_by_its_4_tuple(hosts):
    """socat under run connects to a kernel server: the control plane steers that one connection (its 4-tuple),
    not the whole local port its bound-only kernel socket holds."""
    a, b = hosts
    port = 9225
    srv = subprocess.Popen(in_ns(a, sys.executable, "-c", ONE_CONNECTION, a.ipv4, str(port)), stdout=subprocess.PIPE,
                           text=True)
    cli = None
    try:
        assert srv.stdout.readline().strip() == "listening"
        cli = run_app(b, "socat", "-", f"TCP:{a.ipv4}:{port}", stdin=subprocess.PIPE)
        ip, local = srv.stdout.readline().split()
        assert ip == b.ipv4
        with ControlPlaneClient(b.netns, start=False, command="test_run_tcp") as cp:
            rules = [Rule.parse(r["rule"]) for i in cp.status()["interfaces"] for r in i["rules"]]
        assert Rule.parse(f"tcp src {a.ipv4} sport {port} dst {b.ipv4} dport {local}") in rules, rules
        cli.stdin.write("hello over 4 tuples\n")
        cli.stdin.close()
        assert srv.stdout.readline().strip() == "hello over 4 tuples"
        assert srv.wait(timeout=30) == 0
        cli.stdin = None  # closed: socat ends at the server's end
        assert "accelerated" in stop(cli)
    finally:
        srv.kill()
        srv.wait()
        if cli is not None and cli.poll() is None:
            cli.kill()
            cli.wait()

RELISTEN_C = r"""
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
static struct sockaddr_in a;
static int lsn(void) {
    for (int i = 0; i < 100; i++) { /* the port is free once the old listener's last connection is done */
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 16) == 0) return fd;
        close(fd);
        poll(NULL, 0, 50);
    }
    perror("bind/listen");
    exit(1);
}
int main(int argc, char **argv) {
    a.sin_family = AF_INET, a.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    setvbuf(stdout, NULL, _IONBF, 0);
    int l = lsn();
    printf("listening\n");
    int c = accept(l, 0, 0);
    close(l); /* a connection of it stays open */
    printf("listener closed\n");
    char buf[64];
    while (recv(c, buf, sizeof(buf), 0) > 0) {}
    close(c);
    l = lsn();
    printf("listening again\n");
    struct pollfd p = {l, POLLIN, 0};
    printf("second connection: %s\n", poll(&p, 1, 10000) == 1 && accept(l, 0, 0) >= 0 ? "accepted" : "never came");
    return 0;
}
"""

RELISTEN_PEER = textwrap.dedent("""
    import socket, sys, time
    c1 = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    print("connected", flush=True)
    sys.stdin.readline()
    c1.close()
    end = time.monotonic() + 10
    while True:
        try:
            c2 = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
            print("second connected", flush=True)
            break
        except OSError as e:
            if time.monotonic() > end:
                print("second:", e, flush=True)
                break
            time.sleep(0.1)
""")


def test_a_listener_closed_with_a_connection_open_gives_its_port_back_when_that_ends(hosts, tmp_path):
    """Close the listener while an accepted connection lives: the port's rule (and the port, which the control
    plane holds for it) stay until that connection is done, then go, so the app listens on the port again and
    is accelerated again (the rule is not left behind until the app exits)."""
    a, b = hosts
    (tmp_path / "r.c").write_text(RELISTEN_C)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "r"), str(tmp_path / "r.c")], check=True)
    app = run_app(b, str(tmp_path / "r"), b.ipv4, "9301")
    peer, out = None, ""
    try:
        wait_for(lambda: sockets_of(b, 9301), what="the listening socket to be accelerated")
        peer = subprocess.Popen(in_ns(a, sys.executable, "-c", RELISTEN_PEER, b.ipv4, "9301"),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert peer.stdout.readline().strip() == "connected"
        while "listener closed" not in (line := app.stdout.readline()):
            out += line
        peer.stdin.write("go\n")
        peer.stdin.flush()
        second = peer.stdout.readline().strip()
        out += app.communicate(timeout=30)[0]
    finally:
        if peer is not None:
            peer.kill()
            peer.wait()
        if app.returncode is None:
            out += stop(app)
    assert second == "second connected" and "second connection: accepted" in out, (second, out)
    assert out.count("listening) accelerated on") == 2, out


SIGSEND_C = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
static int fd;
static volatile long nsig, hsent;
static void on_alarm(int s) { /* a heartbeat from a signal handler, while main is in send */
    (void)s;
    nsig++;
    char c = 'S';
    if (send(fd, &c, 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1) hsent++;
}
int main(int argc, char **argv) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a))) { perror("connect"); return 1; }
    signal(SIGALRM, on_alarm);
    struct itimerval it = {{0, 200}, {0, 200}};
    setitimer(ITIMER_REAL, &it, 0);
    char buf[4096];
    memset(buf, 'd', sizeof(buf));
    long sent = 0;
    for (int i = 0; i < 2000; i++) { /* a signal may cut a blocking send short (a partial count or EINTR) */
        size_t off = 0;
        while (off < sizeof(buf)) {
            ssize_t r = send(fd, buf + off, sizeof(buf) - off, MSG_NOSIGNAL);
            if (r > 0) off += r;
            else if (r < 0 && errno != EINTR && errno != EAGAIN) { perror("send"); return 1; }
        }
        sent += off;
    }
    it = (struct itimerval){0};
    setitimer(ITIMER_REAL, &it, 0);
    printf("sent %ld handler %ld signals %ld\n", sent, hsent, nsig);
    fflush(stdout);
    shutdown(fd, SHUT_WR);
    char b[16];
    recv(fd, b, sizeof(b), 0);
    return 0;
}
"""

SINK = accepting_peer("""
    total = 0
    while data := c.recv(1 << 20):
        total += len(data)
    print("got", total, flush=True)
""")


def test_a_signal_handler_that_sends_while_main_is_in_send(hosts, tmp_path):
    """SIGALRM every 200 us whose handler sends a byte on the same socket while the main loop sends 8 MB: the
    handler runs when the thread leaves the shim (never inside it, half way through a send and a CPython call),
    nothing hangs, and the peer gets every byte both sent."""
    a, b = hosts
    (tmp_path / "s.c").write_text(SIGSEND_C)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "s"), str(tmp_path / "s.c")], check=True)
    sink = subprocess.Popen(in_ns(a, sys.executable, "-c", SINK, a.ipv4, "9501"), stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        app = run_app(b, str(tmp_path / "s"), a.ipv4, "9501")
        try:
            out = app.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            out = stop(app)
            pytest.fail(f"the app hung: {out}")
        got = sink.communicate(timeout=30)[0]
    finally:
        sink.kill()
        sink.wait()
    m = re.search(r"sent (\d+) handler (\d+) signals (\d+)", out)
    assert m and "connecting) accelerated on" in out, out
    sent, handler, signals = map(int, m.groups())
    assert sent == 2000 * 4096 and signals > 0, out
    assert f"got {sent + handler}" in got, (got, out)


OOB_C = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) { perror("connect"); return 1; }
    ssize_t r = send(fd, "!", 1, MSG_OOB);
    printf("send MSG_OOB %zd %s\n", r, r < 0 ? strerror(errno) : "-");
    char b[8];
    r = recv(fd, b, sizeof(b), MSG_OOB | MSG_DONTWAIT);
    printf("recv MSG_OOB %zd %s\n", r, r < 0 ? strerror(errno) : "-");
    send(fd, "ok", 2, 0);
    sleep(1);
    close(fd);
    return 0;
}
"""


def test_msg_oob_is_refused_not_sent_in_band(hosts, tmp_path):
    """kbypass's TCP has no urgent data: send(MSG_OOB) fails with EOPNOTSUPP (the byte must not reach the peer
    as an ordinary one), recv(MSG_OOB) finds none (EINVAL, as the kernel's with none pending)."""
    a, b = hosts
    (tmp_path / "o.c").write_text(OOB_C)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "o"), str(tmp_path / "o.c")], check=True)
    srv = subprocess.Popen(in_ns(a, sys.executable, "-c", PEER, a.ipv4, "8319"), stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        cli = run_app(b, str(tmp_path / "o"), a.ipv4, "8319")
        out = cli.communicate(timeout=30)[0]
        peer = srv.communicate(timeout=30)[0]
    finally:
        srv.kill()
        srv.wait()
    assert "connecting) accelerated on" in out, out
    assert "send MSG_OOB -1 Operation not supported" in out and "recv MSG_OOB -1 Invalid argument" in out, out
    assert "peer got b'ok'" in peer, peer


FLOOD_PEER = accepting_peer("""
    import time
    c.settimeout(0.2)
    sent, end, chunk = 0, time.monotonic() + float(sys.argv[3]), b"x" * 65536
    while time.monotonic() < end:
        try:
            sent += c.send(chunk)
        except socket.timeout:
            pass
    print("sent", sent, flush=True)
""")

SLEEPER_C = r"""
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) { perror("connect"); return 1; }
    printf("connected\n");
    fflush(stdout);
    /* never reads, but waits in poll (for nothing to read: events 0), where the shim pumps its rings, as an
     * app busy with other fds would */
    struct pollfd p = {.fd = fd, .events = 0};
    for (int i = 0; i < atoi(argv[3]) * 10; i++) poll(&p, 1, 100);
    int unread = -1;
    ioctl(fd, FIONREAD, &unread); /* what the app's TCP holds for it */
    printf("unread %d\n", unread);
    fflush(stdout);
    /* then it reads all to the peer's end: its reads must open the window again (the C queue's CONSUMED records) */
    static char buf[1 << 16];
    long total = 0;
    ssize_t r;
    p.events = POLLIN;
    while (poll(&p, 1, 10000) == 1 && (r = recv(fd, buf, sizeof(buf), 0)) > 0) total += r;
    printf("read %ld\n", total);
    return 0;
}
"""


def test_an_app_that_never_reads_holds_a_bounded_amount(hosts, tmp_path):
    """A kernel peer sends as fast as it can for 3 s to an app under run that waits in poll and never reads: the
    app's TCP holds a window (the receive window counts the C queue's bytes and the host's own until the app reads
    them) and then shows a zero window, so the peer is held at about that plus its own send buffer, instead of
    filling the app's memory at line rate. FIONREAD says what is held; then the app reads all of it and what the
    peer still had (its reads reopen the window: CONSUMED records from the C queue, the host's own recv)."""
    a, b = hosts
    (tmp_path / "n.c").write_text(SLEEPER_C)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "n"), str(tmp_path / "n.c")], check=True)
    srv = subprocess.Popen(in_ns(a, sys.executable, "-c", FLOOD_PEER, a.ipv4, "8320", "3"), stdout=subprocess.PIPE,
                           text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        app = run_app(b, str(tmp_path / "n"), a.ipv4, "8320", "5")
        peer = srv.communicate(timeout=30)[0]
        out = app.communicate(timeout=30)[0]
    finally:
        srv.kill()
        srv.wait()
    assert "connecting) accelerated on" in out and "queued in C for the app" in out, out
    sent, unread = int(peer.split()[-1]), int(out.split("unread ")[1].split()[0])
    # the app's TCP holds a window (1 MiB, in the C queue or the host's rx, both counted by the window); the peer
    # sent that plus a window in flight and its send buffer
    assert 1 << 20 <= sent < 16 << 20, sent  # it took data (not stalled), and not without end
    assert 1 << 20 <= unread + 1448 and unread <= 1 << 20, unread  # not the C queue's 4 MiB, nor the host's 4 more
    assert f"read {sent}\n" in out, (sent, out)  # everything, once it reads (no stall at the closed window)


FLOOD_PEERS = textwrap.dedent("""
    # N kernel connections send as fast as they can for SECS; each prints what the receiver took: bytes sent
    # minus what its send queue still holds (SIOCOUTQ: unsent and unacknowledged)
    import fcntl, socket, struct, sys, termios, threading, time
    ip, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    socks = [socket.create_connection((ip, port)) for _ in range(n)]
    sent = [0] * n
    def go(i):
        s, chunk, end = socks[i], b"x" * 65536, time.monotonic() + secs
        s.settimeout(0.2)
        while time.monotonic() < end:
            try:
                sent[i] += s.send(chunk)
            except socket.timeout:
                pass
    ts = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    time.sleep(0.5)  # the last ACKs
    outq = [struct.unpack("i", fcntl.ioctl(s, termios.TIOCOUTQ, b"\\0" * 4))[0] for s in socks]
    print("taken", *[sent[i] - outq[i] for i in range(n)], flush=True)
""")

NOREAD_C = r"""
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int n = atoi(argv[3]), l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &me.sin_addr);
    if (bind(l, (void *)&me, sizeof(me)) || listen(l, 128)) { perror("listen"); return 1; }
    printf("ready\n");
    for (int i = 0; i < n; i++) accept(l, 0, 0);
    /* never reads, but waits in poll (on the listener, for nobody), where the shim pumps its rings, as an app
     * busy with other fds would */
    struct pollfd p = {l, POLLIN, 0};
    for (int i = 0; i < atoi(argv[4]) * 10; i++) poll(&p, 1, 100);
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (fgets(line, sizeof(line), f)) if (!strncmp(line, "VmHWM", 5)) printf("%s", line);
    return 0;
}
"""


def test_apps_that_never_read_hold_a_window_per_connection(hosts, tmp_path):
    """Kernel peers flood 6 connections of an app under run that accepts them and never reads (review finding 6):
    each peer gets no more into the app than the connection's receive window (TcpConfig.recv_buffer, 1 MiB),
    which counts the bytes in the shim's C queue and the host's unread ones as the kernel's receive buffer
    counts its queue. Before: ~7 MiB per connection (the window reopened each time bytes moved to the C queue
    or the host, up to their 4 MiB caps). The kernel as the app's TCP, for reference (same peers, 3 s, a busy
    machine): 0.7-1 MiB per connection (tcp_rmem autotuning, its window closes at the buffer's limit)."""
    a, b = hosts
    (tmp_path / "n.c").write_text(NOREAD_C)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "n"), str(tmp_path / "n.c")], check=True)
    n = 6
    app = run_app(b, str(tmp_path / "n"), b.ipv4, "8320", str(n), "6")
    try:
        head = [app.stdout.readline()]
        while head[-1] and head[-1].strip() != "ready":
            head.append(app.stdout.readline())
        peers = subprocess.run(in_ns(a, sys.executable, "-c", FLOOD_PEERS, b.ipv4, "8320", str(n), "3"),
                               capture_output=True, text=True, timeout=60)
        out = "".join(head) + app.communicate(timeout=30)[0]
    finally:
        stop(app)
    assert peers.returncode == 0, peers.stderr
    assert "listening) accelerated on" in out and "queued in C for the app" in out, out
    taken = [int(x) for x in peers.stdout.split()[1:]]
    assert len(taken) == n, peers.stdout
    print("taken per connection", taken, out.splitlines()[-1])
    for got in taken:
        assert 256 << 10 <= got <= 1 << 20, taken  # it took data (not stalled), and no more than its window
