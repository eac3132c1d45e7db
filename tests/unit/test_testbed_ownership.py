"""The testbed's ownership marker and lock, without root: namespaces are simulated by a set, everything
else of testbed.up/down is the real code."""

import json
import os
import threading
import time

import pytest

from kbypass.host import testbed
from kbypass.errors import TestbedError


class FakeKernel:
    """Namespaces as names in a set; `fail_create` makes create fail after making the name (as
    pr_netns.create can, leaving /var/run/netns/NAME) or be interrupted."""

    def __init__(self):
        self.ns: set[str] = set()
        self.fail_create: dict[str, BaseException] = {}
        self.created: list[str] = []

    def exists(self, name):
        return name in self.ns

    def create(self, name):
        if name in self.ns:
            raise FileExistsError(name)
        self.ns.add(name)
        self.created.append(name)
        if name in self.fail_create:
            raise self.fail_create.pop(name)

    def remove(self, name):
        self.ns.discard(name)

    def status(self, prefix=None):
        names = [f"{prefix}-{h}" for h in testbed.HOSTS]
        if not all(n in self.ns for n in names):
            return None
        return [testbed.Host(h, n, n, 2 + i, "02:00:00:00:00:0%d" % i, f"10.77.0.{i + 1}", 24, 2, 1500)
                for i, (h, n) in enumerate(zip(testbed.HOSTS, names))]


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    k = FakeKernel()
    monkeypatch.setattr(testbed, "RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(testbed, "require_root", lambda what: None)
    monkeypatch.setattr(testbed.netns, "exists", k.exists)
    monkeypatch.setattr(testbed.pr_netns, "create", k.create)
    monkeypatch.setattr(testbed, "_remove_netns", k.remove)
    monkeypatch.setattr(testbed, "_ours", lambda prefix, name: False)  # no veth alias anywhere
    monkeypatch.setattr(testbed, "_build_link", lambda config: None)
    monkeypatch.setattr(testbed, "status", k.status)
    return k


def marker(prefix):
    path = os.path.join(testbed.RUN_DIR, f"testbed-{prefix}")
    return json.load(open(path))["netns"] if os.path.exists(path) else None


def test_up_marks_then_down_removes_everything(kernel):
    hosts = testbed.up(testbed.TestbedConfig(prefix="kq"))
    assert [h.netns for h in hosts] == ["kq-a", "kq-b"]
    assert marker("kq") == ["kq-a", "kq-b"]
    assert testbed.up(testbed.TestbedConfig(prefix="kq")) == hosts  # idempotent: nothing made again
    assert kernel.created == ["kq-a", "kq-b"]
    assert testbed.down("kq") == ["kq-a", "kq-b"]
    assert kernel.ns == set() and marker("kq") is None
    assert os.listdir(testbed.RUN_DIR) == []  # no lock file left either


def test_half_built_testbed_is_removed_by_down_and_rebuilt_by_up(kernel):
    # `up` killed after making kq-a: the marker names kq-a, there is no veth (and so no alias) anywhere.
    testbed._write_marker("kq", ["kq-a"])
    kernel.ns.add("kq-a")
    assert testbed.down("kq") == ["kq-a"]
    assert kernel.ns == set() and marker("kq") is None
    # the same again, but this time `up` meets it and starts from nothing
    testbed._write_marker("kq", ["kq-a", "kq-b"])
    kernel.ns.add("kq-b")
    hosts = testbed.up(testbed.TestbedConfig(prefix="kq"))
    assert [h.netns for h in hosts] == ["kq-a", "kq-b"] and marker("kq") == ["kq-a", "kq-b"]


def test_killed_before_the_first_create_leaves_a_marker_down_clears(kernel):
    testbed._write_marker("kq", ["kq-a"])
    assert testbed.down("kq") == []
    assert marker("kq") is None


@pytest.mark.parametrize("error", [OSError(12, "mount failed"), KeyboardInterrupt()])
def test_create_failing_after_making_the_name_is_cleaned_up(kernel, error):
    kernel.fail_create["kq-b"] = error
    with pytest.raises(type(error)):
        testbed.up(testbed.TestbedConfig(prefix="kq"))
    assert kernel.ns == set(), "a namespace of the failed up was left"
    assert marker("kq") is None
    assert [h.netns for h in testbed.up(testbed.TestbedConfig(prefix="kq"))] == ["kq-a", "kq-b"]


def test_foreign_namespace_refused_left_alone_and_not_claimed(kernel):
    kernel.ns.add("kq-b")  # made by someone else: no marker, no alias
    with pytest.raises(TestbedError, match="ip netns del kq-b"):
        testbed.up(testbed.TestbedConfig(prefix="kq"))
    assert kernel.ns == {"kq-b"} and marker("kq") is None
    assert testbed.down("kq") == [] and kernel.ns == {"kq-b"}


def test_marker_claims_only_the_testbeds_own_names(kernel):
    os.makedirs(testbed.RUN_DIR)
    with open(os.path.join(testbed.RUN_DIR, "testbed-kq"), "w") as f:
        json.dump({"netns": ["kq-a", "other"]}, f)
    kernel.ns |= {"kq-a", "other"}
    assert testbed.down("kq") == ["kq-a"] and kernel.ns == {"other"}


def test_unreadable_marker_still_means_ours(kernel):
    os.makedirs(testbed.RUN_DIR)
    with open(os.path.join(testbed.RUN_DIR, "testbed-kq"), "w") as f:
        f.write('{"netns": ["kq-')  # cut short by a crash
    kernel.ns.add("kq-a")
    assert testbed.down("kq") == ["kq-a"]


def test_a_second_up_waits_for_the_first(kernel, monkeypatch):
    """Two `up`s of one prefix at once: the second waits for the lock, then finds the testbed up."""
    entered = threading.Event()
    release = threading.Event()
    real_create = kernel.create

    def slow_create(name):
        entered.set()
        release.wait(5)
        real_create(name)

    monkeypatch.setattr(testbed.pr_netns, "create", slow_create)
    results, errors = [], []

    def run():
        try:
            results.append(testbed.up(testbed.TestbedConfig(prefix="kq")))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    first = threading.Thread(target=run)
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=run)
    second.start()
    time.sleep(0.3)
    assert second.is_alive(), "the second up did not wait for the first"
    release.set()
    first.join(10)
    second.join(10)
    assert not errors, errors
    assert len(results) == 2 and results[0] == results[1]
    assert kernel.created == ["kq-a", "kq-b"]


