"""bench/tcp_vs_kernel.py's CPU per request: the server's CPU counts its children (nginx's worker) and fails
loudly where /proc cannot list them (not a silent 0), and the whole machine's busy time over the wrk run is
measured beside it (a kernel server's TCP receive work runs in softirq outside its own process)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kb import bench_script

# burns 0.5 s by its own precise clock; /proc counts in ticks sampled differently, so the test asks for 0.3
BURN = "import time\nt = time.process_time\nwhile t() < 0.5: pass\ntime.sleep(30)"


@pytest.fixture(scope="module")
def bench():
    return bench_script("tcp_vs_kernel")


@pytest.fixture
def parent_of_burner():
    """A process (idle itself) whose child burns 0.5 s of CPU, then sleeps."""
    outer = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}])"
    p = subprocess.Popen([sys.executable, "-c", outer])
    yield p
    for c in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split():
        subprocess.run(["kill", c])
    p.wait(10)


def wait_burnt(bench, pid: int) -> float:
    end = time.monotonic() + 20
    while time.monotonic() < end:
        got = bench.cpu_seconds(pid)
        if got >= 0.3:
            return got
        time.sleep(0.05)
    return got


def test_server_cpu_counts_its_children(bench, parent_of_burner):
    assert wait_burnt(bench, parent_of_burner.pid) >= 0.3


def test_no_children_files_is_an_error_not_a_zero(bench, parent_of_burner, monkeypatch):
    wait_burnt(bench, parent_of_burner.pid)
    real_glob, real_read = Path.glob, Path.read_text

    def no_children_glob(self, pattern):  # a kernel without CONFIG_PROC_CHILDREN
        return iter(()) if pattern.endswith("children") else real_glob(self, pattern)

    def no_children_read(self, *a, **kw):
        if self.name == "children":
            raise FileNotFoundError(str(self))
        return real_read(self, *a, **kw)

    monkeypatch.setattr(Path, "glob", no_children_glob)
    monkeypatch.setattr(Path, "read_text", no_children_read)
    with pytest.raises(RuntimeError, match="CONFIG_PROC_CHILDREN"):
        bench.cpu_seconds(parent_of_burner.pid)


def test_the_machine_s_cpu_per_request_is_measured_over_the_wrk_run(bench, monkeypatch):
    def burning_wrk(*args):  # 0.3 s of CPU in this process stands for wrk and the kernel's softirq work
        t = time.process_time()
        while time.process_time() - t < 0.3:
            pass
        return {"requests_per_s": 1000.0, "requests": 1000, "errors": None, "wrk_cpu_s": 0.3}

    monkeypatch.setattr(bench, "wrk", burning_wrk)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        res = bench.wrk_with_cpu(idle, None, None, 1.0, 1)
    finally:
        idle.kill()
        idle.wait()
    assert res["server_cpu_us_per_request"] < 100  # the idle server used next to nothing
    assert res["machine_cpu_us_per_request"] >= 250  # 0.3 s over 1000 requests (jiffies: 10 ms steps)
    assert res["machine_softirq_us_per_request"] >= 0
    assert 0 <= res["client_cpu_busy"] <= 1 and 0 <= res["server_cpu_busy"] <= 1
    assert res["others_cpu_s"] >= 0  # busy time neither the server's nor wrk's: other jobs (a shared machine)
    assert res["wrk_cpu_us_per_request"] == pytest.approx(300.0)  # wrk's 0.3 s over the 1000 requests


def test_the_warmup_runs_the_same_wrk_first_and_is_not_counted(bench, monkeypatch):
    calls = []

    def counting_wrk(a, b, port, seconds, conns):
        calls.append((seconds, conns))
        n = 7 if len(calls) == 1 else 1000  # a warm-up's count must not be the trial's
        return {"requests_per_s": float(n), "requests": n, "errors": None, "wrk_cpu_s": 0.0}

    monkeypatch.setattr(bench, "wrk", counting_wrk)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        res = bench.wrk_with_cpu(idle, None, None, 3.0, 16, warmup=1.0)
    finally:
        idle.kill()
        idle.wait()
    assert calls == [(1.0, 16), (3.0, 16)]
    assert res["requests"] == 1000
