"""`kbypass run -- nginx` with nginx's defaults: a master that listens and forks its workers. The worker (a
fork's child) adopts the inherited listener (csrc/preload/kbp_tcpadopt.c) and serves from the rings: the
kernel's TCP of that namespace accepts nothing (/proc/net/snmp PassiveOpens), `kbypass run --status` lists the
worker's listener and connections under the worker's pid, and curl in the other namespace checks every byte
(SHA-256). Then the ways a worker goes: two workers (one adopts, the other waits on the kernel's listener),
`nginx -s reload` (the new worker adopts once the old one let go of the port) and a worker killed (the master's
new one adopts)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

import pytest

from kbypass.cp import paths
from tests.kb import skip_unless_nobody_runs_kbypass
from tests.netns import test_run
from tests.netns.test_run import in_ns, run_app, sockets_of, stop, wait_for
from tests.netns.test_run_tcp import NGINX_CONF, grew, kernel_tcp, site  # noqa: F401  (site: a fixture)

_run_hosts, hosts = test_run._run_hosts, test_run.hosts  # test_run's fixtures: one control plane for the module


def start_nginx(host, d, port: int, workers: int = 1, user: list[str] = (),
                workers_as: str = "root") -> tuple[subprocess.Popen, int]:
    """nginx as installed: master_process on (workers_as root: the worker reads tmp_path), `workers` workers; and
    its master's pid. user: a setpriv prefix (then the master and its workers run as that user)."""
    conf = NGINX_CONF.replace("master_process off;", "master_process on;" + ("" if user else f"\nuser {workers_as};"))
    conf = conf.replace("worker_processes 1;", f"worker_processes {workers};")
    (d / "nginx.conf").write_text(conf.format(d=d, ip=host.ipv4, port=port))
    srv = run_app(host, "nginx", "-c", str(d / "nginx.conf"), user=user)
    pid = wait_for(lambda: (d / "nginx.pid").exists() and (d / "nginx.pid").read_text().strip(), what="nginx.pid")
    return srv, int(pid)


def adopter(host, port: int, master: int, d, not_pid: int = 0) -> dict:
    """The listener a worker (not the master, not not_pid) took to the rings, as --status lists it."""
    try:
        (lst,) = wait_for(lambda: [s for s in sockets_of(host, port) if s["role"] == "listener"
                                   and s["state"] == "LISTEN" and s["pid"] not in (master, not_pid)],
                          what="a worker to adopt the listening socket")
    except AssertionError as e:
        raise AssertionError(f"{e}: {(d / 'error.log').read_text()}") from None
    return lst


def fetch(host, ip: str, port: int, d, name: str, path: str = "big.bin", n: int = 1) -> subprocess.CompletedProcess:
    url = f"http://{ip}:{port}/{path}"
    args = [w for i in range(n) for w in ("-o", str(d / f"{name}{i}"), url)]
    return subprocess.run(in_ns(host, "curl", "-fsS", "--max-time", "60", "-w", "%{http_code}\n", *args),
                          capture_output=True, text=True, timeout=120)


def sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_default_nginx_is_served_from_the_rings_by_its_worker(hosts, site):  # noqa: F811
    a, b = hosts
    d, digest = site
    srv, master = start_nginx(b, d, 8411)
    try:
        lst = adopter(b, 8411, master, d)
        k0 = kernel_tcp(b)
        r = fetch(a, b.ipv4, 8411, d, "got", n=3)
        k1 = kernel_tcp(b)
        every = sockets_of(b, 8411)
        threads = [t.read_text().strip() for t in pathlib.Path(f"/proc/{lst['pid']}/task").glob("*/comm")]
        mine = [s for s in every if s["pid"] == lst["pid"]]
        table = subprocess.run(in_ns(b, test_run.KB, "run", "--status"), capture_output=True, text=True).stdout
    finally:
        log = stop(srv)
    assert r.returncode == 0, r.stderr + log
    assert all(sha(d / f"got{i}") == digest for i in range(3))
    # the worker's listener accepted them on the rings, and the kernel's TCP took no connection
    (listener,) = [s for s in mine if s["role"] == "listener"]
    assert listener["accepted"] >= 1, mine
    assert grew(k0, k1, "PassiveOpens") == 0 and grew(k0, k1, "OutSegs") < 20, (k0, k1)
    assert f"{lst['pid']}" in table and "LISTEN" in table, table
    assert not [s for s in every if s["pid"] == master], every  # the master, which forked, never adopts
    assert "kbypass-flush" in threads, threads  # the worker's own flusher (the master's is not there after a fork)
    err = (d / "error.log").read_text()
    assert "fork: the listening socket is the kernel's again" in err, err  # the master's, at the fork
    assert "inherited at the fork is this process's on the rings now" in err, err  # the worker's


