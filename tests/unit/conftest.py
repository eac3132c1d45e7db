"""Fixtures shared by the unit tests of the C fast paths."""

import pytest

from kbypass import backend


@pytest.fixture(scope="module")
def fast():
    """kbypass._fasttcp, the C twin the TCP tests hold to the Python reference (skipped where it is not built)."""
    try:
        return backend.native_module("tcp")
    except backend.NativeMissing as e:
        pytest.skip(str(e))
