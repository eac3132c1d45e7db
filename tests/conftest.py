import os
import time

import pytest

pytest_plugins = ["kbypass.testing.plugin"]

NETNS_DIR = "/var/run/netns"
# Test testbeds are "<letter><pid in base 36>" (kbypass.testing.plugin): "t" the session's, "z" and "y"
# those tests/netns/test_testbed.py makes. At most 6 characters for any pid, the testbed's prefix cap.
TEST_LETTERS = "tzy"


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run long soak and fuzz tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow") or os.environ.get("KBYPASS_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="long run: use --slow or KBYPASS_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _namespaces() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()


def _root_links() -> set[str]:
    return set(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else set()


def _markers() -> set[str]:
    from kbypass.host import testbed

    run_dir = getattr(testbed, "RUN_DIR", "/run/kbypass")
    return set(os.listdir(run_dir)) if os.path.isdir(run_dir) else set()


def _another_live_run(name: str) -> bool:
    """Test namespaces carry their run's pid; one of a run still going (a parallel session) is not ours."""
    from kbypass.testing.plugin import owner_pid

    pid = owner_pid(name[:-2] if name.endswith(("-a", "-b")) else name, TEST_LETTERS)
    return pid is not None and pid != os.getpid() and _alive(pid)


def _marked_name(marker: str) -> str:
    """The testbed or namespace a file of /run/kbypass belongs to: testbed-PREFIX, cp-NETNS.{sock,log}."""
    if marker.startswith("cp-"):
        return marker[len("cp-"):].rsplit(".", 1)[0]
    return marker[len("testbed-"):]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session", autouse=True)
def _sweep_own_letters():
    """Testbeds of the letters tests/netns/test_testbed.py uses ("z", "y") are swept like the session's
    ("t", by kbypass.testing.plugin's fixture) when a killed run left them."""
    if os.geteuid() == 0:
        from kbypass.testing.plugin import sweep_stale

        sweep_stale(TEST_LETTERS)
    yield


def _xdp_on(host) -> bool:
    from tests.kb import xdp_attached

    try:
        return xdp_attached(host)
    except Exception:  # the namespace is gone: nothing can be attached there
        return False


@pytest.fixture(autouse=True)
def _no_xdp_left_behind(request):
    """After each test on the session's testbed: no XDP program it attached may stay on a testbed veth
    (a sink or capture left running, a Steering never closed). A program that was already there when the
    test began belongs to a class- or module-scoped fixture and is that fixture's to remove."""
    if "testbed_hosts" not in request.fixturenames:
        yield
        return
    hosts = request.getfixturevalue("testbed_hosts")
    before = {h.name for h in hosts if _xdp_on(h)}
    yield
    deadline = time.monotonic() + 3.0  # a killed process's bpf_link goes away a moment after the process
    while True:
        left = [h for h in hosts if h.name not in before and _xdp_on(h)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if left:
        pytest.fail(f"LEAK: an XDP program stayed attached to {', '.join(h.iface for h in left)} after the test",
                    pytrace=False)


def pytest_sessionstart(session):
    session.config._kb_before = (_namespaces(), _root_links(), _markers())


def pytest_sessionfinish(session, exitstatus):
    """The suite must leave no namespace or link behind, whatever failed (checked after every fixture's
    teardown, which runs before this hook)."""
    before = getattr(session.config, "_kb_before", None)
    if before is None or os.geteuid() != 0:
        return
    left_ns = sorted(n for n in _namespaces() - before[0] if not _another_live_run(n))
    left_links = sorted(_root_links() - before[1])
    left_marks = sorted(m for m in _markers() - before[2]
                        if not m.endswith(".lock") and not _another_live_run(_marked_name(m)))
    if left_ns or left_links or left_marks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = (f"LEAK: the test session left namespaces {left_ns}, root-namespace links {left_links} and "
               f"testbed markers {left_marks}")
        if reporter:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=["c", "numpy"])
def batch_impl(request, monkeypatch):
    """Run a test with the Port API's per-batch bookkeeping in C (kbypass.backend.CBatch over
    kbypass._fastbatch) and again with the reference Python (kbypass.backend.PyBatch, numpy): the two must
    agree, errors included. The lane is selected as a tool's --lane does, so every Umem (and a Batch
    without one) made in the test gets that backend."""
    from kbypass import backend

    if request.param == "c":
        if os.environ.get("KBYPASS_PURE_PYTHON") == "1":
            pytest.skip("KBYPASS_PURE_PYTHON=1 switches the C modules off")
        assert backend.built("batch"), "kbypass._fastbatch is not built: `make setup` builds it"
    monkeypatch.setattr(backend, "_selected", "c" if request.param == "c" else "python")
    return request.param
