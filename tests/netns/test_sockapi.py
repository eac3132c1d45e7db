"""kbypass.socket and kbypass.aio on the testbed, as applications use them, against kernel peers: an
echo server (blocking, and non-blocking under selectors) and a client (connect, and a first sendto on an
unbound socket) whose datagrams go through the AF_XDP rings, the fallback to the kernel with its reason,
and the asyncio echo example on asyncio's loop and on uvloop."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kbypass import netns

pytestmark = pytest.mark.netns
IP_RECVTTL = 12  # <linux/in.h>; Python's socket module does not name it
ROOT = Path(__file__).resolve().parents[2]

ECHO = r"""
import json, selectors, sys
from kbypass import socket
ip, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((ip, 0))
print(json.dumps({"port": s.getsockname()[1], "accelerated": s.accelerated, "reason": s.kbypass_reason}), flush=True)
done = 0
if mode == "blocking":
    s.settimeout(10)
    while done < count:
        data, peer = s.recvfrom(4096)
        s.sendto(data[::-1], peer)
        done += 1
else:
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    while done < count:
        if not sel.select(10):
            break
        while True:
            try:
                data, peer = s.recvfrom(4096)
            except BlockingIOError:
                break
            s.sendto(data[::-1], peer)
            done += 1
print(json.dumps({"echoed": done, "rx_datagrams": s.endpoint.stats["rx_datagrams"] if s.endpoint else 0}), flush=True)
s.close()
"""


def run_in(ns, code, *args, env=None):
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)


def kernel_socket(ns, bind):
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind(bind)
    return s


@pytest.mark.parametrize("mode", ["blocking", "selectors"])
def test_echo_server_over_the_rings_answers_a_kernel_peer(testbed_hosts, mode):
    a, b = testbed_hosts
    n = 200
    proc = run_in(b.netns, ECHO, b.ipv4, mode, str(n))
    try:
        first = json.loads(proc.stdout.readline() or "{}")
        assert first.get("accelerated") is True, (first, proc.stderr.read() if proc.poll() is not None else "")
        with kernel_socket(a.netns, (a.ipv4, 0)) as k:
            for i in range(n):
                msg = i.to_bytes(4, "big") + bytes((i * 3 + j) & 0xFF for j in range(i % 900))
                k.sendto(msg, (b.ipv4, first["port"]))
                back, src = k.recvfrom(4096)
                assert back == msg[::-1] and src == (b.ipv4, first["port"])
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    last = json.loads(out.strip().splitlines()[-1])
    assert last["echoed"] == n and last["rx_datagrams"] >= n, err  # every datagram came off the AF_XDP rings




def kernel_echo(ns, ip):
    s = kernel_socket(ns, (ip, 0))

    def loop():
        try:
            while True:
                data, peer = s.recvfrom(4096)
                s.sendto(data.upper(), peer)
        except OSError:
            pass

    threading.Thread(target=loop, daemon=True).start()
    return s


CLIENT = r"""
import json, sys
from kbypass import socket
dst = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"first", dst)          # unbound: the route picks the interface and the source address
got = [s.recvfrom(100)]
unbound = [s.accelerated, s.getsockname()[0], got[0][0].decode(), list(got[0][1])]
s.close()  # an interface queue carries one accelerated socket: the next one gets them once this one is closed
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect(dst)
for i in range(50):
    c.send(b"n%d" % i)
    assert c.recv(100) == b"N%d" % i
third = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
third.bind((c.getsockname()[0], 0))  # every queue is c's: this one stays on the kernel, and says why
third.sendto(b"third", dst)
assert third.recv(100) == b"THIRD"
print(json.dumps({"unbound": unbound,
                  "connected": [c.accelerated, list(c.getpeername()), c.endpoint.stats["rx_datagrams"]],
                  "third": [third.accelerated, third.kbypass_reason]}))
