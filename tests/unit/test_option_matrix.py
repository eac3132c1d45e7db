"""Issue "The first hour", item 1: every numeric option of every command, tried with NaN, infinities, a
negative, zero (where zero means nothing) and absurdly large values, and every path option with a missing
directory, a directory and '-': one line `kbypass: error: ...` naming the option, exit 2, no traceback,
and nothing opened, attached, made or written before the refusal.

In process (kbypass.cli.main), with every step that opens something replaced by one that fails the test
("reached"): a value that is not refused runs into it. The options come from the real parser, so a new
numeric option is in the matrix without anyone adding it here."""

from __future__ import annotations

import argparse
import os

import pytest

from kbypass import cli
from kbypass.host import ifstats, testbed, tune
from kbypass.bench import latency as latbench, rx as rxbench
from tests.clitree import leaves, long_name, options

BAD = ["nan", "inf", "-inf", "-1", "0", "1e300", "99999999999999999999"]

# One valid command line per command, without a testbed (interfaces named outright, lo): each must get as
# far as opening something (test_every_base_command_line_reaches_the_open), so a refusal in the matrix is
# the option's, not the rest of the line's. "{tmp}" is the test's tmp_path.
WHERE = ["--iface", "lo"]
BASE = {
    "sink": ["sink", *WHERE, "--rule", "udp dport 9"],
    "reflect": ["reflect", *WHERE, "--rule", "udp dport 9"],
    "capture": ["capture", *WHERE, "--rule", "udp dport 9", "--write", "{tmp}/cap.pcap"],
    "gen": ["gen", *WHERE, "--src", "10.0.0.1", "--dst", "10.0.0.2:4321", "--dst-mac", "02:00:00:00:00:02",
            "--count", "1"],
    "stats": ["stats", *WHERE, "--count", "1"],
    "top": ["top", "--once"],
    "report": ["report", "/etc/hostname", "-o", "{tmp}/report.html"],
    "pingpong server": ["pingpong", "server", *WHERE, "--ip", "127.0.0.1"],
    "pingpong client": ["pingpong", "client", *WHERE, "--ip", "127.0.0.1", "--dst", "127.0.0.1:11111"],
    "xfer send": ["xfer", "send", *WHERE, "--dst", "127.0.0.1:7000", "--dst-mac", "02:00:00:00:00:02",
                  "--size", "1K"],
    "xfer recv": ["xfer", "recv", *WHERE],
    "http serve": ["http", "serve", *WHERE, "--ip", "127.0.0.1"],
    "http get": ["http", "get", *WHERE, "--ip", "127.0.0.1", "http://127.0.0.1:8080/"],
    "tune show": ["tune", "show", *WHERE],
    "tune apply": ["tune", "apply", *WHERE, "busy_poll=0"],
    "testbed up": ["testbed", "up", "--prefix", "htzz"],
    "testbed down": ["testbed", "down", "--prefix", "htzz"],
    "testbed status": ["testbed", "status", "--prefix", "htzz"],
    "doctor": ["doctor", "--prefix", "htzz"],
    "demo": ["demo", "--prefix", "htzz", "--out", "{tmp}/res"],
    "bench rx": ["bench", "rx", "--prefix", "htzz", "--out", "{tmp}/res"],
    "bench latency": ["bench", "latency", "--prefix", "htzz", "--out", "{tmp}/res"],
    "cp serve": ["cp", "serve"],
    "cp start": ["cp", "start"],
    "cp status": ["cp", "status"],
    "cp stop": ["cp", "stop"],
    "run": ["run", "--status"],  # (an app after "--" would take the options tried after it)
}
# Options that mean something only with another option: given with it, so that the value is what is tried
# (an option the backend ignores is refused for that reason, which would hide a missing range check).
WITH = {
    ("gen", "--rate"): ["--backend", "afxdp"],
    ("gen", "--queue"): ["--backend", "afxdp"],
    ("gen", "--batch"): ["--backend", "afxdp"],
    ("xfer send", "--ethertype"): ["--encap", "eth"],
    ("xfer recv", "--ethertype"): ["--encap", "eth"],
}
# --file and --size are alternatives: --file is tried without the base's --size
WITHOUT = {("xfer send", "--file"): ["--size", "1K"]}

