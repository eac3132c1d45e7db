"""The control plane stops at once on SIGTERM or SIGINT (kbypass.cp.server.Server.stop, called by serve()'s
handler): select() resumes after a signal handler returns (PEP 475), so the stop wakes the loop through a
pipe instead of leaving it to wait out its timeout (every stop took up to 0.5 s: `kbypass cp stop`,
`kbypass testbed down`, each test's teardown)."""

import os
import threading

import pytest

from kbypass.cp import paths, server


def test_stop_wakes_the_loop_out_of_its_select(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the control plane's run directory is root's")
    monkeypatch.setattr(paths, "RUN_DIR", str(tmp_path / "run"))
    srv = server.Server("stoptest")
    srv.start()
    waiting = threading.Event()
    select = srv.sel.select

    def select_until_woken(timeout=None):  # no timeout: only a wake-up (or a client) ends the wait
        waiting.set()
        return select(None)

    monkeypatch.setattr(srv.sel, "select", select_until_woken)
    loop = threading.Thread(target=srv.run, daemon=True)
    loop.start()
    try:
        assert waiting.wait(10), "the loop never reached its select"
        srv.stop("SIGTERM")
        loop.join(10)
        assert not loop.is_alive(), "stop() did not wake the loop out of select()"
    finally:
        if not loop.is_alive():
            srv.close()
    assert srv.stop_signal == "SIGTERM"
