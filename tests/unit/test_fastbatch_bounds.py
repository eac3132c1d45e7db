"""Bounds checks of kbypass._fastbatch written as subtractions: huge arguments once wrapped the additions
(`offset + 2 * width`, `top + n`) and the call wrote outside its buffers (a segfault, a heap-corruption
abort). Each call runs in a child process, so a regression is a failed test, not a dead test run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

fastbatch = pytest.importorskip("kbypass._fastbatch")

PRELUDE = """
import numpy as np
from kbypass import _fastbatch as fb
from kbypass.port.batch import DESC
"""

CASES = {
    # offset + 2*width wrapped to a negative number, so `need < offset + 2*width` passed with need 0 and
    # the swap wrote 2**63 bytes past the frame.
    "swap_offset_wraps": """
mem = bytearray(4096)
d = np.zeros(1, dtype=DESC); d['addr'] = 0; d['len'] = 64
fb.swap(mem, d, (1 << 63) - 100, 64, 0)
""",
    # top + n wrapped: push_free wrote the completed frames far past the free stack.
    "push_free_top_wraps": """
state = np.zeros(16, dtype=np.uint8)
free = np.zeros(16, dtype=np.intp)
addrs = np.zeros(4, dtype=np.uint64)
fb.push_free(state, free, (1 << 63) - 2, addrs, 11)
""",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_huge_arguments_are_refused_not_written(name):
    code = PRELUDE + textwrap.dedent(CASES[name]) + "\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, f"child died with {r.returncode} (a signal is negative): {r.stderr[-500:]}"
    assert "ValueError" in r.stderr and "bad" in r.stderr, r.stderr[-500:]


def test_an_address_outside_the_umem_is_named_in_hex():
    """PyErr_Format has no %llx before Python 3.12: the message once read "completed address 0x%llx"."""
    import numpy as np

    state, free = np.ones(4, dtype=np.uint8), np.zeros(4, dtype=np.intp)
    with pytest.raises(IndexError, match=r"^completed address 0x100000 is outside the UMEM$"):
        fastbatch.push_free(state, free, 0, np.array([1 << 20], dtype=np.uint64), 11)
