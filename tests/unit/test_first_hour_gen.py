"""The first hour, for gen, stats, tune, testbed, doctor, demo and bench: every numeric option with NaN,
infinities, negative, zero and absurd values, every path option with a file, '-' and nothing; options a
backend ignores; MACs; plain `stats` lines when stdout is not a terminal; offered vs achieved rates; the
scope of tune's knobs; the MTU limit. Each bad input is one line `kbypass: error: ...`, exit 2, and nothing
is opened, attached or made (the steps that would are made unreachable)."""

from __future__ import annotations

import os

import pytest

from kbypass import cli
from kbypass.host import ifstats, testbed, tune
from kbypass.bench import latency as latbench, rx as rxbench
from kbypass.tools import gen
from tests.kb import unreachable

STANDALONE = ["-i", "lo", "--src", "10.0.0.1", "--dst", "10.0.0.2:4321", "--dst-mac", "02:00:00:00:00:02"]


@pytest.fixture
def nothing_made(monkeypatch):
    """Past the root checks (the point is what is refused before anything is made); every step that opens,
    attaches, samples or builds fails the test."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    for target, name in ((testbed, "_up"), (rxbench, "run"), (latbench, "run"),
                         (ifstats, "sample"), (tune, "apply"), (gen, "_tx_port"), (gen, "_where")):
        unreachable(monkeypatch, target, name, f"{target.__name__}.{name} ran before the input was refused")


def main(argv: list[str]) -> int:
    """cli.main in-process; argparse's refusals leave by SystemExit, with the same exit code."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbypass: error: ") and "Traceback" not in err, err
    return lines[0]


BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e300", "99999999999999999999999"]

MATRIX = [
    *[(["gen", *STANDALONE, "-c", "1", "--backend", "afxdp", f"--rate={v}"], "--rate") for v in BAD_NUMBERS],
    *[(["gen", *STANDALONE, "-c", "1", f"--size={v}"], "--size") for v in BAD_NUMBERS + ["60-50", "70000"]],
    *[(["gen", *STANDALONE, f"--count={v}"], "--count") for v in BAD_NUMBERS],
    *[(["gen", *STANDALONE, f"--duration={v}"], "--duration") for v in BAD_NUMBERS],
    *[(["gen", *STANDALONE, "-c", "1", "--backend", "afxdp", f"--batch={v}"], "--batch")
      for v in BAD_NUMBERS + ["4097"]],
    *[(["gen", *STANDALONE, "-c", "1", f"--time-every={v}"], "--time-every") for v in BAD_NUMBERS + ["3"]],
    *[(["gen", *STANDALONE, "-c", "1", f"--cpu={v}"], "--cpu") for v in BAD_NUMBERS if v != "0"],
    *[(["gen", *STANDALONE, "-c", "1", "--backend", "afxdp", f"--queue={v}"], "--queue")
      for v in ["nan", "inf", "-1", "1e300", "99999999999999999999999"]],
    *[(["stats", "-i", "lo", f"--interval={v}"], "--interval") for v in BAD_NUMBERS + ["3601"]],
    *[(["stats", "-i", "lo", f"--count={v}"], "--count") for v in BAD_NUMBERS],
    *[(["testbed", "up", "--prefix", "hgx", f"--queues={v}"], "--queues") for v in BAD_NUMBERS + ["65"]],
    *[(["testbed", "up", "--prefix", "hgx", f"--mtu={v}"], "--mtu") for v in BAD_NUMBERS + ["67", "65536", "70000"]],
    *[(["testbed", "up", "--prefix", "hgx", f"--subnet={v}"], "--subnet")
      for v in ["nan", "", "10.0.0.1/24", "10.0.0.0/31", "300.1.1.0/24"]],
    *[(["bench", "rx", f"--packets={v}"], "--packets") for v in BAD_NUMBERS],
    *[(["bench", "rx", f"--runs={v}"], "--runs") for v in BAD_NUMBERS],
    *[(["bench", "latency", f"--runs={v}"], "--runs") for v in BAD_NUMBERS],
    *[(["bench", "latency", f"--duration={v}"], "--duration") for v in BAD_NUMBERS],
    *[(["bench", "latency", f"--size={v}"], "--size") for v in BAD_NUMBERS + ["13", "9000"]],
    *[(["demo", f"--packets={v}"], "--packets") for v in BAD_NUMBERS],
]


@pytest.mark.parametrize("argv, option", MATRIX, ids=[" ".join(a[:1] + a[-1:]) for a, _ in MATRIX])
def test_bad_numbers_are_one_line_and_nothing_is_made(nothing_made, capsys, argv, option):
    assert main(argv) == 2
    assert option in one_error_line(capsys)


