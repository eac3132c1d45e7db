"""`kbypass bench latency` end to end on this session's testbed, with one short run per contender."""

import json

import pytest

from kbypass.bench import latency as latbench
from tests.kb import kbypass, kbypass_for, needs_c, one_real

pytestmark = pytest.mark.netns


def busy_sysctls():
    return [open(f"/proc/sys/net/core/{k}").read() for k in ("busy_read", "busy_poll")]


@needs_c  # one contender asks for the C lane
def test_bench_latency_runs_every_contender_and_writes_json_and_chart(testbed_hosts, tmp_path):
    prefix = testbed_hosts[0].netns[:-2]
    sysctls = busy_sysctls()
    proc = kbypass("bench", "latency", "--prefix", prefix, "--runs", "1", "--duration", "0.5",
                   "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    result = json.loads((tmp_path / "latency.json").read_text())
    names = [name for name, _ in latbench.CONTENDERS]
    assert list(result["medians"]) == names
    for name in names:
        m = result["medians"][name]
        assert 0 < m["p50_us"] <= m["p90_us"] <= m["p99_us"] <= m["p999_us"] < 1_000_000, (name, m)
        assert result["ratios"][name]["p50"] == pytest.approx(m["p50_us"] / result["medians"][latbench.ANCHOR]["p50_us"])
    for run in result["all"]["kbypass afxdp busy"] + result["all"]["afxdp busy, Python lane"]:
        assert run["lost"] == 0 and run["samples"] > 100
    assert [r["lane"] for r in result["all"]["afxdp busy, Python lane"]] == ["python"]
    # the bounds: the kernel's best put its sysctls back; the floor was answered in XDP, not by a server
    assert busy_sysctls() == sysctls
    assert result["all"][latbench.FLOOR][0]["answered_in_xdp"] > 100
    assert result["ratios"]["kbypass afxdp busy"]["p50_best"] == pytest.approx(
        result["medians"]["kbypass afxdp busy"]["p50_us"] / result["medians"][latbench.KERNEL_BEST]["p50_us"])
    assert result["all"]["kbypass.socket busy (Python socket API)"][0]["lost"] == 0
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in names:
        assert name in proc.stdout  # the table


@pytest.mark.parametrize("real, args, word", one_real([(["--runs", "0"], "--runs"), (["--size", "8"], "--size")]))
def test_bench_latency_bad_input(real, args, word):
    proc = kbypass_for(real)("bench", "latency", *args)
    assert proc.returncode == 2 and word in proc.stderr
