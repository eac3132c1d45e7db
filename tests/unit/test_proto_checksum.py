"""Internet checksum: scalar against a naive reference and scapy; vectorized against scalar."""

import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scapy.all import IP, UDP, Ether, raw
from scapy.utils import checksum as scapy_checksum

from kbypass.proto import checksum as ck
from kbypass.proto.udp import build_udp_frame

SET = settings(derandomize=True, deadline=None, max_examples=150)


def naive_sum(data: bytes) -> int:
    """Word-by-word ones' complement sum with end-around carry (RFC 1071 section 4.1), folded to 16 bits."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def naive_checksum(data: bytes) -> int:
    return ~naive_sum(data) & 0xFFFF


@SET
@given(st.binary(max_size=300))
def test_scalar_matches_naive_and_scapy(data):
    assert ck.internet_checksum(data) == naive_checksum(data) == scapy_checksum(data)


def test_zero_and_minus_zero_sums():
    # RFC 1071: all-zero data folds to +0, whose complement is 0xFFFF; a non-zero sum of -0 gives 0
    for data in (b"", b"\0", b"\0\0", bytes(8), bytes(61), b"\xff\xff", b"\x00\x01\xff\xfe"):
        assert ck.internet_checksum(data) == naive_checksum(data) == scapy_checksum(data), data
        field = ck.internet_checksum(data)
        if len(data) >= 2 and not any(data[:2]):
            assert ck.verify(field.to_bytes(2, "big") + data[2:])


def test_verify_refuses_all_zero_messages():
    # a zero checksum field over zero data folds to +0: Linux drops it, and so do we
    assert not ck.verify(bytes(8))
    assert ck.verify(b"\xff\xff" + bytes(6))


@SET
@given(st.binary(min_size=2, max_size=300).filter(lambda d: any(d)))
def test_verify_accepts_own_checksum_and_rejects_changes(data):
    data = bytearray(data)
    data[0:2] = b"\0\0"
    data[0:2] = ck.internet_checksum(data).to_bytes(2, "big")
    assert ck.verify(data)
    i = len(data) - 1
    data[i] ^= 0x01
    assert not ck.verify(data)


def test_known_vector():
    # RFC 1071 section 3 example bytes: sum 0xddf2
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert naive_sum(data) == 0xDDF2
    assert ck.internet_checksum(data) == (~0xDDF2 & 0xFFFF)


def test_udp_checksum_against_scapy():
    f = build_udp_frame(b"\x02" * 6, b"\x04" * 6, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 5, 7, b"odd")
    p = Ether(f)
    q = p.copy()
    del q[IP].chksum, q[UDP].chksum
    q = Ether(raw(q))
    assert (p[IP].chksum, p[UDP].chksum) == (q[IP].chksum, q[UDP].chksum)


def test_udp_zero_checksum_sent_as_ffff():
    # find a payload whose checksum computes to 0: the field must then read 0xFFFF (RFC 768)
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    head = (1).to_bytes(2, "big") + (2).to_bytes(2, "big") + (10).to_bytes(2, "big") + b"\0\0"
    partial = (ck.ones_sum(head) + ck.pseudo_header_sum(src, dst, 17, 10)) % 0xFFFF
    word = (0xFFFF - partial) % 0xFFFF  # makes the total sum 0 mod 0xFFFF -> checksum 0
    seg = head + word.to_bytes(2, "big")
    assert ck.internet_checksum(seg, ck.pseudo_header_sum(src, dst, 17, 10)) == 0
    assert ck.udp_checksum(src, dst, seg) == 0xFFFF
    assert ck.udp_verify(src, dst, seg[:6] + b"\xff\xff" + seg[8:])


# ------------------------------------------------------------------------------------------ vectorized

frames_st = st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=24)


@SET
@given(frames_st, st.integers(0, 7), st.data())
def test_ones_sum_batch_matches_scalar(frames, gap, data):
    # frames at arbitrary (odd too) offsets inside one UMEM-like buffer, varying (odd too) lengths
    buf = bytearray()
    addr, length = [], []
    for f in frames:
        buf += bytes(data.draw(st.integers(0, gap)))
        addr.append(len(buf))
        length.append(len(f))
        buf += f
    umem = np.frombuffer(bytes(buf) + b"\xaa" * 3, dtype=np.uint8)  # non-zero bytes past the last frame
    got = ck.ones_sum_batch(umem, np.array(addr), np.array(length))
    assert got.tolist() == [ck.ones_sum(f) for f in frames]
    fields = ck.checksum_field_batch(got)
    assert fields.tolist() == [ck.internet_checksum(f) if any(f) else 0 for f in frames]
    assert ck.internet_checksum_batch(umem, np.array(addr), np.array(length)).tolist() == [
        ck.internet_checksum(f) for f in frames]


def test_internet_checksum_batch_all_zero_ranges():
    buf = np.zeros(64, dtype=np.uint8)
    buf[40:42] = 0xFF  # a -0 sum: checksum 0
    got = ck.internet_checksum_batch(buf, np.array([0, 8, 40, 3]), np.array([8, 0, 2, 5]))
    assert got.tolist() == [0xFFFF, 0xFFFF, 0, 0xFFFF]


@SET
@given(st.integers(1, 16), st.integers(1, 130), st.data())
def test_ones_sum_rows_matches_scalar(rows, width, data):
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    frames = np.frombuffer(bytes(rng.getrandbits(8) for _ in range(rows * width)), dtype=np.uint8).reshape(rows, width)
    start = np.array([rng.randrange(width) for _ in range(rows)])
    length = np.array([rng.randrange(width - s + 1) for s in start])
    got = ck.ones_sum_rows(frames, start, length)
    assert got.tolist() == [ck.ones_sum(frames[i, s:s + n].tobytes()) for i, (s, n) in enumerate(zip(start, length))]


def test_batch_clips_out_of_range_lengths():
    buf = np.frombuffer(b"\x01\x02\x03", dtype=np.uint8)
    # the second range claims far more than exists: read as if padded with zeros, no IndexError
    assert ck.ones_sum_batch(buf, np.array([0, 1]), np.array([3, 1000])).tolist() == [
        ck.ones_sum(b"\x01\x02\x03"), ck.ones_sum(b"\x02\x03")]
    assert ck.ones_sum_batch(buf, np.array([], dtype=np.int64), np.array([], dtype=np.int64)).shape == (0,)


def _udp_frames(rng, n):
    out = []
    for i in range(n):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 90)))
        out.append(build_udp_frame(b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02", bytes([10, 0, 0, 1]),
                                   bytes([10, 0, rng.randrange(256), rng.randrange(1, 255)]),
                                   rng.randrange(65536), rng.randrange(1, 65536), payload, ident=i))
    return out


def _pack(frames, rng):
    buf, addr, length = bytearray(), [], []
    for f in frames:
        buf += bytes(rng.randrange(3))
        addr.append(len(buf))
        length.append(len(f))
        buf += f
    return np.frombuffer(bytearray(buf), dtype=np.uint8).copy(), np.array(addr), np.array(length)


@pytest.mark.parametrize("seed", range(5))
def test_udp_and_ip_verify_and_fill_batch(seed):
    rng = random.Random(seed)
    frames = _udp_frames(rng, 40)
    umem, addr, length = _pack(frames, rng)
    assert ck.udp_verify_batch(umem, addr, length).all()
    assert ck.ipv4_verify_batch(umem, addr, length).all()
    # corrupt ports, checksum or payload (not the UDP length, which would make the frame not fit):
    # exactly those frames fail UDP verification
    bad = sorted(rng.sample(range(40), 10))
    for i in bad:
        off = rng.choice([34, 35, 36, 37] + list(range(40, length[i])))
        umem[addr[i] + off] ^= 1 << rng.randrange(8)
    ok = ck.udp_verify_batch(umem, addr, length)
    assert np.flatnonzero(~ok).tolist() == bad
    # refill restores them, and scapy agrees with every checksum written
    umem[addr[bad[0]] + 24] ^= 0x10  # also break one IP header checksum
    assert not ck.ipv4_verify_batch(umem, addr, length)[bad[0]]
    assert ck.udp_fill_batch(umem, addr, length).all()
    assert ck.ipv4_fill_batch(umem, addr, length).all()
    assert ck.udp_verify_batch(umem, addr, length).all() and ck.ipv4_verify_batch(umem, addr, length).all()
    for i in bad:
        p = Ether(umem[addr[i]:addr[i] + length[i]].tobytes())
        q = p.copy()
        del q[IP].chksum, q[UDP].chksum
        q = Ether(raw(q))
        assert p[UDP].chksum == q[UDP].chksum and p[IP].chksum == q[IP].chksum


def test_udp_batch_refuses_frames_whose_headers_do_not_fit():
    rng = random.Random(1)
    frames = _udp_frames(rng, 4)
    f = [bytearray(x) for x in frames]
    f[0][38:40] = (len(f[0]) - 34 + 1).to_bytes(2, "big")  # UDP length past the frame
    f[1][38:40] = (7).to_bytes(2, "big")  # UDP length < 8
    f[2][14] = 0x44  # IHL 4
    umem, addr, length = _pack([bytes(x) for x in f], rng)
    before = umem.copy()
    assert ck.udp_verify_batch(umem, addr, length).tolist() == [False, False, False, True]
    assert ck.udp_fill_batch(umem, addr, length).tolist() == [False, False, False, True]
    assert (umem[: addr[3]] == before[: addr[3]]).all()  # untouched
    assert not ck.udp_verify_batch(umem, addr, length - 40).any()  # truncated frames


def test_zero_udp_checksum_batch_policy():
    f = bytearray(_udp_frames(random.Random(2), 1)[0])
    f[40:42] = b"\0\0"
    umem = np.frombuffer(bytes(f), dtype=np.uint8)
    a, n = np.array([0]), np.array([len(f)])
    assert ck.udp_verify_batch(umem, a, n, accept_zero=True).tolist() == [True]
    assert ck.udp_verify_batch(umem, a, n, accept_zero=False).tolist() == [False]


def test_batch_range_at_buffer_end_shorter_than_widest():
    # the widest range sets the window width; a short range in the last bytes must still be summed right
    long_frame, short_frame = bytes(range(200)), b"\x12\x34\x56"
    buf = np.frombuffer(long_frame + short_frame, dtype=np.uint8)
    got = ck.ones_sum_batch(buf, np.array([0, 200]), np.array([200, 3]))
    assert got.tolist() == [ck.ones_sum(long_frame), ck.ones_sum(short_frame)]


def test_batch_argument_errors():
    with pytest.raises(ValueError, match="negative"):
        ck.ones_sum_batch(np.zeros(8, np.uint8), np.array([-1]), np.array([2]))
    with pytest.raises(TypeError):
        ck.ones_sum_batch(np.zeros(8, np.uint16), np.array([0]), np.array([2]))
    frozen = np.frombuffer(bytes(100), dtype=np.uint8)  # read-only: filling in place must refuse it
    with pytest.raises(ValueError, match="writeable"):
        ck.udp_fill_batch(frozen, np.array([0]), np.array([60]))
    with pytest.raises(ValueError, match="writeable"):
        ck.ipv4_fill_batch(np.zeros((4, 64), np.uint8)[:, ::2], np.array([0]), np.array([32]))


def test_verify_on_2d_frame_array():
    rng = random.Random(3)
    frames = _udp_frames(rng, 8)
    width = 256
    mat = np.zeros((8, width), np.uint8)
    for i, f in enumerate(frames):
        mat[i, :len(f)] = np.frombuffer(f, np.uint8)
    addr = np.arange(8) * width
    length = np.array([len(f) for f in frames])
    assert ck.udp_verify_batch(mat, addr, length).all() and ck.ipv4_verify_batch(mat, addr, length).all()
    mat[5, 45] ^= 4
    assert np.flatnonzero(~ck.udp_verify_batch(mat, addr, length)).tolist() == [5]
