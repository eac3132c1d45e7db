"""`kbypass xfer` bad input without a network: every mistake is one line `kbypass: error: ...` naming the fix,
exit 2, found before an endpoint (port, XDP program) is opened and before --write is truncated."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kbypass.errors import UsageError
from kbypass.tools import xfer
from tests.kb import refused, unreachable

SEND = ["xfer", "send", "--iface", "nonexist0", "--dst", "10.9.9.9:7000", "--dst-mac", "02:00:00:00:00:02"]
RECV = ["xfer", "recv", "--iface", "nonexist0"]


@pytest.fixture
def no_network(monkeypatch):
    """run() may not reach the endpoint: opening it fails the test (the checks come first)."""
    monkeypatch.setattr(xfer, "require_root", lambda what: None)
    unreachable(monkeypatch, xfer, "_open", "the endpoint was opened before the bad input was refused")



# 5: --faults values out of range (and --loss outside [0, 1))
@pytest.mark.parametrize("spec, says", [
    ("loss=2", "--faults: loss=2.0: give a probability 0 <= loss <= 1"),
    ("loss=nan", "--faults: loss=nan: give a probability 0 <= loss <= 1"),
    ("delay=-1", "--faults: delay=-1.0: give a finite number of seconds >= 0"),
    ("rate_bps=0", "--faults: rate_bps=0.0: give a finite rate > 0 in bit/s"),
    ("queue_limit=0", "--faults: queue_limit=0: give a whole number of datagrams >= 1"),
    ("burst=2/0.3", "--faults: burst p_bad=2.0: give probabilities 0 <= p <= 1"),
    ("blackhole=4-2", "--faults: blackhole=4.0-2.0: give START-END seconds with 0 <= START <= END"),
    ("loss=1", "--faults loss=1.0: that drops every datagram, the transfer cannot finish: give 0 <= loss < 1"),
])
def test_faults_out_of_range(capsys, no_network, spec, says) -> None:
    assert says in refused(capsys, [*SEND, "--size", "1K", "--faults", spec])
    assert says in refused(capsys, [*RECV, "--faults", spec])


@pytest.mark.parametrize("loss", ["1", "1.5", "-0.1", "nan"])
def test_loss_outside_unit_interval(capsys, no_network, loss) -> None:
    line = refused(capsys, [*SEND, "--size", "1K", f"--loss={loss}"])
    assert "argument --loss" in line
    assert "give a probability 0 <= P < 1" in line


def test_faults_checked_in_one_process_run() -> None:
    r = subprocess.run([sys.executable, "-m", "kbypass", *SEND, "--size", "1K", "--faults", "loss=2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "kbypass: error: --faults: loss=2.0: give a probability 0 <= loss <= 1"


# 6: ports
@pytest.mark.parametrize("argv", [[*SEND, "--size", "1K", "--port", "70000"], [*SEND, "--size", "1K", "--port", "-1"],
                                  [*RECV, "--port", "65536"], [*RECV, "--port", "-1"], [*RECV, "-p", "0"]])
def test_port_out_of_range(capsys, no_network, argv) -> None:
    msg = refused(capsys, argv)  # recv listens on UDP, or TCP with --proto tcp: its message names both
    assert "give a UDP port from" in msg or "give a port (UDP, or TCP with --proto tcp) from" in msg


# 7: --file and --out
def test_missing_or_unreadable_file(capsys, no_network, tmp_path) -> None:
    line = refused(capsys, [*SEND, "--file", str(tmp_path / "nope")])
    assert f"--file {tmp_path / 'nope'}: no such file" in line
    assert "is a directory" in refused(capsys, [*SEND, "--file", str(tmp_path)])


def test_out_checked_up_front(capsys, no_network, tmp_path) -> None:
    line = refused(capsys, [*RECV, "-w", str(tmp_path / "no" / "dir.bin")])
    assert f"directory {tmp_path / 'no'} does not exist; create it" in line
    assert "is a directory: give a file path" in refused(capsys, [*RECV, "--write", str(tmp_path)])


def test_out_not_truncated_when_the_endpoint_fails(capsys, monkeypatch, tmp_path) -> None:
    out = tmp_path / "keep.bin"
    out.write_bytes(b"precious")

    def fail(*a, **kw):
        raise UsageError("nonexist0: no such interface")

    monkeypatch.setattr(xfer, "require_root", lambda what: None)
    monkeypatch.setattr(xfer, "_open", fail)
    assert "no such interface" in refused(capsys, [*RECV, "--write", str(out)])
    assert out.read_bytes() == b"precious"


# 8: --size
@pytest.mark.parametrize("size", ["-5", "-1M", "infk", "nanM", "1e400k", "lots", ""])
def test_bad_sizes(capsys, no_network, size) -> None:
    line = refused(capsys, [*SEND, f"--size={size}"])
    assert f"--size {size!r}: give a number of bytes >= 0, e.g. 4096, 64K, 100M, 1G" in line


def test_good_sizes() -> None:
    assert xfer._size("4096") == 4096
    assert xfer._size("64K") == 64 << 10
    assert xfer._size("1.5kb") == 1536
    assert xfer._size("100M") == 100 << 20
    assert xfer._size("1G") == 1 << 30
    assert xfer._size("0") == 0


# 12b: --idle-timeout, --duration
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "1e300"])
@pytest.mark.parametrize("argv, option", [
    ([*SEND, "--size", "1K"], "--idle-timeout"), (RECV, "--idle-timeout"), (SEND, "--duration"), (SEND, "-t"),
])
def test_bad_seconds(capsys, no_network, argv, option, value) -> None:
    line = refused(capsys, [*argv, f"{option}={value}"])
    assert "give a positive number of seconds" in line and ("--duration" if option == "-t" else option) in line


# the vocabulary: old names refused, options a backend or encapsulation ignores refused with the reason
@pytest.mark.parametrize("argv, says", [
    ([*RECV, "--out", "/tmp/x"], "unrecognized arguments: --out"),
    ([*RECV, "--timeout", "1"], "unrecognized arguments: --timeout"),
    (["xfer", "send", "--iface", "x", "--to", "10.0.0.1:7000", "--size", "1K"], "unrecognized arguments: --to"),
    ([*RECV, "--duration", "5"], "unrecognized arguments: --duration"),
    ([*RECV, "--backend", "socket", "--poll", "busy"], "--poll is the AF_XDP wait mode"),
    ([*RECV, "--backend", "packet_mmap", "--loss", "0.1", "--loss-at", "xdp"], "--loss-at xdp drops in the steering"),
    ([*RECV, "--loss-at", "user"], "give --loss P too"),
    ([*RECV, "--ethertype", "0x88b6"], "--ethertype is for --encap eth"),
    ([*RECV, "--encap", "eth", "--ip", "10.0.0.1"], "--ip is for --encap udp"),
    ([*RECV, "--encap", "eth", "--ethertype", "0x0800"], "unassigned EtherType"),
    ([*RECV, "--encap", "eth", "--ethertype", "5"], "unassigned EtherType"),
    ([*RECV, "--encap", "eth", "--ethertype", "0x10000"], "unassigned EtherType"),
    ([*RECV, "--encap", "eth", "--ethertype", "zz"], "give an EtherType like 0x88b5"),
    ([*RECV, "--seed", "-1"], "--seed"), ([*RECV, "--seed", "nan"], "--seed"), ([*RECV, "--seed", str(2**64)], "--seed"),
    ([*RECV, "--cpu", "-1"], "--cpu"), ([*RECV, "--loss", "inf"], "--loss"),
    ([*SEND, "--size", "1e30"], "--size '1e30'"), ([*SEND, "--size", "9999999999T"], "at most 1P"),
    ([*SEND, "--file", "/etc/hostname", "--duration", "1"], "give --file or --duration, not both"),
    ([*SEND, "--file", "-", "--size", "1K"], "not allowed with argument"),
    ([*SEND, "--file", "/nonexistent/x"], "no such file"),
    ([*SEND, "--size", "1K", "--digest", "md5"], "argument --digest: invalid choice"),
    ([*SEND, "--size", "1K", "--digest", "crc64", "--lane", "python"], "--digest crc64 is computed by the C core"),
    ([*RECV, "--digest", "crc64", "--lane", "python"], "give --digest sha256 or none, or --lane c"),
    ([*RECV, "--proto", "tcp", "--iperf3", "--digest", "crc64"], "an iperf3 test's bytes are thrown away"),
    ([*RECV, "-w", "/tmp"], "/tmp is a directory"),  # refused before any port opens (not written in place)
])
def test_refused(capsys, no_network, argv, says) -> None:
    assert says in refused(capsys, argv)


def test_write_dash_means_stdout_and_file_dash_stdin(capsys, monkeypatch) -> None:
    # '-' passes the checks (stdout for -w, stdin for --file): it reaches the endpoint, which fails here
    monkeypatch.setattr(xfer, "require_root", lambda what: None)
    assert "no interface 'nonexist0'" in refused(capsys, [*RECV, "-w", "-"])
    assert "nonexist0" in refused(capsys, [*SEND, "--file", "-"])


def test_failed_recv_leaves_no_write_file(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(xfer, "require_root", lambda what: None)
    out = tmp_path / "new.bin"
    refused(capsys, [*RECV, "-w", str(out)])
    assert not out.exists()


def _hashing_threads() -> list:
    import threading
    return [t for t in threading.enumerate() if t.name == "sha256" and t.is_alive()]


@pytest.mark.parametrize("argv, error", [
    (SEND, UsageError("nonexist0: no such interface")),
    (RECV, UsageError("nonexist0: no such interface")),
    (SEND, OSError(19, "No such device")),
    (RECV, OSError(19, "No such device")),
])
def test_a_failing_run_leaves_no_hashing_thread(capsys, monkeypatch, argv, error) -> None:
    """The integrity check's thread (tools/_digest.py) is stopped on every exit, not only after a transfer."""
    from kbypass.cli import main

    def fail(*a, **kw):
        raise error

    monkeypatch.setattr(xfer, "require_root", lambda what: None)
    monkeypatch.setattr(xfer, "_open", fail)
    before = _hashing_threads()
    try:
        main(argv)
    except (SystemExit, OSError):
        pass
    assert _hashing_threads() == before  # (threads another test left are not this run's)


