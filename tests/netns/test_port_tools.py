"""sink, reflect and capture as a new user meets them on the testbed: an idle timeout that ends an idle
run, a flow on a queue nobody listens to reported, capture's traffic taken from the kernel said aloud,
`-w -` a real pcap on stdout, SteeredPort used the README's way, and SIGINT/SIGTERM leaving nothing
attached."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time

import pytest
from scapy.layers.l2 import Ether  # noqa: F401 (rdpcap reads LINKTYPE_ETHERNET)
from scapy.utils import rdpcap

from kbypass.errors import UsageError
from kbypass.port.steered import SteeredPort
from tests.kb import (
    half_behind_slow,
    kbypass,
    kbypass_main_begun,
    wait_until,
    xdp_attached,
)
from tests.netns.test_cp import stop_at
from tests.netns.test_sink_reflect import _wait_attached

pytestmark = pytest.mark.netns
PORT = 4321


def _start(*args, cwd=None):
    return subprocess.Popen([sys.executable, "-m", "kbypass", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd)


def _gen(count: int, *extra: str) -> None:
    kbypass("gen", "--host", "a", "--count", str(count), "--size", "80", *extra, check=True)


def test_idle_timeout_ends_a_run_that_never_sees_a_packet_and_prints_tables(testbed_hosts):
    a, b = testbed_hosts
    t0 = time.monotonic()
    proc = kbypass("sink", "--host", "b", "--rule", f"udp dport {PORT}", "--idle-timeout", "1", timeout=20)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert took < 8, f"an idle timeout of 1 s took {took:.1f} s"  # used to run forever
    # tables, not a Python dict; the rules as a table of their own
    assert "{'" not in proc.stdout and "stats.rx_dropped" in proc.stdout and "udp dport 4321 redirect" in proc.stdout
    assert not xdp_attached(b)


def test_a_flow_on_a_queue_without_a_socket_is_reported(testbed_hosts):
    a, b = testbed_hosts
    warned = 0
    # veth delivers on the queue of the sending CPU: with the generator pinned, the flow lands on the same
    # queue in both runs, so the sink on the other queue misses it
    for queue in (0, 1):
        sink = _start("sink", "--host", "b", "--rule", f"udp dport {PORT}", "--queue", str(queue), "-t", "60",
                      "--json")
        try:
            _wait_attached(b)
            _gen(500, "--cpu", "0")
            stop_at(sink, b, f"udp dport {PORT}", 500)
            out, err = sink.communicate(timeout=30)
        finally:
            sink.kill()
            sink.wait()
        summary, err = json.loads(out), err.decode()
        missed = summary["rules"][0]["packets"] - summary["packets"]
        assert summary["rules"][0]["packets"] == 500
        if missed:
            warned += 1
            assert f"{missed} packets matched" in summary["warnings"][0] and "went to the kernel" in err
            assert "kbypass sink: warning:" in err
        else:
            assert "warnings" not in summary
    assert warned >= 1


def test_capture_to_stdout_is_a_pcap_a_reader_opens(testbed_hosts, tmp_path):
    a, b = testbed_hosts
    cap = _start("capture", "--host", "b", "--rule", f"udp dport {PORT}", "-w", "-", "-c", "300", "-t", "20",
                 "--json", cwd=tmp_path)
    try:
        _wait_attached(b)
        _gen(300)
        out, err = cap.communicate(timeout=30)
    finally:
        cap.kill()
        cap.wait()
    assert cap.returncode == 0, err
    assert not (tmp_path / "-").exists()  # used to be a file named '-'
    pkts = rdpcap(io.BytesIO(out))
    assert len(pkts) == 300 and all(len(p) == 80 for p in pkts)
    times = [int(p.time * 10**9) for p in pkts]
    assert len(set(times)) == 300 and times == sorted(times)  # each its own time, in order
    err = err.decode()
    summary = json.loads(err[err.index("{"):])  # the summary goes to stderr after the start-up line
    assert summary["packets"] == 300 and summary["file"] == "-"


def test_capture_says_it_takes_the_traffic_and_what_every_n_drops(testbed_hosts, tmp_path):
    a, b = testbed_hosts
    cap = _start("capture", "--host", "b", "-w", str(tmp_path / "c.pcap"), "--every", "2", "-t", "30")
    try:
        _wait_attached(b)
        ping = subprocess.run(["ip", "netns", "exec", a.netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", b.ipv4],
                              capture_output=True, text=True)
        cap.send_signal(signal.SIGINT)  # ping waited a second for its last answer: the requests are long in
        out, err = cap.communicate(timeout=30)
    finally:
        cap.kill()
        cap.wait()
    assert ping.returncode != 0  # the kernel of host b never saw the echo requests ...
    first = err.decode().splitlines()[0]
    assert "taken from the kernel" in first and "1 in 2 is written, the rest dropped" in first  # ... and it was told
    assert "not_written" in out.decode()


def test_steered_port_as_the_readme_uses_it(testbed_hosts):
    a, b = testbed_hosts
    with SteeredPort(b.iface, None, f"udp dport {PORT}", netns=b.netns) as sp:  # one rule as text
        assert [r["rule"] for r in sp.rule_counters()] == [f"udp dport {PORT} redirect"]
        port = sp.port
        assert len(sp.queues) == 2
        counts = sp.port.check()  # a PortGroup over both queues has the Port API's check
        assert counts["app"] == 0 and counts["fill"] > 0
        batch = port.receive(16)
        port.free(batch)
    with pytest.raises(UsageError, match="closed"):
        sp.port.receive(16)
    with pytest.raises(UsageError, match="closed"):
        port.receive(16)  # the port taken out of the with block
    with pytest.raises(UsageError, match="closed"):
        port.ports[0].receive(16)
    assert not xdp_attached(b)


ARGS = {"sink": [], "reflect": [], "capture": ["-w", "{tmp}/c.pcap"]}


@pytest.mark.parametrize("command, sig", half_behind_slow(list(ARGS), [signal.SIGINT, signal.SIGTERM]))
def test_signal_mid_run_prints_the_summary_and_detaches(testbed_hosts, tmp_path, command, sig):
    a, b = testbed_hosts
    proc = _start(command, "--host", "b", "--rule", f"udp dport {PORT}", "-t", "30", "--json",
                  *[x.format(tmp=tmp_path) for x in ARGS[command]])
    try:
        line = proc.stderr.readline().decode()
        assert f"kbypass {command}: receiving on" in line
        time.sleep(0.3)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "packets" in json.loads(out)
    assert b"Traceback" not in err
    assert not xdp_attached(b)


@pytest.mark.parametrize("command, sig, delay", half_behind_slow(list(ARGS), [signal.SIGINT, signal.SIGTERM],
                                                                [0.6, 1.2]))
def test_signal_at_start_up_leaves_nothing_attached(testbed_hosts, tmp_path, command, sig, delay):
    a, b = testbed_hosts
    proc = _start(command, "--host", "b", "--rule", f"udp dport {PORT}", "-t", "30", "--json",
                  *[x.format(tmp=tmp_path) for x in ARGS[command]])
    t0 = time.monotonic()
    try:
        # somewhere in imports, parsing, opening the sockets or attaching; not before kbypass's own code
        # has begun on a loaded machine (kbypass_main_begun says why)
        wait_until(lambda: kbypass_main_begun(proc.pid), "kbypass's main()", proc=proc, interval=0.002)
        time.sleep(max(0.0, delay - (time.monotonic() - t0)))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    # 130/143 or, once the loop runs, the summary and 0
    assert proc.returncode in (0, 130, 143), (proc.returncode, err)
    assert b"Traceback" not in err, err
    assert not xdp_attached(b)
