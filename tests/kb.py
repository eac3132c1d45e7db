"""Helpers for running the real `kbypass` command in tests, and for looking at the testbed."""

import importlib.util
import ipaddress
import os
import socket
import subprocess
import sys

import pytest

from kbypass.testing.plugin import pid_tag  # noqa: F401 (tests name their own testbeds with it)

# KBYPASS_PURE_PYTHON=1 switches kbypass's C modules off (kbypass.backend): tests of the C paths skip then
PURE_PYTHON = os.environ.get("KBYPASS_PURE_PYTHON") == "1"
needs_c = pytest.mark.skipif(PURE_PYTHON, reason="KBYPASS_PURE_PYTHON=1 switches the C modules off")


def half_behind_slow(*axes: list) -> list:
    """Every combination of the axes' values as pytest params, where the fast suite (no --slow) runs those
    whose indexes add up to an even number: each value of each axis still runs in it, with every value of
    any other axis for some of them. For axes that take one path whatever their value (SIGINT and SIGTERM
    once a tool's Stopper has them); --slow runs the rest."""
    import itertools

    def name(v) -> str:
        return getattr(v, "name", None) or (f"{v:+.2f}s" if isinstance(v, float) else str(v))

    return [pytest.param(*(v for _, v in combo), id="-".join(name(v) for _, v in combo),
                         marks=() if sum(i for i, _ in combo) % 2 == 0 else pytest.mark.slow)
            for combo in itertools.product(*(list(enumerate(axis)) for axis in axes))]


def unreachable(monkeypatch, target, name: str, why: str) -> None:
    """Make `target.name` fail the test with `why` when called: a step (opening a port, running an
    experiment, asking the testbed) that bad input must be refused before."""

    def fail(*a, **k):
        raise AssertionError(why)

    monkeypatch.setattr(target, name, fail)


BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def bench_script(name: str):
    """bench/NAME.py loaded as a module (the benches are scripts, not a package), for tests of their parts."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kbypass(*args: str, env: dict | None = None, timeout: float = 120, check: bool = False):
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "kbypass", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kbypass {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def kbypass_here(*args: str, env: dict | None = None, timeout: float | None = None):
    """`kbypass ARGS` run in this process (kbypass.cli.main), as `kbypass()` runs it in a new one: the same
    CompletedProcess (exit code, stdout, stderr), without an interpreter start and the imports (~0.3-1 s).
    For refusals, which end before anything opens; what only a real process shows (the exit status the
    console script turns main()'s result into, nothing printed at interpreter exit) each test file's first
    case of a kind still proves with `kbypass()`. Captured at the file descriptors too, so a line written
    there (a C module, a child process) is in stderr as it would be, and so is a warning (pytest would
    record it instead: here Python's own filters apply and it is printed). A command that raises anything but
    its own errors fails the test with that exception (a real process would print the traceback). `timeout`
    is kbypass()'s, unused: pytest's own --timeout stops a command that hangs."""
    import contextlib
    import io
    import tempfile
    import warnings

    from kbypass import cli

    saved_env = dict(os.environ)
    os.environ.update(env or {})
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, contextlib.ExitStack() as undo:
        old_streams = sys.stdout, sys.stderr
        for stream in old_streams:
            stream.flush()
        saved_fds = os.dup(1), os.dup(2)

        @undo.callback
        def restore() -> None:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            sys.stdout, sys.stderr = old_streams
            for fd, saved in zip((1, 2), saved_fds):
                os.dup2(saved, fd)
                os.close(saved)
            os.environ.clear()
            os.environ.update(saved_env)

        undo.enter_context(warnings.catch_warnings())
        warnings.resetwarnings()  # a new interpreter's filters, and its printing to stderr
        for category in (ImportWarning, PendingDeprecationWarning, DeprecationWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", write_through=True)
        try:
            code = cli.main(list(args))
        except SystemExit as e:  # argparse's refusals, --help
            code = e.code
        undo.close()
        if code is None:
            code = 0
        elif not isinstance(code, int):  # SystemExit("message"): printed, status 1, as Python does at exit
            err.seek(0, os.SEEK_END)
            err.write(f"{code}\n".encode())
            code = 1
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
    return subprocess.CompletedProcess(["kbypass", *args], code, *texts)


def one_real(cases: list[tuple]) -> list[tuple]:
    """A refusal test's cases, each with a leading flag `real` (pass it to kbypass_for): the first runs in a
    new process, `kbypass()`, proving the exit status and that nothing is printed at interpreter exit; the
    others in this process, kbypass_here(), which checks the same exit code and output in a tenth of the
    time."""
    return [(i == 0, *case) for i, case in enumerate(cases)]


def kbypass_for(real: bool):
    return kbypass if real else kbypass_here


def collect_batches(port, want: int, timeout: float = 3.0, linger: float = 0.05, size: int = 256) -> list:
    """Receive (and hold: the caller frees) until `want` frames came or `timeout` passed; then, unless
    linger is 0, wait `linger` seconds and take whatever else arrived, so a test sees extras too."""
    import time

    batches, got = [], 0
    deadline = time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        b = port.receive(size)
        if len(b):
            batches.append(b)
            got += len(b)
        else:
            port.wait(0.02)
    if linger:
        time.sleep(linger)
        while True:
            extra = port.receive(size)
            if not len(extra):
                break
            batches.append(extra)
    return batches


def receive_packets(port, want: int, timeout: float = 3.0) -> list[bytes]:
    """Receive (freeing each batch) until `want` packets came or `timeout` passed: each packet's bytes, all
    its frames (Batch.tobytes)."""
    import time

    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        batch = port.receive(64)
        if not batch:
            port.wait(0.05)
            continue
        got += [batch.tobytes(i) for i in range(len(batch))]
        port.free(batch)
    return got


def fd_closed(fd: int) -> bool:
    """Whether `fd` is closed in this process (a refused call must close what it was given, never leak it)."""
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def xdp_attached(host) -> bool:
    """Is an XDP program on the testbed host's veth right now?"""
    from kbypass import netns
    from kbypass.bpf import libbpf

    with netns.entered(host.netns):
        return libbpf.xdp_query(socket.if_nametoindex(host.iface)).attached


def spare_ip(host, k: int) -> str:
    """An address of the testbed subnet that no host has (the kernel does not own it): host part 50 + k."""
    net = ipaddress.IPv4Interface(f"{host.ipv4}/{host.prefixlen}").network
    return str(net.network_address + 50 + k)



def udp_bound(ns: str, port: int) -> bool:
    """Is a UDP socket bound to `port` in namespace `ns`? (/proc/thread-self/net/udp lists the sockets of the
    namespace the calling thread is in.)"""
    return any(True for _ in _sockets_on(ns, "udp", port))


def tcp_listening(ns: str, port: int) -> bool:
    """Does a TCP socket listen on `port` in namespace `ns` (state 0A, LISTEN)?"""
    return any(state == "0A" for state in _sockets_on(ns, "tcp", port))


def _sockets_on(ns: str, proto: str, port: int):
    """The states of namespace `ns`'s `proto` (udp, tcp) sockets with local port `port`."""
    from kbypass import netns

    with netns.entered(ns):
        with open(f"/proc/thread-self/net/{proto}") as f:
            lines = f.read().splitlines()[1:]
    return [fields[3] for fields in map(str.split, lines) if fields[1].rsplit(":", 1)[1] == f"{port:04X}"]


def rx_packets(host) -> int:
    """Packets the host's testbed veth received (its stats64: the kernel's and XDP's alike)."""
    import json

    out = subprocess.run(["ip", "-n", host.netns, "-s", "-j", "link", "show", host.iface],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["stats64"]["rx"]["packets"]


def faulthandler_env() -> dict:
    """The environment as it is now, plus faulthandler: a process started with it, if it hangs, prints every
    thread's stack when sent SIGABRT (communicate_or_stack says where it was stuck)."""
    return {**os.environ, "PYTHONFAULTHANDLER": "1"}


def communicate_or_stack(proc, timeout: float, what: str) -> tuple:
    """proc.communicate(timeout); a process still running then is sent SIGABRT and the test fails with
    its threads' stacks (start it with env=faulthandler_env()) instead of a bare TimeoutExpired."""
    import signal

    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        raise AssertionError(f"{what}: still running after {timeout} s; its stacks:\n{str(err)[-6000:]}") from None


def kbypass_main_begun(pid: int) -> bool:
    """Has kbypass.cli.main begun in process `pid`? Its first line puts in a SIGTERM handler, which shows in
    /proc/PID/status (SigCgt); CPython catches no SIGTERM of its own. Before it, only CPython's start-up and
    the console script's imports run: a signal there is CPython's to report (a KeyboardInterrupt traceback,
    or "Fatal Python error: init_import_site"), before any code of kbypass could catch it."""
    import signal

    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return False
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


def wait_until(ready, what: str, timeout: float = 15.0, proc=None, interval: float = 0.02) -> None:
    """Poll `ready()` until true; fail naming `what` after `timeout` s, or at once if `proc` exited."""
    import time

    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited first (code {proc.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def run_cli(argv: list[str]) -> int:
    """cli.main in-process; argparse's refusals exit (SystemExit 2) before main returns."""
    from kbypass import cli

    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def refused(capsys, argv: list[str]) -> str:
    rc = run_cli(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("kbypass: error: "), err
    return lines[0]


UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def skip_unless_nobody_runs_kbypass() -> None:
    """Tests that run kbypass (or Python importing it) as uid 65534 from this checkout: a checkout under a
    directory only root may enter (a fresh `mktemp -d`, 0700) cannot be read by that user: skip, saying so."""
    probe = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", "import kbypass.cp.client, tests.kb"],
                           capture_output=True, text=True, cwd=_ROOT)
    if probe.returncode != 0:
        pytest.skip(f"uid 65534 cannot run kbypass from this checkout ({probe.stderr.strip().splitlines()[-1:]}): "
                    "clone it under a directory others may enter to run the unprivileged-client tests")
