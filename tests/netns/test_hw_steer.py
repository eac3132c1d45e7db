"""--hw on the testbed's veth, which has neither ntuple rules nor an RSS indirection table: `--hw` is one
clear error that leaves nothing behind, `--hw auto` says it falls back and still receives its flow.
(What a NIC with flow steering does is tested against the ethtool binary in tests/unit/test_hw_steer.py;
no such NIC exists here.)"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from kbypass.cp import paths
from kbypass.cp.client import ControlPlaneClient, ControlPlaneError
from kbypass.cp.lock import terminate
from kbypass.port import hidden_queue
from tests.kb import kbypass, xdp_attached
from tests.netns.test_cp import _xps, finish, send_udp


@pytest.fixture
def hosts(testbed_hosts):
    a, b = testbed_hosts
    for h in (a, b):
        terminate(paths.namespace_name(h.netns))
    _xps(a, ["1", "2"])  # CPU 0 sends on queue 0
    yield a, b
    _xps(a, ["0", "0"])
    for h in (a, b):
        terminate(paths.namespace_name(h.netns))


def _no_control_plane(host) -> bool:
    try:
        with ControlPlaneClient(host.netns, start=False, command="test"):
            return False
    except ControlPlaneError:
        return True


@pytest.mark.parametrize("tool", [["sink"], ["reflect"], ["capture", "-w", "/dev/null"]])
def test_hw_on_a_veth_is_one_clear_error_and_leaves_nothing_behind(hosts, tool):
    a, b = hosts
    r = kbypass(*tool, "--host", "b", "--rule", "udp dport 4321", "--queue", "0", "--hw", "-t", "5")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"kbypass: error: {b.iface} has no ntuple rules or RSS indirection table")
    assert "--hw auto" in lines[0] and "Traceback" not in r.stderr
    assert not xdp_attached(b)
    assert not os.path.exists(hidden_queue.record_path(b.iface, b.netns))
    assert _no_control_plane(b)


def test_hw_auto_on_a_veth_says_it_falls_back_and_receives_its_flow(hosts):
    a, b = hosts
    proc = subprocess.Popen([sys.executable, "-m", "kbypass", "sink", "--host", "b", "--rule", "udp dport 4321",
                             "--queue", "0", "--hw", "auto", "-c", "200", "-t", "30", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert first.startswith(f"kbypass sink: --hw auto: {b.iface} has no ntuple rules"), first
        assert "steering in software only" in first
        assert "receiving on" in proc.stderr.readline()  # then the usual start-up line
        sender = threading.Thread(target=send_udp, args=(a, b, 4321, 200, 0))
        sender.start()
        sender.join()
        summary = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert summary["packets"] == 200 and summary["queues"] == [0]
    assert "steering in software only" in summary["hw"]["fallback"]
    assert not os.path.exists(hidden_queue.record_path(b.iface, b.netns))


def test_steered_port_hw_true_raises_before_attaching_and_auto_says_why_it_did_not(hosts):
    from kbypass.port.steered import SteeredPort
    from kbypass.steer.ethtool import HardwareSteeringError

    a, b = hosts
    with pytest.raises(HardwareSteeringError, match="no ntuple rules"):
        SteeredPort(b.iface, 1, ["udp dport 4321"], netns=b.netns, hw=True, control_plane=False)
    assert not xdp_attached(b)
    with SteeredPort(b.iface, 1, ["udp dport 4321"], netns=b.netns, hw="auto", control_plane=False) as sp:
        assert sp.hw is False and sp.hidden is None
        assert "steering in software only" in sp.hw_note and xdp_attached(b)
    assert not xdp_attached(b)
