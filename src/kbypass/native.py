"""The narrow C boundary (design.md, after pyzmq): kbypass's C modules, imported here and nowhere else.

    lane   kbypass._fastlane   (csrc/fastlane.c)   UdpEndpoint's per-message ring path
    batch  kbypass._fastbatch  (csrc/fastbatch.c)  the Port API's per-batch bookkeeping (ownership
                                                   checks, header swaps)
    xfer   kbypass._fastxfer   (csrc/fastxfer.c)   the transport's per-datagram bulk path (in-order
                                                   receive, encode, framing)

Each is a thin CPython binding (arguments, buffers, exceptions; typed in kbypass/_fast*.pyi) over one C core,
csrc/core/ (build/libkbcore.a, no Python in it, so a preload shim links the same code). State both sides
need is shared memory, never an attribute C looks up by name: the rings' KbRing structs (xsk/ring.py), the
port's counters array (port/afxdp.py), the UMEM's frame states (xsk/umem.py).

Each is optional: None when it is not built, and its caller then runs the pure-Python (numpy) path that
does the same work, slower. `make setup` builds them (gcc and python3-dev); `kbypass doctor` says which
are missing. KBYPASS_PURE_PYTHON=1 in the environment ignores them (to compare or to debug).
"""

from __future__ import annotations

import importlib
import os

MODULES = {"lane": "kbypass._fastlane", "batch": "kbypass._fastbatch", "xfer": "kbypass._fastxfer"}


def load(name: str):
    """The C module `name` (a key of MODULES), or None when it is not built or switched off."""
    if os.environ.get("KBYPASS_PURE_PYTHON") == "1":
        return None
    try:
        return importlib.import_module(MODULES[name])
    except ImportError:
        return None


def missing() -> dict[str, str]:
    """Modules that do not import, with the reason: {module: error}."""
    out = {}
    for mod in MODULES.values():
        try:
            importlib.import_module(mod)
        except ImportError as e:
            out[mod] = str(e)
    return out


lane = load("lane")
batch = load("batch")
xfer = load("xfer")
