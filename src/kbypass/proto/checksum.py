"""The Internet checksum (RFC 1071): scalar for slow paths, vectorized numpy for batches.

Arithmetic fact used throughout: the ones' complement sum of 16-bit big-endian words is congruent to the
plain integer sum of those words modulo 0xFFFF (because 0x10000 == 1 mod 0xFFFF), and the folded result
is 0 only when every word is 0. So a whole buffer read as one big-endian integer, reduced mod 0xFFFF,
gives the folded sum without a Python loop (CPython's big-int mod runs in C), and a batch can be summed
with plain numpy integer sums followed by one `% 0xFFFF`.

A checksum *field* is then `0xFFFF - r` for r = sum mod 0xFFFF (r == 0 means the folded sum is 0xFFFF for
any non-zero data, whose complement is 0). For UDP a computed 0 is sent as 0xFFFF (RFC 768: 0 means "no
checksum"), which is the same value mod 0xFFFF, so receivers verify it unchanged.

Verification: a message including its own checksum field sums to 0 mod 0xFFFF exactly when it is valid.
"""

from __future__ import annotations

import sys

import numpy as np

IPPROTO_ICMP = 1
IPPROTO_UDP = 17

_MOD = 0xFFFF


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Sum of `data` as big-endian 16-bit words, reduced mod 0xFFFF (odd length: padded with a zero byte)."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8  # the pad byte goes after the last byte, making it the high half of the last word
    return n % _MOD


def checksum_field(partial: int) -> int:
    """The value to store in a checksum field, from a sum (mod 0xFFFF) taken with that field zeroed."""
    r = partial % _MOD
    return _MOD - r if r else 0


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of `data` (checksum field inside it must be zero), plus an optional partial sum."""
    return checksum_field(ones_sum(data) + initial)


def verify(data: bytes | bytearray | memoryview, initial: int = 0) -> bool:
    """True when `data`, checksum field included, sums (with `initial`) to the ones' complement zero."""
    return (ones_sum(data) + initial) % _MOD == 0


