"""Initial sequence numbers (RFC 6528) and SYN cookies.

ISN = M + F(4-tuple, secret): M a clock ticking every 4 microseconds, F a keyed hash (BLAKE2s), so ISNs of
one 4-tuple grow with time (old duplicates fall behind) while another 4-tuple's cannot be guessed.

A SYN cookie is the ISN of a SYN-ACK we kept no state for (the backlog was full):
    bits 31..27  t: a 64-second counter, mod 32 (a cookie lives two periods)
    bits 26..24  index of the peer's MSS in MSS_TABLE (rounded down)
    bits 23..0   keyed hash of (4-tuple, t, the peer's ISN)
When the SYN carries timestamps, the cookie SYN-ACK offers window scaling, SACK and timestamps too and keeps
what was agreed in the low 6 bits of its TSval, which the peer echoes in every TSecr (Linux's scheme):
bits 0..3 the peer's window scale (15: none), bit 4 SACK-permitted. Without timestamps a cookie connection
has none of the three (the SYN-ACK does not offer them): correct, only slower, and only under a SYN flood.
"""

from __future__ import annotations

import hashlib
import os
import struct

from .segment import ip4

MASK = 0xFFFFFFFF
MSS_TABLE = (536, 1200, 1360, 1400, 1440, 1460, 4312, 8960)
COOKIE_PERIOD = 64.0


def _four_tuple(local_ip, local_port: int, remote_ip, remote_port: int) -> bytes:
    return ip4(local_ip) + ip4(remote_ip) + struct.pack("!HH", local_port, remote_port)


class IsnGenerator:
    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret if secret is not None else os.urandom(32)

    def _hash(self, data: bytes) -> int:
        return int.from_bytes(hashlib.blake2s(data, key=self.secret, digest_size=4).digest(), "big")

    def isn(self, local_ip, local_port: int, remote_ip, remote_port: int, now: float) -> int:
        return (int(now * 250_000) + self._hash(_four_tuple(local_ip, local_port, remote_ip, remote_port))) & MASK

    def ts_offset(self, local_ip, local_port: int, remote_ip, remote_port: int) -> int:
        """The per-connection TSval offset (RFC 7323 5.4): a keyed hash of the 4-tuple, unrelated to the ISN
        (an offset derived from the ISN would give away the ISN clock to anyone who sees our timestamps).
        One 4-tuple keeps its offset across connections, so its timestamps keep growing (PAWS on reuse), and
        a cookie SYN-ACK (sent with no connection state) and the connection built from it agree."""
        return self._hash(b"tsoff" + _four_tuple(local_ip, local_port, remote_ip, remote_port))

    def make_cookie(self, local_ip, local_port: int, remote_ip, remote_port: int, peer_isn: int,
                    peer_mss: int, now: float) -> tuple[int, int]:
        """(cookie, the MSS it encodes)."""
        idx = max((i for i, m in enumerate(MSS_TABLE) if m <= peer_mss), default=0)
        t = int(now // COOKIE_PERIOD) & 0x1F
        h = self._cookie_hash(local_ip, local_port, remote_ip, remote_port, peer_isn, t)
        return (t << 27) | (idx << 24) | h, MSS_TABLE[idx]

    def check_cookie(self, local_ip, local_port: int, remote_ip, remote_port: int, peer_isn: int,
                     cookie: int, now: float) -> int | None:
        """The MSS a valid cookie encodes, or None (forged, or older than two periods)."""
        t = cookie >> 27
        age = (int(now // COOKIE_PERIOD) - t) & 0x1F
        if age > 1:
            return None
        h = self._cookie_hash(local_ip, local_port, remote_ip, remote_port, peer_isn, t)
        if h != cookie & 0xFFFFFF:
            return None
        return MSS_TABLE[(cookie >> 24) & 7]

    def _cookie_hash(self, local_ip, local_port, remote_ip, remote_port, peer_isn: int, t: int) -> int:
        data = _four_tuple(local_ip, local_port, remote_ip, remote_port) + struct.pack("!IB", peer_isn & MASK, t)
        return self._hash(b"cookie" + data) & 0xFFFFFF


_default: IsnGenerator | None = None


def default_generator() -> IsnGenerator:
    """One generator (one secret) per process, so ISNs of a 4-tuple keep growing across its connections."""
    global _default
    if _default is None:
        _default = IsnGenerator()
    return _default


NO_WSCALE = 0xF
SACK_BIT = 0x10


def cookie_tsval(now: float, offset: int, wscale: int | None, sack: bool) -> int:
    """Our TSval for a cookie SYN-ACK with the options agreed in its low 6 bits, never ahead of the clock
    the connection will use (the peer's PAWS would drop our next segments)."""
    base = (int(now * 1000) + offset) & MASK
    val = (base & ~0x3F) | (NO_WSCALE if wscale is None else wscale) | (SACK_BIT if sack else 0)
    return (val - 64) & MASK if val > base else val


def cookie_options(tsecr: int) -> tuple[int | None, bool]:
    """(peer's window scale or None, SACK-permitted) from the TSecr that echoes a cookie SYN-ACK's TSval."""
    ws = tsecr & 0xF
    return (None if ws == NO_WSCALE else ws), bool(tsecr & SACK_BIT)
