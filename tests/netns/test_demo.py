"""`kbypass demo` (and so `kbypass bench rx`) end to end on this session's testbed, with small bursts."""

import json

import pytest

from kbypass.bench import rx
from tests.kb import kbypass

pytestmark = pytest.mark.netns

PATHS = ["nftables raw drop", "kernel UDP socket", "PACKET_MMAP", "AF_XDP copy", "AF_XDP zero-copy", rx.C_RXDROP,
         rx.C_RXDROP_BARE, "XDP_DROP"]
CHATTER = 8  # libxdp's bare program takes every frame of the queue: the burst and the kernel's own ARP/IPv6


def test_demo_runs_bench_rx_and_writes_table_json_and_chart(testbed_hosts, tmp_path):
    prefix = testbed_hosts[0].netns[:-2]
    proc = kbypass("demo", "--prefix", prefix, "--packets", "30000", "--out", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "answered" in proc.stdout  # ping kept working beside the bypass
    result = json.loads((tmp_path / "rx.json").read_text())
    rows = result["rows"]
    assert [r["path"] for r in rows] == PATHS
    for r in rows:
        assert set(r) >= {"path", "pps", "delivered", "cpu"}
        if r["pps"] is not None:
            assert r["pps"] > 0 and 0 < r["delivered"] <= 1
    for t in result["trials"]:
        assert t["sent"] == 30000 and 0 < t["handled"] <= 30000 + (CHATTER if t["name"] == rx.C_RXDROP_BARE else 0)
    sink = next(t for t in result["trials"] if t["name"] == rx.AFXDP)
    assert sink["seq"]["received"] == sink["handled"]  # the sink ran its sequence check on every frame
    assert result["sink_over_c"]["per_run"]
    assert (tmp_path / "rx.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in PATHS:
        assert path in proc.stdout  # the table


def test_bench_rx_bad_input(testbed_hosts):
    proc = kbypass("bench", "rx", "--packets", "0")
    assert proc.returncode == 2 and "--packets" in proc.stderr
