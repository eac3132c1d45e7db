"""`kbypass run`'s refusals: one line naming the fix, exit 2, nothing started (no network needed)."""

from __future__ import annotations

import pytest

from kbypass import cli
from kbypass.tools import run as run_tool


@pytest.fixture
def nothing_started(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a control plane was looked for")

    monkeypatch.setattr(run_tool, "_control_plane", fail)


@pytest.mark.parametrize("argv, words", [
    (["run"], "name the program"),
    (["run", "--"], "name the program"),
    (["run", "--", "no-such-program-kb"], "no program 'no-such-program-kb'"),
    (["run", "--json", "--", "true"], "--json goes with --status"),
    (["run", "--status", "--", "true"], "give it no program"),
    (["run", "--iface", "nope-kb0", "--", "true"], "no interface 'nope-kb0'"),
])
def test_bad_lines_are_one_line_and_exit_2(argv, words, nothing_started, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kbypass: error:") and words in err[0], err


def test_iface_with_a_control_plane_already_running_says_it_is_not_applied(monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(run_tool.cpclient, "running", lambda ns: True)
    monkeypatch.setattr(run_tool.os, "execve", lambda exe, argv, env: ran.append((argv, env)))
    assert cli.main(["run", "--iface", "lo", "--", "true"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already serves" in err[0] and "--iface lo is not applied" in err[0], err
    assert ran and ran[0][0] == ["true"] and "LD_PRELOAD" in ran[0][1]
