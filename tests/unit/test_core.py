"""The C core (csrc/core/, build/libkbcore.a) as a library of its own, and the memory it shares with Python.

- It links and runs with no Python at all (tests/c/core_selftest.c: the ring functions on a fake ring, the
  UDP build and check, the CRC), as the preload shim will link it.
- The layouts both front ends use agree: struct kb_ring and ring.py's KbRing, kb_port.h's counter indexes
  and afxdp.PORT_STATS, kb_umem.h's frame states and umem.py's.
- The C lane and the Python port take turns on the same rings, counters and UMEM states in any order,
  and the accounting holds throughout (nothing is copied between the two, so nothing can go stale).
"""

from __future__ import annotations

import ctypes
import pathlib
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbypass.port import afxdp
from kbypass.xsk import umem
from kbypass.xsk.ring import KbRing
from tests.kb import needs_c
from tests.unit.test_endpoint_lane import VALID, _flow, make_lane, plain_udp

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIB = ROOT / "build" / "libkbcore.a"


@pytest.mark.skipif(not LIB.exists() or shutil.which("gcc") is None, reason="build/libkbcore.a: run make setup")
def test_the_core_links_and_runs_without_python(tmp_path):
    exe = tmp_path / "core_selftest"
    subprocess.run(["gcc", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc/core'}",
                    str(ROOT / "tests/c/core_selftest.c"), str(LIB), "-lisal", "-o", str(exe)], check=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    undefined = subprocess.run(["nm", "-u", str(LIB)], capture_output=True, text=True, check=True).stdout
    assert "Py" not in undefined  # no CPython symbol: the shim has no interpreter to resolve them


def test_no_python_header_in_the_core():
    for f in (ROOT / "csrc/core").iterdir():
        assert "Python.h" not in f.read_text(), f


@needs_c
def test_layouts_shared_with_c_agree():
    from kbypass import _fastbatch, _fastlane

    ours = {name: getattr(KbRing, name).offset for name, _ in KbRing._fields_}
    ours["sizeof"] = ctypes.sizeof(KbRing)
    assert ours == _fastlane.RING_LAYOUT
    assert afxdp.PORT_STATS == _fastlane.PORT_STATS
    assert [afxdp.PORT_STATS[i] for i in (afxdp.RX_PACKETS, afxdp.IN_FILL, afxdp.IN_TX)] == \
        ["rx_packets", "in_fill", "in_tx"]
    assert (umem.FREE, umem.FILL, umem.APP, umem.TX) == \
        (_fastbatch.FRAME_FREE, _fastbatch.FRAME_FILL, _fastbatch.FRAME_APP, _fastbatch.FRAME_TX)


OPS = ("deliver", "c_recv", "py_recv", "port_rx_tx", "c_send", "py_send", "kernel_send", "reap")


@needs_c
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(1, 12)), min_size=1, max_size=40))
def test_the_c_lane_and_python_take_turns_on_shared_state(ops):
    c_lane = make_lane(True)
    port, xsk = c_lane.port, c_lane.port.xsk
    py_lane = port.message_lane(plain_udp(), native=False)  # the Python lane on the very same port and rings
    flow, frame = _flow(), VALID["plain"]
    delivered = received = sent = 0
    try:
        for op, n in ops:
            if op == "deliver":
                n = min(n, xsk.k_fill.available(n), xsk.k_rx.free(n))
                if n:
                    delivered += xsk.deliver([frame] * n)
            elif op in ("c_recv", "py_recv"):
                lane = c_lane if op == "c_recv" else py_lane
                for _ in range(n):
                    got = lane.receive_udp()
                    if got is None:
                        break
                    assert got[0] == b"hello" and got[2] == 5000
                    received += 1
            elif op == "port_rx_tx":  # the batch path between the lanes' turns
                b = port.receive(n)
                received += len(b)
                k = port.transmit(b)
                port.free(b[k:])
                sent += k
            elif op in ("c_send", "py_send"):
                lane = c_lane if op == "c_send" else py_lane
                for _ in range(n):
                    if not lane.send_udp(flow, b"x", 1):
                        break
                    sent += 1
            elif op == "kernel_send":
                if xsk.k_comp.free(xsk.k_tx.available()) < xsk.k_tx.available():
                    port.reap()  # the fake kernel posts every completion at once
                xsk.send_all()
            else:
                port.reap()
            assert received <= delivered
            port.check(app=0)  # the port counts both lanes' stashes
            stats = port.stats
            assert (stats["rx_packets"], stats["tx_packets"]) == (received, sent)
            assert stats["frames_in_tx"] == port.in_tx == sent - stats["tx_completed"]
    finally:
        py_lane.close()
        c_lane.close()
        port.check(app=0)
        port.close()


@needs_c
@pytest.mark.parametrize("name", ["_fastlane", "_fastbatch", "_fastxfer", "_fasttcp"])
def test_the_stubs_name_what_the_modules_have(name):
    import ast
    import importlib

    mod = importlib.import_module(f"kbypass.{name}")
    tree = ast.parse((ROOT / "src/kbypass" / f"{name}.pyi").read_text())
    stubbed = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    stubbed |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    assert stubbed == {k for k in vars(mod) if not k.startswith("_")}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        methods = {m.name for m in cls.body if isinstance(m, ast.FunctionDef)} - {"__init__"}
        assert methods == {k for k in vars(getattr(mod, cls.name)) if not k.startswith("_")}
