"""bench/tcp_vs_kernel.py's per-run ratios: each run's floor against that run's anchor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("tcp_vs_kernel", ROOT / "bench" / "tcp_vs_kernel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_per_run_ratios_pair_each_run_with_its_own_anchor_and_skip_failed_trials():
    bench = _bench()
    runs = {"pingpong sockperf server --tcp (kernel)": [{"p50_us": 30.0}, {"p50_us": 5.0}, {"error": "x"}],
            "pingpong floor: XDP answers": [{"p50_us": 3.0}, {"p50_us": 3.5}, {"p50_us": 3.4}],
            "pingpong kbypass server --tcp": [{"error": "timeout"}, {"p50_us": 15.0}, {"p50_us": 14.0}]}
    got = bench._per_run_ratios(runs)
    assert got["pingpong p50 floor (XDP answers) / sockperf kernel"] == [0.1, 0.7, None]
    assert got["pingpong p50 kbypass / sockperf kernel"] == [None, 3.0, None]
    assert "pingpong p50 floor, client busy / kernel best (busy poll)" not in got  # neither side ran
