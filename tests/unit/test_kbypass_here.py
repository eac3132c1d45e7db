"""tests.kb.kbypass_here, the in-process run the refusal tests use, gives what a real `kbypass` process
gives: the same exit status, stdout and stderr, for an option argparse refuses, an error the command raises
and a plain success."""

import pytest

from tests.kb import kbypass, kbypass_here


@pytest.mark.parametrize("args", [
    ["sink", "--iface", "lo", "--rule", "udp dport 9", "-t", "nan"],  # argparse's refusal: SystemExit(2)
    ["stats", "--iface", "nosuch0", "--count", "1"],  # the command's own: KbypassError, main() returns 2
    ["--version"],
])
def test_in_process_run_is_what_a_process_gives(args):
    here, real = kbypass_here(*args), kbypass(*args)
    assert (here.returncode, here.stdout, here.stderr) == (real.returncode, real.stdout, real.stderr)
