"""`kbypass capture` writes pcap files that tshark (an independent reader) counts right."""

import json
import subprocess
import sys

import pytest

from tests.kb import kbypass
from tests.netns.test_cp import stop_at
from tests.netns.test_sink_reflect import _wait_attached

pytestmark = pytest.mark.netns


def tshark_count(path) -> list[str]:
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "udp.dstport", "-e", "frame.len"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("every, expected", [(1, 300), (3, 100)])
def test_capture_count_matches_tshark(testbed_hosts, tmp_path, every, expected):
    a, b = testbed_hosts
    pcap = tmp_path / "c.pcap"
    cap = subprocess.Popen([sys.executable, "-m", "kbypass", "capture", "--host", "b", "--rule", "udp dport 4321",
                            "-w", str(pcap), "--every", str(every), "--duration", "60", "--json"],
                           stdout=subprocess.PIPE, text=True)
    try:
        _wait_attached(b)
        kbypass("gen", "--host", "a", "--count", "300", "--size", "80", check=True)
        stop_at(cap, b, "udp dport 4321", 300)
        out, _ = cap.communicate(timeout=30)
    finally:
        cap.kill()
        cap.wait()  # gone, and its XDP program with it, before the next test
    summary = json.loads(out)
    assert summary["seen"] == 300 and summary["packets"] == expected
    rows = tshark_count(pcap)
    assert len(rows) == expected
    assert all(r.split() == ["4321", "80"] for r in rows)


def test_capture_bad_input(testbed_hosts, tmp_path):
    proc = kbypass("capture", "--host", "b", "-w", str(tmp_path / "x.pcap"), "--snaplen", "4")
    assert proc.returncode == 2 and "--snaplen" in proc.stderr and "14" in proc.stderr
