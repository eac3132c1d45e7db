"""build/xdp_rxdrop (csrc/tools/xdp_rxdrop.c), the C limit row of `kbypass bench rx`: it builds, receives
exactly what was sent behind either XDP program, and leaves nothing attached."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kbypass.bench import kit as benchkit
from kbypass.bench import rxdrop
from kbypass.gen.live import LiveGenerator
from kbypass.gen.template import udp_template
from kbypass.port.afxdp import AfXdpPort
from kbypass.steer.steering import Steering

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
SLICES, SLICE = 5, 4000  # each slice fits the 8192-slot RX ring, so none is dropped however busy the CPU


@pytest.fixture(scope="module")
def binary():
    src = ROOT / "csrc/tools/xdp_rxdrop.c"
    subprocess.run(["make", "-s", "-C", str(ROOT), "tools"], check=True)
    assert rxdrop.BINARY.is_file() and rxdrop.BINARY.stat().st_mtime >= src.stat().st_mtime
    return rxdrop.BINARY


def _send(a, b, n_slices=SLICES):
    """n_slices x SLICE frames to host b's queue 0 (sent from CPU 0: veth hands a frame to the peer's queue
    of the sending CPU), a pause after each for the receiver to drain."""
    frame = udp_template(a.mac, b.mac, a.ipv4, 9, b.ipv4, benchkit.PORT, 64)
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        with LiveGenerator(a.iface, frame, netns_name=a.netns) as gen:
            for _ in range(n_slices):
                assert gen.run(count=SLICE).packets == SLICE
                time.sleep(0.2)
    finally:
        os.sched_setaffinity(0, home)


def _start(binary, b, program):
    for _ in range(20):  # the kernel releases a closed socket's hold on the queue a little later (EBUSY)
        p = subprocess.Popen([str(binary), "--iface", b.iface, "--netns", b.netns, "--queue", "0", "--program",
                              program], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = p.stderr.readline()  # "receiving on ..." once the socket is bound (or an error, and the end)
        if "receiving on" in line:
            return p
        rest = p.stderr.read()
        p.wait()
        assert "busy" in line, line + rest
        time.sleep(0.1)
    raise AssertionError(line + rest)


def _stop(p, sig=signal.SIGINT) -> dict:
    p.send_signal(sig)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    return json.loads(out)


def _xdp_attached(b) -> bool:
    out = subprocess.run(["ip", "-n", b.netns, "-d", "link", "show", b.iface], capture_output=True, text=True,
                         check=True).stdout
    return "prog/xdp" in out


def test_receives_exactly_what_the_steering_program_redirects(testbed_hosts, binary):
    a, b = testbed_hosts
    with Steering(b.iface, netns=b.netns) as steering:  # attached by the with
        rule = steering.add(f"udp dst {b.ipv4} dport {benchkit.PORT}")
        p = _start(binary, b, "attached")
        try:
            _send(a, b)
        finally:
            got = _stop(p)
        assert got["packets"] == SLICES * SLICE == steering.counters()[rule][0]
        assert got["bytes"] == 64 * got["packets"] and got["program"] == "attached"


def test_libxdps_bare_program_receives_the_burst_and_goes_with_the_process(testbed_hosts, binary):
    a, b = testbed_hosts
    p = _start(binary, b, "libxdp")
    try:
        assert _xdp_attached(b)
        _send(a, b, 2)
    finally:
        got = _stop(p)
    # libxdp's program takes every frame of the queue: the burst, and at most a little of the kernel's chatter
    assert 2 * SLICE <= got["packets"] <= 2 * SLICE + 8
    assert not _xdp_attached(b)  # libxdp detached the program it loaded


@pytest.mark.parametrize("args, says", [
    (["--program", "bpfilter"], "--program is libxdp or attached"),
    (["--ring-size", "1000"], "power of two"),
    (["--ring-size", str(1 << 33)], "power of two up to 2^30"),  # was truncated to a u32 ring size of 0
    (["--frames", str(1 << 62)], "--frames is too large"),  # frames x 2048 wrapped
    (["--program", "attached"], "no XDP program is attached"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_left(testbed_hosts, binary, args, says):
    _, b = testbed_hosts
    r = subprocess.run([str(binary), "--iface", b.iface, "--netns", b.netns, *args], capture_output=True, text=True)
    assert r.returncode == 2 and says in r.stderr and r.stderr.startswith("xdp_rxdrop: error: ")
    assert not _xdp_attached(b)


def test_attached_refuses_an_occupied_xskmap_entry_and_leaves_it_in_place(testbed_hosts, binary):
    """The XSKMAP entry of --queue holds another program's socket (here one bound to queue 1, since queue
    0 takes one socket): refused (exit 2, one line), not overwritten, and not deleted on the way out, so a
    second run meets it still there."""
    _, b = testbed_hosts
    with Steering(b.iface, netns=b.netns) as steering, AfXdpPort(b.iface, 1, netns=b.netns, frames=4096) as port:
        steering.register_xsk(0, port.fd)
        for _ in range(2):
            for _ in range(20):  # a closed socket's hold on queue 0 goes a little later (EBUSY), as in _start
                r = subprocess.run([str(binary), "--iface", b.iface, "--netns", b.netns, "--queue", "0",
                                    "--program", "attached"], capture_output=True, text=True, timeout=30)
                if "busy" not in r.stderr:
                    break
                time.sleep(0.1)
            assert r.returncode == 2 and r.stderr.startswith("xdp_rxdrop: error: "), r.stderr
            assert "queue 0's XSKMAP entry is taken" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("sig", [signal.SIGKILL, None])
def test_the_receiver_ends_with_its_parent_or_on_sighup(testbed_hosts, binary, sig):
    """A bench killed mid-run (SIGKILL: no cleanup of its own) leaves no receiver behind: the child gets
    SIGTERM from the kernel (PR_SET_PDEATHSIG) and ends, detaching libxdp's program. SIGHUP ends it as
    SIGTERM does, with its report."""
    _, b = testbed_hosts
    if sig is None:
        p = _start(binary, b, "libxdp")
        assert _stop(p, signal.SIGHUP)["packets"] >= 0
        assert not _xdp_attached(b)
        return
    parent = subprocess.Popen(  # a stand-in for the bench: starts the receiver, tells its pid, waits
        ["python3", "-c", "import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); "
         "p.wait()", str(binary), "--iface", b.iface, "--netns", b.netns, "--queue", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 10
    while not _xdp_attached(b) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _xdp_attached(b)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()
    assert not _xdp_attached(b)
