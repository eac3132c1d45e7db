"""`kbypass xfer --digest` between two testbed hosts: crc64 at both ends equals the CRC-64/XZ of what was
written (liblzma's, an independent implementation), and none reports no value."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.kb import PURE_PYTHON, kbypass
from tests.unit.test_xfer_digest_choice import crc64_of_xz

PORT = 7000
pytestmark = pytest.mark.skipif(PURE_PYTHON, reason="crc64 is computed by the C core")


def _transfer(b, tmp_path, digest: str) -> tuple[dict, dict, bytes]:
    out = tmp_path / "out.bin"
    recv = subprocess.Popen(
        [sys.executable, "-m", "kbypass", "xfer", "recv", "--host", "b", "--port", str(PORT), "-w", str(out),
         "--digest", digest, "--json", "--idle-timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = recv.stderr.readline()
        assert "listening" in line, line + recv.stderr.read()
        sent = kbypass("xfer", "send", "--host", "a", "--dst", f"{b.ipv4}:{PORT}", "--size", "3M", "--seed", "4",
                       "--digest", digest, "--json", timeout=60)
        assert sent.returncode == 0, sent.stderr
        rout, rerr = recv.communicate(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    assert recv.returncode == 0, rerr
    return json.loads(sent.stdout), json.loads(rout), out.read_bytes()


def test_crc64_digest_at_both_ends_is_the_crc64_of_the_bytes(testbed_hosts, tmp_path) -> None:
    _, b = testbed_hosts
    s, r, data = _transfer(b, tmp_path, "crc64")
    assert s["bytes"] == r["bytes"] == len(data) == 3 << 20
    assert s["digest"] == r["digest"] == "crc64" and "sha256" not in s and "sha256" not in r
    assert s["crc64"] == r["crc64"] == f"{crc64_of_xz(data):016x}"


def test_no_digest(testbed_hosts, tmp_path) -> None:
    _, b = testbed_hosts
    s, r, data = _transfer(b, tmp_path, "none")
    assert s["bytes"] == r["bytes"] == len(data) == 3 << 20
    assert s["digest"] == r["digest"] == "none" and not {"sha256", "crc64"} & (set(s) | set(r))


def test_tcp_proto_takes_the_digest_too(testbed_hosts, tmp_path) -> None:
    """--proto tcp (kbypass's TCP, a kernel socat as the peer) prints the CRC-64 of what it sent."""
    from tests.netns.test_tcp_tools import send_to_socat

    _, b = testbed_hosts
    sink = tmp_path / "got.bin"
    p = send_to_socat(b, 5204, sink, "--size", "2M", "--digest", "crc64")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["digest"] == "crc64" and res["crc64"] == f"{crc64_of_xz(sink.read_bytes()):016x}"
