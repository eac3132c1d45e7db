"""MessageLane: one message at a time on an AfXdpPort's rings, with the port's own UMEM accounting.

Get one with `AfXdpPort.message_lane(udp=..., native=...)`; the port owns it (it counts the lane's frames in
`check()` and closes it before itself). Batches (`receive`/`transmit`) cost tens of microseconds per call
whatever their size, which is right for Mpps and wrong for one message; a lane costs a handful of Python
operations per message, or one C call (kbypass._fastlane over the C core's kb_lane) when built.

    lane = port.message_lane(udp=PlainUdp(mac, ip, 4321, bcast))
    r = lane.receive_udp()       # None, (payload, src_ip4, src_port), or the frame as bytes
    lane.send_udp(flow, b"hi", ident)   # flow: proto.udp.UdpFlow
    lane.send_one(frame)         # any whole frame

Accounting (the same states and counters as the port's receive/transmit, in the port's `counters` array):
RX frames go straight back to the fill ring after their bytes are copied out, so they stay in the kernel's
share (state FILL) throughout. TX frames come from a small stash (state APP, held by the lane), are marked
TX when submitted, and come back from the completion ring straight into the stash (reclaim), one or two per
send; only when that runs dry is the stash refilled from the port in a batch. (Refilling by batch every
STASH messages put a numpy reap + alloc, ~20 us, into one message in 32: the p99 of a ping-pong.) The
port's own reap() reads the same completion ring, so frames reclaimed by either path are accounted once.
The ring protocol is xsk/ring.py's (Python) or the C core's twin over the same `Ring.shared` structs, so
the two lanes and the port's batch path can take turns on one port.

Multi-buffer ports (jumbo MTU, kbypass.xsk.multibuf): the Python lane receives a packet that spans several
frames whole (ConsumerRing.peek_packets, every frame back to the fill ring) and sends a frame longer than
one UMEM frame as a chain (XDP_PKT_CONTD on all descriptors but the last), up to `max_frame` bytes (the
kernel's MAX_SKB_FRAGS + 1 frames); the C lane does the same (kb_lane_rx_copy, kb_lane_send), with the same
checks: every descriptor against its own frame, every stash frame against what its piece needs.

What "plain UDP to us" means (`udp`) and how a flow's frame is built (`flow`) are proto.udp's `PlainUdp`
and `UdpFlow`; the lane only uses their fields and methods (it does not import the protocols' layer).
"""

from __future__ import annotations

import errno

import numpy as np

from kbypass import backend
from kbypass.errors import UsageError
from kbypass.proto.udp import MAX_PAYLOAD as UDP_MAX_PAYLOAD
from kbypass.xsk.consts import XDP_PACKET_HEADROOM, XDP_PKT_CONTD
from kbypass.xsk.umem import APP, FILL, TX, desc_in_frame

from .batch import DESC, Batch
from .stats import (
    IN_FILL,
    IN_TX,
    RX_BROKEN_CHAINS,
    RX_BYTES,
    RX_PACKETS,
    TX_BYTES,
    TX_COMPLETED,
    TX_KICKS,
    TX_PACKETS,
)

_U32 = 0xFFFFFFFF


def native_default() -> bool:
    """Whether a lane runs in C unless told otherwise: the lane in force (kbypass.backend: C when built,
    Python under KBYPASS_PURE_PYTHON=1 or after a tool's --lane python) and the C lane module built."""
    return backend.lane() == "c" and backend.built("lane")


def open_lane(port, rings, udp=None, native: bool | None = None, stash: int | None = None) -> "MessageLane":
    """The lane for AfXdpPort.message_lane: C when `native` (None: when built), else Python. `stash`: the C
    lane's stash size (NativeMessageLane)."""
    if native is None:
        native = native_default()
    if stash is not None and not native:
        raise UsageError("a stash size is for the C lane (native=True)")
    return NativeMessageLane(port, rings, udp, stash) if native else MessageLane(port, rings, udp)



