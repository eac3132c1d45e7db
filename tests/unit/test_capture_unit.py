"""`kbypass capture -w`: the output file is checked before any port is opened, and capture --workers' merge
of the workers' files (no network here)."""

from __future__ import annotations

import argparse
import os
import signal
import stat

import pytest

from kbypass.apps import pcap
from kbypass.apps.pcap import PcapWriter
from kbypass.apps.workers import Outcome, merge
from kbypass.errors import UsageError
from kbypass.tools import capture
from tests.unit.test_workers import write_pcap


def _args(path, **kw) -> argparse.Namespace:
    base = dict(command="capture", write=str(path), snaplen=65535, every=1, rule=["udp dport 9"], count=1, duration=None,
                batch=64, json=True, backend="afxdp", iface="lo", netns=None, host=None)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("where, reason", [("missing/out.pcap", "No such file or directory"), (".", "Is a directory")])
def test_pcap_writer_names_the_path_and_the_reason(tmp_path, where, reason):
    path = tmp_path / where
    with pytest.raises(UsageError) as info:
        PcapWriter(str(path))
    msg = str(info.value)
    assert repr(str(path)) in msg and reason in msg and "\n" not in msg


def test_unwritable_file_fails_before_the_port_is_opened(tmp_path, monkeypatch):
    def no_port(*a, **k):
        raise AssertionError("the port was opened before the output file was checked")

    monkeypatch.setattr(capture, "open_backend", no_port)
    path = tmp_path / "missing" / "out.pcap"
    with pytest.raises(UsageError, match="cannot write the capture file .*missing/out.pcap.*No such file"):
        capture.run(_args(path))

    # the file is made first, so a port that then fails to open must not leave an empty capture behind
    def bad_port(*a, **k):
        raise UsageError("no interface 'nosuch0'")

    monkeypatch.setattr(capture, "open_backend", bad_port)
    path = tmp_path / "out.pcap"
    with pytest.raises(UsageError, match="nosuch0"):
        capture.run(_args(path))
    assert not path.exists()
    path.write_bytes(b"keep")  # a file that was there before is the user's: not removed, not emptied
    with pytest.raises(UsageError):
        capture.run(_args(path))
    assert path.read_bytes() == b"keep"  # (it was cut to a 24-byte pcap header before)
    assert [p.name for p in tmp_path.iterdir()] == ["out.pcap"], "a partial file was left behind"


def test_iface_without_a_rule_is_refused_before_the_file_is_touched(tmp_path, monkeypatch):
    monkeypatch.setattr(capture, "open_backend", lambda *a, **k: pytest.fail("port opened"))
    path = tmp_path / "keep.pcap"
    path.write_bytes(b"earlier capture")
    with pytest.raises(UsageError, match="without --rule"):
        capture.run(_args(path, rule=[]))
    assert path.read_bytes() == b"earlier capture"


def fake_team(seen: list):
    """run_team without processes: each worker wrote its file (two packets each), then the merge."""

    def run_team(args, work, rules, *, totals, finish):
        seen.append(args.worker_files)
        outcomes = []
        for q in (0, 1):
            write_pcap(capture.worker_file(args.worker_files, q), [q + 1, q + 10])
            outcomes.append(Outcome(q, q, q, 100 + q, result={"packets": 2, "file": args.write}))
        summary = merge(outcomes, totals)
        finish(summary, outcomes)
        return summary, outcomes

    return run_team


def _team_args(path, **kw) -> argparse.Namespace:
    return _args(path, workers=2, worker_queues=None, **kw)


def test_a_second_ctrl_c_during_the_merge_waits_for_it_and_loses_nothing(tmp_path, monkeypatch):
    real_merge = pcap.merge  # capture imports it when it merges

    def impatient(paths, out):
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, as the merge begins
        return real_merge(paths, out)

    monkeypatch.setattr(capture, "run_team", fake_team([]))
    monkeypatch.setattr(pcap, "merge", impatient)
    target = tmp_path / "all.pcap"
    with pytest.raises(KeyboardInterrupt):  # acted on, once the merge and its clean-up are done
        capture.run_workers(_team_args(target), ["udp"])
    assert [t for t, _ in pcap.records(str(target))] == [1, 2, 10, 11]
    assert [p.name for p in tmp_path.iterdir()] == ["all.pcap"], "a worker's or the partial file was left"


def test_a_merge_that_fails_keeps_the_workers_files_and_names_them(tmp_path, monkeypatch, capsys):
    def full_disk(paths, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(capture, "run_team", fake_team([]))
    monkeypatch.setattr(pcap, "merge", full_disk)
    target = tmp_path / "all.pcap"
    with pytest.raises(OSError):
        capture.run_workers(_team_args(target), ["udp"])
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f".all.pcap.kbypass-partial-{os.getpid()}.q{q}" for q in (0, 1)]  # no partial merge
    err = capsys.readouterr().err
    assert "the merge into" in err and "did not finish; the workers' files are kept" in err
    assert all(str(tmp_path / k) in err for k in kept)


def test_workers_to_stdout_keep_their_files_in_a_private_directory_removed_at_the_end(tmp_path, monkeypatch):
    seen = []
    modes = []
    real_merge = pcap.merge  # capture imports it when it merges

    def look(paths, out):
        modes.append(stat.S_IMODE(os.stat(os.path.dirname(paths[0])).st_mode))
        return real_merge(paths, out)

    monkeypatch.setattr(capture, "run_team", fake_team(seen))
    monkeypatch.setattr(pcap, "merge", look)
    monkeypatch.setattr(capture.sys, "stdout", open(tmp_path / "stdout.pcap", "w"))
    assert capture.run_workers(_team_args("-"), ["udp"]) == 0
    capture.sys.stdout.close()
    [base] = seen
    assert not base.startswith("/tmp/.kbypass-capture-") and modes == [0o700]
    assert not os.path.exists(os.path.dirname(base))
    assert [t for t, _ in pcap.records(str(tmp_path / "stdout.pcap"))] == [1, 2, 10, 11]
