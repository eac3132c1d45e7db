"""`kbypass xfer recv --proto tcp --iperf3` when the client cannot run its test, in netns: the real iperf3
client with -u, the real client killed mid-test, and a client whose parameters are not iperf3's. Each ends
the receiver (it runs one test) with one line `kbypass: error: ...` and status 2, never a traceback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from kbypass import netns

pytestmark = pytest.mark.netns
PORT = 5291


def receiver() -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "kbypass", "xfer", "recv", "--proto", "tcp", "--iperf3", "--host", "b",
                          "-p", str(PORT), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    if "listening on" not in line:
        p.kill()
        raise AssertionError(f"the receiver did not start: {line}{p.stderr.read()}")
    return p


def ended(p: subprocess.Popen) -> str:
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError("the receiver kept running") from None
    assert p.returncode == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbypass: error: "), err
    return lines[0]


def test_udp_test_ends_the_receiver_and_the_client_hears_why(testbed_hosts):
    a, b = testbed_hosts
    p = receiver()
    try:
        cli = subprocess.run(["ip", "netns", "exec", a.netns, "iperf3", "-u", "-c", b.ipv4, "-p", str(PORT), "-t", "1"],
                             capture_output=True, text=True, timeout=30)
        assert cli.returncode != 0 and "not implemented" in cli.stdout + cli.stderr
        assert "UDP tests are not supported" in ended(p)
    finally:
        if p.poll() is None:
            p.kill()


def test_client_killed_mid_test_is_one_line(testbed_hosts):
    a, b = testbed_hosts
    p = receiver()
    cli = subprocess.Popen(["ip", "netns", "exec", a.netns, "iperf3", "-c", b.ipv4, "-p", str(PORT), "-t", "30"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        assert "closed the control connection" in ended(p)
    finally:
        for proc in (p, cli):
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize("params, words", [(b"[1]", "not a JSON object"), (b'{"tcp": true, "parallel": "x"}',
                                                                          "parallel streams")])
def test_parameters_that_are_not_iperf3s_are_one_line(testbed_hosts, params, words):
    a, b = testbed_hosts
    p = receiver()
    try:
        with netns.entered(a.netns):
            s = socket.socket()
        s.settimeout(10)
        s.connect((b.ipv4, PORT))
        s.sendall(b"c" * 37)
        assert s.recv(1) == b"\x09"  # PARAM_EXCHANGE
        s.sendall(len(params).to_bytes(4, "big") + params)
        assert words in ended(p)
        s.close()
    finally:
        if p.poll() is None:
            p.kill()
