"""Jumbo frames from the command line (issue 17): `testbed up --mtu` on a testbed that is up, `gen --size`
up to the MTU through multi-buffer AF_XDP, and the refusals: a size above the MTU, an MTU a non-frags XDP
program blocks, a non-frags program already on the interface. Each refusal is one line naming the fix,
exit 2, and leaves nothing of kbypass's behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from kbypass.apps import pingpong as pp
from kbypass.endpoint.xdp import XdpEndpoint
from kbypass.host import testbed
from tests.kb import (
    kbypass,
    kbypass_for,
    kbypass_here,
    one_real,
    udp_bound,
    wait_until,
    xdp_attached,
)

pytestmark = pytest.mark.netns

NO_FRAGS_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int no_frags(struct xdp_md *ctx) { return XDP_PASS; }
char _l[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def no_frags_object(tmp_path_factory):
    """An XDP program in section "xdp" (no frags support), as another tool would attach."""
    d = tmp_path_factory.mktemp("nofrags")
    (d / "nofrags.c").write_text(NO_FRAGS_C)
    out = d / "nofrags.o"
    subprocess.run(["clang", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", str(d / "nofrags.c"),
                    "-o", str(out)], check=True)
    return out


def _mtu(host) -> int:
    return testbed.status(testbed.default_prefix())[testbed.HOSTS.index(host.name)].mtu


def _set_testbed_mtu(mtu: int, real: bool = False):
    """`kbypass testbed up --mtu MTU --json`, in this process unless `real` (kbypass_here, kbypass)."""
    return kbypass_for(real)("testbed", "up", "--mtu", str(mtu), "--json")


def test_testbed_up_changes_the_mtu_in_place_and_names_a_non_frags_program(testbed_hosts, no_frags_object):
    a, b = testbed_hosts
    ip_b = ["ip", "-n", b.netns, "link", "set", "dev", b.iface]
    subprocess.run(ip_b + ["xdp", "obj", str(no_frags_object), "sec", "xdp"], check=True)
    try:
        r = _set_testbed_mtu(9000, real=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "'no_frags'" in r.stderr and f"ip -n {b.netns} link set dev {b.iface} xdp off" in r.stderr
        assert "not frags-aware" in r.stderr and "the MTU is unchanged" in r.stderr
        assert (_mtu(a), _mtu(b)) == (a.mtu, b.mtu)  # both ends back where they were
    finally:
        subprocess.run(ip_b + ["xdp", "off"], check=True)
    try:
        r = _set_testbed_mtu(9000)
        assert r.returncode == 0, r.stderr
        assert {h["mtu"] for h in json.loads(r.stdout)["hosts"]} == {9000} == {_mtu(a), _mtu(b)}
    finally:
        assert _set_testbed_mtu(a.mtu).returncode == 0


def test_testbed_up_without_mtu_keeps_the_mtu_and_a_change_is_said(testbed_hosts):
    """`testbed up` with no --mtu on a jumbo testbed reset it to 1500 (the default meant "change in place").
    Now no --mtu keeps the MTU; --mtu changes it and says so on stderr."""
    a, b = testbed_hosts
    try:
        r = _set_testbed_mtu(9000)
        assert r.returncode == 0 and f"changed from {a.mtu} to 9000" in r.stderr, r.stderr
        r = kbypass_here("testbed", "up", "--json")
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert {h["mtu"] for h in json.loads(r.stdout)["hosts"]} == {9000} == {_mtu(a), _mtu(b)}
        r = _set_testbed_mtu(9000)  # the same MTU: nothing to say
        assert r.returncode == 0 and "changed" not in r.stderr
    finally:
        r = _set_testbed_mtu(a.mtu)
        assert r.returncode == 0 and f"changed from 9000 to {a.mtu}" in r.stderr


@pytest.fixture
def mtu_9000(testbed_hosts):
    a, b = testbed_hosts
    assert _set_testbed_mtu(9000).returncode == 0
    try:
        yield a, b
    finally:
        _set_testbed_mtu(a.mtu)


def test_gen_sends_jumbo_frames_the_sink_counts_in_sequence(mtu_9000):
    a, b = mtu_9000
    sink = subprocess.Popen([sys.executable, "-m", "kbypass", "sink", "--host", "b", "--check-seq", "--json",
                             "--count", "3000", "--duration", "20", "--idle-timeout", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "receiving on" in sink.stderr.readline()
        gen = kbypass("gen", "--host", "a", "--backend", "afxdp", "--size", "9014", "--count", "3000", "--rate", "20k", "--json",
                     check=True)  # a rate the sink keeps up with on a busy machine: loss here would be ours
        sent = json.loads(gen.stdout)
        out, err = sink.communicate(timeout=30)
    finally:
        sink.kill()
        sink.wait()
    assert sent["packets"] == 3000 and sent["bytes"] == 3000 * 9014
    summary = json.loads(out)
    assert summary["packets"] == 3000 and summary["bytes"] == 3000 * 9014, err
    assert summary["seq"]["received"] == 3000 and summary["seq"]["lost"] == 0


@pytest.mark.parametrize("real, backend, size, words", one_real([
    ("afxdp", 9015, "MTU of"),
    ("live", 9014, "live engine"),  # live-frames mode takes one page per frame: its limit, said
    ("packet_mmap", 9014, "PACKET_MMAP TX slot"),
]))
def test_gen_size_above_what_the_backend_sends_is_one_line(mtu_9000, real, backend, size, words):
    a, b = mtu_9000
    r = kbypass_for(real)("gen", "--host", "a", "--backend", backend, "--size", str(size), "--count", "1")
    assert r.returncode == 2 and r.stderr.startswith("kbypass: error: --size") and r.stderr.count("\n") == 1
    assert words in r.stderr, r.stderr
    assert not xdp_attached(a) and not xdp_attached(b)


def test_a_non_frags_program_already_attached_is_named_and_left_alone(testbed_hosts, no_frags_object):
    a, b = testbed_hosts
    ip_b = ["ip", "-n", b.netns, "link", "set", "dev", b.iface]
    subprocess.run(ip_b + ["xdp", "obj", str(no_frags_object), "sec", "xdp"], check=True)
    try:
        r = kbypass("sink", "--host", "b", "--no-cp", "--count", "1", "--duration", "1")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "'no_frags'" in r.stderr and "xdp off" in r.stderr
        show = subprocess.run(["ip", "-n", b.netns, "link", "show", b.iface], capture_output=True, text=True)
        assert "prog/xdp" in show.stdout  # theirs stays; nothing of kbypass's was attached or left
    finally:
        subprocess.run(ip_b + ["xdp", "off"], check=True)
    assert not xdp_attached(b)


@pytest.fixture
def mtu_65535(testbed_hosts):
    a, b = testbed_hosts
    assert _set_testbed_mtu(testbed.FRAGS_MAX_MTU).returncode == 0
    try:
        yield a, b
    finally:
        _set_testbed_mtu(a.mtu)


@pytest.mark.skipif(shutil.which("sockperf") is None, reason="sockperf is not installed")
def test_pingpong_jumbo_messages_against_sockperf(mtu_65535):
    """kbypass pingpong client with 8,000 and 60,000-byte messages against sockperf's server, and sockperf's
    client with 60,000-byte messages against kbypass's server: every message answered, on both lanes (the C
    lane by default: it gathers and sends chains)."""
    a, b = mtu_65535
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, "sockperf", "server", "-i", b.ipv4, "-p", "11122"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: udp_bound(b.netns, 11122), "sockperf server bound to port 11122", proc=server)
        for lane in ("c", "python"):
            for size in (9000, 60000):
                r = kbypass("pingpong", "client", "--host", "a", "--dst", f"{b.ipv4}:11122", "--count", "300",
                            "--warmup", "10", "--size", str(size), "--lane", lane, "--json", timeout=60)
                assert r.returncode == 0, r.stderr
                s = json.loads(r.stdout)
                assert (s["samples"], s["lost"], s["lane"]) == (300, 0, lane), s
    finally:
        server.terminate()
        server.wait(timeout=10)
    ours = subprocess.Popen([sys.executable, "-m", "kbypass", "pingpong", "server", "--host", "b", "--port", "11123",
                             "--duration", "20", "--idle-timeout", "10", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: xdp_attached(b), "the kbypass server steering", proc=ours)
        time.sleep(0.3)
        sp = subprocess.run(["ip", "netns", "exec", a.netns, "sockperf", "ping-pong", "-i", b.ipv4, "-p", "11123",
                             "-t", "1", "-m", "60000"], capture_output=True, text=True, timeout=30)
        ours.terminate()
        out, err = ours.communicate(timeout=30)
    finally:
        ours.kill()
        ours.wait()
    assert sp.returncode == 0 and "# dropped messages = 0" in sp.stdout, sp.stdout + sp.stderr + err
    summary = json.loads(out)
    assert summary["received"] == summary["answered"] > 10, summary


@pytest.mark.skipif(shutil.which("sockperf") is None, reason="sockperf is not installed")
def test_the_c_lane_carries_jumbo_messages_to_sockperf_and_back_byte_for_byte(mtu_65535):
    """The endpoint on the C lane (chains sent by kb_lane_send, received by kb_lane_rx_copy) against the
    kernel's sockperf server: every 9,000 and 60,000-byte message comes back with every byte as sent (the
    client flag cleared, as sockperf answers)."""
    a, b = mtu_65535
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, "sockperf", "server", "-i", b.ipv4, "-p", "11125"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ep = None
    try:
        wait_until(lambda: udp_bound(b.netns, 11125), "sockperf server bound to port 11125", proc=server)
        ep = XdpEndpoint(a.iface, a.ipv4, 0, netns=a.netns, frame_size=4096, native=True)
        assert ep.native and ep.multi_buffer
        for seq in range(1, 41):
            size = (9000, 60000)[seq % 2]
            body = (np.arange(size - pp.HEADER_LEN, dtype=np.uint32) * 13 + seq).astype(np.uint8).tobytes()
            msg = pp.HEADER.pack(seq, pp.FLAG_CLIENT | pp.FLAG_PONG, size) + body
            ep.sendto(msg, (b.ipv4, 11125))
            data, peer = ep.recvfrom(timeout=5)
            assert peer == (b.ipv4, 11125) and data == pp.answer(msg), (seq, len(data))
        assert ep.counters["tx_failed"] == 0 and ep.counters["rx_datagrams"] == 40
    finally:
        if ep is not None:
            ep.close()
        server.terminate()
        server.wait(timeout=10)


def test_endpoint_size_above_the_mtu_is_one_line(mtu_9000):
    a, b = mtu_9000
    r = kbypass_here("pingpong", "client", "--host", "a", "--dst", f"{b.ipv4}:11124", "--count", "1", "--size", "9000")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exceeds the MTU (9000" in r.stderr, r.stderr
