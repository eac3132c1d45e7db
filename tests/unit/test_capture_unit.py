"""`kbypass capture -w`: the output file is checked before any port is opened (no network here)."""

from __future__ import annotations

import argparse

import pytest

from kbypass.errors import UsageError
from kbypass.apps.pcap import PcapWriter
from kbypass.tools import capture


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
