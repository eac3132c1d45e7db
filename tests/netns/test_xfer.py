"""kbypass xfer end to end: the reliable transport over AF_XDP on the testbed, both encapsulations, with
loss injected in userspace (seeded FaultyLink) and by the steering program (sample-drop); what arrives
must hash to what was sent. Bad input: oversized messages, send after close, garbage from the wire.

The in-process tests share one steered AF_XDP port per host (a class fixture, closed before the CLI tests
start their own) and make a fresh pair of endpoints over it for each transfer; sample-drop rules are
added in front of the redirect rules for one test and removed after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import pytest

from kbypass import backend, netns
from kbypass.errors import UsageError
from kbypass.proto.transport import LocalProtocolError
from kbypass.xfer import EthEncap, TransportEndpoint, UdpEncap
from kbypass.xfer.endpoint import default_config
from tests.kb import PURE_PYTHON, kbypass, kbypass_here

pytestmark = pytest.mark.netns
PORT, CPORT = 7000, 7001  # server (host b) and client (host a) UDP ports
ETHER = "ether 0x88b5"


@pytest.fixture(scope="class")
def ports(testbed_hosts):
    from kbypass.port import open_port

    a, b = testbed_hosts
    pa = open_port("afxdp", a.iface, netns=a.netns, rules=[f"udp dst {a.ipv4} dport {CPORT}", ETHER])
    try:
        pb = open_port("afxdp", b.iface, netns=b.netns, rules=[f"udp dst {b.ipv4} dport {PORT}", ETHER])
    except BaseException:
        pa.close()
        raise
    try:
        yield pa, pb
    finally:
        pa.close()
        pb.close()


def pair(hosts, ports, encap: str, *, faults_rx=None, config=None,
         lane=None) -> tuple[TransportEndpoint, TransportEndpoint]:
    """(client on a, server on b) over the shared ports."""
    (a, b), (pa, pb) = hosts, ports
    if encap == "udp":
        es, ec = UdpEncap(b.mac, b.ipv4, PORT, b.mtu), UdpEncap(a.mac, a.ipv4, CPORT, a.mtu)
        ec.set_peer(b.ipv4, PORT, b.mac)
    else:
        es, ec = EthEncap(b.mac, mtu=b.mtu), EthEncap(a.mac, mtu=a.mtu)
        ec.set_peer(b.mac)
    kw = dict(faults_rx=faults_rx, config=config, own_port=False, codec=backend.codec(lane))
    return TransportEndpoint(pa, ec, seed=12, **kw), TransportEndpoint(pb, es, seed=11, **kw)


@contextlib.contextmanager
def xdp_loss(port, match: str, prob: float):
    """A sample-drop rule in front of the port's redirect rules; yields a function reading its drops."""
    steering = port.steering
    rid = steering.add(f"{match} sample prob {prob}", index=0)
    try:
        yield lambda: steering.counters()[rid][0]
    finally:
        steering.remove(rid)


def serve(ep: TransportEndpoint, result: dict) -> threading.Thread:
    """Accept one sender on `ep` in a thread; result gets bytes, sha256 and the endpoint's stats."""

    def run() -> None:
        try:
            ep.accept(timeout=15)
            h, n = hashlib.sha256(), 0
            while chunk := ep.recv(timeout=20):
                h.update(chunk)
                n += len(chunk)
            ep.close(timeout=10)
            result.update(bytes=n, sha256=h.hexdigest(), stats=ep.stats, clean=ep.closed_cleanly)
        except BaseException as e:  # reported by the test, not lost in the thread
            result["error"] = e
            ep.abort()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def transfer(cli: TransportEndpoint, srv: TransportEndpoint, data: bytes, during=None) -> dict:
    result: dict = {}
    t = serve(srv, result)
    try:
        cli.connect(timeout=10)
        if during is not None:
            during()
        cli.send(data)
        cli.close(timeout=20)
    except BaseException:
        cli.abort()
        raise
    finally:
        t.join(40)
    assert not t.is_alive(), "receiver did not finish"
    if "error" in result:
        raise result["error"]
    return result


