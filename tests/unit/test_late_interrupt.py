"""A Ctrl-C that comes as a timed run ends, while the command closes and prints its summary, is noted, not
raised, under the CLI (kbypass.port.loop.Stopper.absorb_late): the summary prints and the status stays 0;
a second one is raised. Outside the CLI, Python's own handling stays."""

from __future__ import annotations

import os
import signal

import pytest

from kbypass.port.loop import LateInterrupt, Stopper


@pytest.fixture
def under_the_cli():
    old = signal.getsignal(signal.SIGINT)
    Stopper.absorb_late, LateInterrupt.pending = True, False
    yield
    Stopper.absorb_late, LateInterrupt.pending = False, False
    signal.signal(signal.SIGINT, old)


def test_a_ctrl_c_after_the_loop_is_noted_and_a_second_is_raised(under_the_cli):
    with Stopper() as stop:
        pass
    assert not stop.stopped
    os.kill(os.getpid(), signal.SIGINT)  # as the command closes its port and prints its summary
    assert LateInterrupt.pending
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)  # the user insists


def test_a_noted_ctrl_c_stops_the_next_loop_at_once(under_the_cli):
    with Stopper():
        pass
    os.kill(os.getpid(), signal.SIGINT)
    with Stopper() as second:
        assert second.stopped
    assert not LateInterrupt.pending


def test_outside_the_cli_a_ctrl_c_after_the_loop_is_pythons_keyboardinterrupt():
    old = signal.getsignal(signal.SIGINT)
    try:
        with Stopper():
            pass
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, old)


def test_main_in_process_leaves_sigint_as_it_found_it(tmp_path):
    from kbypass import cli

    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["testbed", "status", "--prefix", "nosuc", "--json"]) in (0, 1, 2)  # a testbed that is not up: status says so
    assert signal.getsignal(signal.SIGINT) is before and not Stopper.absorb_late


def test_commands_with_more_after_a_loop_keep_pythons_ctrl_c():
    """bench and demo run trial after trial: a Ctrl-C between two must stop them, not be noted for later
    (the next trial's generator then started already stopped and the bench divided by zero)."""
    from kbypass import cli

    assert {"bench", "demo", "xfer", "testbed", "cp"}.isdisjoint(cli.LOOP_LAST)
    assert {"sink", "gen"} <= cli.LOOP_LAST
