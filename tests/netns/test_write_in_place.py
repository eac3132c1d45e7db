"""`-w PATH` where PATH is not a regular file (a character device such as /dev/null, a FIFO) is written as it
is, as tcpdump -w does: xfer recv and capture write regular files beside the target and rename them over it,
which once turned /dev/null into a regular file for the whole machine (every later `> /dev/null` filled it,
and tmux could no longer start its server)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from kbypass import netns
from tests.kb import kbypass

pytestmark = pytest.mark.netns
PORT = 7010
SIZE = 2 << 20


def _null_device(tmp_path):
    path = tmp_path / "null"
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the same device as /dev/null
    return path


def _xfer_into(b, target) -> tuple[int, dict, str, dict]:
    """xfer recv -w target, a generated stream sent to it: (exit code, its summary, its stderr, the sender's)."""
    recv = subprocess.Popen(
        [sys.executable, "-m", "kbypass", "xfer", "recv", "--host", "b", "--port", str(PORT), "-w", str(target),
         "--json", "--idle-timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = recv.stderr.readline()
        assert "listening" in line, line + recv.stderr.read()
        sent = kbypass("xfer", "send", "--host", "a", "--dst", f"{b.ipv4}:{PORT}", "--size", str(SIZE), "--seed", "3",
                       "--json", timeout=60)
        assert sent.returncode == 0, sent.stderr
        out, err = recv.communicate(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    return recv.returncode, json.loads(out) if out.strip() else {}, err, json.loads(sent.stdout)


def test_xfer_recv_writes_a_device_in_place(testbed_hosts, tmp_path) -> None:
    _, b = testbed_hosts
    dev = _null_device(tmp_path)
    rc, summary, err, _ = _xfer_into(b, dev)
    assert rc == 0, err
    assert stat.S_ISCHR(os.stat(dev).st_mode), "the device node was replaced"
    assert summary["write"] == str(dev) and summary["bytes"] == SIZE
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_xfer_recv_writes_a_fifo_in_place_and_its_reader_gets_every_byte(testbed_hosts, tmp_path) -> None:
    _, b = testbed_hosts
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = hashlib.sha256()
    size = [0]

    def read() -> None:
        with open(fifo, "rb") as f:  # blocks until the receiver opens it for writing
            while chunk := f.read(1 << 16):
                got.update(chunk)
                size[0] += len(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rc, summary, err, sent = _xfer_into(b, fifo)
    reader.join(10)
    assert rc == 0, err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert size[0] == SIZE and summary["sha256"] == got.hexdigest() == sent["sha256"]


def _capture_into(a, b, dev, *options: str) -> tuple[int, str, str]:
    """kbypass capture on b into dev while host a sends it UDP datagrams until it ends: (code, out, err)."""
    cap = subprocess.Popen([sys.executable, "-m", "kbypass", "capture", "--host", "b", "--rule", "udp dport 4999",
                            "-w", str(dev), *options, "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        with netns.entered(a.netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with s:
            while cap.poll() is None and time.monotonic() < deadline:
                s.sendto(b"x" * 64, (b.ipv4, 4999))
                time.sleep(0.05)
        out, err = cap.communicate(timeout=20)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    return cap.returncode, out, err


def test_capture_writes_a_device_in_place(testbed_hosts, tmp_path) -> None:
    a, b = testbed_hosts
    dev = _null_device(tmp_path)
    rc, out, err = _capture_into(a, b, dev, "-c", "3", "-t", "20")
    assert rc == 0, err
    assert json.loads(out)["packets"] == 3
    assert stat.S_ISCHR(os.stat(dev).st_mode), "the device node was replaced"


def test_capture_workers_merge_into_a_device_in_place(testbed_hosts, tmp_path) -> None:
    """capture --workers opens a device target before the team starts (a FIFO's open waits for its reader,
    which with the merge's signals held could only be killed) and merges into it as it is."""
    a, b = testbed_hosts
    dev = _null_device(tmp_path)
    rc, _, err = _capture_into(a, b, dev, "--workers", "2", "-t", "3")
    assert rc == 0, err
    assert stat.S_ISCHR(os.stat(dev).st_mode), "the device node was replaced"
    assert not [p for p in os.listdir(tmp_path) if p != "null"], os.listdir(tmp_path)
