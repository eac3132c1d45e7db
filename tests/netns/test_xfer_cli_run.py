"""`kbypass xfer` as a user runs it: progress JSON lines with --json, a killed receiver noticed after
--idle-timeout (not 30 s) with the countdown on stderr, SIGINT/SIGTERM giving the partial summary and
130/143 (at start-up, mid-run), and a failed receiver leaving no --write file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.kb import (
    communicate_or_stack,
    faulthandler_env,
    rx_packets,
    udp_bound,
    wait_until,
    xdp_attached,
)

pytestmark = pytest.mark.netns
PORT = 7100


def start_recv(*extra: str) -> subprocess.Popen:
    recv = subprocess.Popen([sys.executable, "-m", "kbypass", "xfer", "recv", "--host", "b", "-p", str(PORT),
                             "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=faulthandler_env())
    line = recv.stderr.readline()
    assert "listening" in line, line + recv.stderr.read()
    return recv


def start_send(b, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kbypass", "xfer", "send", "--host", "a", "--dst",
                             f"{b.ipv4}:{PORT}", "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(*procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_progress_lines_and_a_dead_receiver_noticed_in_idle_timeout(testbed_hosts) -> None:
    a, b = testbed_hosts
    recv = start_recv()
    send = start_send(b, "-t", "60", "--idle-timeout", "2")
    try:
        # two progress lines with bytes in them (about one a second), however long start-up took
        early, deadline = [], time.monotonic() + 30
        while sum(x.get("event") == "progress" and x["bytes"] > 0 for x in json_lines("".join(early))) < 2:
            line = send.stderr.readline()
            assert line and time.monotonic() < deadline, "".join(early)
            early.append(line)
        recv.kill()  # kill -9: not a word to the sender
        recv.wait()
        killed = time.monotonic()
        out, err = send.communicate(timeout=30)
        noticed = time.monotonic() - killed
        err = "".join(early) + err
    finally:
        stop(recv, send)
    # before: the dead-peer time was 30 s whatever the options
    assert noticed < 8, noticed
    assert send.returncode == 2, err
    progress = [x for x in json_lines(err) if x.get("event") == "progress"]
    assert len(progress) >= 2 and progress[-1]["bytes"] > 0, err
    assert any("gives_up_in_s" in x for x in progress), err  # the countdown once the peer fell silent
    summary = json.loads(out)
    assert summary["bytes"] > 0 and "peer silent" in summary["error"]
    assert err.strip().splitlines()[-1].startswith("kbypass: error: connection lost")
    assert not xdp_attached(a)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_prints_the_partial_summary(testbed_hosts, sig, code, tmp_path) -> None:
    a, b = testbed_hosts
    got = tmp_path / "got.bin"
    recv = start_recv("-w", str(got))
    before = rx_packets(b)
    send = start_send(b, "-t", "60")
    try:
        # mid-run: once the transfer's data flows (2000 datagrams at host b), however long start-up took
        wait_until(lambda: rx_packets(b) - before >= 2000, "the transfer's data at host b", timeout=30, proc=send,
                   interval=0.1)
        send.send_signal(sig)
        sout, serr = send.communicate(timeout=20)
        # the sender's reset ends the receiver too (once it did not, for 20 s: where it was stuck, if again)
        rout, rerr = communicate_or_stack(recv, 20, f"the receiver after the sender's reset (sender: {sout})")
    finally:
        stop(recv, send)
    assert send.returncode == code, serr
    s = json.loads(sout)
    assert s["interrupted"] == sig.name and s["bytes"] > 0, s
    assert "Traceback" not in serr + rerr
    r = json.loads(rout)
    assert recv.returncode == 2 and r["bytes"] > 0 and "error" in r, rerr  # the sender reset the connection
    assert not got.exists()  # a failed receiver leaves no partial file it made
    assert not xdp_attached(a) and not xdp_attached(b)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_waiting_for_a_sender(testbed_hosts, sig, code, tmp_path) -> None:
    a, b = testbed_hosts
    got = tmp_path / "got.bin"
    recv = start_recv("-w", str(got))
    try:
        wait_until(lambda: xdp_attached(b), "xfer recv attached")
        recv.send_signal(sig)
        out, err = recv.communicate(timeout=20)
    finally:
        stop(recv)
    assert recv.returncode == code, err
    assert json.loads(out or "{}").get("interrupted") == sig.name, err
    assert not got.exists()  # nothing arrived: the file it made is gone
    assert not xdp_attached(b) and not udp_bound(b.netns, PORT)


def test_receiver_gives_up_waiting_and_leaves_no_file(testbed_hosts, tmp_path) -> None:
    a, b = testbed_hosts
    got = tmp_path / "got.bin"
    t0 = time.monotonic()
    recv = subprocess.run([sys.executable, "-m", "kbypass", "xfer", "recv", "--host", "b", "-p", str(PORT),
                           "-w", str(got), "--idle-timeout", "1"], capture_output=True, text=True, timeout=60)
    assert recv.returncode == 2 and time.monotonic() - t0 < 30
    assert recv.stderr.strip().splitlines()[-1].startswith("kbypass: error: timed out after 1.0 s while accepting")
    assert not got.exists()
    # a file that was there keeps what it had (it was cut to 0 bytes before), and no partial file stays
    got.write_bytes(b"an earlier transfer")
    recv = subprocess.run([sys.executable, "-m", "kbypass", "xfer", "recv", "--host", "b", "-p", str(PORT),
                           "-w", str(got), "--idle-timeout", "1"], capture_output=True, text=True, timeout=60)
    assert recv.returncode == 2
    assert got.read_bytes() == b"an earlier transfer"
    assert [p.name for p in tmp_path.iterdir()] == ["got.bin"]
