"""kbypass.napi without a network: finding NAPI threads by name, and a clear error when sysfs refuses."""

import os

import pytest

from kbypass import napi
from kbypass.errors import EnvironmentProblem


def test_threads_match_the_interface_prefix_only(monkeypatch, tmp_path):
    names = {"10": "napi/kt1-b-8193", "11": "napi/kt1-b-8194", "12": "napi/kt1-bb-8195", "13": "python3",
             "14": "napi/kt12345678"}
    for pid, comm in names.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "comm").write_text(comm + "\n")
    (tmp_path / "self").mkdir()
    real_open, real_listdir = open, os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: real_listdir(tmp_path) if p == "/proc" else real_listdir(p))
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(str(p).replace("/proc", str(tmp_path), 1),
                                                                          *a, **k))
    assert napi.threads("kt1-b") == [10, 11]
    # a long name is cut at 15 characters in the task name: match what is left of it
    assert napi.threads("kt123456789-b") == [14]


def test_set_threaded_explains_a_refusal():
    with pytest.raises(EnvironmentProblem, match="threaded NAPI"):
        napi.set_threaded("no-such-if0", None, True)