def _check_udp_payload(payload) -> None:
    # a chain of 18 frames holds more than IPv4 lets a datagram carry: both lanes refuse it alike (C: ValueError)
    if len(payload) > UDP_MAX_PAYLOAD:
        raise ValueError(f"UDP payload of {len(payload)} bytes: IPv4 carries at most {UDP_MAX_PAYLOAD}")

class MessageLane:
    """Scalar access to one AfXdpPort's rings (see the module doc). Not thread-safe; one per port is the
    normal case. `udp`: a proto.udp.PlainUdp (or anything with its mac/ip/port/bcast/accept), or None
    (receive_udp then returns every frame as bytes)."""

    STASH = 32
    BUSY_POLL_EVERY = 16
    native = False

    def __init__(self, port, rings, udp=None) -> None:
        self.port = port
        self.udp = udp
        self._accept = None if udp is None else udp.accept
        self.umem = port.umem
        self._rx, self._fill, self._tx, self._comp = rings
        self._rxq = memoryview(self._rx.slots.view(np.uint64)).cast("B").cast("Q")
        self._fillq = memoryview(self._fill.slots).cast("B").cast("Q")
        self._compq = memoryview(self._comp.slots).cast("B").cast("Q")
        self._txq = memoryview(self._tx.slots.view(np.uint64)).cast("B").cast("Q")
        self._mem = memoryview(self.umem.array)
        self._chunk_mask = ~(self.umem.frame_size - 1)
        self._shift = self.umem.shift
        self._umem_size = self.umem.size
        self._frame_size = self.umem.frame_size
        # the largest frame one UMEM frame carries: TX frames start at chunk + headroom (alloc), RX ones
        # also after the kernel's XDP_PACKET_HEADROOM; the kernel drops (and counts in the socket's
        # rx_dropped statistic) any received frame longer than rx_room
        self.tx_room = self.umem.frame_size - self.umem.headroom
        self.rx_room = self.tx_room - XDP_PACKET_HEADROOM
        # the longest frame send_one takes: one UMEM frame, or a chain of the most the kernel sends as one
        self.chains = bool(getattr(port, "multi_buffer", False))
        self.max_frame = self.tx_room * (port.max_tx_frames if self.chains else 1)
        self._copy = port.mode == "copy"
        self._defer_kick = False
        self._busy = port.poll_mode == "busy"
        self._xsk = port.xsk
        self._stash: list[int] = []
        self._empty_looks = 0
        self.fd = port.fd
        self._stats = memoryview(port.counters).cast("B").cast("Q")  # the port's counters (shared with C)
        self.closed = False
        if udp is None:
            self.receive_udp = self.receive_one

    # ---- receive ------------------------------------------------------------------------------------
    def receive_one(self) -> bytes | None:
        """One received frame's bytes, or None when the RX ring is empty (no syscall in that case). The
        frame goes back to the kernel at once: nothing to free. RuntimeError for a descriptor outside its
        UMEM frame (it stays on the ring), as the C lane (kb_lane_rx_next) decides (xsk.umem.desc_in_frame)."""
        rx = self._rx
        if self.chains:
            return self._receive_chain()
        i, got = rx.peek(1)
        if not got:
            return None
        j = (i & rx.mask) << 1
        addr = self._rxq[j]
        n = self._rxq[j + 1] & _U32
        if not desc_in_frame(addr, n, self._umem_size, self._frame_size):
            # the kernel only hands back frames we lent it, each within its frame; never read past one
            rx.cancel(1)
            raise RuntimeError("RX descriptor outside its UMEM frame")
        data = bytes(self._mem[addr:addr + n])
        rx.release(1)
        fill = self._fill
        k, got = fill.reserve(1)
        c = self._stats
        if got:
            self._fillq[k & fill.mask] = addr & self._chunk_mask
            fill.submit(1)
        else:  # cannot happen (the frame just left the fill quota), but never lose a frame
            self.umem.give_free(np.array([addr], dtype=np.uint64), FILL, trusted=True)
            c[IN_FILL] -= 1
        c[RX_PACKETS] += 1
        c[RX_BYTES] += n
        return data

    def _receive_chain(self) -> bytes | None:
        """receive_one on a multi-buffer port: one whole packet, its frames gathered, all back to the fill
        ring. RuntimeError for a descriptor outside its UMEM frame (the packet stays on the ring)."""
        rx, fill = self._rx, self._fill
        i, got = rx.peek_packets(1)
        if not got:
            self._drop_broken()
            return None
        parts, addrs, total = [], [], 0
        for k in range(got):
            j = ((i + k) & rx.mask) << 1
            addr, n = self._rxq[j], self._rxq[j + 1] & _U32
            if not desc_in_frame(addr, n, self._umem_size, self._frame_size):
                rx.cancel(got)
                raise RuntimeError("RX descriptor outside its UMEM frame")
            parts.append(self._mem[addr:addr + n])
            addrs.append(addr & self._chunk_mask)
            total += n
        data = b"".join(parts)
        rx.release(got)
        c = self._stats
        k, room = fill.reserve(got)
        for m in range(room):
            self._fillq[(k + m) & fill.mask] = addrs[m]
        fill.submit(room)
        if room < got:  # cannot happen (the frames just left the fill quota), but never lose one
            self.umem.give_free(np.array(addrs[room:], dtype=np.uint64), FILL, trusted=True)
            c[IN_FILL] -= got - room
        c[RX_PACKETS] += 1
        c[RX_BYTES] += total
        return data

    def _drop_broken(self) -> None:
        """No whole packet on the ring: when it holds continuation descriptors alone (ConsumerRing.peek_broken,
        a kernel bug) their frames go back to the fill ring, counted in rx_broken_chains, instead of stalling
        the lane for good (the C twin: kb_port_drop_broken, which the sink's C path uses too)."""
        rx, fill = self._rx, self._fill
        i, n = rx.peek_broken()
        if not n:
            return
        addrs = [self._rxq[((i + k) & rx.mask) << 1] for k in range(n)]
        mine = [a & self._chunk_mask for a in addrs if a < self._umem_size]  # outside the UMEM: not ours
        k, room = fill.reserve(len(mine))
        for m in range(room):
            self._fillq[(k + m) & fill.mask] = mine[m]
        fill.submit(room)
        rx.release(n)
        c = self._stats
        c[RX_BROKEN_CHAINS] += n
        c[IN_FILL] -= n - room

    def receive_udp(self):
        """None when the RX ring is empty; (payload, src_ip4, src_port) for plain valid UDP to us (the
        lane's `udp`); any other frame as bytes, for the stack."""
        f = self.receive_one()
        if f is None:
            return None
        dg = self._accept(f)
        return f if dg is None else dg

    def waiting(self) -> int:
        """Frames on the RX ring now."""
        return self._rx.available()

    def wake(self) -> None:
        """Nothing on the ring: let the kernel make progress.

        Busy polling drives the driver's NAPI from recvfrom(), which a NIC with deferred interrupts needs;
        but a copy-mode ring is also filled from the sender's softirq (veth, generic XDP), and a syscall on
        every empty look only delays seeing the frame. So a busy spin reads the ring and makes the
        busy-poll call on every BUSY_POLL_EVERY-th empty look (and whenever the fill ring asks)."""
        if self._fill.needs_wakeup():
            self._xsk.wake_rx()
        elif self._busy:
            self._empty_looks += 1
            if self._empty_looks % self.BUSY_POLL_EVERY == 0:
                self._xsk.wake_rx()

    def wake_if_asked(self) -> None:
        """The wakeup syscall only when the kernel asks for one (XDP_RING_NEED_WAKEUP on the fill ring)."""
        if self._fill.needs_wakeup():
            self._xsk.wake_rx()

    # ---- send ---------------------------------------------------------------------------------------
    @property
    def held(self) -> int:
        """Frames the lane holds for sending (state APP; `port.check()` counts them)."""
        return len(self._stash)

    def reclaim(self) -> None:
        """Completed TX frames straight back into the stash (state TX -> APP), scalar: in copy mode a frame
        completes inside the sendto() that sent it, so there is one here per send. IndexError, nothing
        taken, for a completed address outside the UMEM (as kb_lane_reclaim, push_free and mark check)."""
        # at most a stash's worth: completions of the batch path are for the port's free list
        room = self.STASH - len(self._stash)
        if room <= 0:
            return
        comp = self._comp
        i, n = comp.peek(room)
        if not n:
            return
        mask, compq, state, shift = comp.mask, self._compq, self.umem.state, self._shift
        addrs = [compq[(i + k) & mask] for k in range(n)]
        if max(addrs) >= self._umem_size:  # never write past the states
            comp.cancel(n)
            bad = next(a for a in addrs if a >= self._umem_size)
            raise IndexError(f"completed address {bad:#x} is outside the UMEM")
        for addr in addrs:
            state[addr >> shift] = APP  # held by the lane, as alloc() would hand it out
        self._stash.extend(addrs)
        comp.release(n)
        c = self._stats
        c[IN_TX] -= n
        c[TX_COMPLETED] += n

    def kick(self) -> None:
        """Let the kernel send what is on the TX ring."""
        self._xsk.kick_tx()

    @property
    def defer_kick(self) -> bool:
        """True: send_one puts frames on the TX ring without a kick each (a full ring aside); the owner calls
        flush_tx() once for the batch (one syscall for many frames in copy mode)."""
        return self._defer_kick

    @defer_kick.setter
    def defer_kick(self, on: bool) -> None:
        self._defer_kick = bool(on)

    def flush_tx(self) -> int:
        """Kick for the frames send_one left on the TX ring (defer_kick); returns the kicks made. A copy-mode
        kick sends at most 32 frames (the kernel's TX_BATCH_SIZE, then EAGAIN), so it kicks again while the
        kernel takes frames; a zero-copy ring is kicked when it asks to be (or busy polling)."""
        tx = self._tx
        left = tx.outstanding()
        if not left:
            return 0
        if not self._copy:
            if tx.needs_wakeup() or self._busy:
                self._stats[TX_KICKS] += 1
                self._xsk.kick_tx()
                return 1
            return 0
        kicks = 0
        while left:
            self._stats[TX_KICKS] += 1
            kicks += 1
            if self._xsk.kick_tx() != errno.EAGAIN:
                break
            now = tx.outstanding()
            if now >= left:  # no progress (no completion room): the next send or flush tries again
                break
            left = now
        return kicks

    @property
    def tx_pending(self) -> int:
        """Frames on the TX ring the kernel has not taken yet (defer_kick: what a flush_tx left)."""
        return self._tx.outstanding()

    def retry_tx(self) -> int:
        """Frames a flush_tx left on the TX ring (it stops when the kernel makes no progress, e.g. no
        completion room): reap the completions, then flush_tx again; returns the frames still waiting."""
        if not self._tx.outstanding():
            return 0
        self.port.reap()
        self.flush_tx()
        return self._tx.outstanding()

    def send_one(self, frame: bytes) -> bool:
        """Put one whole frame on the TX ring and kick; False when no frame or TX slot is free right now, or
        when the frame is longer than a UMEM frame holds (`tx_room`; nothing written). On a multi-buffer port
        a longer frame goes as a chain of frames, up to `max_frame` bytes."""
        if len(frame) > self.tx_room:
            return self._send_chain(frame) if self.chains and len(frame) <= self.max_frame else False
        if not self._stash:
            self.reclaim()
        if not self._stash:
            self.port.reap()
            got = self.port.alloc(self.STASH)
            self._stash = [int(a) for a in got.addr]
            if not self._stash:
                return False
        tx = self._tx
        i, k = tx.reserve(1)
        if not k:
            self.port.reap()
            self._xsk.kick_tx()
            i, k = tx.reserve(1)
            if not k:
                return False
        addr = self._stash[-1]
        n = len(frame)
        if addr >= self._umem_size or n > self.umem.frame_size - (addr & ~self._chunk_mask):
            # a completion the kernel made up: the frame stays stashed, nothing is written (kb_lane_send)
            tx.cancel(1)
            raise RuntimeError("stash frame outside the UMEM")
        self._stash.pop()
        self._mem[addr:addr + n] = frame
        j = (i & tx.mask) << 1
        self._txq[j] = addr
        self._txq[j + 1] = n  # len, options 0
        self.umem.state[addr >> self._shift] = TX  # as AfXdpPort.transmit marks it
        tx.submit(1)
        c = self._stats
        c[IN_TX] += 1
        c[TX_PACKETS] += 1
        c[TX_BYTES] += n
        if not self._defer_kick and (self._copy or tx.needs_wakeup() or self._busy):
            c[TX_KICKS] += 1
            self._xsk.kick_tx()
        return True

    def _send_chain(self, frame: bytes) -> bool:
        """send_one of a frame longer than one UMEM frame on a multi-buffer port: the pieces in stash frames,
        one descriptor each, XDP_PKT_CONTD on all but the last; False (nothing written) when the frames or
        TX slots are not there right now."""
        room = self.tx_room
        k = -(-len(frame) // room)
        if len(self._stash) < k:
            self.reclaim()
        if len(self._stash) < k:
            self.port.reap()
            got = self.port.alloc(max(self.STASH, k) - len(self._stash))
            self._stash.extend(int(a) for a in got.addr)
            if len(self._stash) < k:
                return False
        tx = self._tx
        i, slots = tx.reserve(k)
        if slots < k:
            tx.cancel(slots)
            self.port.reap()
            self._xsk.kick_tx()
            i, slots = tx.reserve(k)
            if slots < k:
                tx.cancel(slots)
                return False
        addrs = self._stash[-k:]
        fs, n = self._frame_size, len(frame)
        if any(a >= self._umem_size or min(room, n - m * room) > fs - (a & ~self._chunk_mask)
               for m, a in enumerate(addrs)):
            tx.cancel(k)  # a completion the kernel made up: nothing is written (as send_one, kb_lane_send)
            raise RuntimeError("stash frame outside the UMEM")
        del self._stash[-k:]
        state = self.umem.state
        for m, addr in enumerate(addrs):
            piece = frame[m * room:(m + 1) * room]
            self._mem[addr:addr + len(piece)] = piece
            j = ((i + m) & tx.mask) << 1
            self._txq[j] = addr
            self._txq[j + 1] = len(piece) | ((XDP_PKT_CONTD if m < k - 1 else 0) << 32)  # len, options
            state[addr >> self._shift] = TX
        tx.submit(k)
        c = self._stats
        c[IN_TX] += k
        c[TX_PACKETS] += 1
        c[TX_BYTES] += len(frame)
        if not self._defer_kick and (self._copy or tx.needs_wakeup() or self._busy):
            c[TX_KICKS] += 1
            self._xsk.kick_tx()
        return True

    def send_udp(self, flow, payload: bytes, ident: int) -> bool:
        """One datagram of `flow` (a proto.udp.UdpFlow) with IP ident `ident`; False as for send_one."""
        _check_udp_payload(payload)
        if len(payload) + 42 > self.max_frame:
            return False
        return self.send_one(flow.frame(payload, ident))

    # ---- teardown -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Give the stash back to the port and drop every view of its memory (the port does this before it
        closes itself)."""
        if self.closed:
            return
        self.closed = True
        if self._stash:
            descs = np.zeros(len(self._stash), dtype=DESC)
            descs["addr"] = self._stash
            self.port.free(Batch(descs, self.umem.array, self.port))
            self._stash = []
        for mv in (self._rxq, self._fillq, self._compq, self._txq, self._mem, self._stats):
            mv.release()
        self.port._forget_lane(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} on {self.port!r}{' closed' if self.closed else ''}>"


class NativeMessageLane(MessageLane):
    """The same lane with its per-message work in C (kbypass._fastlane over the C core's kb_lane): receive
    with the checks of `udp.accept`, send with lengths and checksums filled in, the TX stash and the
    completion reclaim. The rings' cached indexes (each Ring's `shared` struct), the UMEM states and the
    port's counters array it updates are the very memory the port and the Python lane use, so the two can
    take turns (the Python path takes over in the one case C hands back, a full fill ring)."""

    native = True

    # the most a stash may hold (kb_lane.h's KB_LANE_STASH_SLOTS)
    STASH_SLOTS = 1024

    def __init__(self, port, rings, udp=None, stash: int | None = None) -> None:
        """stash: frames the C stash holds (default STASH); a sender of jumbo chains (kbypass.xfer) keeps
        a few sends' worth there, so that their frames come back from the completion ring into it, in C
        (kbypass._fastxfer.lane_chains), instead of through the port's free list."""
        if stash is not None:
            if not 1 <= stash <= self.STASH_SLOTS:
                raise UsageError(f"stash={stash}: give 1 to {self.STASH_SLOTS} frames")
            self.STASH = stash
        super().__init__(port, rings, udp)
        u = self.umem
        # without `udp` the C checks never run (receive_udp is receive_one): any address does
        mac, ip, uport, bcast = (bytes(6), bytes(4), 0, None) if udp is None else (udp.mac, udp.ip, udp.port,
                                                                                   udp.bcast)
        fastlane = backend.native_module("lane")  # NativeMissing, naming the fix, when it is not built
        self.c = fastlane.Lane(self._rx.shared, self._fill.shared, self._tx.shared, self._comp.shared,
                                 umem=u.array, state=u.state, stats=port.counters, frame_size=u.frame_size,
                                 fd=self.fd, mac=mac, ip=ip, udp_port=uport, bcast=bcast, copy=self._copy,
                                 busy=self._busy, busy_every=self.BUSY_POLL_EVERY, stash=self.STASH,
                                 chains=self.chains, tx_room=self.tx_room,
                                 max_frames=port.max_tx_frames if self.chains else 0)
        self._recv_c = self.c.recv
        self.wake = self.c.wake

    @MessageLane.defer_kick.setter
    def defer_kick(self, on: bool) -> None:
        self._defer_kick = self.c.defer_kick = bool(on)

    def receive_udp(self):
        r = self._recv_c()
        if r is NotImplemented:  # no fill slot for the frame: the Python path handles that case
            return MessageLane.receive_udp(self)
        return r

    @property
    def held(self) -> int:
        return self.c.stashed + len(self._stash)

    def _sent(self, r: int, again) -> bool:
        if r < 0:  # the stash ran dry: refill it from the port in one batch, then try once more
            self.port.reap()
            got = self.port.alloc(self.STASH)
            took = self.c.give(got.addr.tolist())
            if took < len(got):
                self.port.free(got[took:])
            r = again() if took else 0
        return r > 0

    def stock(self, frames: int) -> int:
        """Fill the C stash up to `frames` (at most its size) from the port's free frames, completions
        reaped first; returns the frames it holds now."""
        want = min(frames, self.STASH) - self.c.stashed
        if want > 0:
            self.port.reap()
            got = self.port.alloc(want)
            took = self.c.give(got.addr.tolist()) if len(got) else 0
            if took < len(got):
                self.port.free(got[took:])
        return self.c.stashed

    def send_one(self, frame: bytes) -> bool:
        if len(frame) > self.max_frame:  # C would raise ValueError (or RuntimeError with headroom)
            return False
        return self._sent(self.c.send_frame(frame), lambda: self.c.send_frame(frame))

    def send_udp(self, flow, payload: bytes, ident: int) -> bool:
        _check_udp_payload(payload)
        if len(payload) + 42 > self.max_frame:
            return False
        r = self.c.send_udp(flow.template, payload, ident)
        return r > 0 or self._sent(r, lambda: self.c.send_udp(flow.template, payload, ident))

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._stash.extend(self.c.take_stash())
        finally:  # whatever happens, C lets go of the rings before the port unmaps them
            self.c.close()
            super().close()


__all__ = ["MessageLane", "NativeMessageLane", "native_default", "open_lane"]
