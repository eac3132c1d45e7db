"""`kbypass xfer send | recv --lane python` runs no C: the real tool on the testbed, each end reporting at
exit which kbypass C modules its process loaded (none), and `--lane c` loading the transport's and the
batch path's (so the check can see them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.netns
PORT = 7150

# runs `kbypass ARGS...` and prints, as it exits, the kbypass C modules the process loaded
WRAP = textwrap.dedent("""
    import atexit, runpy, sys
    atexit.register(lambda: print("C-MODULES:" + ",".join(sorted(m for m in sys.modules
                                                                 if m.startswith("kbypass._fast"))),
                                  file=sys.stderr, flush=True))
    sys.argv = ["kbypass", *sys.argv[1:]]
    runpy.run_module("kbypass", run_name="__main__")
""")


def _modules(stderr: str) -> set[str]:
    line = [s for s in stderr.splitlines() if s.startswith("C-MODULES:")]
    assert line, stderr[-800:]
    return set(filter(None, line[-1][len("C-MODULES:"):].split(",")))


@pytest.mark.parametrize("encap", ["udp", "eth"])
@pytest.mark.parametrize("lane", ["python", "c"])
def test_xfer_lane_python_loads_no_c_module(testbed_hosts, lane, encap) -> None:
    if lane == "c" and os.environ.get("KBYPASS_PURE_PYTHON") == "1":
        pytest.skip("KBYPASS_PURE_PYTHON=1 switches the C modules off")
    a, b = testbed_hosts
    recv = subprocess.Popen([sys.executable, "-c", WRAP, "xfer", "recv", "--host", "b", "-p", str(PORT),
                             "--encap", encap, "--lane", lane, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = recv.stderr.readline()
        assert "listening" in line, line + recv.stderr.read()
        dst = ["--dst", f"{b.ipv4}:{PORT}"] if encap == "udp" else ["--dst", b.ipv4]
        send = subprocess.run([sys.executable, "-c", WRAP, "xfer", "send", "--host", "a", *dst, "--encap", encap,
                               "--size", "3M", "--lane", lane, "--json"],
                              capture_output=True, text=True, timeout=120)
        r_out, r_err = recv.communicate(timeout=60)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    assert send.returncode == 0, send.stderr[-800:]
    assert recv.returncode == 0, r_err[-800:]
    summaries = [json.loads(send.stdout), json.loads(r_out)]
    assert {s["lane"] for s in summaries} == {lane}
    assert summaries[0]["sha256"] == summaries[-1]["sha256"]
    for err in (send.stderr, r_err):
        loaded = _modules(err)
        if lane == "python":
            assert loaded == set(), f"--lane python loaded {loaded}"
        else:
            assert {"kbypass._fastxfer", "kbypass._fastbatch"} <= loaded


def test_xfer_lane_c_with_c_switched_off_names_the_switch(testbed_hosts, monkeypatch) -> None:
    monkeypatch.setenv("KBYPASS_PURE_PYTHON", "1")
    r = subprocess.run([sys.executable, "-m", "kbypass", "xfer", "recv", "--host", "b", "-p", str(PORT),
                        "--lane", "c", "--idle-timeout", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "KBYPASS_PURE_PYTHON" in r.stderr and "Traceback" not in r.stderr, r.stderr
