"""A connection's state as Linux's TCP_REPAIR takes it: what a userspace TCP hands the kernel so that the
kernel carries the connection on from where it is (CRIU's migration of a live TCP socket).

`kbypass run` hands an accelerated connection to the kernel when it can no longer keep it on its rings and
the app still holds it: at a fork (parent and child then share one kernel socket, as without kbypass) and
when the control plane dies (the steering program goes with it, the packets come to the kernel). The shim's
C (csrc/preload/kbp_tcprepair.c) builds the kernel socket from `Handoff.HEADER` and the bytes after it.

Only states the kernel can be put in are handed over: ESTABLISHED and CLOSE_WAIT (the peer's FIN taken: the
kernel socket is shut for reading, so the app reads the bytes and then the end of the stream). Once our own
FIN is queued or sent the kernel could not send it with the right sequence number, and a connection not yet
synchronized or already dead has nothing to carry on: `handoff_state` says None.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .states import State

MASK = 0xFFFFFFFF
# the C side's struct (network order): snd_una, snd_nxt, the receive queue's first sequence number, rcv_nxt,
# the peer's window (bytes), the largest it showed, our advertised window (bytes past rcv_nxt), our tsval now;
# the peer's MSS, its window shift, ours, flags (SACK, TIMESTAMPS, WSCALE, EOF); then the lengths of the sent
# and unacknowledged bytes, the unsent bytes, the bytes the app has not read (those three follow, in that order)
HEADER = struct.Struct("!IIIIIIIIHBBBxIII")
SACK, TIMESTAMPS, WSCALE, EOF = 1, 2, 4, 8
HANDED_STATES = frozenset({State.ESTABLISHED, State.CLOSE_WAIT})


@dataclass(frozen=True)
class Handoff:
    snd_una: int
    snd_nxt: int
    rcv_nxt: int
    snd_wnd: int
    max_snd_wnd: int
    rcv_wnd: int
    tsval: int
    mss: int
    snd_wscale: int
    rcv_wscale: int
    flags: int
    unacked: bytes
    unsent: bytes

    def pack(self, unread: bytes) -> bytes:
        """The header and the bytes, for the shim's C; `unread`: what the app has not read yet, oldest first
        (those bytes go into the kernel socket's receive queue, ending at rcv_nxt)."""
        return HEADER.pack(self.snd_una & MASK, self.snd_nxt & MASK, (self.rcv_nxt - len(unread)) & MASK,
                           self.rcv_nxt & MASK, self.snd_wnd, self.max_snd_wnd, self.rcv_wnd, self.tsval & MASK,
                           self.mss, self.snd_wscale, self.rcv_wscale, self.flags, len(self.unacked),
                           len(self.unsent), len(unread)) + self.unacked + self.unsent + unread


def handoff_state(conn, now: float) -> Handoff | None:
    """conn's state for TCP_REPAIR (the module doc), or None when the kernel cannot carry it on. Data held out
    of order is not handed over (the peer sends it again: it was never acknowledged)."""
    if conn.state not in HANDED_STATES or conn._fin_seq is not None:
        return None
    sq = conn.sq
    if sq.snd_una < sq.data_start:  # our SYN unacknowledged: not synchronized after all
        return None
    flags = (SACK if conn.sack_ok else 0) | (TIMESTAMPS if conn.ts_ok else 0) | (WSCALE if conn.wscale_ok else 0)
    if conn.state is State.CLOSE_WAIT:
        flags |= EOF
    return Handoff(snd_una=sq.snd_una, snd_nxt=sq.snd_max, rcv_nxt=conn.rcv_nxt, snd_wnd=conn.snd_wnd,
                   max_snd_wnd=max(conn.max_snd_wnd, conn.snd_wnd), rcv_wnd=max(0, conn._adv_right - conn.rcv_nxt),
                   tsval=conn._tsval(now) if conn.ts_ok else 0, mss=conn.snd_mss,
                   snd_wscale=conn.snd_wscale if conn.wscale_ok else 0,
                   rcv_wscale=conn.rcv_wscale if conn.wscale_ok else 0, flags=flags,
                   unacked=sq.take(sq.snd_una, sq.snd_max - sq.snd_una), unsent=sq.take(sq.snd_max, sq.unsent))
