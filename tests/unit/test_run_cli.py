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
    (["run", "--", "true"], "KBYPASS_EXIT_LINGER_S='-1' is not a number of seconds >= 0"),
])
def test_bad_lines_are_one_line_and_exit_2(argv, words, nothing_started, capsys, monkeypatch):
    if "LINGER" in words:
        monkeypatch.setenv("KBYPASS_EXIT_LINGER_S", "-1")
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


def test_a_shim_only_root_may_reach_is_handed_on_in_a_sealed_memfd(tmp_path, monkeypatch):
    """A clone under a 0700 directory: an app that drops its privileges could not open the shim there, so the
    loader gets it as /proc/self/fd/N of a sealed, inheritable memfd with the same bytes; a shim anyone may
    reach keeps its path."""
    import fcntl
    import os
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shim = private / "libkbypass-preload.so"
    shim.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    shim.chmod(0o755)
    monkeypatch.setattr(run_tool, "SHIM", str(shim))
    assert not run_tool._loadable_by_anyone(str(shim))
    path = run_tool._shim_for_any_user()
    fd = int(path.rsplit("/", 1)[1])
    try:
        assert path == f"/proc/self/fd/{fd}" and os.get_inheritable(fd)
        with open(path, "rb") as f:
            assert f.read() == shim.read_bytes()
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        with pytest.raises(PermissionError):
            os.write(fd, b"x")
    finally:
        os.close(fd)
    private.chmod(0o755)
    if run_tool._loadable_by_anyone(str(shim)):  # tmp dirs above may themselves be private
        assert run_tool._shim_for_any_user() == str(shim)