def test_a_daemon_nginx_is_served_from_the_rings_by_its_worker(hosts, site):  # noqa: F811
    """daemon on, nginx's default too: the listener is made before nginx forks into the background, so the
    master is a fork's child itself (it may adopt, but forks its worker first and never does), the worker
    adopts; `kbypass run` returns when the first process exits."""
    a, b = hosts
    d, digest = site
    conf = NGINX_CONF.replace("master_process off;", "master_process on;\nuser root;").replace("daemon off;", "")
    (d / "nginx.conf").write_text(conf.format(d=d, ip=b.ipv4, port=8416))
    out = run_app(b, "nginx", "-c", str(d / "nginx.conf")).communicate(timeout=30)[0]
    master = int(wait_for(lambda: (d / "nginx.pid").exists() and (d / "nginx.pid").read_text().strip(),
                          what="nginx.pid"))
    try:
        lst = adopter(b, 8416, master, d)
        k0 = kernel_tcp(b)
        r = fetch(a, b.ipv4, 8416, d, "got", n=2)
        k1 = kernel_tcp(b)
    finally:
        os.kill(master, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{master}"), what="nginx to stop")
    assert r.returncode == 0, r.stderr + out
    assert sha(d / "got0") == digest and sha(d / "got1") == digest
    assert grew(k0, k1, "PassiveOpens") == 0 and lst["pid"] != master, (k0, k1)


def test_two_workers_one_adopts_the_other_waits_on_the_kernel_and_every_request_is_answered(hosts, site):  # noqa: F811
    a, b = hosts
    d, digest = site
    small = os.urandom(200_000)
    (d / "www" / "small.bin").write_bytes(small)
    cp_log = pathlib.Path(paths.log_path(paths.namespace_name(b.netns)))
    before = cp_log.stat().st_size if cp_log.exists() else 0
    srv, master = start_nginx(b, d, 8412, workers=2)
    try:
        lst = adopter(b, 8412, master, d)
        waiting = wait_for(lambda: [s for s in sockets_of(b, 8412) if s["state"] == "LISTEN (kernel)"],
                           what="the other worker's listener to show on the kernel")
        time.sleep(1)  # the waiting worker's looks again (50 ms, 100 ms, ...)
        k0 = kernel_tcp(b)
        r = fetch(a, b.ipv4, 8412, d, "small", path="small.bin", n=20)
        big = fetch(a, b.ipv4, 8412, d, "big")
        k1 = kernel_tcp(b)
    finally:
        log = stop(srv)
    assert r.returncode == 0 and big.returncode == 0, r.stderr + big.stderr + log
    assert r.stdout.split() == ["200"] * 20, r.stdout
    assert all(hashlib.sha256((d / f"small{i}").read_bytes()).digest() == hashlib.sha256(small).digest()
               for i in range(20))
    assert sha(d / "big0") == digest
    assert waiting[0]["pid"] not in (master, lst["pid"]), waiting
    assert grew(k0, k1, "PassiveOpens") == 0, (k0, k1)  # the adopter took every connection
    err = (d / "error.log").read_text()
    assert err.count("stays on the kernel for now: another process has its port") == 1, err  # said once
    assert "(said once" not in err + log, err + log  # its looks again say nothing, --log or not
    with open(cp_log, errors="replace") as f:
        f.seek(before)
        refused = [line for line in f if "refused accelerate" in line and "(again)" not in line]
    assert len(refused) == 1, refused  # the control plane's log: the repeats are at debug


def served_as_nobody(hosts, port: int, **start) -> str:
    """nginx whose worker runs as uid 65534 (start_nginx's user or workers_as) serves a 3 MB file from the rings:
    the worker adopted, the kernel's TCP accepted nothing, every byte arrived. Its error.log."""
    a, b = hosts
    d = pathlib.Path(tempfile.mkdtemp(prefix="kbp-pe-nginx-"))
    try:
        (d / "www").mkdir()
        body = os.urandom(3_000_000)
        (d / "www" / "big.bin").write_bytes(body)
        for p in (d, d / "www", d / "www" / "big.bin"):
            os.chmod(p, 0o777 if p.is_dir() else 0o644)
        srv, master = start_nginx(b, d, port, **start)
        try:
            lst = adopter(b, port, master, d)
            k0 = kernel_tcp(b)
            r = fetch(a, b.ipv4, port, d, "got")
            k1 = kernel_tcp(b)
            uid = subprocess.check_output(["stat", "-c", "%u", f"/proc/{lst['pid']}"], text=True).strip()
        finally:
            log = stop(srv)
        assert r.returncode == 0, r.stderr + log
        assert hashlib.sha256((d / "got0").read_bytes()).digest() == hashlib.sha256(body).digest()
        assert uid == "65534" and grew(k0, k1, "PassiveOpens") == 0, (uid, k0, k1)
        return (d / "error.log").read_text()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_an_unprivileged_nginx_worker_proves_its_inherited_listener_and_adopts_it(hosts):
    """uid 65534 (no CAP_NET_ADMIN): the control plane takes the worker's inherited listener as the proof of its
    port (a kernel listener of the same uid, SO_REUSEADDR as nginx sets it, listening)."""
    skip_unless_nobody_runs_kbypass()  # the shim's embedded Python is this checkout's, loaded as uid 65534
    lib = os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME"))
    if subprocess.run([*test_run.UNPRIVILEGED, "test", "-r", lib]).returncode:
        pytest.skip(f"uid 65534 cannot read {lib}: its TCP would stay on the kernel (the shim's Python)")
    served_as_nobody(hosts, 8415, user=test_run.UNPRIVILEGED)


class Loop(threading.Thread):
    """curl in a loop against the server while it changes its workers: every answer and every failure."""

    def __init__(self, host, ip: str, port: int, d) -> None:
        super().__init__(daemon=True)
        self.argv = in_ns(host, "curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://{ip}:{port}/small.bin")
        self.codes: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            r = subprocess.run(self.argv, capture_output=True, text=True, timeout=60)
            self.codes.append(r.stdout.strip() + ("" if r.returncode == 0 else f" ({r.stderr.strip()})"))
            time.sleep(0.02)

    def finish(self) -> list[str]:
        self.done.set()
        self.join(90)
        return self.codes


@pytest.mark.parametrize("how", ["reload", "kill"])
def test_a_new_worker_adopts_after_a_reload_or_the_old_one_killed(hosts, site, how):  # noqa: F811
    a, b = hosts
    d, _ = site
    # one segment each: a response the old worker is still sending when it exits after the reload is another
    # matter (the exiting process's closing connections: kbp_fini), not the adoption's
    (d / "www" / "small.bin").write_bytes(os.urandom(1000))
    port = 8413 if how == "reload" else 8414
    srv, master = start_nginx(b, d, port)
    try:
        old = adopter(b, port, master, d)
        loop = Loop(a, b.ipv4, port, d)
        loop.start()
        wait_for(lambda: len(loop.codes) >= 5, what="requests before the change")
        os.kill(master, signal.SIGHUP) if how == "reload" else os.kill(old["pid"], signal.SIGKILL)
        new = adopter(b, port, master, d, not_pid=old["pid"])
        seen = len(loop.codes)
        wait_for(lambda: len(loop.codes) >= seen + 10, what="requests after the new worker adopted")
        codes = loop.finish()
        k0 = kernel_tcp(b)
        r = fetch(a, b.ipv4, port, d, "after", path="small.bin", n=5)
        k1 = kernel_tcp(b)
        served = [s for s in sockets_of(b, port) if s["pid"] == new["pid"] and s["role"] == "listener"]
    finally:
        log = stop(srv)
    lost = [c for c in codes if c != "200"]
    # nginx loses none at a reload; a worker killed loses the one it was serving, as on the kernel
    assert codes and len(lost) <= (how == "kill"), lost
    assert r.returncode == 0 and r.stdout.split() == ["200"] * 5, r.stderr + log
    assert grew(k0, k1, "PassiveOpens") == 0, (k0, k1)  # the new worker's rings took them
    assert served and served[0]["accepted"] >= 5, served


HALF_REQUEST = r"""
import hashlib, socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(b"GET /small.bin HTTP/1.1\r\nHost: b\r\n")  # half a request: the old worker waits for the rest
print("sent", flush=True)
sys.stdin.readline()
c.sendall(b"Connection: close\r\n\r\n")
got = b""
while chunk := c.recv(65536):
    got += chunk
head, _, body = got.partition(b"\r\n\r\n")
print(head.split(b"\r\n")[0].decode(), hashlib.sha256(body).hexdigest(), flush=True)
"""


def test_a_reload_while_the_old_worker_still_serves_leaves_the_port_to_the_new_one(hosts, site):  # noqa: F811
    """The old worker closes its listener at the reload and still serves a connection on its rings (half a
    request in): the port's rule goes at once (that connection keeps its 4-tuple's), so the new connections
    meanwhile reach the kernel's listener, the new worker accepts them there, and adopts the port when the old
    worker is gone."""
    a, b = hosts
    d, _ = site
    small = os.urandom(1000)
    (d / "www" / "small.bin").write_bytes(small)
    srv, master = start_nginx(b, d, 8417)
    try:
        old = adopter(b, 8417, master, d)
        held = subprocess.Popen(in_ns(a, sys.executable, "-c", HALF_REQUEST, b.ipv4, "8417"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert held.stdout.readline().strip() == "sent"
        os.kill(master, signal.SIGHUP)
        wait_for(lambda: not [s for s in sockets_of(b, 8417) if s["pid"] == old["pid"] and s["role"] == "listener"],
                 what="the old worker to close its listener")
        meanwhile = fetch(a, b.ipv4, 8417, d, "meanwhile", path="small.bin", n=5)
        out, _ = held.communicate("go\n", timeout=30)
        new = adopter(b, 8417, master, d, not_pid=old["pid"])
        after = fetch(a, b.ipv4, 8417, d, "after", path="small.bin", n=3)
    finally:
        log = stop(srv)
    assert meanwhile.returncode == 0 and meanwhile.stdout.split() == ["200"] * 5, meanwhile.stderr + log
    assert out.split() == ["HTTP/1.1", "200", "OK", hashlib.sha256(small).hexdigest()], out + log
    assert after.returncode == 0 and after.stdout.split() == ["200"] * 3, after.stderr + log
    assert new["pid"] != old["pid"]


def test_a_reload_with_a_large_response_in_flight_finishes_it_intact(hosts, site):  # noqa: F811
    """nginx -s reload while the old worker sends 10 MB to a slow client (curl --limit-rate 2M, so ~5 s): the
    old worker finishes the response before it exits (its connection on the rings, or handed to the kernel's TCP
    at its exit: csrc/preload/kbp_tcpexit.c), every byte arrives (SHA-256), and the new worker adopts."""
    a, b = hosts
    d, digest = site
    srv, master = start_nginx(b, d, 8418)
    try:
        old = adopter(b, 8418, master, d)
        c = subprocess.Popen(in_ns(a, "curl", "-fsS", "--limit-rate", "2M", "--max-time", "60", "-o",
                                   str(d / "got"), f"http://{b.ipv4}:8418/big.bin"), stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        os.kill(master, signal.SIGHUP)  # nginx -s reload
        _, err = c.communicate(timeout=90)
        new = adopter(b, 8418, master, d, not_pid=old["pid"])
        after = fetch(a, b.ipv4, 8418, d, "after")
    finally:
        log = stop(srv)
    assert c.returncode == 0, err + log
    assert sha(d / "got") == digest
    assert after.returncode == 0 and sha(d / "after0") == digest, after.stderr + log
    assert new["pid"] != old["pid"]


def test_a_root_master_with_workers_as_nobody_is_served_from_the_rings(hosts):
    """nginx's shipped config (`user www-data;` with a root master): the listener is root's (the master made it),
    the worker (uid 65534) proves its port with it. The control plane leaves the proof socket itself out of the
    port's other users' sockets (by inode), so the worker adopts; the refusal for good that was (another user's
    socket, uid 0) would say so once and stop looking."""
    err = served_as_nobody(hosts, 8419, workers_as="nobody nogroup")
    assert "stays on the kernel" not in err, err
