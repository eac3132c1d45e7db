"""`kbypass stats` refuses intervals and counts it cannot honour, in one line, before touching anything."""

import pytest

from kbypass import cli
from kbypass.host import ifstats


def _main(argv):
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse's refusals
        return e.code


@pytest.mark.parametrize("args, words", [
    (["--interval", "nan"], "--interval: 'nan'"),
    (["--interval", "inf"], "--interval: 'inf'"),
    (["--interval=-inf"], "--interval: '-inf'"),
    (["--interval", "0"], "--interval: '0'"),
    (["--interval", "-1"], "--interval: '-1'"),
    (["--interval", "1e9"], "up to 3600"),
    (["--count", "0"], "--count: '0'"),
])
def test_bad_interval_or_count_is_one_line(args, words, monkeypatch, capsys):
    monkeypatch.setattr(ifstats, "sample", lambda *a, **k: pytest.fail("sampled before validating"))
    assert _main(["stats", "--iface", "lo", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbypass: error: ") and words in lines[0], lines


def test_a_sane_interval_runs(capsys):
    assert _main(["stats", "--iface", "lo", "--interval", "0.01", "--count", "1", "--json"]) == 0
    assert '"iface": "lo"' in capsys.readouterr().out
