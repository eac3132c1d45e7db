"""kbypass.backend: one object per accelerated concern, chosen once and passed in; the python lane runs no C.

  * the sans-IO protocols (kbypass.proto) import no C, neither at import time nor in their source;
  * importing kbypass (and the modules a transfer uses) loads no kbypass C module: C is imported when a
    C backend is chosen;
  * a transfer on the python lane (backend.select("python"), what `--lane python` does) over two ports
    loads none, and the reference backends do the work;
  * the two batch backends give the same verdicts on the calls that decide (claim, swap, stamp, mark,
    push_free), errors included.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from kbypass import backend
from kbypass.port.batch import DESC
from tests.kb import needs_c

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "src" / "kbypass" / "proto"
C_MODULES = set(backend.MODULES.values())


def _child(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, **env})


def test_the_sans_io_protocols_import_no_c():
    """No module under kbypass/proto imports a C module or kbypass.backend (a C codec is
    passed in: Connection(codec=...))."""
    banned = C_MODULES | {"kbypass.backend"}
    for path in PROTO.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            bad = [n for n in names if n in banned or n.startswith("kbypass._fast")]
            assert not bad, f"{path.relative_to(ROOT)}:{node.lineno} imports {bad}"


def test_importing_kbypass_and_the_transfer_modules_loads_no_c_module():
    r = _child("""
        import pkgutil, sys, importlib
        import kbypass, kbypass.proto
        for m in pkgutil.walk_packages(kbypass.proto.__path__, "kbypass.proto."):
            importlib.import_module(m.name)
        import kbypass.backend, kbypass.xsk.umem, kbypass.port.batch, kbypass.port
        import kbypass.xfer, kbypass.xfer.endpoint, kbypass.tools.xfer, kbypass.cli
        print(sorted(m for m in sys.modules if m.startswith("kbypass._fast")))
    """)
    assert r.returncode == 0, r.stderr[-800:]
    assert r.stdout.strip() == "[]", r.stdout


def test_a_python_lane_transfer_loads_no_c_module():
    """What `kbypass xfer --lane python` does, over two socket ports on loopback: backend.select("python")
    once, then the endpoints (and their ports' UMEMs, their connections) take the reference backends."""
    r = _child("""
        import random, sys, time
        from kbypass import backend
        backend.select("python")
        from kbypass.port.socket_port import SocketPort
        from kbypass.xfer import UdpEncap
        from kbypass.xfer.endpoint import TransportEndpoint, default_config
        from kbypass.proto.transport import Listener

        lo, cfg = "127.0.0.1", default_config(1472)
        data = random.Random(3).randbytes(300_000)
        with SocketPort(lo, 0, batch=64) as sp, SocketPort(lo, 0, batch=64) as cp:
            server = TransportEndpoint(sp, UdpEncap(bytes(6), lo, sp.port), config=cfg, own_port=False,
                                       codec=backend.codec())
            enc = UdpEncap(bytes(6), lo, cp.port)
            enc.set_peer(lo, sp.port, bytes(6))
            client = TransportEndpoint(cp, enc, config=cfg, own_port=False, codec=backend.codec())
            server._listener = Listener(cfg, backlog=1, max_connections=1, codec=server.codec)
            from kbypass.proto.transport import Connection, Role
            client.conn = Connection(Role.CLIENT, cfg, client.clock(), codec=client.codec)
            client.conn.connect(client.clock())
            sent, got, deadline = 0, bytearray(), time.monotonic() + 60
            while len(got) < len(data) and time.monotonic() < deadline:
                if client.connected_at is not None and sent < len(data) and client.conn.send_space:
                    sent += client.conn.send(data[sent:sent + 65536], client.clock())
                client.pump(0.0)
                server.pump(0.0)
                if server._rxbuf:
                    got += server.recv(1 << 30, timeout=0)
            assert bytes(got) == data, (len(got), len(data))
            assert not server.native and server.codec.name == "python" and server.conn.codec is server.codec
            assert sp.umem.ops.name == cp.umem.ops.name == "python"
        from kbypass.port.lane import native_default
        assert not native_default()  # the UDP message lane follows the lane in force too
        print(sorted(m for m in sys.modules if m.startswith("kbypass._fast")))
    """)
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.strip() == "[]", r.stdout


def test_a_missing_native_part_fails_with_the_fix(monkeypatch):
    monkeypatch.delenv("KBYPASS_PURE_PYTHON", raising=False)
    monkeypatch.setitem(backend.MODULES, "batch", "kbypass._fastbatch_not_built")
    with pytest.raises(backend.NativeMissing, match="make setup"):
        backend.batch("c")
    assert backend.batch("python") is backend.PY_BATCH
    with pytest.raises(backend.KbypassError, match="unknown lane"):
        backend.select("fortran")


def test_a_c_module_older_than_its_sources_is_refused_with_the_fix(monkeypatch, tmp_path):
    """After a pull that grew a shared struct (the port's counters), a module not yet rebuilt read the wrong
    layout and every AF_XDP tool died on a ValueError about a buffer size: say "run make setup" instead."""
    monkeypatch.delenv("KBYPASS_PURE_PYTHON", raising=False)
    src = tmp_path / "csrc"
    (src / "core").mkdir(parents=True)
    so = tmp_path / "_fastlane.cpython-311-x86_64-linux-gnu.so"
    so.write_bytes(b"")
    header = src / "core" / "kb_port.h"
    header.write_text("/* grown */")
    os.utime(so, (1000, 1000))
    monkeypatch.setattr(backend, "_SOURCES", src)
    monkeypatch.setattr(backend, "_stale_checked", {})
    fake = types.SimpleNamespace(__file__=str(so))
    assert backend._stale_source(fake) == "csrc/core/kb_port.h"
    monkeypatch.setattr(backend.importlib, "import_module", lambda name: fake)
    with pytest.raises(backend.NativeMissing, match=r"older than csrc/core/kb_port.h.*make setup"):
        backend.native_module("lane")
    assert "make setup" in backend.missing()["kbypass._fastlane"]
    monkeypatch.setattr(backend, "_stale_checked", {})
    os.utime(so, (header.stat().st_mtime + 10,) * 2)  # rebuilt: newer than every source
    assert backend.native_module("lane") is fake


def test_the_environment_switches_every_backend_to_python(monkeypatch):
    monkeypatch.setenv("KBYPASS_PURE_PYTHON", "1")
    monkeypatch.setattr(backend, "_selected", "c")
    assert backend.lane() == "python"
    assert backend.batch().name == backend.codec().name == "python"
    with pytest.raises(backend.NativeMissing, match="KBYPASS_PURE_PYTHON"):
        backend.codec("c")


# ---------------------------------------------------------------------------- batch: same verdicts
def _descs(addrs, lens):
    d = np.zeros(len(addrs), DESC)
    d["addr"], d["len"] = addrs, lens
    return d


def _both(call):
    """call(ops) on C and Python, each on its own copy of the arrays: (result or exception type, arrays)."""
    out = []
    for ops in (backend.batch("c"), backend.PY_BATCH):
        try:
            out.append(call(ops))
        except (ValueError, IndexError, OverflowError) as e:
            out.append(type(e).__name__)
    return out


@needs_c
@pytest.mark.parametrize("seed", range(40))
def test_claim_mark_push_free_give_the_same_verdict_in_c_and_python(seed):
    rng = np.random.default_rng(seed)
    frames, fs = 16, 2048
    shift = fs.bit_length() - 1
    base = rng.choice([1, 2, 4, 8], frames).astype(np.uint8)
    n = int(rng.integers(0, 6))
    addrs = rng.integers(0, frames + 2, n).astype(np.uint64) * fs + rng.integers(0, 64, n).astype(np.uint64)
    lens = rng.integers(0, fs + 2, n)
    descs = _descs(addrs, lens)
    expected, to, tx = int(rng.choice([1, 2, 4, 8])), int(rng.choice([1, 2, 4, 8])), bool(rng.integers(0, 2))

    def claim(ops):
        st = base.copy()
        return ops.claim(st, descs, shift, frames * fs, fs, expected, to, tx), st.tobytes()

    def mark(ops):
        st = base.copy()
        return ops.mark(st, descs, shift, to), st.tobytes()

    for call in (claim, mark):
        c, py = _both(call)
        assert c == py, (call.__name__, c, py)
    top = int(np.random.default_rng(seed + 1000).integers(0, frames + 1)) if seed % 3 else frames

    def push_free(ops):
        st, free = base.copy(), np.zeros(frames, np.intp)
        return ops.push_free(st, free, top, np.ascontiguousarray(addrs), shift), st.tobytes(), free.tobytes()

    c, py = _both(push_free)
    assert c == py, ("push_free", c, py)


@needs_c
@pytest.mark.parametrize("seed", range(40))
def test_swap_and_stamp_give_the_same_verdict_in_c_and_python(seed):
    rng = np.random.default_rng(seed)
    mem = rng.integers(0, 256, 4 * 256).astype(np.uint8)
    n = int(rng.integers(0, 5))
    # distinct frames (a batch holds each frame once; overlapping ones would be swapped twice)
    addrs = rng.permutation(4)[:n].astype(np.uint64) * 256 + rng.integers(0, 8, n).astype(np.uint64)
    if seed % 7 == 0 and n:
        addrs[-1] = len(mem) - 4  # runs off the memory
    descs = _descs(addrs, rng.integers(0, 120, n))
    offset, width = int(rng.integers(0, 40)), int(rng.integers(1, 20))
    need = offset + 2 * width + int(rng.integers(0, 10))

    def swap(ops):
        m = mem.copy()
        return ops.swap(m, descs, offset, width, need), m.tobytes()

    def stamp(ops):
        m = mem.copy()
        return ops.stamp(m, descs, offset, 12345 + seed, 987654321), m.tobytes()

    for call in (swap, stamp):
        c, py = _both(call)
        assert c == py, (call.__name__, c, py)


def test_the_backend_module_sits_at_the_lowest_layer():
    """kbypass.backend is imported by xsk/umem (rings and UMEM): it imports nothing of kbypass above it."""
    tree = ast.parse((ROOT / "src" / "kbypass" / "backend.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in mods if m and m.startswith("kbypass")} <= {"kbypass.errors"}, mods
