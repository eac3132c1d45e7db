"""`kbypass xfer` between real processes on the testbed: two transfers on one link share it (40-60% each
over 10 s, the model-based controller's fairness on a real path), datagrams sized by a jumbo MTU (3506:
what one 4 KiB UMEM frame carries on veth; 9000 and 65535: chains of frames over multi-buffer AF_XDP, with
and without loss), and an MTU larger than one frame refused with the fix on a port that does not chain."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from tests.kb import kbypass_here, xdp_attached

pytestmark = pytest.mark.netns
PORT = 7300


def recv(port: int, *extra: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "kbypass", "xfer", "recv", "--host", "b", "-p", str(port), "--json",
                          "--idle-timeout", "60", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    assert "listening" in line, line + p.stderr.read()
    return p


def send(b, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kbypass", "xfer", "send", "--host", "a", "--dst",
                             f"{b.ipv4}:{port}", "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*procs) -> list[dict]:
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=120)
            assert p.returncode == 0, e
            out.append(json.loads(o))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def set_mtu(hosts, mtu: int) -> None:
    for h in hosts:
        subprocess.run(["ip", "-n", h.netns, "link", "set", "dev", h.iface, "mtu", str(mtu)], check=True)


@pytest.mark.slow
def test_two_transfers_on_one_link_each_get_40_to_60_percent_over_10_s(testbed_hosts) -> None:
    a, b = testbed_hosts
    # one queue each (two AF_XDP programs cannot both take every queue); on veth the sender's TX queue is
    # the receiver's RX queue, so each flow stays on its own
    r0, r1 = recv(PORT, "--queue", "0"), recv(PORT + 1, "--queue", "1")
    s0, s1 = send(b, PORT, "--queue", "0", "-t", "10"), send(b, PORT + 1, "--queue", "1", "-t", "10")
    got0, got1, sent0, sent1 = finish(r0, r1, s0, s1)
    assert got0["sha256"] == sent0["sha256"] and got1["sha256"] == sent1["sha256"]
    assert sent0["congestion"] == sent1["congestion"] == "bbr"
    total = got0["bytes"] + got1["bytes"]
    shares = [got0["bytes"] / total, got1["bytes"] / total]
    assert all(0.4 <= s <= 0.6 for s in shares), (shares, got0, got1)
    assert not xdp_attached(a) and not xdp_attached(b)


# One of each kind in the fast suite: one frame a datagram (3506), the longest chains (65535) with and without
# loss in the C lane, the Python lane's chains under loss; the C lane at 9000 (shorter chains, the same path)
# runs with --slow.
@pytest.mark.parametrize("mtu,loss,lane", [(3506, 0, "c"), pytest.param(9000, 0, "c", marks=pytest.mark.slow),
                                           pytest.param(9000, 0.01, "c", marks=pytest.mark.slow), (9000, 0.01, "python"),
                                           (65535, 0, "c"), (65535, 0.05, "c")])
def test_datagrams_follow_a_jumbo_mtu(testbed_hosts, tmp_path, mtu, loss, lane) -> None:
    """Datagrams as large as the MTU, past one UMEM frame as chains (multi-buffer AF_XDP), the file intact
    (the receiver's written copy hashed here) with XDP loss on both hosts too, in the C lane and in the
    Python one (the reference codec: chains written in Python, every arrival through the general path)."""
    a, b = testbed_hosts
    out = tmp_path / "out.bin"
    lossy = ("--loss", str(loss), "--lane", lane) if loss else ("--lane", lane)
    set_mtu((a, b), mtu)
    try:
        r = recv(PORT + 2, "-w", str(out), *lossy)
        got, sent = finish(r, send(b, PORT + 2, "--size", "20M", *lossy))
    finally:
        set_mtu((a, b), 1500)
    assert got["sha256"] == sent["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert got["bytes"] == 20 << 20
    assert sent["mtu"] == mtu and sent["datagram"] == mtu - 28  # IPv4 and UDP headers counted
    # the datagrams were that large: 20 MiB in segments of datagram - 46 bytes, plus retransmissions (loss-free
    # too: a scheduling stall on a loaded machine fires a spurious timeout now and then, CI saw 404 of 320 + 50);
    # datagrams of a smaller size would number several times this
    assert sent["datagrams_sent"] < (20 << 20) / (mtu - 28 - 46) * (1.3 + 3 * loss) + 50
    if loss:
        # at 65535 a 20 MiB file is only ~320 datagrams: at 1% loss one run in 25 lost none of them (CI saw it),
        # so that MTU runs at 5%, where a run that loses none is one in ten million
        assert sent["retransmits"] > 0 and got["loss_dropped"] > 0
    assert not xdp_attached(a) and not xdp_attached(b)


def test_an_mtu_above_one_frame_is_refused_and_nothing_stays(testbed_hosts) -> None:
    a, b = testbed_hosts
    set_mtu((a, b), 9000)  # no XDP program attached: the veth takes it
    try:
        p = subprocess.run([sys.executable, "-m", "kbypass", "xfer", "recv", "--host", "b", "-p", str(PORT + 3),
                            "--backend", "packet_mmap", "--idle-timeout", "1"], capture_output=True, text=True,
                           timeout=60)
        above = kbypass_here("xfer", "recv", "--host", "b", "-p", str(PORT + 3), "--mtu", "9600", "--idle-timeout", "1")
    finally:
        set_mtu((a, b), 1500)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert err[0].startswith("kbypass: error: MTU 9000") and "--mtu 4034" in err[0], err
    assert above.returncode == 2 and "above" in above.stderr and "Traceback" not in above.stderr
    assert not xdp_attached(b)