"""


def test_client_sockets_connect_and_autobind_over_the_rings(testbed_hosts):
    a, b = testbed_hosts
    with kernel_echo(b.netns, b.ipv4) as server:
        port = server.getsockname()[1]
        proc = run_in(a.netns, CLIENT, b.ipv4, str(port))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    r = json.loads(out)
    assert r["unbound"] == [True, a.ipv4, "FIRST", [b.ipv4, port]]
    assert r["connected"][:2] == [True, [b.ipv4, port]] and r["connected"][2] >= 50
    assert r["third"][0] is False and "is taken by" in r["third"][1]
    assert err.count("kbypass: warning:") == 1, err  # the third socket's one line


FALLBACK = r"""
from kbypass import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t.bind(("", 0))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"x", ("127.0.0.1", 9))
print(s.accelerated, t.accelerated, u.accelerated)
"""


def test_sockets_that_cannot_be_accelerated_stay_on_the_kernel_and_say_why(testbed_hosts):
    a, b = testbed_hosts
    proc = run_in(b.netns, FALLBACK, env={"KBYPASS_LOG": "1", "KBYPASS_IFACE": "other0"})
    out, err = proc.communicate(timeout=60)
    assert out.split() == ["False", "False", "False"], err
    lines = [ln for ln in err.splitlines() if ln.startswith("kbypass:")]
    assert len(lines) == 3 and all("not accelerated" in ln for ln in lines), err
    assert "loopback" in lines[0] and "served" in lines[1] and "loopback" in lines[2]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_asyncio_echo_example_on_the_bypass(testbed_hosts, loop):
    pytest.importorskip("uvloop") if loop == "uvloop" else None
    a, b = testbed_hosts
    proc = subprocess.Popen(["ip", "netns", "exec", b.netns, sys.executable, str(ROOT / "examples" / "asyncio_echo.py"),
                             b.ipv4, "0", "--idle", "2", *(["--uvloop"] if loop == "uvloop" else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert "accelerated: True" in first, first + (proc.stderr.read() if proc.poll() is not None else "")
        port = int(first.split(":")[1].split(",")[0])
        with kernel_socket(a.netns, (a.ipv4, 0)) as k:
            for i in range(100):
                msg = b"%d" % i * (1 + i % 50)
                k.sendto(msg, (b.ipv4, port))
                assert k.recvfrom(4096) == (msg, (b.ipv4, port))
        sc = subprocess.run(["ip", "netns", "exec", a.netns, "socat", "-t", "2", "-", f"UDP:{b.ipv4}:{port}"],
                            input="a line for socat\n", capture_output=True, text=True, timeout=30)
        assert sc.stdout == "a line for socat\n", sc.stderr  # a real program as the peer
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "echoed 101" in out, err


def test_floor_answers_a_ping_in_the_driver_and_passes_everything_else(testbed_hosts):
    """bpf/pong.bpf.c (kbypass.apps.xdp_pong): a plain payload comes back with MACs, IPs and ports
    swapped and the payload intact; a sockperf question with the client flag cleared and a valid UDP
    checksum; a sockperf message that asks for no answer is dropped; another port reaches the kernel."""
    from kbypass.apps.xdp_pong import XdpPong

    a, b = testbed_hosts
    port = 7700
    with kernel_socket(b.netns, (b.ipv4, port + 1)) as other, \
            XdpPong(b.iface, port, netns=b.netns, peer=(a.iface, a.netns)) as pong:
        proc = subprocess.run(["ip", "netns", "exec", a.netns, sys.executable, str(Path(__file__).parent / "floor_probe.py"),
                               a.iface, a.mac, b.mac, a.ipv4, b.ipv4, str(port)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        r = json.loads(proc.stdout)
        assert other.recvfrom(100) == (b"not for the floor", (a.ipv4, 5004))  # passed to the kernel
        counters = pong.counters()
    ping = subprocess.run(["ip", "netns", "exec", a.netns, "ping", "-c", "1", "-W", "2", b.ipv4], capture_output=True)
    assert ping.returncode == 0  # and nothing stays attached that would stop the kernel answering
    got, sent = r["got"], r["sent"]
    assert set(got) == {"5001", "5002"}, got  # the warm-up message and the other port got no answer from XDP
    for sport, name in (("5001", "plain"), ("5002", "sockperf")):
        g = got[sport]
        assert g["eth"] == [b.mac, a.mac] and g["ip"] == [b.ipv4, a.ipv4] and g["ports"] == [port, int(sport)]
        assert g["checksum_ok"], g
    assert got["5001"]["payload"] == sent["plain"]
    q, ans = bytes.fromhex(sent["sockperf"]), bytes.fromhex(got["5002"]["payload"])
    assert ans == q[:9] + bytes([q[9] & ~1]) + q[10:] and ans[9] == 2  # only the client flag cleared
    assert counters["answered"] == 2 and counters["sockperf"] == 1 and counters["unanswered"] == 1
    assert counters["passed"] >= 1


NOBODY = r"""
import sys
from kbypass import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
print(s.getsockname()[1], s.accelerated, s.kbypass_reason, flush=True)
if s.accelerated:
    s.settimeout(10)
    data, peer = s.recvfrom(100)
    s.sendto(data.upper(), peer)
    print("rings", s.endpoint.stats["rx_datagrams"], flush=True)
