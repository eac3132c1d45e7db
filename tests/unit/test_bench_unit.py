"""`kbypass bench --out`: the results directory is made and checked before an experiment runs."""

from __future__ import annotations

import argparse

import pytest

from kbypass.bench import latency as latbench, rx as rxbench
from kbypass.errors import UsageError
from kbypass.tools import bench
from tests.kb import unreachable


@pytest.fixture
def no_experiment(monkeypatch):
    monkeypatch.setattr(bench, "require_root", lambda what: None)
    for module in (rxbench, latbench):
        unreachable(monkeypatch, module, "run", "the experiment ran before --out was checked")


@pytest.mark.parametrize("kind", ["rx", "latency"])
def test_unwritable_out_fails_before_the_run(tmp_path, no_experiment, kind):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = str(blocker / "results")
    args = argparse.Namespace(out=out, prefix=None, packets=10, runs=1, duration=1.0, size=64, json=True,
                              placement="sut")
    with pytest.raises(UsageError) as info:
        (bench.run_rx if kind == "rx" else bench.run_latency)(args)
    msg = str(info.value)
    assert msg.startswith(f"--out {out}: cannot write results there (") and "\n" not in msg


def test_output_paths_makes_the_directory(tmp_path):
    json_path, png_path = bench.output_paths(str(tmp_path / "a" / "b"), "rx")
    assert json_path == tmp_path / "a" / "b" / "rx.json" and png_path.name == "rx.png"
    assert json_path.parent.is_dir() and not list(json_path.parent.iterdir())  # the probe file is gone
    (tmp_path / "c" / "latency.json").mkdir(parents=True)
    with pytest.raises(UsageError, match="is a directory"):
        bench.output_paths(str(tmp_path / "c"), "latency")