def pseudo_header_sum(src_ip: bytes, dst_ip: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv4 pseudo-header (RFC 768 / RFC 793) for a transport segment of `length` bytes."""
    return (int.from_bytes(src_ip, "big") + int.from_bytes(dst_ip, "big") + proto + length) % _MOD


def udp_checksum(src_ip: bytes, dst_ip: bytes, segment: bytes | bytearray | memoryview) -> int:
    """UDP checksum field for `segment` (UDP header with checksum 0, plus payload); never 0 (0 -> 0xFFFF)."""
    c = internet_checksum(segment, pseudo_header_sum(src_ip, dst_ip, IPPROTO_UDP, len(segment)))
    return c or 0xFFFF


def udp_verify(src_ip: bytes, dst_ip: bytes, segment: bytes | bytearray | memoryview) -> bool:
    """True when a received UDP segment's checksum is right. A zero field means "not computed" (IPv4 only):
    the caller decides whether to accept that; this returns False for it only if the data is also wrong,
    so check the field for 0 first."""
    return verify(segment, pseudo_header_sum(src_ip, dst_ip, IPPROTO_UDP, len(segment)))


# ----------------------------------------------------------------------------------------------------------
# Batches. A batch is a flat uint8 buffer (a UMEM, or a 2-D frame array raveled) plus per-frame start
# offsets and lengths. No Python loop runs per frame: an overlapping-window view of the buffer (row k is
# buf[k : k + width], no copy) is fancy-indexed by the start offsets, which copies each frame into one
# row of a (frames x width) matrix with one memcpy per row. The rows are summed as native-order 16-bit
# words: the ones' complement sum is byte-order independent (RFC 1071 section 2(B)), so a sum of
# little-endian words is the byte-swapped big-endian sum, swapped back once per frame at the end.

_SWAP = sys.byteorder == "little"


def _as_flat(buf: np.ndarray) -> np.ndarray:
    if buf.dtype != np.uint8:
        raise TypeError("checksum batches work on uint8 buffers")
    return np.ascontiguousarray(buf.reshape(-1))


def ones_sum_batch(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Per-frame ones' complement sums (mod 0xFFFF, int64) of buf[start[i] : start[i] + length[i]].

    `buf` is a uint8 array (1-D, or N-D which is viewed flat). Ranges that run past the end of `buf` are
    cut there (the missing bytes count as zero), and ranges starting outside it sum to 0, so a lying
    length can never read out of bounds; validate lengths before trusting the result."""
    flat = _as_flat(buf)
    size = flat.shape[0]
    start = np.asarray(start, dtype=np.int64)
    n = start.shape[0]
    if n == 0 or size == 0:
        return np.zeros(n, dtype=np.int64)
    inside = (start >= 0) & (start < size)
    length = np.where(inside, np.clip(np.asarray(length, dtype=np.int64), 0, size - start), 0)
    start = np.where(inside, start, 0)
    width = int(length.max())
    width += width & 1
    if width == 0:
        return np.zeros(n, dtype=np.int64)
    last_row = size - width  # rows past it would run off the buffer
    near_end = start > last_row
    if last_row >= 0:
        windows = np.lib.stride_tricks.as_strided(flat, shape=(last_row + 1, width), strides=(1, 1),
                                                  writeable=False)
        data = windows[np.where(near_end, 0, start)]
    else:
        data = np.empty((n, width), dtype=np.uint8)
    if near_end.any():  # rare: a frame at the very end of the buffer, shorter than the widest one
        sel = np.flatnonzero(near_end)
        data[sel] = np.take(flat, start[sel, None] + np.arange(width), mode="clip")
    odd = length & 1
    has_odd = bool(odd.any())
    if has_odd:  # read before the masking below zeroes the word that holds it
        last = data[np.arange(n), np.maximum(length - 1, 0)].astype(np.uint64)
    words = data.view(np.uint16)
    full = length >> 1  # whole words inside each range
    if (full != width >> 1).any():
        words[np.arange(width >> 1)[None, :] >= full[:, None]] = 0
    total = words.sum(axis=1, dtype=np.uint64)
    if has_odd:
        # the last byte of an odd range is the high byte of a big-endian word padded with zero
        total += np.where(odd == 1, last if _SWAP else last << np.uint64(8), np.uint64(0))
    r = (total % np.uint64(_MOD)).astype(np.int64)
    if _SWAP:
        r = (((r & 0xFF) << 8) | (r >> 8)) % _MOD
    return r


def ones_sum_rows(frames: np.ndarray, start: np.ndarray | int, length: np.ndarray) -> np.ndarray:
    """`ones_sum_batch` for a 2-D (frames x width) uint8 array: row i summed from start[i] for length[i]."""
    rows, width = frames.shape
    start = np.broadcast_to(np.asarray(start, dtype=np.int64), (rows,))
    length = np.minimum(np.asarray(length, dtype=np.int64), width - start)
    base = np.arange(rows, dtype=np.int64) * width
    return ones_sum_batch(np.ascontiguousarray(frames), base + start, length)


def checksum_field_batch(partial: np.ndarray) -> np.ndarray:
    """Vector form of `checksum_field`: the uint16 value to store, from sums taken with the field zeroed."""
    r = np.asarray(partial, dtype=np.int64) % _MOD
    return np.where(r == 0, 0, _MOD - r).astype(np.uint16)


def _be16(flat: np.ndarray, off: np.ndarray) -> np.ndarray:
    return flat[off].astype(np.int64) * 256 + flat[off + 1].astype(np.int64)


def _be32(flat: np.ndarray, off: np.ndarray) -> np.ndarray:
    return _be16(flat, off) * 65536 + _be16(flat, off + 2)


def _put16(flat: np.ndarray, off: np.ndarray, value: np.ndarray) -> None:
    value = np.asarray(value, dtype=np.int64)
    flat[off] = (value >> 8).astype(np.uint8)
    flat[off + 1] = (value & 0xFF).astype(np.uint8)


def _udp_layout(flat: np.ndarray, addr: np.ndarray, length: np.ndarray, l2_len: int):
    """Offsets of IPv4 and UDP headers and the UDP length, plus a mask of frames where they fit.

    The mask is False for frames too short for the headers they claim (so they are not summed wrongly):
    IHL < 5, UDP length < 8, UDP length past the frame end. Reads for such frames are clipped into the
    buffer and their values ignored."""
    addr = np.asarray(addr, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    if flat.shape[0] < l2_len + 28:  # no frame can fit; keeps the clipped reads below in bounds
        zero = np.zeros_like(addr)
        return zero, zero, zero, np.zeros(addr.shape, dtype=bool)
    last = flat.shape[0] - 2
    fits = (length >= l2_len + 28) & (addr >= 0) & (addr + length <= flat.shape[0])
    ip = addr + l2_len
    ihl = (flat[np.clip(ip, 0, last)] & 0x0F).astype(np.int64) * 4
    udp = ip + ihl
    ulen = _be16(flat, np.clip(udp + 4, 0, last))
    fits &= (ihl >= 20) & (ulen >= 8) & (l2_len + ihl + ulen <= length)
    return ip, udp, np.where(fits, ulen, 0), fits


def _udp_sums(flat, ip, udp, ulen):
    last = flat.shape[0] - 4
    pseudo = _be32(flat, np.clip(ip + 12, 0, last)) + _be32(flat, np.clip(ip + 16, 0, last)) + IPPROTO_UDP + ulen
    return (ones_sum_batch(flat, udp, ulen) + pseudo) % _MOD


def udp_verify_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray, *, l2_len: int = 14,
                     accept_zero: bool = True) -> np.ndarray:
    """Bool mask: frame i (buf[addr[i]:addr[i]+length[i]], Ethernet + IPv4 + UDP) has a good UDP checksum.

    Frames whose headers do not fit (see `_udp_layout`) are False. A zero checksum field counts as good
    when `accept_zero` (RFC 768 lets IPv4 senders skip it). The IP header itself is not checked here; use
    `ipv4_verify_batch`."""
    flat = _as_flat(buf)
    ip, udp, ulen, fits = _udp_layout(flat, addr, length, l2_len)
    ok = fits & (_udp_sums(flat, ip, udp, ulen) == 0)
    field = _be16(flat, np.clip(udp + 6, 0, flat.shape[0] - 2))
    if accept_zero:
        ok |= fits & (field == 0)
    else:
        ok &= field != 0
    return ok


def udp_fill_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray, *, l2_len: int = 14) -> np.ndarray:
    """Compute and write the UDP checksum of every frame in place (after headers and payload are final).

    Returns the mask of frames that were filled (the others do not hold a well-formed IPv4/UDP header
    within their length and are left untouched)."""
    flat = _as_flat(buf)
    ip, udp, ulen, fits = _udp_layout(flat, addr, length, l2_len)
    if not fits.any():
        return fits
    ip, udp, ulen = ip[fits], udp[fits], ulen[fits]
    _put16(flat, udp + 6, np.zeros_like(udp))
    field = checksum_field_batch(_udp_sums(flat, ip, udp, ulen)).astype(np.int64)
    _put16(flat, udp + 6, np.where(field == 0, 0xFFFF, field))
    return fits


