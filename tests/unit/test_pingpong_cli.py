"""`kbypass pingpong` options: bad values refused as one line (exit 2) before anything opens, the
--histogram path checked first and a failed write reported after the results, the vocabulary names
(--dst, --idle-timeout), options the socket backend would ignore refused, summaries as tables."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from kbypass import cli
from kbypass.apps import pingpong as pp
from kbypass.tools import pingpong as tool
from tests.kb import refused, unreachable

SERVER = ["pingpong", "server", "--backend", "socket", "--ip", "127.0.0.1"]
CLIENT = ["pingpong", "client", "--backend", "socket", "--ip", "127.0.0.1", "--dst", "127.0.0.1:9"]


@pytest.fixture
def no_network(monkeypatch):
    unreachable(monkeypatch, tool, "_open", "the endpoint was opened before the bad input was refused")



@pytest.fixture
def echo_server():
    """A sockperf-style server on a loopback UDP socket (kbypass.apps.pingpong.answer), in a thread."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.1)
    done = threading.Event()

    def loop():
        while not done.is_set():
            try:
                data, peer = s.recvfrom(65536)
            except TimeoutError:
                continue
            out = pp.answer(data)
            if out is not None:
                s.sendto(out, peer)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield f"127.0.0.1:{s.getsockname()[1]}"
    done.set()
    t.join()
    s.close()


BAD_NUMBERS = ["nan", "inf", "-1", "0", "1e300"]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("argv, option", [
    (SERVER, "--duration"), (SERVER, "--idle-timeout"), (CLIENT, "--duration"), (CLIENT, "--idle-timeout"),
    (CLIENT, "--reply-timeout"), (SERVER, "--count"), (CLIENT, "--count"),
])
def test_bad_seconds_and_counts(capsys, no_network, argv, option, value) -> None:
    if option == "--count" and value == "1e300":
        value = str(2**70)  # an absurd whole number
    assert option in refused(capsys, [*argv, option, value])


@pytest.mark.parametrize("argv, option, value", [
    (SERVER, "--port", "0"), (SERVER, "--port", "65536"), (SERVER, "--port", "-1"), (CLIENT, "--port", "70000"),
    (CLIENT, "--size", "13"), (CLIENT, "--size", "65508"), (CLIENT, "--size", "nan"), (CLIENT, "--size", "-1"),
    (CLIENT, "--warmup", "-1"), (CLIENT, "--warmup", "1e9"), (CLIENT, "--warmup", str(10**12)),
    (SERVER, "--cpu", "-1"), (SERVER, "--cpu", "99999"), (CLIENT, "--frame-size", "1000"),
])
def test_bad_whole_numbers(capsys, no_network, argv, option, value) -> None:
    assert option in refused(capsys, [*argv, f"{option}={value}"])


def test_server_duration_nan_is_refused_not_run_forever(capsys, no_network) -> None:
    # before: --duration nan passed the "<= 0" check and the server never stopped
    assert "--duration" in refused(capsys, [*SERVER, "--duration", "nan"])
    assert "-t/--duration" in refused(capsys, [*SERVER, "-t", "inf"])


@pytest.mark.parametrize("path, says", [
    ("/nonexistent/x.png", "directory /nonexistent does not exist"),
    ("/tmp", "is a directory"),
    ("-", "not supported here"),
])
def test_histogram_path_checked_before_running(capsys, no_network, path, says) -> None:
    assert says in refused(capsys, [*CLIENT, "--count", "1", "--histogram", path])


def test_histogram_write_failure_keeps_the_results(capsys, echo_server, tmp_path) -> None:
    # the directory passes the up-front check and is gone when the run ends: the results come first,
    # then one error line (before: a traceback, and the results were lost)
    where = tmp_path / "plots"
    where.mkdir()
    remover = threading.Timer(0.3, where.rmdir)
    remover.start()
    rc = cli.main(["pingpong", "client", "--backend", "socket", "--ip", "127.0.0.1", "--dst", echo_server,
                   "-t", "1", "--warmup", "0", "--json", "--histogram", str(where / "h.png")])
    remover.join()
    out, err = capsys.readouterr()
    assert rc == 2
    summary = json.loads(out)
    assert summary["samples"] > 0 and "histogram" not in summary
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kbypass: error: --histogram {where / 'h.png'}: could not write")


def test_histogram_written(capsys, echo_server, tmp_path) -> None:
    png = tmp_path / "h.png"
    rc = cli.main(["pingpong", "client", "--backend", "socket", "--ip", "127.0.0.1", "--dst", echo_server,
                   "-c", "20", "--warmup", "0", "--json", "--histogram", str(png)])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["histogram"] == str(png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_old_names_are_gone(capsys, no_network) -> None:
    assert "unrecognized arguments: --server" in refused(
        capsys, ["pingpong", "client", "--backend", "socket", "--ip", "127.0.0.1", "--dst", "127.0.0.1:9",
                 "--server", "127.0.0.1:9"])
    assert "--give-up" in refused(capsys, [*CLIENT, "--give-up", "1"])


@pytest.mark.parametrize("dst", ["nonsense", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", "::1:5"])
def test_bad_dst(capsys, no_network, dst) -> None:
    line = refused(capsys, ["pingpong", "client", "--backend", "socket", "--ip", "127.0.0.1", "--dst", dst])
    assert f"--dst {dst!r}: give IP:PORT" in line


@pytest.mark.parametrize("extra, option", [
    (["--xdp-mode", "skb"], "--xdp-mode"), (["--lane", "python"], "--lane"), (["--frame-size", "4096"], "--frame-size"),
    (["--dedicated"], "--dedicated"), (["--gateway", "127.0.0.2"], "--gateway"),
])
def test_socket_backend_refuses_afxdp_options(capsys, no_network, extra, option) -> None:
    line = refused(capsys, [*SERVER, *extra])
    assert f"{option} is for the afxdp backend" in line


def test_client_summary_is_a_table(capsys, echo_server) -> None:
    rc = cli.main(["pingpong", "client", "--backend", "socket", "--ip", "127.0.0.1", "--dst", echo_server,
                   "-c", "5", "--warmup", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "{" not in out  # no Python dict
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip() and " " in line.strip()}
    assert rows["samples"] == ["5"] and rows["lost"] == ["0"]


def test_server_idle_timeout_counts_from_the_start(capsys) -> None:
    # nobody talks to it: it stops after the idle timeout (before, the timer waited for a first message)
    rc = cli.main([*SERVER, "-p", "47931", "--idle-timeout", "0.3", "-t", "30", "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["received"] == 0 and s["seconds"] < 5