class TestOverSharedPorts:
    """Transfers over one steered port per host (see the module doc)."""

    @pytest.mark.parametrize("encap", ["udp", "eth"])
    def test_exact_delivery_under_loss(self, testbed_hosts, ports, encap: str) -> None:
        """3% XDP sample-drop on both hosts, plus seeded userspace loss, reordering, duplication and
        corruption on both receive paths: the bytes arrive exactly, corruption is caught by the CRC."""
        a, b = testbed_hosts
        data = random.Random(encap).randbytes(1_500_000)
        faults = {"loss": 0.03, "reorder": 0.05, "duplicate": 0.02, "corrupt": 0.01}
        cli, srv = pair(testbed_hosts, ports, encap, faults_rx=faults)
        match_a = ETHER if encap == "eth" else f"udp dst {a.ipv4} dport {CPORT}"
        match_b = ETHER if encap == "eth" else f"udp dst {b.ipv4} dport {PORT}"
        started = time.monotonic()
        with xdp_loss(ports[0], match_a, 0.03) as dropped_a, xdp_loss(ports[1], match_b, 0.03) as dropped_b:
            got = transfer(cli, srv, data)
            kernel_drops = (dropped_a(), dropped_b())
        assert got["bytes"] == len(data)
        assert got["sha256"] == hashlib.sha256(data).hexdigest()
        assert got["clean"] and cli.closed_cleanly
        st = cli.stats
        assert st["bytes_acked"] == len(data)
        assert st["retransmits"] > 0  # loss really happened and was repaired
        assert kernel_drops[1] > 0  # the steering program dropped data frames on their way into b
        assert got["stats"]["faults_rx"]["lost"] > 0  # ~1000 data datagrams at 3%: never none
        corrupted = got["stats"]["faults_rx"]["corrupted"] + st["faults_rx"]["corrupted"]
        bad_crc = got["stats"]["drops"].get("bad_crc", 0) + st["drops"].get("bad_crc", 0)
        # every corrupted datagram is caught by the CRC and counted (a duplicated one twice)
        assert corrupted > 0 and bad_crc >= corrupted
        assert time.monotonic() - started < 30


    @pytest.mark.parametrize("lane", ["c", "python"])
    @pytest.mark.parametrize("encap", ["udp", "eth"])
    def test_exact_delivery_under_kernel_loss_in_each_lane(self, testbed_hosts, ports, encap: str, lane: str) -> None:
        """2% XDP sample-drop into b only (no userspace link, so the C lane takes b's in-order arrivals):
        the bytes arrive exactly in either lane. In the C lane a good share of the datagrams went through
        C (about a third here: while a hole waits for its retransmission, about one round trip per loss,
        every arrival takes the Python path) and the Python path repaired the holes."""
        if lane == "c" and PURE_PYTHON:
            pytest.skip("KBYPASS_PURE_PYTHON=1 switches the C modules off")
        a, b = testbed_hosts
        data = random.Random(encap + lane).randbytes(3_000_000)
        cli, srv = pair(testbed_hosts, ports, encap, lane=lane)
        match_b = ETHER if encap == "eth" else f"udp dst {b.ipv4} dport {PORT}"
        with xdp_loss(ports[1], match_b, 0.02) as dropped_b:
            got = transfer(cli, srv, data)
            dropped = dropped_b()
        assert got["bytes"] == len(data) and got["sha256"] == hashlib.sha256(data).hexdigest()
        assert got["clean"] and cli.closed_cleanly and cli.stats["bytes_acked"] == len(data)
        assert dropped > 0 and cli.stats["retransmits"] > 0
        in_c = srv.counters["rx_c"]
        if lane == "c":
            assert in_c > len(data) // cli.conn.mss // 10
        else:
            assert in_c == 0
        # the receiver's ACKs, one at a time, through the port's C message lane (datapath._small_lane); the
        # lane's frames went back to the shared port when the endpoint closed
        assert (srv.counters["tx_lane"] > 0) == (lane == "c")
        assert srv.counters["tx_lane"] <= srv.stats["datagrams_sent"]
        ports[1].check(app=0)

    def test_garbage_from_the_wire_is_counted(self, testbed_hosts, ports) -> None:
        """Raw frames of our EtherType that are not transport datagrams, and UDP datagrams from a stranger:
        each is dropped and counted by reason, and the transfer beside them is exact."""
        a, b = testbed_hosts
        data = random.Random(4).randbytes(300_000)
        a_mac, b_mac = bytes.fromhex(a.mac.replace(":", "")), bytes.fromhex(b.mac.replace(":", ""))

        def garbage() -> None:
            with netns.entered(a.netns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            with s:
                s.bind((a.iface, 0))
                hdr = b_mac + a_mac + b"\x88\xb5"
                s.send(hdr + b"\x01" * 20)  # shorter than any datagram
                s.send(hdr + os.urandom(200))  # random bytes: fails the CRC
                s.send(hdr + b"\x01" + bytes(45))  # version 1, zero CRC
                s.send(b_mac + a_mac + b"\x88\xb6" + bytes(64))  # another EtherType: never reaches us

        cli, srv = pair(testbed_hosts, ports, "eth")
        got = transfer(cli, srv, data, during=garbage)
        assert got["sha256"] == hashlib.sha256(data).hexdigest()
        drops = got["stats"]["drops"]
        assert drops.get("too_short", 0) >= 1 and drops.get("bad_crc", 0) >= 2, drops

        # UDP: a kernel socket in host a sends to the server's port from another port: a stranger
        cli, srv = pair(testbed_hosts, ports, "udp")

        def stranger() -> None:
            with netns.entered(a.netns):
                k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with k:
                for n in (1, 60, 1400):
                    k.sendto(os.urandom(n), (b.ipv4, PORT))

        got = transfer(cli, srv, data, during=stranger)
        assert got["sha256"] == hashlib.sha256(data).hexdigest()
        assert got["stats"]["drops"].get("other_peer", 0) >= 3, got["stats"]["drops"]


    def test_bad_use_is_a_clear_error(self, testbed_hosts, ports) -> None:
        a, b = testbed_hosts
        with pytest.raises(UsageError, match="does not fit the udp encapsulation.*at most 1472"):
            TransportEndpoint.open(iface=a.iface, netns=a.netns, config=default_config(1500))
        with pytest.raises(UsageError, match="addresses the peer by MAC"):
            TransportEndpoint.open(iface=a.iface, netns=a.netns, encap="eth", peer=(b.ipv4, PORT))
        with pytest.raises(UsageError, match="encapsulation 'ip' is unknown"):
            TransportEndpoint.open(iface=a.iface, netns=a.netns, encap="ip")
        cfg = default_config(1472, message_mode=True, max_message_size=4096)
        cli, srv = pair(testbed_hosts, ports, "udp", config=cfg)
        got: list = []

        def run() -> None:
            srv.accept(timeout=10)
            while m := srv.recv(timeout=10):
                got.append(m)
            srv.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            with pytest.raises(UsageError, match="before the connection is up"):
                cli.send(b"early")
            cli.connect(timeout=10)
            with pytest.raises(LocalProtocolError, match="messages must be 1..4096 bytes"):
                cli.send(b"x" * 4097)
            cli.send(b"a" * 4096)
            cli.send(b"b")
            cli.conn.close(time.monotonic())
            with pytest.raises(LocalProtocolError, match="cannot send in state"):
                cli.send(b"after close")
            cli.close(timeout=10)
            with pytest.raises(UsageError, match="closed endpoint"):
                cli.send(b"after close")
        finally:
            cli.abort()
            t.join(20)
        assert got == [b"a" * 4096, b"b"]  # message boundaries kept, nothing acknowledged was lost


def test_cli_send_recv_with_loss(testbed_hosts, tmp_path) -> None:
    """The real command in both hosts (with their own steering programs), XDP loss at the receiver and
    seeded userspace loss at the sender."""
    a, b = testbed_hosts
    out = tmp_path / "out.bin"
    recv = subprocess.Popen(
        [sys.executable, "-m", "kbypass", "xfer", "recv", "--host", "b", "--port", str(PORT), "--encap", "udp",
         "-w", str(out), "--loss", "0.02", "--faults", "reorder=0.05,duplicate=0.02", "--json",
         "--idle-timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = recv.stderr.readline()
        assert "listening" in line, line + recv.stderr.read()
        sent = kbypass("xfer", "send", "--host", "a", "--dst", f"{b.ipv4}:{PORT}", "--encap", "udp", "--size",
                       "1M", "--loss", "0.02", "--loss-at", "user", "--seed", "5", "--json", timeout=60)
        assert sent.returncode == 0, sent.stderr
        rout, rerr = recv.communicate(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    assert recv.returncode == 0, rerr
    s, r = json.loads(sent.stdout), json.loads(rout)
    for key in ("bytes", "seconds", "goodput_bps", "retransmits", "sha256"):
        assert key in s and key in r
    assert s["bytes"] == r["bytes"] == 1 << 20
    assert s["sha256"] == r["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert s["goodput_bps"] > 0 and s["retransmits"] > 0
    # what the injected loss dropped is counted where it happened (before: the receiver said "drops": {})
    assert r["drops"]["loss_xdp"] > 0 and r["loss_dropped"] == r["drops"]["loss_xdp"], r
    assert s["loss_dropped"] == s["drops"].get("loss_user", 0) and s["loss_applies_to"].endswith("receiver's ACKs")


def test_cli_errors_name_the_fix(testbed_hosts) -> None:
    r = kbypass("xfer", "send", "--host", "a", "--size", "1K")  # a real process: the exit status
    assert r.returncode == 2 and "--dst IP:PORT" in r.stderr
    r = kbypass_here("xfer", "send", "--host", "a", "--dst", "10.77.0.2:7000", "--size", "lots")
    assert r.returncode == 2 and "--size 'lots'" in r.stderr
    r = kbypass_here("xfer", "send", "--host", "a", "--dst", "10.77.0.2:7000", "--size", "1K", "--faults", "loss=2x")
    assert r.returncode == 2 and "--faults" in r.stderr
    r = kbypass_here("xfer", "send", "--host", "a", "--encap", "eth", "--dst-mac", "zz", "--size", "1K")
    assert r.returncode == 2 and "is not a MAC address" in r.stderr
    # nobody listening: the handshake times out with one line naming what to check, no traceback
    r = kbypass("xfer", "send", "--host", "a", "--dst", "10.77.0.2:7999", "--size", "1K", "--idle-timeout", "1")
    assert r.returncode == 2 and "while connecting" in r.stderr and "is 'kbypass xfer recv' running" in r.stderr
    assert "Traceback" not in r.stderr