def _ip_layout(flat, addr, length, l2_len):
    addr = np.asarray(addr, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    if flat.shape[0] < l2_len + 20:
        zero = np.zeros_like(addr)
        return zero, zero, np.zeros(addr.shape, dtype=bool)
    fits = (length >= l2_len + 20) & (addr >= 0) & (addr + length <= flat.shape[0])
    ip = addr + l2_len
    ihl = (flat[np.clip(ip, 0, flat.shape[0] - 1)] & 0x0F).astype(np.int64) * 4
    fits &= (ihl >= 20) & (l2_len + ihl <= length)
    return ip, np.where(fits, ihl, 0), fits


def ipv4_verify_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray, *, l2_len: int = 14) -> np.ndarray:
    """Bool mask: frame i's IPv4 header checksum is right (and the header fits in the frame)."""
    flat = _as_flat(buf)
    ip, ihl, fits = _ip_layout(flat, addr, length, l2_len)
    return fits & (ones_sum_batch(flat, ip, ihl) == 0)


def ipv4_fill_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray, *, l2_len: int = 14) -> np.ndarray:
    """Compute and write the IPv4 header checksum of every frame in place; returns the mask filled."""
    flat = _as_flat(buf)
    ip, ihl, fits = _ip_layout(flat, addr, length, l2_len)
    if not fits.any():
        return fits
    ip, ihl = ip[fits], ihl[fits]
    _put16(flat, ip + 10, np.zeros_like(ip))
    _put16(flat, ip + 10, checksum_field_batch(ones_sum_batch(flat, ip, ihl)))
    return fits
