"""The testbed on the real kernel: build, status schema, idempotence, refusal, teardown on failure."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from pyroute2 import netns as pr_netns

from kbypass import netns
from kbypass.host import testbed, xps
from kbypass.testing.plugin import needs_root
from tests.kb import kbypass, kbypass_for, one_real, pid_tag

pytestmark = pytest.mark.netns


@pytest.fixture
def prefix():
    needs_root()
    name = f"z{pid_tag()}"  # at most 6 characters for any pid (the testbed's prefix cap)
    yield name
    testbed.down(name)
    assert not netns.exists(f"{name}-a") and not netns.exists(f"{name}-b")
    assert not os.path.exists(testbed._marker_path(name))


def test_up_status_schema_idempotent_down(prefix):
    kbypass("testbed", "up", "--prefix", prefix, "--queues", "3", "--mtu", "2000", check=True)
    status = json.loads(kbypass("testbed", "status", "--prefix", prefix, "--json", check=True).stdout)
    hosts = status["hosts"]
    assert [h["name"] for h in hosts] == ["a", "b"]
    for h in hosts:
        assert set(h) >= {"name", "netns", "iface", "ifindex", "mac", "ipv4", "prefixlen", "queues"}
        assert isinstance(h["ifindex"], int) and h["queues"] == 3 and h["prefixlen"] == 24
        assert h["mtu"] == 2000
    # The kernel agrees: each end lives in its namespace with the advertised queue count.
    out = subprocess.run(["ip", "netns", "exec", hosts[1]["netns"], "ls", f"/sys/class/net/{hosts[1]['iface']}/queues"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert sorted(out) == ["rx-0", "rx-1", "rx-2", "tx-0", "tx-1", "tx-2"]
    # CPU c transmits on queue c mod 3 at both ends (XPS), so a sender's CPU picks the receiver's queue
    as_int = lambda ms: [int(m.replace(",", ""), 16) for m in ms]
    for h in hosts:
        assert as_int(xps.read(h["iface"], h["netns"], 3)) == as_int(xps.masks(3))
    gro = subprocess.run(["ip", "netns", "exec", hosts[1]["netns"], "ethtool", "-k", hosts[1]["iface"]],
                         capture_output=True, text=True, check=True).stdout
    assert "generic-receive-offload: on" in gro
    assert "tx-checksumming: off" in gro  # frames cross the veth with finished checksums, as on a wire
    # A real exchange: ping from a to b.
    ping = subprocess.run(["ip", "netns", "exec", hosts[0]["netns"], "ping", "-c", "1", "-W", "2", hosts[1]["ipv4"]],
                          capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout
    # Second up: no change (same ifindex), same JSON.
    again = json.loads(kbypass("testbed", "up", "--prefix", prefix, "--queues", "3", "--mtu", "2000", "--json",
                               check=True).stdout)
    assert again["hosts"] == hosts
    # Asking for a different shape while up is refused with the fix.
    diff = kbypass("testbed", "up", "--prefix", prefix, "--queues", "1")
    assert diff.returncode == 2 and "testbed down" in diff.stderr
    kbypass("testbed", "down", "--prefix", prefix, check=True)
    gone = kbypass("testbed", "status", "--prefix", prefix, "--json")
    assert gone.returncode == 1 and json.loads(gone.stdout)["hosts"] == []


@pytest.mark.parametrize(
    "real, args, words",
    one_real([(["--queues", "0"], "--queues"), (["--mtu", "67"], "--mtu 67"), (["--subnet", "300.1.1.0/24"], "--subnet")]),
)
def test_bad_input_one_line_nothing_made(prefix, real, args, words):
    proc = kbypass_for(real)("testbed", "up", "--prefix", prefix, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr
    assert not netns.exists(f"{prefix}-a") and not netns.exists(f"{prefix}-b")


def test_foreign_namespace_is_refused_and_left_alone(prefix):
    subprocess.run(["ip", "netns", "add", f"{prefix}-b"], check=True)
    try:
        proc = kbypass("testbed", "up", "--prefix", prefix)
        assert proc.returncode == 2
        assert f"ip netns del {prefix}-b" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not netns.exists(f"{prefix}-a"), "half a testbed was left behind"
        kbypass("testbed", "down", "--prefix", prefix, check=True)
        assert netns.exists(f"{prefix}-b"), "down removed a namespace kbypass did not make"
    finally:
        subprocess.run(["ip", "netns", "del", f"{prefix}-b"])


def test_fixture_tears_down_after_a_failing_test(tmp_path):
    needs_root()
    name = f"y{pid_tag()}"
    seen = tmp_path / "seen.json"
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["kbypass.testing.plugin"]\n')
    (tmp_path / "test_fails.py").write_text(textwrap.dedent(f"""
        import json, pathlib
        def test_fails_mid_testbed(testbed_hosts):
            pathlib.Path({str(seen)!r}).write_text(json.dumps([h.netns for h in testbed_hosts]))
            assert False, "fails on purpose"
    """))
    env = dict(os.environ, KBYPASS_TEST_TESTBED_PREFIX=name)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stdout  # the test failed, as it should
    made = json.loads(seen.read_text())
    assert made == [f"{name}-a", f"{name}-b"]
    assert not any(netns.exists(n) for n in made), "the failing session left its namespaces"


def test_half_built_testbed_is_removed_by_down_and_rebuilt_by_up(prefix):
    """`up` killed between its two namespace creations: the marker and host a's namespace exist, no veth (so
    no alias) anywhere. `down` must remove it; `up` must then build the whole testbed."""
    testbed._write_marker(prefix, [f"{prefix}-a"])
    pr_netns.create(f"{prefix}-a")
    st = kbypass("testbed", "status", "--prefix", prefix, "--json")
    assert st.returncode == 1 and not netns.exists(f"{prefix}-b")  # status does not create what it looks at
    down = kbypass("testbed", "down", "--prefix", prefix, check=True)
    assert f"removed {prefix}-a" in down.stdout
    assert not netns.exists(f"{prefix}-a") and not os.path.exists(testbed._marker_path(prefix))
    # once more, and this time `up` meets the half-built testbed itself
    testbed._write_marker(prefix, [f"{prefix}-a", f"{prefix}-b"])
    pr_netns.create(f"{prefix}-b")
    up = json.loads(kbypass("testbed", "up", "--prefix", prefix, "--json", check=True).stdout)
    assert [h["netns"] for h in up["hosts"]] == [f"{prefix}-a", f"{prefix}-b"]


def test_status_after_down_creates_nothing(prefix):
    kbypass("testbed", "up", "--prefix", prefix, check=True)
    kbypass("testbed", "down", "--prefix", prefix, check=True)
    assert testbed.status(prefix) is None and not testbed._ours(prefix, f"{prefix}-a")
    assert not netns.exists(f"{prefix}-a") and not netns.exists(f"{prefix}-b")


def test_two_ups_at_once_take_turns(prefix):
    procs = [subprocess.Popen([sys.executable, "-m", "kbypass", "testbed", "up", "--prefix", prefix, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, err
    assert json.loads(outs[0][0])["hosts"] == json.loads(outs[1][0])["hosts"]


def test_status_reads_the_namespaces_without_forking(testbed_hosts):
    # every `--host` resolves through status(): it reads both ends from this process (a netlink socket made
    # inside each namespace), where pyroute2's NetNS forked a helper process per namespace
    probe = textwrap.dedent(f"""
        import json, os
        from kbypass.host import testbed
        forks = []
        os.register_at_fork(before=lambda: forks.append(1))
        hosts = testbed.status({os.environ["KBYPASS_TESTBED"]!r})
        print(json.dumps({{"forks": len(forks), "hosts": [h.to_json() for h in hosts or []]}}))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                    timeout=60).stdout)
    assert out["hosts"] == [h.to_json() for h in testbed_hosts]
    assert out["forks"] == 0
