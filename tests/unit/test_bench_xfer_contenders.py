"""bench/xfer_vs_iperf3.py --contenders: each contender once, unknown names refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "xfer_vs_iperf3.py"


def _script():
    spec = importlib.util.spec_from_file_location("xfer_vs_iperf3", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_contenders_named_twice_run_once():
    pick = _script().pick_contenders
    assert pick("xfer,xfer", False) == ["xfer"]
    assert pick(" tcp cubic , xfer,tcp cubic", False) == ["tcp cubic", "xfer"]


def test_contenders_default_and_refused():
    pick = _script().pick_contenders
    assert pick(None, False) == ["tcp cubic", "tcp bbr", "udp", "xfer"]
    assert pick(None, True)[-1] == "xfer reno"
    assert pick("xfer reno", False) == ["xfer reno"]
    assert pick("xfer,quic", False) == [] and pick(" , ", False) == []


def test_a_baseline_runs_beside_xfer():
    pick = _script().pick_contenders
    assert pick("tcp cubic,xfer", False, True) == ["tcp cubic", "xfer", "xfer baseline"]
    assert pick(None, False, True)[-2:] == ["xfer", "xfer baseline"]
    assert pick("tcp bbr", False, True) == ["tcp bbr"]  # nothing to compare it with
