"""`kbypass http` refuses what cannot work in one line, before anything is opened."""

import pytest

from kbypass import cli


@pytest.mark.parametrize("argv, words", [
    (["http", "serve", "--iface", "lo", "--ip", "127.0.0.1", "--root", "/nonexistent-dir"], "--root"),
    (["http", "serve", "--iface", "lo", "--ip", "127.0.0.1", "--root", "/tmp", "--body-size", "1K"], "give one"),
    (["http", "serve", "--iface", "lo", "--ip", "127.0.0.1", "--body-size", "lots"], "--body-size 'lots'"),
    (["http", "serve", "--iface", "lo", "--ip", "127.0.0.1", "--body-size", "-5"], "--body-size '-5'"),
    (["http", "serve", "--iface", "lo", "--ip", "127.0.0.1", "-p", "70000"], "give a TCP port from 1 to 65535"),
    (["pingpong", "server", "--iface", "lo", "--ip", "127.0.0.1", "--tcp", "-p", "70000"], "TCP with --tcp"),
    (["xfer", "recv", "--iface", "lo", "--proto", "tcp", "-p", "70000"], "TCP with --proto tcp"),
    (["http", "serve", "--iface", "lo", "--ip", "127.0.0.1", "--head-timeout", "0"], "--head-timeout"),
    (["http", "get", "--iface", "lo", "--ip", "127.0.0.1", "https://127.0.0.1/"], "only http://"),
    (["http", "get", "--iface", "lo", "--ip", "127.0.0.1", "http://example.com/"], "IPv4 address"),
    (["xfer", "recv", "--iface", "lo", "--iperf3"], "--proto tcp"),
    (["xfer", "send", "--iface", "lo", "--proto", "tcp", "--encap", "eth", "--dst", "1.2.3.4:5", "--size", "1"],
     "--encap"),
    (["pingpong", "server", "--iface", "lo", "--ip", "127.0.0.1", "--tcp", "--backend", "socket"], "sockperf --tcp"),
])
def test_refused_in_one_line(capsys, argv, words):
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own refusals (cli.Parser.error) exit here
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kbypass: error:") and words in err[0], err
