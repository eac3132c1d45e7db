"""The Internet checksum (RFC 1071): scalar for slow paths, vectorized numpy for batches.

Arithmetic fact used throughout: the ones' complement sum of 16-bit big-endian words is congruent to the
plain integer sum of those words modulo 0xFFFF (because 0x10000 == 1 mod 0xFFFF), and the folded result
is 0 only when every word is 0. So a whole buffer read as one big-endian integer, reduced mod 0xFFFF,
gives the folded sum without a Python loop (CPython's big-int mod runs in C), and a batch can be summed
with plain numpy integer sums followed by one `% 0xFFFF`.

A checksum *field* is then `0xFFFF - r` for r = sum mod 0xFFFF (r == 0 means the folded sum is 0xFFFF for
any non-zero data, whose complement is 0). The one exception is all-zero data (an ICMP echo with id 0, seq 0
and no payload): its folded sum is 0 (+0, not -0), so its checksum is 0xFFFF, as RFC 1071 computes and
Linux expects (a receiver summing the message with a 0 field folds to 0 and drops it). `internet_checksum`
and `verify` see the data and handle it; `checksum_field` and the batch fills only see r, which is right
for IPv4 headers (version 4 is never zero) and UDP (the length word is never zero). For UDP a computed 0
is sent as 0xFFFF (RFC 768: 0 means "no checksum"), which is the same value mod 0xFFFF, so receivers
verify it unchanged.

Verification: a message including its own checksum field is valid exactly when it sums to 0 mod 0xFFFF
and is not all zeros (the folded sum must be 0xFFFF, and a sum of zero words folds to 0).
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
    """The value to store in a checksum field, from a sum (mod 0xFFFF) taken with that field zeroed, for
    data known not to be all zeros (see the module doc; `internet_checksum` handles all-zero data)."""
    r = partial % _MOD
    return _MOD - r if r else 0


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of `data` (checksum field inside it must be zero), plus an optional partial sum.
    All-zero data (with no partial sum) has the folded sum +0, hence the checksum 0xFFFF."""
    if initial == 0 and not int.from_bytes(data, "big"):
        return 0xFFFF
    return checksum_field(ones_sum(data) + initial)


def verify(data: bytes | bytearray | memoryview, initial: int = 0) -> bool:
    """True when `data`, checksum field included, sums (with `initial`) to the ones' complement zero
    (-0, 0xFFFF). All zeros fold to +0 and are refused, as Linux refuses them."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return (n % _MOD + initial) % _MOD == 0 and bool(n or initial)


def pseudo_header_sum(src_ip: bytes, dst_ip: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv4 pseudo-header (RFC 768 / RFC 793) for a transport segment of `length` bytes."""
    return (int.from_bytes(src_ip, "big") + int.from_bytes(dst_ip, "big") + proto + length) % _MOD


def udp_checksum(src_ip: bytes, dst_ip: bytes, segment: bytes | bytearray | memoryview) -> int:
    """UDP checksum field for `segment` (UDP header with checksum 0, plus payload); never 0 (0 -> 0xFFFF)."""
    c = internet_checksum(segment, pseudo_header_sum(src_ip, dst_ip, IPPROTO_UDP, len(segment)))
    return c or 0xFFFF


def udp_verify(src_ip: bytes, dst_ip: bytes, segment: bytes | bytearray | memoryview) -> bool:
    """True when a received UDP segment (exactly UDP-length bytes) checksums right. A zero field means "not
    computed" (allowed for IPv4) and is not special-cased here: callers check for it first."""
    return verify(segment, pseudo_header_sum(src_ip, dst_ip, IPPROTO_UDP, len(segment)))


# ----------------------------------------------------------------------------------------------------------
# Batches. A batch is a flat uint8 buffer (a UMEM, or a 2-D frame array raveled) plus per-frame start
# offsets and lengths. No Python loop runs per frame:
# - an overlapping-window view of the buffer (row k is buf[k : k + width], strides (1, 1), no copy) is
#   fancy-indexed by the start offsets, which copies each frame into one row of a (frames x width) matrix;
# - rows are summed as native-order 16-bit words. The ones' complement sum does not care about byte order
#   (RFC 1071 section 2(B)): a little-endian sum is the byte-swapped big-endian one, and swapping the two
#   bytes of x is multiplying by 256 mod 0xFFFF (x*256 = hi*0x10000 + lo*0x100 == hi + lo*0x100), so one
#   multiply fixes the order;
# - header fields are read with one gather from a 1-byte-stride big-endian view (`_view`).
# Numpy calls cost microseconds each whatever their size, so the code keeps their number low.

