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
from kbypass.host import xps
from kbypass.port import hidden_queue
from tests.kb import kbypass_for, one_real, xdp_attached
from tests.netns.test_cp import _xps, finish, send_udp


@pytest.fixture
def hosts(testbed_hosts):
    a, b = testbed_hosts
    for h in (a, b):
        terminate(paths.namespace_name(h.netns))
    _xps(a, ["1", "2"])  # CPU 0 sends on queue 0
    yield a, b
    # the testbed's own XPS back (CPU c on queue c mod N), not none: the session testbed's later users send
    # from a CPU to reach its queue (test_jumbo's queue-0 sink saw nothing once XPS was off here)
    xps.spread_by_cpu(a.iface, a.netns, a.queues)
    for h in (a, b):
        terminate(paths.namespace_name(h.netns))


def _no_control_plane(host) -> bool:
    try:
        with ControlPlaneClient(host.netns, start=False, command="test"):
            return False
    except ControlPlaneError:
        return True


@pytest.mark.parametrize("real, tool", one_real([(["sink"],), (["reflect"],), (["capture", "-w", "/dev/null"],)]))
def test_hw_on_a_veth_is_one_clear_error_and_leaves_nothing_behind(hosts, real, tool):
    a, b = hosts
    r = kbypass_for(real)(*tool, "--host", "b", "--rule", "udp dport 4321", "--queue", "0", "--hw", "-t", "5")
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


@pytest.fixture
def fake_nic(tmp_path, monkeypatch):
    """SteeredPort's hidden queue on tests/fakenic.py (a NIC in a file) while the rest is real: the veth,
    the XDP program, the AF_XDP socket."""
    import functools

    from kbypass.port import steered
    from tests import fakenic

    run, state = fakenic.install(tmp_path, monkeypatch)
    monkeypatch.setattr(steered, "HiddenQueue", functools.partial(hidden_queue.HiddenQueue, device=fakenic.FakeNic))
    return run, state, fakenic


def test_steered_port_applies_the_hidden_queue_and_undoes_it_on_close(hosts, fake_nic):
    import json

    from kbypass.port.steered import SteeredPort

    a, b = hosts
    run, state, fakenic = fake_nic
    before = json.loads(state.read_text())
    with SteeredPort(b.iface, 1, ["udp dport 4321"], netns=b.netns, hw=True, control_plane=False) as sp:
        now = json.loads(state.read_text())
        assert sp.hw and list(now["rules"].values()) == [["udp dport 4321 redirect", 1]] and 1 not in now["table"]
        assert len(list(run.iterdir())) == 1 and xdp_attached(b)
    assert json.loads(state.read_text()) == before and list(run.iterdir()) == [] and not xdp_attached(b)


def test_a_hidden_queue_held_by_another_program_is_an_error_and_auto_falls_back(hosts, fake_nic):
    from kbypass.port.steered import SteeredPort
    from kbypass.steer.ethtool import HardwareSteeringError
    from kbypass.steer.rules import Rule

    a, b = hosts
    run, state, fakenic = fake_nic
    with hidden_queue.HiddenQueue(b.iface, b.netns, 0, [Rule.parse("tcp dport 80")], device=fakenic.FakeNic):
        with pytest.raises(HardwareSteeringError, match=f"held by pid {os.getpid()}"):
            SteeredPort(b.iface, 1, ["udp dport 4321"], netns=b.netns, hw=True, control_plane=False)
        assert not xdp_attached(b)
        with SteeredPort(b.iface, 1, ["udp dport 4321"], netns=b.netns, hw="auto", control_plane=False) as sp:
            assert sp.hidden is None and "held by" in sp.hw_note and "software only" in sp.hw_note
            assert xdp_attached(b)
