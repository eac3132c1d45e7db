"""`kbypass demo` end to end on this session's testbed, with a small burst."""

import json

import pytest

from tests.kb import kbypass

pytestmark = pytest.mark.netns


def test_demo_runs_and_writes_table_json_and_chart(testbed_hosts, tmp_path):
    prefix = testbed_hosts[0].netns[:-2]
    proc = kbypass("demo", "--prefix", prefix, "--packets", "50000", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "answered" in proc.stdout  # ping kept working beside the bypass
    rows = json.loads((tmp_path / "demo.json").read_text())["rows"]
    names = {r["name"] for r in rows}
    assert {"kbypass sink", "python socket"} <= names
    for r in rows:
        assert r["sent"] == 50000 and 0 < r["handled"] <= r["sent"] and r["pps"] > 0
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
