"""kbypass's C modules, by name, imported only when asked for (kbypass.backend chooses and wraps them).

    lane   kbypass._fastlane   (csrc/fastlane.c)   UdpEndpoint's per-message ring path
    batch  kbypass._fastbatch  (csrc/fastbatch.c)  the Port API's per-batch bookkeeping (kbypass.backend.CBatch)
    xfer   kbypass._fastxfer   (csrc/fastxfer.c)   the transport's bulk path (kbypass.backend.CCodec)

Each is a thin CPython binding (arguments, buffers, exceptions; typed in kbypass/_fast*.pyi) over one C core,
csrc/core/ (build/libkbcore.a, no Python in it, so a preload shim links the same code). State both sides
need is shared memory, never an attribute C looks up by name: the rings' KbRing structs (xsk/ring.py), the
port's counters array (port/afxdp.py), the UMEM's frame states (xsk/umem.py).

Each is optional: `load` gives None when it is not built or is switched off.
`kbypass.native.lane` (and .batch, .xfer) is load("lane"), imported at the first look: importing this
module imports no C, so a process on the python lane has no kbypass C module in sys.modules.
"""

from __future__ import annotations

from kbypass import backend
from kbypass.backend import MODULES, NativeMissing, missing, native_module

__all__ = ["MODULES", "load", "missing"]


def load(name: str):
    """The C module `name` (a key of MODULES), or None when it is not built or switched off (by
    KBYPASS_PURE_PYTHON=1, or by kbypass.backend.select("python"), a tool's --lane python: then a module
    that looks its C twin up here, kbypass.endpoint's UDP lane, runs in Python too)."""
    if backend.selected() == "python":
        return None
    try:
        return native_module(name)
    except NativeMissing:
        return None


def __getattr__(name: str):
    if name in MODULES:
        return load(name)
    raise AttributeError(f"module 'kbypass.native' has no attribute {name!r}")
