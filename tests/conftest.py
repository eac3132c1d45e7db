import os

import pytest

pytest_plugins = ["kbypass.testing.plugin"]

NETNS_DIR = "/var/run/netns"


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


def _another_live_run(name: str) -> bool:
    """Test namespaces carry their run's pid; one of a run still going (a parallel session) is not ours."""
    digits = "".join(c for c in name if c.isdigit())
    if not digits or int(digits) == os.getpid():
        return False
    try:
        os.kill(int(digits), 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def pytest_sessionstart(session):
    session.config._kb_before = (_namespaces(), _root_links())


def pytest_sessionfinish(session, exitstatus):
    """The suite must leave no namespace or link behind, whatever failed (checked after every fixture's
    teardown, which runs before this hook)."""
    before = getattr(session.config, "_kb_before", None)
    if before is None or os.geteuid() != 0:
        return
    left_ns = sorted(n for n in _namespaces() - before[0] if not _another_live_run(n))
    left_links = sorted(_root_links() - before[1])
    if left_ns or left_links:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = f"LEAK: the test session left namespaces {left_ns} and root-namespace links {left_links}"
        if reporter:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=["c", "numpy"])
def batch_impl(request, monkeypatch):
    """Run a test with the Port API's per-batch bookkeeping in C (kbypass._fastbatch) and again with
    its numpy fallback: the two must agree, errors included."""
    from kbypass.port import batch
    from kbypass.xsk import umem

    if request.param == "c":
        if os.environ.get("KBYPASS_PURE_PYTHON") == "1":
            pytest.skip("KBYPASS_PURE_PYTHON=1 switches the C modules off")
        assert umem._fast is not None, "kbypass._fastbatch is not built: `make setup` builds it"
    else:
        monkeypatch.setattr(umem, "_fast", None)
        monkeypatch.setattr(batch, "_fast", None)
    return request.param