@pytest.mark.parametrize("size", [0, 1, xfer.BLOCK - 1, xfer.BLOCK, xfer.BLOCK + 1, 3 * xfer.BLOCK + 12345])
def test_generated_stream_in_whole_blocks_is_the_piecewise_stream(size) -> None:
    """chunks(whole=True) (1 MiB lent blocks the send buffer keeps uncopied) sends the same bytes as the
    CHUNK pieces, to the byte: the receiver's digest of a generated stream does not depend on the MTU."""
    whole = list(xfer.chunks(None, size, 9, whole=True))
    pieces = list(xfer.chunks(None, size, 9))
    assert b"".join(whole) == b"".join(pieces) and sum(map(len, whole)) == size
    assert all(len(c) for c in whole) and all(len(c) <= xfer.CHUNK for c in pieces)
    full = size // xfer.BLOCK
    assert [type(c) for c in whole[:full]] == [bytearray] * full and all(len(c) == xfer.BLOCK for c in whole[:full])
    assert all(len(c) <= xfer.CHUNK for c in whole[full:])  # the last block cut short, in pieces


def test_endless_generated_stream_in_whole_blocks_is_the_piecewise_stream() -> None:
    it = xfer.chunks(None, None, 4, whole=True)
    whole = b"".join(next(it) for _ in range(3))
    it = xfer.chunks(None, None, 4)
    pieces = b"".join(bytes(next(it)) for _ in range(3 * xfer.BLOCK // xfer.CHUNK))
    assert whole == pieces
