"""`kbypass demo` checks what the user can get wrong before it makes anything (testbed, nft table, XDP)."""

import os

import pytest

from kbypass import cli
from kbypass.host import napi, testbed


def _main(argv):
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse's refusals
        return e.code


@pytest.fixture
def nothing_made(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # past the root check: the point is what comes before `up`
    monkeypatch.setattr(testbed, "up", lambda config: pytest.fail("the testbed was brought up before validating"))


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbypass: error: "), lines
    return lines[0]


@pytest.mark.parametrize("packets", ["0", "-5"])
def test_bad_packets_refused_first(nothing_made, capsys, tmp_path, packets):
    assert _main(["demo", "--packets", packets, "--out", str(tmp_path)]) == 2
    assert f"--packets: '{packets}'" in one_line(capsys)


def test_unwritable_out_refused_first(nothing_made, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert _main(["demo", "--packets", "10", "--out", str(blocker / "results")]) == 2
    assert "--out" in one_line(capsys)


def test_bad_prefix_refused_first(nothing_made, capsys, tmp_path):
    assert _main(["demo", "--prefix", "much-too-long", "--out", str(tmp_path)]) == 2
    assert "at most 6" in one_line(capsys)


def test_one_cpu_refused_first(nothing_made, capsys, tmp_path, monkeypatch):
    online = tmp_path / "online"
    online.write_text("0\n")
    monkeypatch.setattr(napi, "CPU_ONLINE", str(online))
    assert _main(["demo", "--packets", "10", "--out", str(tmp_path)]) == 2
    line = one_line(capsys)
    assert "kbypass demo needs 2 CPUs" in line and "at least 2 CPUs" in line
