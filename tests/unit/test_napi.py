"""kbypass.host.napi without a network: finding NAPI threads by name, and a clear error when sysfs refuses."""

import os

import pytest

from kbypass.host import napi
from kbypass.errors import EnvironmentProblem


def fake_proc(monkeypatch, tmp_path, names: dict[str, str]) -> None:
    for pid, comm in names.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "comm").write_text(comm + "\n")
    (tmp_path / "self").mkdir()
    real_open, real_listdir = open, os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: real_listdir(tmp_path) if p == "/proc" else real_listdir(p))
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(str(p).replace("/proc", str(tmp_path), 1),
                                                                          *a, **k))


def test_threads_are_exactly_the_interfaces_own(monkeypatch, tmp_path):
    # Linux >= 5.17 shows kernel thread names whole: "napi/<ifname>-<id>"
    fake_proc(monkeypatch, tmp_path, {
        "10": "napi/kt1-b-8193", "11": "napi/kt1-b-8194", "12": "napi/kt1-bb-8195", "13": "python3",
        "20": "napi/kb-a-8196", "21": "napi/kb-a-a-8197",  # testbed "kb" host a; testbed "kb-a" host a
        "30": "napi/kbtest-a-2636", "31": "napi/kbtest-b-2637",  # a 6-character prefix, both hosts
    })
    assert napi.threads("kt1-b") == [10, 11]
    assert napi.threads("kb-a") == [20]
    assert napi.threads("kb-a-a") == [21]
    assert napi.threads("kbtest-a") == [30] and napi.threads("kbtest-b") == [31]


def test_cut_thread_names_still_tell_testbed_hosts_apart(monkeypatch, tmp_path):
    # Kernels before 5.17 cut at 15 characters; a testbed prefix of at most 6 keeps "-a-"/"-b-" and a digit
    fake_proc(monkeypatch, tmp_path, {"30": "napi/kbtest-a-8", "31": "napi/kbtest-b-8", "32": "napi/kbtes-a-81"})
    assert napi.threads("kbtest-a") == [30] and napi.threads("kbtest-b") == [31]
    assert napi.threads("kbtes-a") == [32]


def test_ambiguously_cut_names_are_an_error_not_a_guess(monkeypatch, tmp_path):
    # "napi/kt1234567-a-8193" and "napi/kt1234567-b-8194" both show as "napi/kt1234567-" when cut
    fake_proc(monkeypatch, tmp_path, {"40": "napi/kt1234567-", "41": "napi/kt1234567-"})
    with pytest.raises(EnvironmentProblem, match="at most 8 characters"):
        napi.threads("kt1234567-a")


def test_online_cpus_and_require_cpus(monkeypatch, tmp_path):
    online = tmp_path / "online"
    online.write_text("0-2,5\n")
    monkeypatch.setattr(napi, "CPU_ONLINE", str(online))
    assert napi.online_cpus() == {0, 1, 2, 5}
    napi.require_cpus({0, 1}, "kbypass demo")
    online.write_text("0\n")
    with pytest.raises(EnvironmentProblem, match=r"kbypass demo needs 2 CPUs.*has 1 online") as e:
        napi.require_cpus({0, 1}, "kbypass demo")
    assert "\n" not in str(e.value)


def test_pin_to_a_cpu_that_is_not_there_is_a_clear_error_and_undoes_threaded(monkeypatch):
    import errno

    calls = []
    monkeypatch.setattr(napi, "threads", lambda ifname: [4242])
    monkeypatch.setattr(napi.subprocess, "run", lambda argv, **kw: calls.append(argv[-1]) or
                        type("P", (), {"returncode": 0, "stderr": ""})())

    def einval(pid, cpus):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", einval)
    with pytest.raises(EnvironmentProblem, match=r"cannot pin the NAPI threads of kq-b to CPU 1.*2 CPUs"):
        napi.place("kq-b", "kq-b", 1)
    assert calls == ["echo 1 > /sys/class/net/kq-b/threaded", "echo 0 > /sys/class/net/kq-b/threaded"]
    # a vanished thread is still fine
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: (_ for _ in ()).throw(ProcessLookupError()))
    assert napi.pin("kq-b", 1) == [4242]


def test_set_threaded_explains_a_refusal():
    with pytest.raises(EnvironmentProblem, match="threaded NAPI"):
        napi.set_threaded("no-such-if0", None, True)
