"""kbypass xfer's integrity check on a thread (tools/_digest.py): the same digest as hashing inline."""

import hashlib
import random

import pytest

from kbypass.tools._digest import BackgroundSha256


def test_background_digest_equals_inline_digest_of_the_same_chunks():
    rng = random.Random(7)
    data = rng.randbytes(3 << 20)
    bg = BackgroundSha256(limit=256 << 10)  # a small bound: update() has to wait for the thread
    inline = hashlib.sha256()
    pos = 0
    while pos < len(data):
        n = rng.randrange(1, 300_000)
        chunk = memoryview(data)[pos:pos + n]
        bg.update(chunk)
        inline.update(chunk)
        pos += n
    assert bg.hexdigest() == inline.hexdigest() == hashlib.sha256(data).hexdigest()
    assert bg.hexdigest() == inline.hexdigest()  # asking twice gives the same answer


def test_background_digest_of_nothing_and_close_twice():
    bg = BackgroundSha256()
    bg.close()
    bg.close()
    assert bg.hexdigest() == hashlib.sha256().hexdigest()


def test_background_digest_hands_on_the_threads_error():
    bg = BackgroundSha256()
    bg.update("not bytes")  # hashlib refuses str: on the thread, raised at hexdigest()
    with pytest.raises(TypeError):
        bg.hexdigest()


def test_background_digest_update_raises_the_threads_error_instead_of_queueing_more():
    bg = BackgroundSha256()
    bg.update("not bytes")  # fails on the thread
    bg._thread.join(5)  # the thread has recorded the error and ended
    with pytest.raises(TypeError):
        bg.update(b"more")  # not queued behind a dead thread
    assert bg._queued == 0 and not bg._queue
    with pytest.raises(TypeError):
        bg.hexdigest()


def test_background_digest_update_after_close_is_refused():
    bg = BackgroundSha256()
    bg.update(b"abc")
    bg.close()
    with pytest.raises(ValueError, match="after close"):
        bg.update(b"def")
    assert bg.hexdigest() == hashlib.sha256(b"abc").hexdigest()

