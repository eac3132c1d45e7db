"""sink, reflect and capture without a network: every numeric and path option refused with one line
before anything is opened, the pieces they stand on (rule lists, packet memory, capture stamps), and the
options a backend ignores."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scapy.layers.l2 import Ether  # noqa: F401 (rdpcap reads LINKTYPE_ETHERNET)
from scapy.utils import rdpcap

from kbypass import cli
from kbypass.apps.capture import capture, spread
from kbypass.port.steered import SteeredPort, rule_list
from kbypass.errors import UsageError
from kbypass.apps.pcap import PcapWriter
from kbypass.port.batch import DESC, Batch
from kbypass.steer.rules import Rule
from kbypass.xsk.umem import Umem

WHERE = ["--iface", "lo", "--rule", "udp dport 9"]  # never reached: argparse refuses first
PORT_TOOLS = ["sink", "reflect", "capture"]
BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e300", "99999999999999999999999", "x", "½"]


def _one_error_line(capsys, argv, words=()):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbypass: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], err
    return lines[0]


def _argv(command, *extra):
    argv = [command, *WHERE, *extra]
    if command == "capture":
        argv += ["-w", "/tmp/never-written.pcap"]
    return argv


@pytest.mark.parametrize("command", PORT_TOOLS)
@pytest.mark.parametrize("option", ["-t", "--duration", "-c", "--count", "--batch", "--frames", "--ring-size",
                                    "--cpu", "--queue"])
@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_every_numeric_option_refuses_nonsense(capsys, command, option, value):
    if option in ("--queue", "--cpu") and value == "0":
        pytest.skip("queue 0 and CPU 0 exist")
    _one_error_line(capsys, _argv(command, option, value), [option.lstrip("-")[:4]])


@pytest.mark.parametrize("option, value", [("--idle-timeout", v) for v in BAD_NUMBERS])
def test_sink_idle_timeout_refuses_nonsense(capsys, option, value):
    _one_error_line(capsys, _argv("sink", option, value), ["--idle-timeout"])


@pytest.mark.parametrize("option", ["--snaplen", "--every"])
@pytest.mark.parametrize("value", BAD_NUMBERS + ["13"])
def test_capture_numbers_refuse_nonsense(capsys, option, value):
    if option == "--every" and value == "13":
        pytest.skip("one in 13 is a fine sample")
    _one_error_line(capsys, _argv("capture", option, value), [option])


@pytest.mark.parametrize("size, words", [("1073741824", ["65536"]), ("1000", ["power of two"]),
                                         ("16777216", ["65536"]), ("32", ["64"])])
def test_ring_size_has_bounds_and_is_a_power_of_two(capsys, size, words):
    # 2^30 used to spin at 100% CPU and 2^24 to take 1.6 GB
    _one_error_line(capsys, _argv("sink", "--ring-size", size), words)


def test_frames_too_many_is_one_line_naming_the_bound(capsys):
    # used to be an ENOMEM traceback from the packet memory's mmap
    _one_error_line(capsys, _argv("sink", "--frames", "100000000"), ["--frames", "262144"])


def test_packet_memory_that_cannot_be_had_is_a_usage_error():
    with pytest.raises(UsageError, match=r"cannot allocate 134217728 frames .*--frames"):
        Umem(frames=1 << 27, frame_size=2048)  # 256 GiB: more than the machine lends


@pytest.mark.parametrize("path, words", [("/nonexistent-dir/x.pcap", ["does not exist"]),
                                         ("/tmp", ["is a directory"]), ("", ["file path"])])
def test_capture_write_paths(capsys, path, words):
    argv = ["capture", *WHERE, "-w", path]
    _one_error_line(capsys, argv, words)


def test_old_long_names_are_gone_and_short_ones_work(capsys):
    p = cli.build_parser()
    for command in PORT_TOOLS:
        args = p.parse_args([command, "-i", "eth9", "-t", "2", "-c", "5", "--prefix", "zz", "--cpu", "0"]
                            + (["-w", "/tmp/x.pcap"] if command == "capture" else []))
        assert (args.iface, args.duration, args.count, args.prefix, args.cpu) == ("eth9", 2.0, 5, "zz", 0)


@pytest.mark.parametrize("argv, words", [
    (["capture", "--backend", "socket", "-w", "/tmp/hp-never.pcap"], ["made-up headers"]),
    (["sink", "--backend", "socket", "--ring-size", "1024"], ["--ring-size", "socket"]),
    (["sink", "--backend", "packet_mmap", "--queue", "1"], ["--queue", "afxdp"]),
    (["reflect", "--backend", "socket", "--macs-only"], ["--macs-only"]),
])
def test_options_a_backend_ignores_are_refused(capsys, tmp_path, argv, words):
    code = cli.main([*argv, *WHERE])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


# --- SteeredPort's rules -------------------------------------------------------------------------------------

def test_one_rule_string_is_a_list_of_one_not_letters():
    assert rule_list("udp dport 1") == [Rule("udp", dport=1)]  # parsed, as the steering gets them
    r = Rule("udp", dport=1)
    assert rule_list(r) == [r]
    assert rule_list(("udp", "tcp")) == [Rule("udp"), Rule("tcp")]


@pytest.mark.parametrize("bad, words", [(5, "not int"), ({"udp"}, "not set"), ([5], "not int"),
                                        (b"udp dport 1", "not bytes")])
def test_other_rule_types_refused_before_anything_is_attached(bad, words):
    with pytest.raises(UsageError, match=words):
        SteeredPort("nosuch-if0", 0, bad)  # the interface is never looked at


# --- capture stamps ------------------------------------------------------------------------------------------

def test_spread_stamps_are_distinct_increasing_and_end_at_the_read():
    t = spread(1_000_000_000, 1_000_050_000, 256)
    assert len(set(t.tolist())) == 256 and (np.diff(t) > 0).all()
    assert t[-1] == 1_000_050_000 and t[0] > 1_000_000_000


class BatchesPort:
    """Hands out the given batch sizes of 60-byte frames, one per receive, then nothing."""

    mode = "test"

    def __init__(self, sizes):
        self.mem = np.zeros(2048 * sum(sizes), np.uint8)
        self.sizes = list(sizes)
        self.next = 0

    def receive(self, n):
        if not self.sizes:
            return Batch(np.zeros(0, DESC), self.mem)
        k = self.sizes.pop(0)
        d = np.zeros(k, DESC)
        d["addr"] = (self.next + np.arange(k)) * 2048
        d["len"] = 60
        self.mem[d["addr"].astype(np.int64)] = (self.next + np.arange(k)) % 256  # frame numbers, to check order
        self.next += k
        return Batch(d, self.mem)

    def wait(self, timeout):
        return False

    def free(self, batch):
        pass


def test_capture_gives_every_packet_its_own_time(tmp_path):
    # 1000 packets in 4 batches used to get 4 distinct time stamps
    path = tmp_path / "c.pcap"
    with PcapWriter(str(path)) as w:
        res = capture(BatchesPort([250, 250, 250, 250]), w, batch=256, count=1000)
    assert res.packets == res.seen == 1000
    pkts = rdpcap(str(path))
    times = [int(p.time * 10**9) for p in pkts]  # exact: a float has no nanoseconds left at 1.7e9 s
    assert len(set(times)) == 1000 and times == sorted(times)
    assert [bytes(p)[0] for p in pkts] == [i % 256 for i in range(1000)]


def test_capture_every_n_counts_what_it_did_not_write(tmp_path):
    with PcapWriter(str(tmp_path / "c.pcap")) as w:
        res = capture(BatchesPort([100, 100]), w, batch=256, every=4, duration=0.3)
    assert (res.seen, res.packets) == (200, 50)


def test_sigterm_in_a_forked_child_does_not_run_the_parents_cleanup(tmp_path):
    # pyroute2 forks a child per namespace and ends it with SIGTERM; the child inherited the CLI's handler,
    # raised Terminated through the parent's frames and ran their cleanup: capture deleted its own pcap.
    import os
    import signal

    marker = tmp_path / "cleanup-ran-in-child"
    old = signal.signal(signal.SIGTERM, cli._on_sigterm)
    old_pid, cli._MAIN_PID = getattr(cli, "_MAIN_PID", None), os.getpid()
    try:
        pid = os.fork()
        if pid == 0:  # the child: what a `with` or `except BaseException` of the parent would do
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except BaseException:
                marker.write_text("x")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGTERM, old)
        cli._MAIN_PID = old_pid
    assert os.waitstatus_to_exitcode(status) == 143 and not marker.exists()


def test_too_few_frames_to_lend_the_kernel_any_is_refused(capsys):
    # --frames 1 lent the kernel none (half are lent) and the run received nothing, silently
    _one_error_line(capsys, _argv("reflect", "--frames", "1"), ["--frames", "64"])