# Options whose value is text holding numbers: (command, option) -> how a bad number is written in it.
TEXT_NUMBERS = {
    ("gen", "--size"): "{}",
    ("gen", "--rate"): "{}",
    ("xfer send", "--size"): "{}",
    ("xfer send", "--faults"): "loss={}",
    ("xfer recv", "--faults"): "loss={}",
}
# Values that are meaningful, so not refused: (option or (command, option)) -> values.
VALID = {
    "--seed": {"0", "99999999999999999999"},  # any whole number >= 0 seeds Python's random
    "--loss": {"0"},  # no loss
    "--faults": {"0"},  # loss=0: no loss
    "--queue": {"0"},  # the first queue
    "--cpu": {"0"},  # the first CPU
    "--worker-queues": {"0"},  # one worker, on the first queue
    "--cpus": {"0"},  # its CPU
    "--warmup": {"0"},  # no warm-up round trips
    ("pingpong client", "--port"): {"0"},  # a client's local port: 0 picks a free one
    ("xfer send", "--port"): {"0"},
    ("xfer send", "--size"): {"0"},  # an empty transfer
    ("run", "--spin"): {"0"},  # never spin
}
PATH_TYPES = {"output_file.<locals>.parse", "output_dir", "input_file"}
NAME_TYPES = {"testbed_prefix"}  # a name, not a number: "nan" and "0" are fine testbed prefixes


def command(path) -> str:
    return " ".join(path)


def is_numeric(cmd: str, action: argparse.Action) -> bool:
    if (cmd, long_name(action)) in TEXT_NUMBERS:
        return True
    t = action.type
    if t is None or t is str or isinstance(action, argparse._StoreConstAction):
        return False
    return getattr(t, "__qualname__", "") not in PATH_TYPES | NAME_TYPES


def numeric_cases():
    for path, parser in leaves():
        cmd = command(path)
        for action in options(parser):
            if not is_numeric(cmd, action):
                continue
            opt = long_name(action)
            ok = VALID.get((cmd, opt), VALID.get(opt, set()))
            for v in BAD:
                if v not in ok:
                    yield pytest.param(cmd, opt, v, id=f"{cmd}:{opt}={v}")
    for v in BAD:  # tune apply's KNOB=VALUE: a sysctl of the whole machine
        if v != "0":
            yield pytest.param("tune apply", "busy_poll", v, id=f"tune apply:busy_poll={v}")


@pytest.fixture(scope="module", autouse=True)
def one_parser():
    """main() builds its parser afresh on each call (every command's options: ~12 ms); the matrix's ~800
    runs share one, as parse_args leaves a parser as it found it. main() is otherwise the real one."""
    parser = cli.build_parser()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "build_parser", lambda only=None: parser)
        yield


