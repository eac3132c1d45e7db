"""`kbypass pingpong` against the real sockperf, both directions, both address modes; and its errors."""

import json
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.kb import (
    PURE_PYTHON,
    kbypass,
    kbypass_for,
    one_real,
    spare_ip,
    udp_bound,
    wait_until,
    xdp_attached,
)

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("sockperf") is None, reason="sockperf is not installed")]


def wait_attached(host, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not xdp_attached(host):
        assert time.monotonic() < deadline, "the server never attached"
        time.sleep(0.05)
    time.sleep(0.3)


def sockperf_latency(text: str) -> tuple[float, float]:
    p50 = float(re.search(r"percentile 50\.000 =\s+([\d.]+)", text).group(1))
    p99 = float(re.search(r"percentile 99\.000 =\s+([\d.]+)", text).group(1))
    return p50, p99


@pytest.mark.parametrize("dedicated", [False, True], ids=["own-address", "dedicated"])
def test_sockperf_client_against_kbypass_server(testbed_hosts, dedicated):
    a, b = testbed_hosts
    ip = spare_ip(b, 10) if dedicated else b.ipv4
    extra = ["--ip", ip, "--dedicated"] if dedicated else []
    server = subprocess.Popen([sys.executable, "-m", "kbypass", "pingpong", "server", "--host", "b", "--port", "11111",
                               "--duration", "20", "--idle-timeout", "10", "--json", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_attached(b)
        sp = subprocess.run(["ip", "netns", "exec", a.netns, "sockperf", "ping-pong", "-i", ip, "-p", "11111",
                             "-t", "1", "-m", "64"], capture_output=True, text=True, timeout=30)
        server.terminate()  # SIGTERM: the server stops and prints its summary
        out, err = server.communicate(timeout=30)
    finally:
        server.kill()
        server.wait()
    assert sp.returncode == 0, sp.stdout + sp.stderr
    assert "# dropped messages = 0" in sp.stdout, sp.stdout + out + err
    p50, p99 = sockperf_latency(sp.stdout)
    assert 0 < p50 < 100_000 and p50 <= p99
    summary = json.loads(out)
    assert summary["received"] == summary["answered"] > 100, summary
    assert not xdp_attached(b)


@pytest.mark.parametrize("dedicated", [False, True], ids=["own-address", "dedicated"])
def test_kbypass_client_against_sockperf_server(testbed_hosts, dedicated, tmp_path):
    a, b = testbed_hosts
    # the dedicated-address run also takes the pure-Python lane, so the CLI switch is covered end to end
    extra = ["--ip", spare_ip(a, 11), "--dedicated", "--lane", "python"] if dedicated else []
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, "sockperf", "server", "-i", b.ipv4, "-p", "11112"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    png = tmp_path / "hist.png"
    try:
        # ready once its socket is bound: from then on the kernel queues what arrives for it
        wait_until(lambda: udp_bound(b.netns, 11112), "sockperf server bound to port 11112", proc=server)
        proc = kbypass("pingpong", "client", "--host", "a", "--dst", f"{b.ipv4}:11112", "--count", "2000",
                       "--warmup", "50", "--size", "64", "--json", "--histogram", str(png), *extra, timeout=60)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    for key in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "samples"):
        assert key in s
    assert s["samples"] == 2000 and s["lost"] == 0
    assert s["lane"] == ("python" if dedicated or PURE_PYTHON else "c")
    assert 0 < s["p50_us"] <= s["p90_us"] <= s["p99_us"] <= s["p999_us"] <= s["max_us"]
    assert s["p50_us"] < 100_000
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not xdp_attached(a)


def test_socket_backend_client_and_server(testbed_hosts):
    a, b = testbed_hosts
    server = subprocess.Popen([sys.executable, "-m", "kbypass", "pingpong", "server", "--host", "b", "--port", "11113",
                               "--backend", "socket", "--poll", "busy", "--count", "600", "--duration", "20", "--json"],
                              stdout=subprocess.PIPE, text=True)
    try:
        # the socket backend's server is a bound UDP socket: bound means every ping from now on is answered
        wait_until(lambda: udp_bound(b.netns, 11113), "kbypass socket server bound to port 11113", proc=server)
        proc = kbypass("pingpong", "client", "--host", "a", "--dst", f"{b.ipv4}:11113", "--count", "500",
                       "--warmup", "100", "--json", "--backend", "socket", timeout=60)
        out, _ = server.communicate(timeout=30)
    finally:
        server.kill()
        server.wait()
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["samples"] == 500 and 0 < s["p50_us"] < 100_000
    assert json.loads(out)["answered"] == 600


@pytest.mark.parametrize("real, args, words", one_real([
    (["server", "--host", "b", "--ip", "10.99.0.5"], "not an address of the interface"),
    (["server", "--host", "b", "--ip", "10.99.0.5", "--dedicated"], "outside the interface's subnets"),
    (["client", "--host", "a", "--dst", "{b}:11111", "--size", "2000", "--count", "1"], "exceeds the MTU"),
    (["client", "--host", "a", "--dst", "nonsense", "--count", "1"], "IP:PORT"),
    (["client", "--host", "a", "--dst", "{b}:11111", "--size", "10"], "from 14 to 65507"),
]))
def test_bad_input_one_line(testbed_hosts, real, args, words):
    a, b = testbed_hosts
    proc = kbypass_for(real)("pingpong", *[x.format(b=b.ipv4) for x in args], "--duration", "1", timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert not xdp_attached(a) and not xdp_attached(b)


def test_port_steered_by_another_process(testbed_hosts):
    a, b = testbed_hosts
    sink = subprocess.Popen([sys.executable, "-m", "kbypass", "sink", "--host", "b", "--duration", "20"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_attached(b)
        proc = kbypass("pingpong", "server", "--host", "b", "--duration", "1", timeout=60)
    finally:
        sink.kill()
        sink.wait()
    # the control plane names the other program and its overlapping rule
    assert proc.returncode == 2
    assert "overlaps 'udp redirect' of client" in proc.stderr and "kbypass sink" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_kill_9_leaves_nothing_and_restart_works(testbed_hosts):
    a, b = testbed_hosts
    cmd = [sys.executable, "-m", "kbypass", "pingpong", "server", "--host", "b", "--port", "11114", "--duration", "20"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_attached(b)
    finally:
        server.kill()  # SIGKILL: no cleanup code runs
        server.wait()
    deadline = time.monotonic() + 5
    while xdp_attached(b) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not xdp_attached(b)  # the bpf_link died with the process
    again = kbypass("pingpong", "server", "--host", "b", "--port", "11114", "--duration", "0.3", "--json", timeout=60)
    assert again.returncode == 0, again.stderr  # the port and the queues are free again at once
    assert json.loads(again.stdout)["received"] == 0