@pytest.mark.parametrize("cmd", [["bench", "rx"], ["bench", "latency"], ["demo"]])
@pytest.mark.parametrize("kind", ["file", "dash", "empty", "under a file"])
def test_out_that_is_not_a_directory_is_refused(nothing_made, capsys, tmp_path, cmd, kind):
    f = tmp_path / "f"
    f.write_text("x")
    out = {"file": str(f), "dash": "-", "empty": "", "under a file": str(f / "results")}[kind]
    assert main([*cmd, "--out", out]) == 2
    assert "--out" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing made next to it


@pytest.mark.parametrize("mac", ["zz:zz", "", "02:00:00:00:00", "02:00:00:00:00:00:07", "gg:00:00:00:00:00",
                                 "02:00:00:00:00:0200", "٠٢:00:00:00:00:02"])
def test_bad_dst_mac_is_one_line(nothing_made, capsys, mac):
    assert main(["gen", "-i", "lo", "--src", "10.0.0.1", "--dst", "10.0.0.2:9", "--dst-mac", mac, "-c", "1"]) == 2
    assert "--dst-mac" in one_error_line(capsys) and "MAC" in capsys.readouterr().err + "MAC"


def test_dst_mac_forms_are_normalised():
    from kbypass.tools._options import mac_address

    assert mac_address("2:0:0:0:0:A") == "02:00:00:00:00:0a" and mac_address("02-00-00-00-00-02") == "02:00:00:00:00:02"


@pytest.mark.parametrize("backend, option, value", [
    ("live", "--queue", "1"), ("live", "--batch", "64"), ("live", "--rate", "1M"),
    ("afxdp", "--time-every", "4"), ("packet_mmap", "--queue", "1"), ("packet_mmap", "--time-every", "4"),
])
def test_an_option_the_backend_ignores_is_refused_with_the_reason(nothing_made, capsys, backend, option, value):
    assert main(["gen", *STANDALONE, "-c", "1", "--backend", backend, option, value]) == 2
    line = one_error_line(capsys)
    assert f"{option} with --backend {backend}: " in line


def test_the_old_engine_option_is_gone(capsys):
    assert main(["gen", *STANDALONE, "-c", "1", "--engine", "afxdp"]) == 2
    assert "unrecognized arguments: --engine" in one_error_line(capsys)


def test_backend_help_explains_each_backend(capsys):
    with pytest.raises(SystemExit):
        cli.main(["gen", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for words in ("live = BPF_PROG_RUN", "afxdp = an AF_XDP socket", "packet_mmap = a PACKET_MMAP TX ring"):
        assert words in out


def test_rate_below_the_asked_is_said():
    short = gen.rate_summary(1.5e6, 1.02e6)
    assert short["offered_pps"] == 1.5e6 and short["achieved_pps"] == 1.02e6 and short["achieved_fraction"] == 0.68
    assert "asked for 1,500,000 pps, achieved 1,020,000 (68%)" in short["rate_note"]
    assert "rate_note" not in gen.rate_summary(1e5, 0.99e5)  # within a few percent: nothing to say
    assert gen.rate_summary(None, 5e6) == {}


def test_stats_to_a_file_writes_a_line_per_interval(capsys):
    """Not a terminal (capsys): three intervals are three greppable lines, not one table redrawn in place."""
    assert main(["stats", "-i", "lo", "--interval", "0.01", "-c", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(" iface=lo queue=all rx_pps=" in line for line in out), out


def test_tune_knob_scopes():
    assert {k for k, v in tune.SCOPE.items() if v == "machine"} == {"busy_poll", "busy_read"}
    assert set(tune.SCOPE) == set(tune.KNOBS)
    assert tune.restore_command({"busy_poll": "0"}, ["busy_poll"]) == "sysctl -w net.core.busy_poll=0"


def test_mtu_limit_is_what_veth_takes_with_xdp():
    import mmap

    assert testbed.XDP_MAX_MTU == mmap.PAGESIZE - 590  # 3506 with 4 KiB pages: XDP programs without frags
    assert testbed.FRAGS_MAX_MTU == 65535  # veth's own maximum: every kbypass program is frags-aware
    for mtu in (testbed.XDP_MAX_MTU, 9000, testbed.FRAGS_MAX_MTU):
        testbed.TestbedConfig(prefix="hgx", mtu=mtu).validate()
    with pytest.raises(Exception, match=f"to {testbed.FRAGS_MAX_MTU} .veth's maximum"):
        testbed.TestbedConfig(prefix="hgx", mtu=65536).validate()