"""


def test_an_app_without_capabilities_is_accelerated_by_a_root_control_plane(testbed_hosts):
    """Without a control plane a user's socket stays on the kernel with one warning; once root runs one for
    all users, the same program gets its AF_XDP socket from it (its own placeholder does not bar the port)."""
    from tests.kb import kbypass, skip_unless_nobody_runs_kbypass

    skip_unless_nobody_runs_kbypass()
    a, b = testbed_hosts
    nobody = ["ip", "netns", "exec", b.netns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
              "--inh-caps=-all", sys.executable, "-c", NOBODY, b.ipv4]
    prefix = b.netns[:-2]
    kbypass("cp", "stop", "--prefix", prefix, "--host", "b", "--force")  # the one the tests above started
    alone = subprocess.run(nobody, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.split()[1] == "False" and "only root can start one" in alone.stdout
    assert alone.stderr.count("kbypass: warning:") == 1, alone.stderr
    kbypass("cp", "start", "--prefix", prefix, "--host", "b", "--users", "all", check=True)
    try:
        proc = subprocess.Popen(nobody, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            port, accelerated, *_ = proc.stdout.readline().split()
            assert accelerated == "True", proc.stderr.read() if proc.poll() is not None else accelerated
            with kernel_socket(a.netns, (a.ipv4, 0)) as k:
                k.sendto(b"unprivileged", (b.ipv4, int(port)))
                assert k.recvfrom(100) == (b"UNPRIVILEGED", (b.ipv4, int(port)))
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert "rings 1" in out, err
    finally:
        kbypass("cp", "stop", "--prefix", prefix, "--host", "b", "--force")


TOS = r"""
import sys
from kbypass import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xB8)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 9)
s.sendto(b"marked", (sys.argv[2], int(sys.argv[3])))  # built by the stack while the peer is resolved
s.sendto(b"marked", (sys.argv[2], int(sys.argv[3])))  # from the flow's cached header
print(s.accelerated, s.endpoint.stats["tx_datagrams"] if s.endpoint else 0)
"""


def test_ip_tos_and_ttl_are_in_the_header_the_rings_send(testbed_hosts):
    a, b = testbed_hosts
    with kernel_socket(a.netns, (a.ipv4, 0)) as k:
        k.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        k.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        proc = run_in(b.netns, TOS, b.ipv4, a.ipv4, str(k.getsockname()[1]))
        out, err = proc.communicate(timeout=60)
        assert out.split() == ["True", "2"], err  # accelerated, and sent through the rings
        for _ in range(2):
            data, anc, _, _ = k.recvmsg(100, 256)
            got = {t: v[0] for _, t, v in anc}
            assert data == b"marked" and got == {socket.IP_TOS: 0xB8, socket.IP_TTL: 9}


MIXED = r"""
import selectors, sys
from kbypass import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((sys.argv[1], 0))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)   # through the same module: a plain kernel socket
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((sys.argv[1], 0))
t.listen()
print(u.getsockname()[1], t.getsockname()[1], u.accelerated, type(t).__module__, flush=True)
sel = selectors.DefaultSelector()
sel.register(u, selectors.EVENT_READ, "udp")
sel.register(t, selectors.EVENT_READ, "tcp")
seen = set()
while len(seen) < 2:
    events = sel.select(10)
    if not events:
        break
    for key, _ in events:
        if key.data == "udp":
            data, peer = u.recvfrom(100)
            u.sendto(data, peer)
        else:
            c, _ = t.accept()
            c.sendall(c.recv(100).upper())
            c.close()
        seen.add(key.data)
print(" ".join(sorted(seen)), flush=True)
"""


def test_one_selector_over_an_accelerated_udp_and_a_kernel_tcp_socket(testbed_hosts):
    a, b = testbed_hosts
    proc = run_in(b.netns, MIXED, b.ipv4)
    try:
        uport, tport, accelerated, module = proc.stdout.readline().split()
        assert accelerated == "True" and module == "socket", proc.stderr.read() if proc.poll() is not None else ""
        with kernel_socket(a.netns, (a.ipv4, 0)) as k:
            k.sendto(b"datagram", (b.ipv4, int(uport)))
            assert k.recvfrom(100) == (b"datagram", (b.ipv4, int(uport)))
        with netns.entered(a.netns):
            c = socket.create_connection((b.ipv4, int(tport)), timeout=5)
        with c:
            c.sendall(b"stream")
            assert c.recv(100) == b"STREAM"
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert out.strip() == "tcp udp", err
