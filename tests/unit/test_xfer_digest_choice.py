"""`kbypass xfer --digest`: CRC-64/XZ in C (kb_xfer_crc64 over ISA-L) held to independent references (the
catalogue's check value, a bitwise implementation here, and the check liblzma stores in an .xz stream), and
the digest objects the tool opens."""

from __future__ import annotations

import lzma
import random
import struct

import pytest

from kbypass import backend
from kbypass.errors import UsageError
from kbypass.tools._digest import BackgroundSha256, Crc64, NoDigest, open_digest

pytestmark = pytest.mark.skipif(not backend.built("xfer"), reason="kbypass._fastxfer is not built (make setup)")

POLY = 0xC96C5795D7870F42  # ECMA-182, reflected


def crc64_bitwise(data: bytes, crc: int = 0) -> int:
    """CRC-64/XZ one bit at a time: init and xorout all ones, reflected."""
    crc ^= 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (POLY if crc & 1 else 0)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def crc64_of_xz(data: bytes) -> int:
    """The CRC-64 liblzma computed of data (not empty: an empty stream has no block): the check field after
    the one block of an .xz stream."""
    xz = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64)
    backward = (struct.unpack_from("<I", xz, len(xz) - 8)[0] + 1) * 4  # the stream footer: the index's size
    end = len(xz) - 12 - backward
    return struct.unpack_from("<Q", xz, end - 8)[0]


def c_crc64():
    return backend.native_module("xfer").crc64


def test_crc64_check_value_and_bitwise_reference() -> None:
    crc64 = c_crc64()
    assert crc64(0, b"123456789") == 0x995DC9BBDF1939FA == crc64_bitwise(b"123456789")
    assert crc64(0, b"") == 0
    rng = random.Random(3)
    for n in (1, 7, 8, 15, 16, 63, 64, 65, 255, 256, 1000, 4097):
        data = rng.randbytes(n)
        assert crc64(0, data) == crc64_bitwise(data), n


@pytest.mark.parametrize("n", [1, 100, 65535, 65536, 1 << 20, (3 << 20) + 17])
def test_crc64_equals_liblzma_and_chains_over_any_cut(n) -> None:
    crc64 = c_crc64()
    rng = random.Random(n)
    data = rng.randbytes(n)
    assert crc64(0, data) == crc64_of_xz(data)
    crc, pos = 0, 0
    while pos < n:  # cut anywhere (views, as the tool's chunks are): the same CRC as in one piece
        k = rng.randrange(1, 200_000)
        crc = crc64(crc, memoryview(data)[pos:pos + k])
        pos += k
    assert crc == crc64(0, data)


def test_crc64_catches_a_flipped_bit_a_swap_and_a_missing_byte() -> None:
    crc64 = c_crc64()
    data = bytearray(random.Random(9).randbytes(1 << 16))
    good = crc64(0, data)
    flipped = bytearray(data)
    flipped[40000] ^= 0x10
    swapped = data[4096:8192] + data[:4096] + data[8192:]  # two segments delivered in the wrong order
    assert len({good, crc64(0, flipped), crc64(0, swapped), crc64(0, data[:-1])}) == 4


def test_open_digest_names() -> None:
    sha = open_digest("sha256", "c")
    try:
        assert isinstance(sha, BackgroundSha256)
    finally:
        sha.close()
    crc = open_digest("crc64", "c")
    assert isinstance(crc, Crc64)
    crc.update(b"12345")
    crc.update(memoryview(b"6789"))
    assert crc.hexdigest() == "995dc9bbdf1939fa"
    none = open_digest("none", "c")
    none.update(b"x")
    assert isinstance(none, NoDigest) and none.hexdigest() is None


def test_crc64_is_refused_on_the_python_lane(monkeypatch) -> None:
    with pytest.raises(UsageError, match="--digest crc64 is computed by the C core"):
        open_digest("crc64", "python")
    monkeypatch.setenv("KBYPASS_PURE_PYTHON", "1")  # no lane given: the one in force
    with pytest.raises(UsageError, match="python lane"):
        open_digest("crc64")
    with pytest.raises(UsageError, match="use one of sha256, crc64, none"):
        open_digest("md5")
