"""The steered AF_XDP path end to end on the testbed, with kernel peers beside it."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from kbypass import netns
from kbypass.apps.reflect import Reflector
from kbypass.port.steered import SteeredPort
from tests.kb import kbypass, kbypass_for, one_real, receive_packets, xdp_attached

pytestmark = pytest.mark.netns
PORT = 4321


def udp_socket(ns, bind=None, timeout=2.0):
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    if bind:
        s.bind(bind)
    return s


def payload(i: int, size: int = 64) -> bytes:
    """Sequence-numbered payload, every word checkable (as the kernel's xskxceiver does)."""
    words = struct.pack("!Q", i) + bytes((i + k) & 0xFF for k in range(size - 8))
    return words


drain = receive_packets  # tests.kb's: receive and free until `want` came


def test_steered_flow_exact_while_kernel_keeps_the_rest(testbed_hosts):
    a, b = testbed_hosts
    kernel_rx = udp_socket(b.netns, (b.ipv4, PORT + 1))
    tx = udp_socket(a.netns)
    with SteeredPort(b.iface, None, [f"udp dst {b.ipv4} dport {PORT}"], netns=b.netns) as sp:
        n = 500
        for i in range(n):
            tx.sendto(payload(i), (b.ipv4, PORT))
        tx.sendto(b"for the kernel", (b.ipv4, PORT + 1))
        frames = drain(sp.port, n)
        assert kernel_rx.recvfrom(100)[0] == b"for the kernel"
        ping = subprocess.run(["ip", "netns", "exec", a.netns, "ping", "-c", "2", "-i", "0.2", "-W", "2", b.ipv4],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout
        assert len(frames) == n
        got = sorted(frames, key=lambda f: struct.unpack("!Q", f[42:50])[0])
        for i, f in enumerate(got):
            assert f[42:] == payload(i), f"payload {i} differs"
            assert f[0:6] == bytes.fromhex(b.mac.replace(":", ""))
        assert sum(c["packets"] for c in sp.rule_counters()) == n
        for p in sp.ports:
            # every frame drained was freed: none is still the application's (check raises on any leak)
            assert p.check(app=0)["app"] == 0
    kernel_rx.close()
    tx.close()
    assert not xdp_attached(b)


def test_removing_the_rule_gives_the_flow_back(testbed_hosts):
    a, b = testbed_hosts
    kernel_rx = udp_socket(b.netns, (b.ipv4, PORT), timeout=0.5)
    tx = udp_socket(a.netns)
    with SteeredPort(b.iface, None, [], netns=b.netns) as sp:
        rule = sp.steering.add(f"udp dport {PORT}")
        tx.sendto(b"bypass", (b.ipv4, PORT))
        assert [f[42:] for f in drain(sp.port, 1)] == [b"bypass"]
        with pytest.raises(socket.timeout):
            kernel_rx.recvfrom(100)
        sp.steering.remove(rule)
        tx.sendto(b"kernel", (b.ipv4, PORT))
        assert kernel_rx.recvfrom(100)[0] == b"kernel"
        assert drain(sp.port, 1, timeout=0.3) == []
    kernel_rx.close()
    tx.close()


def test_reflect_answers_a_kernel_client(testbed_hosts):
    a, b = testbed_hosts
    client = udp_socket(a.netns, (a.ipv4, 5555))
    with SteeredPort(b.iface, None, [f"udp dport {PORT}"], netns=b.netns) as sp:
        import threading

        result = {}
        t = threading.Thread(target=lambda: result.update(r=Reflector(sp.port).run(count=50, duration=5)))
        t.start()
        answers = []
        try:
            for i in range(50):
                client.sendto(payload(i), (b.ipv4, PORT))
                data, peer = client.recvfrom(2048)
                answers.append((data, peer))
        finally:
            t.join()  # the reflector stops by count or duration; the port must outlive it
    client.close()
    assert [d for d, _ in answers] == [payload(i) for i in range(50)]
    assert all(peer == (b.ipv4, PORT) for _, peer in answers)
    assert result["r"].sent == 50


def test_sink_cli_counts_live_generator_stream(testbed_hosts):
    a, b = testbed_hosts
    sink = subprocess.Popen([sys.executable, "-m", "kbypass", "sink", "--host", "b", "--check-seq", "--json",
                             "--idle-timeout", "5", "--count", "2000", "--duration", "20"], stdout=subprocess.PIPE, text=True)
    try:
        _wait_attached(b)
        gen = kbypass("gen", "--host", "a", "--count", "2000", "--json", check=True)
        assert json.loads(gen.stdout)["packets"] == 2000
        out, _ = sink.communicate(timeout=30)
    finally:
        sink.kill()
        sink.wait()  # gone, and its XDP program with it, before the next test
    summary = json.loads(out)
    for key in ("packets", "bytes", "seconds", "pps", "mode", "stats"):
        assert key in summary
    assert summary["mode"] == "copy"  # veth has no zero-copy; auto falls back and says so
    assert summary["packets"] == 2000 and summary["seq"]["lost"] == 0
    assert summary["seq"]["received"] == 2000
    assert not xdp_attached(b)


def _wait_attached(host, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not xdp_attached(host):
        assert time.monotonic() < deadline, "sink never attached"
        time.sleep(0.05)
    time.sleep(0.2)  # sockets registered before attach; give the process a moment to enter its loop


def test_kill_9_leaves_no_xdp_program(testbed_hosts):
    a, b = testbed_hosts
    sink = subprocess.Popen([sys.executable, "-m", "kbypass", "sink", "--host", "b", "--duration", "30"],
                            stdout=subprocess.DEVNULL)
    try:
        _wait_attached(b)
    finally:
        sink.send_signal(signal.SIGKILL)
        sink.wait()
    deadline = time.monotonic() + 5
    while xdp_attached(b) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not xdp_attached(b)
    # And a new start works at once.
    again = kbypass("sink", "--host", "b", "--duration", "0.2", "--json", check=True)
    assert json.loads(again.stdout)["packets"] >= 0


@pytest.mark.parametrize(
    "real, args, words",
    one_real([
        (["--iface", "nosuch0", "--netns", "{b}", "--rule", "udp dport 9"], "no interface 'nosuch0'"),
        (["--iface", "{bif}", "--netns", "{b}"], "without --rule"),  # a real NIC keeps its UDP
        (["--host", "b", "--queue", "7"], "queue"),
        (["--host", "b", "--ring-size", "1000"], "power of two"),
        (["--host", "b", "--rule", "udp dport 99999"], "99999"),
        (["--host", "b", "--rule", "udp dts 10.0.0.1"], "dts"),
    ]),
)
def test_bad_input_one_line_nothing_attached(testbed_hosts, real, args, words):
    a, b = testbed_hosts
    args = [x.format(b=b.netns, bif=b.iface) for x in args]
    proc = kbypass_for(real)("sink", *args, "--duration", "0.2")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert not xdp_attached(b)


def queue_xdp_packets(host) -> dict[int, int]:
    out = subprocess.run(["ip", "netns", "exec", host.netns, "ethtool", "-S", host.iface],
                         capture_output=True, text=True, check=True).stdout
    counts = {}
    for line in out.splitlines():
        name, _, value = line.strip().partition(": ")
        if name.startswith("rx_queue_") and name.endswith("_xdp_packets"):
            counts[int(name.split("_")[2])] = int(value)
    return counts


def test_two_sockets_on_two_queues_get_only_their_own(testbed_hosts):
    a, b = testbed_hosts
    tx = udp_socket(a.netns)
    with SteeredPort(b.iface, None, [f"udp dport {PORT}"], netns=b.netns) as sp:
        assert sp.queues == [0, 1]
        before = queue_xdp_packets(b)
        # Many flows (source ports), sent from both CPUs: the testbed's XPS puts CPU c's on queue c.
        flows = 64
        cpus = os.sched_getaffinity(0)
        try:
            for sport in range(flows):
                os.sched_setaffinity(0, {sport % min(2, os.cpu_count() or 1)})
                with netns.entered(a.netns):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((a.ipv4, 20000 + sport))
                for i in range(5):
                    s.sendto(payload(i), (b.ipv4, PORT))
                s.close()
        finally:
            os.sched_setaffinity(0, cpus)
        per_port = {q: drain(port, 10**6, timeout=1.0) for q, port in zip(sp.queues, sp.ports)}
        after = queue_xdp_packets(b)
    tx.close()
    seen = {q: {struct.unpack("!H", f[34:36])[0] for f in frames} for q, frames in per_port.items()}
    assert sum(len(f) for f in per_port.values()) == flows * 5
    assert seen[0] and seen[1], "every flow landed on one queue; the test proves nothing"
    assert not seen[0] & seen[1], "a flow showed up on both queues' sockets"
    for q, frames in per_port.items():
        # Each socket got exactly what the kernel says arrived on its queue (the steered UDP, nothing else
        # the XDP program saw there is UDP to PORT).
        assert len(frames) <= after[q] - before[q]


def test_not_root_gets_one_line(testbed_hosts, monkeypatch, capsys):
    # In-process with the uid check answering "not root": a real unprivileged user may not even be able to
    # read this checkout, and the point is kbypass's own message, which comes before any privileged call.
    from kbypass import cli

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["sink", "--host", "b", "--duration", "0.1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "root" in lines[0] and "sudo" in lines[0]
    assert not xdp_attached(testbed_hosts[1])