@pytest.fixture
def guarded(monkeypatch, tmp_path):
    """Every step that opens, attaches, makes or measures something fails the test when reached; the
    working directory is an empty one of the test's (a file named '-' would show there)."""
    from kbypass.port.steered import SteeredPort
    from kbypass.endpoint import UdpEndpoint
    from kbypass.gen.live import LiveGenerator
    from kbypass.port.afxdp import AfXdpPort
    from kbypass.port.packet_mmap import PacketMmapPort
    from kbypass.port.socket_port import SocketPort
    from kbypass.steer.steering import Steering
    from kbypass.xfer.endpoint import TransportEndpoint

    def reached(what):
        def fail(*a, **k):
            raise AssertionError(f"REACHED {what}: the bad value was not refused first")

        return fail

    monkeypatch.setattr(UdpEndpoint, "__new__", reached("UdpEndpoint()"))
    for cls in (SteeredPort, LiveGenerator, AfXdpPort, PacketMmapPort, SocketPort, Steering):
        monkeypatch.setattr(cls, "__init__", reached(f"{cls.__name__}()"))
    monkeypatch.setattr(TransportEndpoint, "open", classmethod(reached("TransportEndpoint.open")))
    for mod, name in ((testbed, "_up"), (testbed, "down"), (testbed, "status"), (testbed, "require"),
                      (testbed, "host"), (tune, "apply"), (tune, "show"), (ifstats, "sample"),
                      (rxbench, "run"), (latbench, "run")):
        monkeypatch.setattr(mod, name, reached(f"{mod.__name__}.{name}"))
    from kbypass.cp import server
    from kbypass.cp.client import ControlPlaneClient
    from kbypass.host import doctor

    monkeypatch.setattr(doctor, "run", reached("kbypass.host.doctor.run"))
    from kbypass.host.inventory import Inventory
    from kbypass.tools import report

    monkeypatch.setattr(Inventory, "__init__", reached("Inventory()"))
    monkeypatch.setattr(report, "load", reached("kbypass.tools.report.load"))
    monkeypatch.setattr(server, "serve", reached("kbypass.cp.server.serve"))
    monkeypatch.setattr(ControlPlaneClient, "__init__", reached("ControlPlaneClient()"))
    from kbypass.tools import run as run_tool

    monkeypatch.setattr(run_tool, "_control_plane", reached("kbypass.tools.run._control_plane"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


def argv_for(cmd: str, tmp, extra=(), drop=()) -> list[str]:
    base = [a.replace("{tmp}", str(tmp)) for a in BASE[cmd]]
    for i in range(len(base)):
        if base[i: i + len(drop)] == list(drop) and drop:
            base = base[:i] + base[i + len(drop):]
            break
    return [*base, *extra]


def run(argv) -> tuple[int, str]:
    import sys

    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's errors exit from parse_args
        rc = e.code
    sys.stdout.flush()
    return rc, ""


def files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, dirs, fs in os.walk(root) for f in fs + dirs}


def refused_in_one_line(capsys, argv, names) -> str:
    rc, _ = run(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert rc == 2, f"exit {rc}: {err}"
    assert len(lines) == 1 and lines[0].startswith("kbypass: error: "), err
    assert any(n in lines[0] for n in names), f"the error does not name {names[0]}: {lines[0]}"
    return lines[0]


def test_every_command_has_a_base_line() -> None:
    assert {command(p) for p, _ in leaves()} <= set(BASE), "a new command: give it a line in BASE"


@pytest.mark.parametrize("cmd, extra, drop", [
    *[(c, [], []) for c in BASE if c not in ("testbed down", "testbed status")],
    *[(c, e, []) for (c, _), e in WITH.items()],
    ("xfer send", ["--file", "/etc/hostname"], ["--size", "1K"]),
])
def test_every_base_command_line_reaches_the_open(guarded, capsys, cmd, extra, drop) -> None:
    """The lines the matrix starts from are valid: they are stopped only by the guard (else a refusal in
    the matrix could be the line's, not the option's)."""
    try:
        rc, _ = run(argv_for(cmd, guarded, extra, drop))
    except AssertionError as e:
        assert "REACHED" in str(e)
        return
    pytest.fail(f"exit {rc} before the open: {capsys.readouterr().err}")


@pytest.mark.parametrize("cmd, option, value", list(numeric_cases()))
def test_bad_number_is_one_line_before_anything_opens(guarded, capsys, cmd, option, value) -> None:
    before = files(guarded)
    if option == "busy_poll":
        argv = argv_for(cmd, guarded, drop=["busy_poll=0"]) + [f"busy_poll={value}"]
    else:
        text = TEXT_NUMBERS.get((cmd, option), "{}").format(value)
        argv = argv_for(cmd, guarded, [*WITH.get((cmd, option), []), f"{option}={text}"],
                        WITHOUT.get((cmd, option), ()))
    refused_in_one_line(capsys, argv, [option])
    assert files(guarded) == before, "a file or directory was made before the refusal"


# --- paths --------------------------------------------------------------------------------------------

# (command, option) -> kind: "out" a file written, "in" a file read, "dir" a directory for results
PATHS = {
    ("capture", "--write"): "out",
    ("xfer recv", "--write"): "out",
    ("pingpong client", "--histogram"): "out",
    ("top", "--record"): "out",
    ("report", "--output"): "out",
    ("http get", "--output"): "out",
    ("xfer send", "--file"): "in",
    ("demo", "--out"): "dir",
    ("bench rx", "--out"): "dir",
    ("bench latency", "--out"): "dir",
}
# the README: "-" is the standard stream where it makes sense (stdout for what is written, stdin for xfer
# send's --file)
STDOUT_OK = {("capture", "--write"), ("xfer recv", "--write"), ("xfer send", "--file"), ("http get", "--output")}


def test_every_path_option_is_in_the_matrix() -> None:
    found = set()
    for path, parser in leaves():
        for a in options(parser):
            qual = getattr(a.type, "__qualname__", "")
            if qual in PATH_TYPES or long_name(a) in ("--write", "--out", "--file", "--histogram"):
                found.add((command(path), long_name(a)))
    assert found <= set(PATHS), f"path options the matrix does not try: {found - set(PATHS)}"


def path_cases():
    for (cmd, opt), kind in PATHS.items():
        if kind == "dir":
            yield pytest.param(cmd, opt, "{tmp}/afile", id=f"{cmd}:{opt}=a-file")
            yield pytest.param(cmd, opt, "{tmp}/afile/sub", id=f"{cmd}:{opt}=under-a-file")
        else:
            yield pytest.param(cmd, opt, "{tmp}/nodir/x.out", id=f"{cmd}:{opt}=missing-dir")
            yield pytest.param(cmd, opt, "{tmp}", id=f"{cmd}:{opt}=a-directory")
        if (cmd, opt) not in STDOUT_OK:
            yield pytest.param(cmd, opt, "-", id=f"{cmd}:{opt}=-")


@pytest.mark.parametrize("cmd, option, value", list(path_cases()))
def test_bad_path_is_one_line_and_nothing_is_written(guarded, capsys, cmd, option, value) -> None:
    (guarded / "afile").write_text("keep")
    before = files(guarded)
    argv = argv_for(cmd, guarded, [option, value.replace("{tmp}", str(guarded))], WITHOUT.get((cmd, option), ()))
    refused_in_one_line(capsys, argv, [option])
    assert files(guarded) == before, "a file or directory was made before the refusal"
    assert (guarded / "afile").read_text() == "keep"


@pytest.mark.parametrize("cmd, option", sorted(STDOUT_OK))
def test_dash_is_standard_output_not_a_file_named_dash(guarded, capsysbinary, cmd, option) -> None:
    """Where '-' is allowed it is standard output: it gets as far as the open, and no file '-' appears.
    (Binary capture: a pcap header may already be on standard output when the open is reached.)"""
    with pytest.raises(AssertionError, match="REACHED"):
        run(argv_for(cmd, guarded, [option, "-"], WITHOUT.get((cmd, option), ())))
    assert not (guarded / "cwd" / "-").exists(), f"{cmd} {option} - made a file named '-'"


@pytest.mark.parametrize("value", ["", "much-too-long", "a b", "x/y"])
def test_a_bad_prefix_is_refused_not_read_as_the_default(capsys, value) -> None:
    """`--prefix ""` (an unset shell variable) acted on the default testbed 'kb': `testbed down --prefix
    "$UNSET"` took it down."""
    from kbypass import cli

    with pytest.raises(SystemExit) as exited:  # argparse's own exit, before anything runs
        cli.main(["testbed", "down", "--prefix", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kbypass: error: testbed down: argument --prefix"), err
