"""Jumbo frames through the bypass: multi-buffer AF_XDP (XDP_USE_SG) on a testbed at MTU 65535, against
kernel sockets and the real tools (issue 17, items 1-3).

The session testbed's MTU is raised in place (`testbed up --mtu` again, which is what the test of that
does too) for this module and put back at its end. 9,000 and 60,000-byte UDP datagrams from a kernel socket
must arrive whole through the steered port, `sink`, `reflect` and `capture`; the kernel's own AF_XDP
selftest cases for multi-buffer (xskxceiver.c: 9K packets, invalid multi-buffer descriptors, too many
frags) each have a test here, run through kbypass's ring and port code.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kbypass import netns
from kbypass.errors import UsageError
from kbypass.host import testbed, xps
from kbypass.port.afxdp import AfXdpPort
from kbypass.port.steered import SteeredPort
from kbypass.proto.udp import build_udp_frame
from kbypass.xsk import multibuf
from kbypass.xsk.consts import XDP_PKT_CONTD
from kbypass.xsk.umem import APP, TX
from tests.kb import receive_packets

pytestmark = pytest.mark.netns

PORT = 4700
SIZES = (9000 - 28, 60000)  # UDP payloads: a 9,000-byte IP datagram (MTU 9000's largest), and 60,000 bytes
JUMBO_MTU = testbed.FRAGS_MAX_MTU


@pytest.fixture(scope="module")
def jumbo(testbed_hosts):
    """The session testbed at MTU 65535 for this module (changed in place), back at its own MTU after."""
    a, b = testbed_hosts
    prefix = testbed.default_prefix()
    hosts = testbed.up(testbed.TestbedConfig(prefix=prefix, queues=a.queues, mtu=JUMBO_MTU))
    assert all(h.mtu == JUMBO_MTU for h in hosts)
    try:
        yield hosts
    finally:
        testbed.up(testbed.TestbedConfig(prefix=prefix, queues=a.queues, mtu=a.mtu))


def udp_socket(ns, bind=None, timeout=3.0):
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    if bind:
        s.bind(bind)
    return s


def payload(seq: int, size: int) -> bytes:
    """A generator stamp (sequence number, send time 0) then bytes derived from seq: every byte checkable."""
    body = (np.arange(size - 16, dtype=np.uint32) * 7 + seq * 13).astype(np.uint8).tobytes()
    return struct.pack("!QQ", seq, 0) + body


@pytest.mark.parametrize("control_plane", [True, False], ids=["cp", "no-cp"])
def test_kernel_datagrams_arrive_whole_through_the_port(jumbo, control_plane):
    a, b = jumbo
    tx = udp_socket(a.netns)
    with SteeredPort(b.iface, None, [f"udp dst {b.ipv4} dport {PORT}"], netns=b.netns,
                     control_plane=control_plane, frame_size=2048) as sp:
        assert all(p.multi_buffer for p in sp.ports)  # chosen from the MTU
        sent = [payload(i, n) for i, n in enumerate(SIZES)]
        for data in sent:
            tx.sendto(data, (b.ipv4, PORT))
        got = receive_packets(sp.port, len(sent), timeout=5.0)
        assert [len(g) - 42 for g in got] == list(SIZES)
        assert [g[42:] for g in got] == sent  # every byte, across every frame of the chain
        assert sum(p.stats["rx_packets"] for p in sp.ports) == 2
        assert sum(p.stats["rx_bytes"] for p in sp.ports) == sum(SIZES) + 2 * 42
        for p in sp.ports:
            p.check(app=0)  # every frame of every chain went back
    tx.close()


def _tool(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "kbypass", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()  # the start-up line: the port is open and steered
    assert "receiving on" in line, line + proc.stderr.read()
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 20) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    return json.loads(out)


@pytest.mark.parametrize("queue", [None, 0], ids=["every-queue", "queue-0"])
def test_sink_counts_jumbo_datagrams_with_their_sequence(jumbo, queue):
    """Every queue: a group of ports, the numpy path; one queue: the port's C path (consume, kb_sink), which
    must count chains as packets and read each one's stamp from its first frame. The sender runs on CPU 0,
    so its datagrams leave on queue 0 (the testbed's XPS) and reach that one queue. It is started (and has
    made its datagrams) before the sink, and sends the burst the moment the sink says it is receiving: the
    start-up line must mean the rule and the socket are live, and a slow start of the sender's Python on a
    loaded machine cannot outlast the sink's --duration."""
    a, b = jumbo
    n = 20
    where = [] if queue is None else ["--queue", str(queue)]
    # CPU 0 sends on queue 0 only while the testbed's XPS is in place (a test that left it off once made this
    # one depend on the flow's hash: the queue-0 sink saw nothing)
    assert int(xps.read(a.iface, a.netns, a.queues)[0].replace(",", ""), 16) & 1, "XPS: CPU 0 not on queue 0"
    send = ("import socket, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
            "from tests.netns.test_jumbo import payload, SIZES\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"burst = [payload(i, SIZES[i % 2]) for i in range({n})]\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            f"for d in burst: s.sendto(d, ({b.ipv4!r}, {PORT}))\n"
            "print('sent', flush=True)\n")
    sender = subprocess.Popen(["taskset", "-c", "0", "ip", "netns", "exec", a.netns, sys.executable, "-c", send],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sender.stdout.readline() == "ready\n"
        sink = _tool("sink", "--host", "b", "--rule", f"udp dport {PORT}", "--check-seq", "--json", "--count",
                     str(n), "--duration", "15", *where)
        sender.stdin.write("go\n")
        sender.stdin.flush()
        assert sender.stdout.readline() == "sent\n"
        assert sender.wait(30) == 0
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    summary = _finish(sink)
    assert summary["packets"] == n and summary["seq"]["received"] == n and summary["seq"]["lost"] == 0, summary
    assert summary["bytes"] == sum(SIZES[i % 2] + 42 for i in range(n))


def test_reflect_returns_jumbo_datagrams_to_a_kernel_socket(jumbo):
    a, b = jumbo
    client = udp_socket(a.netns, (a.ipv4, PORT + 1))
    reflect = _tool("reflect", "--host", "b", "--rule", f"udp dport {PORT}", "--json", "--count", "4",
                    "--duration", "15")
    sent = [payload(i, SIZES[i % 2]) for i in range(4)]
    answers = []
    for data in sent:
        client.sendto(data, (b.ipv4, PORT))
        answers.append(client.recvfrom(70000))
    summary = _finish(reflect)
    client.close()
    assert [d for d, _ in answers] == sent
    assert all(peer == (b.ipv4, PORT) for _, peer in answers)
    assert (summary["packets"], summary["sent"], summary["tx_dropped"], summary["not_reflected"]) == (4, 4, 0, 0)
    assert summary["bytes"] == sum(len(d) + 42 for d in sent)


def test_a_datagram_longer_than_the_port_sends_is_not_reflected_and_the_reflector_goes_on(jumbo):
    """The reviewer's repro: with 2048-byte frames a 40,000-byte datagram arrives in 23 frames, more than the
    kernel sends as one packet (18); transmit raised for the whole batch and reflect died (rc 2). Now the
    reflector frees it and counts it as not_reflected, and returns the datagrams around it."""
    from kbypass.apps.reflect import Reflector

    a, b = jumbo
    client = udp_socket(a.netns, (a.ipv4, PORT + 1))
    with SteeredPort(b.iface, None, [f"udp dst {b.ipv4} dport {PORT}"], netns=b.netns, control_plane=False,
                     frame_size=2048) as sp:
        for port in sp.ports:
            assert port.multi_buffer and port.max_rx_frames > port.max_tx_frames == multibuf.TX_FRAME_LIMIT
        sent = [payload(0, 9000 - 28), payload(1, 40000), payload(2, 1000)]
        for data in sent:
            client.sendto(data, (b.ipv4, PORT))
        res = Reflector(sp.port, batch=64).run(count=3, duration=10)
        assert (res.packets, res.sent, res.not_reflected, res.tx_dropped) == (3, 2, 1, 0)
        answers = [client.recvfrom(70000)[0] for _ in range(2)]
        assert answers == [sent[0], sent[2]]
        time.sleep(0.1)
        for port in sp.ports:
            assert port.stats["tx_too_long"] == 0  # the reflector kept it from transmit (port.sendable)
            port.check(app=0)
    client.close()


def test_reflect_refuses_a_frame_size_it_could_not_send_back_with(jumbo):
    """`reflect --frame-size 2048` on a 65,535-byte MTU: one clear line, rc 2, nothing left attached."""
    a, b = jumbo
    r = subprocess.run([sys.executable, "-m", "kbypass", "reflect", "--host", "b", "--no-cp", "--frame-size", "2048",
                        "--rule", "udp dport 9999", "--duration", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("kbypass: error: --frame-size 2048:") and "37 frames" in r.stderr
    assert "--frame-size 4096" in r.stderr
    link = subprocess.run(["ip", "-n", b.netns, "link", "show", "dev", b.iface], capture_output=True, text=True)
    assert "xdp" not in link.stdout


def test_capture_writes_jumbo_packets_whole(jumbo, tmp_path):
    a, b = jumbo
    out = tmp_path / "jumbo.pcap"
    tx = udp_socket(a.netns)
    cap = _tool("capture", "--host", "b", "--rule", f"udp dport {PORT}", "-w", str(out), "--count", "2", "--json",
                "--duration", "15")
    sent = [payload(i, n) for i, n in enumerate(SIZES)]
    for data in sent:
        tx.sendto(data, (b.ipv4, PORT))
    _finish(cap)
    tx.close()
    shark = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.len", "-e", "frame.cap_len",
                            "-e", "udp.length", "-e", "data.data"], capture_output=True, text=True, timeout=60)
    assert shark.returncode == 0, shark.stderr
    rows = [line.split("\t") for line in shark.stdout.splitlines()]
    assert [(int(r[0]), int(r[1]), int(r[2])) for r in rows] == [(n + 42, n + 42, n + 8) for n in SIZES]
    assert [bytes.fromhex(r[3]) for r in rows] == sent  # tshark reads the same bytes


# ---- the kernel's AF_XDP multi-buffer selftests (tools/testing/selftests/bpf/xskxceiver.c), on kbypass --------

MAC = {h: bytes.fromhex(m.replace(":", "")) for h, m in (("a", "02:6b:62:00:00:01"), ("b", "02:6b:62:00:00:02"))}


def _frame(a, b, seq: int, size: int) -> bytes:
    return build_udp_frame(bytes.fromhex(a.mac.replace(":", "")), bytes.fromhex(b.mac.replace(":", "")),
                           socket.inet_aton(a.ipv4), socket.inet_aton(b.ipv4), PORT, PORT,
                           payload(seq, size - 42))


def test_selftest_9k_packets_afxdp_to_afxdp(jumbo):
    """xskxceiver "RUN_TO_COMPLETION_9K_PACKETS": 9,000-byte frames from an AF_XDP socket to another, every
    word checked in order. Sender: a multi-buffer AfXdpPort on host a, chains of 2048-byte frames."""
    a, b = jumbo
    n = 300
    with SteeredPort(b.iface, None, [f"udp dport {PORT}"], netns=b.netns, frame_size=2048) as rx, \
            AfXdpPort(a.iface, 0, netns=a.netns, frame_size=2048, multi_buffer=True) as tx:
        frames = [_frame(a, b, i, 9000) for i in range(n)]
        sent = 0
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            if sent < n:
                batch = tx.alloc(min(32, n - sent), size=9000)
                assert set(batch.frame_counts()) == {5}  # 9000 bytes in 2048-byte frames
                for i in range(len(batch)):
                    batch.write_packet(i, frames[sent + i])
                k = tx.transmit(batch)
                tx.free(batch[k:])
                sent += k
            got += receive_packets(rx.port, n, timeout=0.05)
        got += receive_packets(rx.port, n - len(got), timeout=1.0)
        assert len(got) == n
        assert got == frames  # in order, whole
        tx.check(app=0)


def _raw_chain(port: AfXdpPort, data: bytes, nframes: int, bad: dict | None = None) -> int:
    """Put one packet of `nframes` descriptors straight on the TX ring, as a buggy or hostile program would
    (AfXdpPort.transmit refuses such chains before the kernel sees them); bad: {index: (field, value)}
    spoils one descriptor. Returns the number of descriptors written."""
    room = multibuf.tx_room(port.umem.frame_size)
    batch = port._take_frames(nframes, 0)
    d = batch.descs.copy()
    d["len"] = room
    d["len"][-1] = len(data) - (nframes - 1) * room
    assert 0 < d["len"][-1] <= room
    for j in range(nframes):
        a = int(d["addr"][j])
        port.umem.array[a : a + int(d["len"][j])] = np.frombuffer(data, np.uint8, int(d["len"][j]), j * room)
    d["options"] = XDP_PKT_CONTD
    d["options"][-1] = 0
    for j, (field, value) in (bad or {}).items():
        d[field][j] = value
    port.umem.move(batch.descs["addr"], APP, TX, "raw chain")
    port.reap()
    idx, k = port._tx.reserve(nframes)
    assert k == nframes
    port._tx.write_slots(idx, d)
    port._tx.submit(nframes)
    for _ in range(nframes + 1):  # the kernel stops a sendto() at a bad descriptor: kick until all are taken
        port.xsk.kick_tx()
        if port._tx.outstanding() == 0:
            break
        time.sleep(0.01)
    assert port._tx.outstanding() == 0
    # The completion ring gives every descriptor back, valid or not, with the address as written: reap
    # them here (the port's own reap would refuse an address outside its UMEM), the spoiled one as the
    # frame it stood for.
    deadline = time.monotonic() + 2
    while port._comp.pending() < nframes and time.monotonic() < deadline:
        time.sleep(0.01)
    cidx, n = port._comp.peek(nframes)
    assert n == nframes
    done = port._comp.read_slots(cidx, n)
    port._comp.release(n)
    assert sorted(done.tolist()) == sorted(d["addr"].tolist())
    port.umem.give_free(batch.descs["addr"], TX, "raw chain completed")
    return nframes


@pytest.fixture
def kernel_rx(jumbo):
    sock = udp_socket(jumbo[1].netns, (jumbo[1].ipv4, PORT), timeout=0.5)
    yield sock
    sock.close()


def _kernel_verdict(port, sock, data_len: int | None) -> None:
    """The packet arrived whole (data_len) or not at all (None)."""
    if data_len is None:
        with pytest.raises(socket.timeout):
            sock.recv(70000)
    else:
        assert len(sock.recv(70000)) == data_len - 42


def test_selftest_too_many_frags(jumbo, kernel_rx):
    """xskxceiver "TOO_MANY_FRAGS": a packet of the most frames the kernel sends (MAX_SKB_FRAGS + 1) goes
    out; one frame more and the kernel drops the whole packet and counts every descriptor invalid; the
    next packet goes out as usual. kbypass's own transmit refuses the long one with nothing sent."""
    a, b = jumbo
    limit = multibuf.tx_frame_limit()
    assert limit == multibuf.MAX_SKB_FRAGS + 1  # the compile-time constant: this kernel's verdicts below agree
    sock = kernel_rx
    with AfXdpPort(a.iface, 0, netns=a.netns, frame_size=2048, multi_buffer=True) as tx:
        room = multibuf.tx_room(2048)
        longest = limit * room - 100
        _raw_chain(tx, _frame(a, b, 1, longest), limit)
        _kernel_verdict(tx, sock, longest)
        before = tx.xsk.statistics()["tx_invalid_descs"]
        _raw_chain(tx, _frame(a, b, 2, longest + room), limit + 1)
        _kernel_verdict(tx, sock, None)
        assert tx.xsk.statistics()["tx_invalid_descs"] - before == limit + 1
        # kbypass never hands it to the kernel: alloc refuses to build one (a UsageError); transmit leaves one
        # with the caller (nothing on the ring, every frame still the caller's) and counts it
        with pytest.raises(UsageError, match="more frames than the kernel sends|more than the kernel sends"):
            tx.alloc(1, size=longest + room)
        chain, extra = tx.alloc(1, size=longest), tx.alloc(1, size=100)
        merged = chain[0:1]
        merged.tails = np.concatenate((chain.tails, extra.descs))  # one packet of limit + 1 frames
        merged.ntails = np.array([limit], dtype=np.uint32)
        assert tx.transmit(merged) == 0 and tx.stats["tx_too_long"] == 1
        assert tx._tx.outstanding() == 0
        tx.free(merged)
        ok = tx.alloc(1, size=3000)
        ok.fill(_frame(a, b, 3, 3000))
        assert tx.transmit(ok) == 1
        _kernel_verdict(tx, sock, 3000)
        time.sleep(0.1)
        tx.check(app=0)


@pytest.mark.parametrize("case,bad", [
    ("zero length in the middle", {1: ("len", 0)}),
    ("length past the frame", {1: ("len", 2049)}),
    ("address outside the UMEM", {2: ("addr", 1 << 40)}),
])
def test_selftest_invalid_multi_buffer_descriptors(jumbo, kernel_rx, case, bad):
    """xskxceiver "INVALID_DESC_MULTI_BUFF": a chain with one bad descriptor is dropped whole by the kernel
    (counted in tx_invalid_descs), the packet after it arrives; kbypass's transmit refuses the same chain
    before the kernel sees it."""
    a, b = jumbo
    sock = kernel_rx
    with AfXdpPort(a.iface, 0, netns=a.netns, frame_size=2048, multi_buffer=True) as tx:
        before = tx.xsk.statistics()["tx_invalid_descs"]
        size = 4 * 2048 - 100
        _raw_chain(tx, _frame(a, b, 1, size), 4, bad)
        _kernel_verdict(tx, sock, None)
        assert tx.xsk.statistics()["tx_invalid_descs"] > before
        chain = tx.alloc(1, size=size)
        chain.fill(_frame(a, b, 2, size))
        j, (field, value) = next(iter(bad.items()))
        good_value = chain.tails[field][j - 1]
        chain.tails[field][j - 1] = value  # the same spoiled descriptor through the API
        with pytest.raises(UsageError):
            tx.transmit(chain)
        assert tx._tx.outstanding() == 0
        chain.tails[field][j - 1] = good_value
        tx.free(chain)  # refused: every frame stayed the caller's
        good = tx.alloc(1, size=size)
        good.fill(_frame(a, b, 3, size))
        assert tx.transmit(good) == 1
        _kernel_verdict(tx, sock, size)
        time.sleep(0.1)
        tx.check(app=0)


def test_share_queue_sinks_take_jumbo_datagrams_of_their_own_flows(jumbo):
    """--share-queue at a jumbo MTU: the queue's pool is bound with multi-buffer (its anchor with XDP_USE_SG,
    which its members take from the shared UMEM), so two sinks sharing queue 0 each receive their own flow's
    9,000 and 60,000-byte datagrams whole and in sequence (before: refused)."""
    a, b = jumbo
    n = 10
    send = ("import socket, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
            "from tests.netns.test_jumbo import payload, SIZES\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"burst = [(payload(i, SIZES[i % 2]), p) for p in ({PORT}, {PORT + 1}) for i in range({n})]\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            f"for d, p in burst: s.sendto(d, ({b.ipv4!r}, p))\n"
            "print('sent', flush=True)\n")
    sender = subprocess.Popen(["taskset", "-c", "0", "ip", "netns", "exec", a.netns, sys.executable, "-c", send],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sinks = []
    try:
        assert sender.stdout.readline() == "ready\n"
        for port in (PORT, PORT + 1):
            sinks.append(_tool("sink", "--host", "b", "--rule", f"udp dport {port}", "--check-seq", "--json",
                               "--count", str(n), "--duration", "15", "--queue", "0", "--share-queue"))
        sender.stdin.write("go\n")
        sender.stdin.flush()
        assert sender.stdout.readline() == "sent\n"
        assert sender.wait(30) == 0
        for sink in sinks:
            summary = _finish(sink)
            assert summary["packets"] == n and summary["seq"]["lost"] == 0, summary
            assert summary["bytes"] == sum(SIZES[i % 2] + 42 for i in range(n))
    finally:
        for p in [sender, *sinks]:
            if p.poll() is None:
                p.kill()
                p.wait()