def test_lock_held_too_long_is_a_clear_error(kernel):
    with testbed._locked("kq"):
        t0 = time.monotonic()
        with pytest.raises(TestbedError, match=rf"another kbypass process \(pid {os.getpid()}\)"):
            with testbed._locked("kq", timeout=0.3):
                pass
        assert time.monotonic() - t0 < 5


def test_lock_file_removed_while_waiting_is_not_shared(kernel):
    """A `down` finishing removes the lock file; one who waited on the old file must not think it holds the
    lock while a newcomer holds the new one."""
    order, held = [], []

    def waiter():
        cm = testbed._locked("kq")
        cm.__enter__()
        held.append(cm)
        order.append("waiter")

    with testbed._locked("kq"):
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.2)
        order.append("holder done")
    t.join(5)
    assert order == ["holder done", "waiter"]
    # the holder removed the file it locked (no marker); the waiter now holds the file at the path, so a
    # third must not get the lock
    try:
        with pytest.raises(TestbedError):
            with testbed._locked("kq", timeout=0.2):
                pass
    finally:
        held[0].__exit__(None, None, None)


def test_status_without_root_says_so_instead_of_not_up(monkeypatch):
    from kbypass import netns
    from kbypass.errors import PermissionProblem

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netns, "exists", lambda name: name == "qq-a")
    with pytest.raises(PermissionProblem, match="needs root"):
        testbed.status("qq")
    monkeypatch.setattr(netns, "exists", lambda name: False)
    assert testbed.status("qq") is None  # nothing there: "not up" is the truth, root or not
