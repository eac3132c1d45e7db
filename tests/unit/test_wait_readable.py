"""kbypass.net.wait.wait_readable: a sub-millisecond wait sleeps (the ports' int(timeout * 1000) polled with 0
and returned at once, so a loop waiting for a pacing timer spun), and readiness still ends it at once."""

import os
import resource
import time

import pytest

from kbypass.net.wait import FD_SETSIZE, wait_readable


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_sub_millisecond_wait_sleeps_its_timeout(pipe):
    r, _ = pipe
    t0 = time.perf_counter()
    assert wait_readable(r, 0.0006) is False
    assert time.perf_counter() - t0 >= 0.0005  # never early (a 0 ms poll returned in microseconds)


def test_readable_returns_at_once(pipe):
    r, w = pipe
    os.write(w, b"x")
    assert wait_readable(r, None) is True
    assert wait_readable([r], 5.0) is True
    assert wait_readable(r, 0) is True


def test_nothing_ready_with_zero_or_negative_timeout(pipe):
    r, _ = pipe
    assert wait_readable(r, 0) is False
    assert wait_readable(r, -1.0) is False


def test_any_of_several(pipe):
    r, w = pipe
    r2, w2 = os.pipe()
    try:
        os.write(w2, b"x")
        assert wait_readable([r, r2], 1.0) is True
    finally:
        os.close(r2)
        os.close(w2)


def test_descriptor_above_fd_setsize_rounds_up_never_spins(pipe):
    r, w = pipe
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= FD_SETSIZE + 10:
        pytest.skip("RLIMIT_NOFILE too low for a descriptor above FD_SETSIZE")
    high = os.dup2(r, FD_SETSIZE + 5)
    try:
        t0 = time.perf_counter()
        assert wait_readable(high, 0.0003) is False
        assert time.perf_counter() - t0 >= 0.0003  # rounded up to a whole millisecond, not down to 0
        os.write(w, b"x")
        assert wait_readable(high, 1.0) is True
    finally:
        os.close(high)