_LITTLE = sys.byteorder == "little"


def _as_flat(buf: np.ndarray) -> np.ndarray:
    if buf.dtype != np.uint8:
        raise TypeError("checksum batches work on uint8 buffers")
    return np.ascontiguousarray(buf.reshape(-1))


def _view(flat: np.ndarray, dtype: str) -> np.ndarray:
    """Every byte offset of `flat` as the start of a big-endian field (unaligned reads are fine)."""
    size = np.dtype(dtype).itemsize
    return np.ndarray((flat.shape[0] - size + 1,), dtype, flat, 0, (1,))


def ones_sum_batch(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Per-frame ones' complement sums (mod 0xFFFF, int64) of buf[start[i] : start[i] + length[i]].

    `buf` is a uint8 array (1-D, or N-D which is viewed flat); starts must be >= 0. Ranges that run past
    the end of `buf` are cut there, so a lying length can never read out of bounds: validate lengths
    before trusting the result."""
    return (_sums_batch(buf, start, length) % np.uint64(_MOD)).astype(np.int64)


def internet_checksum_batch(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Vector form of `internet_checksum` (uint16): like `checksum_field_batch(ones_sum_batch(...))`, but
    an all-zero range gets 0xFFFF, as RFC 1071 wants (see the module doc)."""
    raw = _sums_batch(buf, start, length)
    fields = checksum_field_batch((raw % np.uint64(_MOD)).astype(np.int64))
    fields[raw == 0] = 0xFFFF
    return fields


def _sums_batch(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Plain (unreduced, uint64) sums of the ranges' words, byte order fixed by a shift: congruent to the
    ones' complement sums mod 0xFFFF, and 0 exactly when a range is all zeros."""
    flat = _as_flat(buf)
    size = flat.shape[0]
    start = np.asarray(start, dtype=np.int64)
    n = start.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if start.min() < 0:
        raise ValueError("ones_sum_batch: negative start offset")
    length = np.maximum(np.minimum(length, size - start), 0)
    width = int(length.max())
    width += width & 1
    if width == 0:
        return np.zeros(n, dtype=np.uint64)
    last_row = size - width  # window rows past it would run off the buffer
    if last_row >= 0 and int(start.max()) <= last_row:
        data = np.ndarray((last_row + 1, width), np.uint8, flat, 0, (1, 1))[start]
    else:  # rare: a range at the very end of the buffer, shorter than the widest one
        data = np.take(flat, start[:, None] + np.arange(width), mode="clip")
    odd = length & 1
    has_odd = bool(odd.any())
    if has_odd:  # read it before the masking below zeroes the word that holds it
        last = data[np.arange(n), np.maximum(length - 1, 0)] * odd.astype(np.uint8)
    words = data.view(np.uint16)
    full = length >> 1
    if int(full.min()) != width >> 1:
        words[np.arange(width >> 1) >= full[:, None]] = 0
    total = words.sum(axis=1, dtype=np.uint64)
    if has_odd:
        # an odd range's last byte is the high byte of a big-endian word whose low byte is padding
        total += last if _LITTLE else last.astype(np.uint64) << np.uint64(8)
    if _LITTLE:
        total <<= np.uint64(8)  # byte swap, mod 0xFFFF (see above); sums stay far below 2**56
    return total


def ones_sum_rows(frames: np.ndarray, start: np.ndarray | int, length: np.ndarray) -> np.ndarray:
    """`ones_sum_batch` for a 2-D (frames x width) uint8 array: row i summed from start[i] for length[i]."""
    rows, width = frames.shape
    start = np.broadcast_to(np.asarray(start, dtype=np.int64), (rows,))
    length = np.minimum(np.asarray(length, dtype=np.int64), width - start)
    base = np.arange(rows, dtype=np.int64) * width
    return ones_sum_batch(np.ascontiguousarray(frames), base + start, length)


def checksum_field_batch(partial: np.ndarray) -> np.ndarray:
    """Vector form of `checksum_field`: the uint16 value to store, from sums taken with the field zeroed."""
    return ((_MOD - np.asarray(partial, dtype=np.int64) % _MOD) % _MOD).astype(np.uint16)


def _layout(flat: np.ndarray, addr, length, l2_len: int, need: int):
    """(length, ip offsets, IHL in bytes, fits): `fits` marks frames inside the buffer whose IPv4 header
    (IHL >= 5) plus `need` more bytes lie within their length. Frames that do not fit get ip offset 0 and
    IHL 20, so every header read stays inside the buffer; their values are then ignored."""
    addr = np.asarray(addr, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    size = flat.shape[0]
    if size < l2_len + 20 + need:  # no frame fits, and the reads below need that much room
        z = np.zeros_like(addr)
        return z, z, z + 20, np.zeros(addr.shape, dtype=bool)
    inside = (addr >= 0) & (length >= l2_len + 20 + need) & (addr + length <= size)
    ip = np.where(inside, addr + l2_len, 0)
    ihl = (flat[ip] & 0x0F).astype(np.int64) << 2
    fits = inside & (ihl >= 20) & (l2_len + ihl + need <= length)
    return length, ip, np.where(fits, ihl, 20), fits


def _udp_parts(flat, addr, length, l2_len):
    """UDP offsets, UDP lengths (0 where not fitting), pseudo-header sums and the fits mask."""
    length, ip, ihl, fits = _layout(flat, addr, length, l2_len, 8)
    udp = ip + ihl
    ulen = _view(flat, ">u2")[udp + 4].astype(np.int64)
    fits &= (ulen >= 8) & (l2_len + ihl + ulen <= length)
    ulen *= fits
    u32 = _view(flat, ">u4")
    pseudo = u32[ip + 12].astype(np.int64) + u32[ip + 16] + (IPPROTO_UDP + ulen)
    return udp, ulen, pseudo, fits


def _writable(buf: np.ndarray) -> np.ndarray:
    if buf.dtype != np.uint8 or not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError("filling checksums needs a writeable, C-contiguous uint8 buffer (the UMEM itself)")
    return buf.reshape(-1)


def udp_verify_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray, *, l2_len: int = 14,
                     accept_zero: bool = True) -> np.ndarray:
    """Bool mask: frame i (buf[addr[i]:addr[i]+length[i]], Ethernet + IPv4 + UDP) has a good UDP checksum.

    Frames whose headers do not fit (IHL < 5, UDP length < 8 or past the frame, frame past the buffer)
    are False. A zero checksum field counts as good when `accept_zero` (RFC 768 lets IPv4 senders skip
    it). The IP header checksum is not checked here; use `ipv4_verify_batch`."""
    flat = _as_flat(buf)
    udp, ulen, pseudo, fits = _udp_parts(flat, addr, length, l2_len)
    ok = (ones_sum_batch(flat, udp, ulen) + pseudo) % _MOD == 0
    zero = _view(flat, ">u2")[udp + 6] == 0
    ok = (ok | zero) if accept_zero else (ok & ~zero)
    return ok & fits


def udp_fill_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray, *, l2_len: int = 14) -> np.ndarray:
    """Compute and write the UDP checksum of every frame in place (after headers and payload are final).

    Returns the mask of frames that were filled (the others do not hold a well-formed IPv4/UDP header
    within their length and are left untouched)."""
    flat = _writable(buf)
    udp, ulen, pseudo, fits = _udp_parts(flat, addr, length, l2_len)
    if not fits.all():
        udp, ulen, pseudo = udp[fits], ulen[fits], pseudo[fits]
    field = _view(flat, ">u2")
    field[udp + 6] = 0
    c = checksum_field_batch(ones_sum_batch(flat, udp, ulen) + pseudo)
    c[c == 0] = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    field[udp + 6] = c
    return fits


def ipv4_verify_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray, *, l2_len: int = 14) -> np.ndarray:
    """Bool mask: frame i's IPv4 header checksum is right (and the header fits in the frame)."""
    flat = _as_flat(buf)
    _, ip, ihl, fits = _layout(flat, addr, length, l2_len, 0)
    return (ones_sum_batch(flat, ip, ihl * fits) == 0) & fits


def ipv4_fill_batch(buf: np.ndarray, addr: np.ndarray, length: np.ndarray, *, l2_len: int = 14) -> np.ndarray:
    """Compute and write the IPv4 header checksum of every frame in place; returns the mask filled."""
    flat = _writable(buf)
    _, ip, ihl, fits = _layout(flat, addr, length, l2_len, 0)
    if not fits.all():
        ip, ihl = ip[fits], ihl[fits]
    field = _view(flat, ">u2")
    field[ip + 10] = 0
    field[ip + 10] = checksum_field_batch(ones_sum_batch(flat, ip, ihl))
    return fits
