"""AfXdpPort: the kernel-bypass Port, one AF_XDP socket + its UMEM on one queue.

Frames flow: free list -> fill ring -> (kernel writes a packet) -> RX ring -> receive() -> yours ->
transmit() -> TX ring -> (kernel sends) -> completion ring -> free list; or yours -> free() -> free list.
Every step moves a whole numpy array of addresses. The kernel only receives into frames we put on the fill
ring, so at most `rx_frames` frames (default: the fill ring size, at most half the UMEM) are lent to it;
the rest stay available for alloc() and for frames you hold.

The XDP program that redirects packets here is not part of the port: register `port.fd` in the steering
program's XSKMAP at index `port.queue` (kbypass.steer.Steering.register_xsk).

The port's counters and in-flight counts are one u64 array, `port.counters`, indexed by PORT_STATS (the C
core's kb_port.h order): the C message lane is given it and counts in it too, so `stats` and `check()`
see the work of both.

A shared queue (`shared_queue=`, from the control plane's pool of that queue, kbypass.cp.pool): several
processes receive on one queue, each on its own socket, over one UMEM whose fill and completion rings they
all use. The port then starts with its slice of the frames, refills and reaps under the pool's lock
(kbypass.xsk.pool_lock), and gives back to the fill ring as many frames as it received; frames float
between the members, so `in_fill` and `in_tx` count this member's net share (negative when it received
more than it lent, or reaped others' completions), a frame it sent is no longer its own (state FILL, as
one it lent), and check() does not compare those counts with the frame states.

Multi-buffer (jumbo frames): `multi_buffer=True` binds with XDP_USE_SG, so a packet larger than one frame
arrives as a chain of frames and receive() returns it as one packet of a Batch (kbypass.port.batch: its head
in `descs`, the rest in `tails`; `total_lens()`, `packet(i)`); transmit() sends chains (gather on send:
XDP_PKT_CONTD on every descriptor but a packet's last) and refuses, before the kernel sees it, a packet of
more frames than the kernel sends as one (`max_tx_frames`, kbypass.xsk.multibuf). `alloc(n, size=S)` hands
out packets of S bytes as chains. `multi_buffer=None` (the default) turns it on when the interface's MTU
does not fit one frame (kbypass.xsk.multibuf.needs_multi_buffer); `port.multi_buffer` says which. Counters
count packets (rx_packets, tx_packets) and bytes of all their frames.

One message at a time: `message_lane()` hands out a MessageLane (port/lane.py), receive one / send one
with this port's accounting, in C when built. The UDP endpoint uses it.
"""

from __future__ import annotations

import inspect
import math
import os
import time

import numpy as np

from kbypass.errors import UsageError
from kbypass.xsk import multibuf
from kbypass.xsk.consts import XDP_PKT_CONTD
from kbypass.xsk.pool_lock import PATIENCE, PoolLock, SharedQueue, stuck
from kbypass.xsk.ring import check_size
from kbypass.xsk.socket import XskSocket
from kbypass.xsk.umem import APP, FILL, TX, Umem

from .base import UmemPort
from .batch import DESC, Batch

POLL_MODES = ("wakeup", "busy")
from .stats import (
    IN_FILL,
    IN_TX,
    PORT_STATS,
    RX_BROKEN_CHAINS,
    RX_BYTES,
    RX_PACKETS,
    RX_WAKEUPS,
    TX_BYTES,
    TX_COMPLETED,
    TX_KICKS,
    TX_PACKETS,
    TX_TOO_LONG,
)

_STATS_KEYS = PORT_STATS[:IN_FILL]  # the counters `stats` reports under their own names


CLOSED = "the AF_XDP port is closed: use it inside its `with` block (or before close())"


class _ClosedRing:
    """Stands in for the rings once the port is closed: any use is a UsageError saying so, not an
    AttributeError on None from deep inside receive()."""

    def __getattr__(self, name):
        raise UsageError(CLOSED)


_CLOSED = _ClosedRing()


def _closed_peek(n: int):
    raise UsageError(CLOSED)


LAYOUT = ("frames", "frame_size", "headroom", "rx_size", "tx_size", "fill_size", "comp_size", "multi_buffer")


def socket_layout(options: dict) -> dict:
    """The UMEM and ring sizes (LAYOUT) of an AfXdpPort opened with `options`: the given ones, else the
    port's defaults (what the control plane needs to make a socket for it)."""
    params = inspect.signature(AfXdpPort).parameters
    return {name: options.get(name, params[name].default) for name in LAYOUT}


SIOCGIFMTU = 0x8921


def interface_mtu(ifname: str, netns: str | None = None) -> int | None:
    """The MTU of ifname (in netns), None when it cannot be read. By ioctl on a socket made inside the
    namespace: /sys shows the namespace it was mounted in, not the one this thread entered."""
    import fcntl
    import socket
    import struct

    from kbypass import netns as _netns

    try:
        with _netns.entered(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifr = struct.pack("16s16x", ifname.encode())
            return struct.unpack_from("i", fcntl.ioctl(s.fileno(), SIOCGIFMTU, ifr), 16)[0]
    except (OSError, ValueError, struct.error):
        return None


def resolve_multi_buffer(options: dict, ifname: str, netns: str | None = None) -> dict:
    """`options` with multi_buffer decided: as given, or (None) on when the interface's MTU needs it."""
    if options.get("multi_buffer") is not None:
        return options
    params = inspect.signature(AfXdpPort).parameters
    fs, hr = (options.get(k, params[k].default) for k in ("frame_size", "headroom"))
    mtu = interface_mtu(ifname, netns)
    return {**options, "multi_buffer": bool(mtu and multibuf.needs_multi_buffer(mtu, fs, hr))}


def _close_fds(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


class AfXdpPort(UmemPort):
    """Receive and transmit batches on queue `queue` of `ifname` (in namespace `netns`) via AF_XDP.

    mode: "auto" (zero-copy if the driver can, else copy), "copy" or "zerocopy"; `port.mode` tells which.
    poll: "wakeup" (XDP_USE_NEED_WAKEUP; wait() sleeps in poll()) or "busy" (SO_PREFER_BUSY_POLL etc.;
    wait() spins on recvfrom). Ownership: see kbypass.port.base — received/allocated frames are yours until
    you transmit or free them. batch_ops: the batch backend of the UMEM (None: kbypass.backend.batch()).
    xsk_fd, umem_fd: adopt an AF_XDP socket and its UMEM's memory file that someone else made and bound
    (the control plane, for a process without the privileges: kbypass.cp.protocol open_socket) instead of
    making them; the sizes must be the ones they were made with (`socket_layout`). The port owns both
    fds from the call on, even when it fails. shared_queue: the adopted socket is a member of a shared
    queue (module doc); the port owns its lock_fd too. multi_buffer: chains of frames for packets larger
    than one (module doc); None: when the interface's MTU needs it.
    """

    def __init__(self, ifname: str, queue: int = 0, *, netns: str | None = None, frame_size: int = 2048,
                 frames: int = 4096, rx_size: int = 2048, tx_size: int = 2048, fill_size: int = 2048,
                 comp_size: int = 2048, mode: str = "auto", poll: str = "wakeup", busy_budget: int = 64,
                 headroom: int = 0, rx_frames: int | None = None, batch_ops=None, xsk_fd: int | None = None,
                 umem_fd: int | None = None, shared_queue: SharedQueue | None = None,
                 multi_buffer: bool | None = None) -> None:
        self._lock = None
        try:
            if shared_queue is not None:
                if xsk_fd is None:
                    raise UsageError("a shared queue's member adopts the socket the control plane made: pass xsk_fd "
                                     "and umem_fd too")
                self._lock = PoolLock(shared_queue.lock_fd)
            if (xsk_fd is None) != (umem_fd is None):
                raise UsageError("adopting a socket takes both fds: xsk_fd (the AF_XDP socket) and umem_fd (its "
                                 "UMEM's memory file)")
            if poll not in POLL_MODES:
                raise UsageError(f"poll={poll!r} is unknown: use 'wakeup' or 'busy'")
            for name, size in (("RX", rx_size), ("TX", tx_size), ("fill", fill_size), ("completion", comp_size)):
                check_size(name, size)
            self.ifname, self.queue, self.netns, self.poll_mode = ifname, queue, netns, poll
            self.mtu = interface_mtu(ifname, netns)  # None when it cannot be read
            if multi_buffer is None:
                multi_buffer = bool(self.mtu and multibuf.needs_multi_buffer(self.mtu, frame_size, headroom))
            self.multi_buffer = bool(multi_buffer)
            # the most frames one sent packet may span (the kernel's limit), 1 without multi-buffer
            self.max_tx_frames = multibuf.tx_frame_limit() if self.multi_buffer else 1
            # the most frames one received packet spans (the interface's MTU; receive has no frag limit), which
            # can be more than max_tx_frames with small frames: such a packet cannot be sent back as it is
            self.max_rx_frames = (multibuf.rx_frames_for(self.mtu, frame_size, headroom)
                                  if self.multi_buffer and self.mtu else 1)
            self.umem = Umem(frames=frames, frame_size=frame_size, headroom=headroom, ops=batch_ops, memfd=umem_fd)
            if shared_queue is not None:
                self.umem.keep_slice(shared_queue.first, shared_queue.count)
        except BaseException:
            _close_fds(xsk_fd)
            if self._lock is not None:
                self._lock.close()
            raise
        finally:
            # the mappings keep the memory
            _close_fds(umem_fd, None if shared_queue is None else shared_queue.lock_fd)
        try:
            self.xsk = XskSocket(self.umem, ifname, queue, netns=netns, rx_size=rx_size, tx_size=tx_size,
                                 fill_size=fill_size, comp_size=comp_size, mode=mode,
                                 need_wakeup=(poll == "wakeup"), busy_poll=(poll == "busy"),
                                 busy_budget=busy_budget, fd=xsk_fd, multi_buffer=self.multi_buffer)
        except BaseException:
            self.umem.close()
            if self._lock is not None:
                self._lock.close()
            raise
        self.mode = self.xsk.mode
        # Copy mode sends only inside sendto(); ask the kernel to send a whole ring's worth per call.
        self._tx_budget = self.xsk.set_tx_budget(min(tx_size, 4096)) if self.mode == "copy" else 0
        self._rx, self._tx, self._fill, self._comp = self.xsk.rx, self.xsk.tx, self.xsk.fill, self.xsk.comp
        # whole packets only on a multi-buffer RX ring (a chain is never split between two receives)
        self._peek = self._rx.peek_packets if self.multi_buffer else self._rx.peek
        self._shift = np.uint64(self.umem.shift)
        own = frames if shared_queue is None else shared_queue.count
        self._rx_frames = min(fill_size, own // 2) if rx_frames is None else min(rx_frames, fill_size, own)
        self._refill_batch = max(1, self._rx_frames // 4)
        self.counters = np.zeros(len(PORT_STATS), dtype=np.uint64)  # shared with the C lane (module doc)
        # the same memory as one memoryview of i64: an item update costs half a numpy scalar's. Signed, since on
        # a shared queue the in-flight counts are net and go below zero (module doc); the C lane's u64 view of
        # the same words agrees on every count it can reach (the lane is refused on shared queues).
        self._c = memoryview(self.counters).cast("B").cast("q")
        self._closed = False
        self._lock_busy_since: float | None = None  # consume(): since when the pool's lock is busy
        self._lanes: list = []  # message lanes handed out (message_lane), closed before the port
        self._lat = self._seqs = np.empty(0, dtype=np.int64)  # consume()'s scratch, grown to its batch
        self.refill(force=True)

    # ---- receive ----------------------------------------------------------------------------------
    def refill(self, force: bool = False) -> int:
        """Lend free frames to the kernel for receiving (up to rx_frames in all); returns how many.

        Without force it waits until a quarter of the quota is missing, so each refill moves a batch. On a
        shared queue the quota is net (lent minus received): a member gives back what it took.
        """
        want = min(self._rx_frames - self._c[IN_FILL], self.umem.free_count)
        if want <= 0 or (want < self._refill_batch and not force):
            return 0
        if self._lock is None:
            return self._lend(want)
        with self._lock:
            self._fill.resync()
            return self._lend(want)

    def _lend(self, want: int) -> int:
        idx, n = self._fill.reserve(want)
        if n == 0:
            return 0
        addrs = self.umem.take_free(n, FILL)
        self._fill.write_slots(idx, addrs)
        self._fill.submit(n)
        self._c[IN_FILL] += n
        return n

    def receive(self, max_frames: int = 64) -> Batch:
        """Up to max_frames received frames; yours until you transmit or free them. On a multi-buffer port
        whole packets only, as a Batch of packets (at least one, even when its chain is longer)."""
        rx = self._rx
        idx, n = self._peek(max_frames)
        if n == 0:
            if self.poll_mode == "busy" or self._fill.needs_wakeup():
                self.xsk.wake_rx()
                self._c[RX_WAKEUPS] += 1
                idx, n = self._peek(max_frames)
            if n == 0:
                if self.multi_buffer:
                    self._drop_broken_chain()
                self.refill(force=True)
                return Batch(np.zeros(0, dtype=DESC), self.umem.array, self)
        descs = rx.read_slots(idx, n)
        rx.release(n)
        # The kernel only writes frames we lent it, so no ownership check is needed on this hot path.
        nbytes = self.umem.mark_received(descs, APP)
        c = self._c
        c[IN_FILL] -= n
        c[RX_BYTES] += nbytes
        if self.multi_buffer:
            batch = Batch.from_ring(descs, self.umem.array, self)
            c[RX_PACKETS] += len(batch)
            self.refill()
            return batch
        c[RX_PACKETS] += n
        self.refill()
        return Batch(descs, self.umem.array, self)

    def _drop_broken_chain(self) -> None:
        """An RX ring of continuation descriptors alone (ConsumerRing.peek_broken, a kernel bug) would stall
        receive() for good: its frames go back to the free list (refill lends them again), counted in
        stats["rx_broken_chains"] (the sink's C path, kb_sink, counts the same)."""
        idx, k = self._rx.peek_broken()
        if not k:
            return
        descs = self._rx.read_slots(idx, k)
        self._rx.release(k)
        self._c[RX_BROKEN_CHAINS] += k
        mine = descs["addr"] < np.uint64(self.umem.size)  # an address outside the UMEM is no frame of ours
        self._c[IN_FILL] -= k
        if mine.any():
            self.umem.mark_received(descs[mine], APP)
            self.umem.give_free(descs["addr"][mine], APP, "free")

    @property
    def can_consume(self) -> bool:
        """Whether consume() is here: the C batch backend (on a shared queue the frames go back to the
        pool's fill ring under its lock, in C: kb_pool_lock.h)."""
        return getattr(self.umem.ops, "drain", None) is not None

    def consume(self, max_frames: int = 256, seq=None, stamp_offset: int = 0,
                wait: float = 0.0) -> tuple[int, int, np.ndarray, float, float]:
        """Receive up to max_frames and give them straight back to the kernel, for a receiver that only
        reads them (the sink): (frames, bytes, latencies in ns, and the time.monotonic() of the first and
        the last frame taken, 0.0 when none). One C call (kb_sink_drain) per batch: the
        frames go from the RX ring to the fill ring without becoming yours, so no frame state changes and
        check() still balances. With `seq` (an apps.seqcheck.SeqChecker) and stamp_offset > 0, the stamps
        at stamp_offset go to its sequence check, and the latencies of the time-stamped frames are returned.
        On an empty ring it makes the syscall the kernel asks for (need_wakeup). wait > 0: keep taking
        frames, sleeping in poll() in C whenever the ring is empty, until max_frames were taken, or `wait`
        seconds passed, or the ring stayed empty for a whole poll, or a signal came: one return to Python per
        max_frames rather than per wakeup of the kernel (kb_sink_run). Only where `can_consume` (else
        receive() then free() do the same work).

        The latencies are a view of the port's scratch buffer, which the next consume() overwrites: copy
        them to keep them. The C call runs without the GIL, on the ring memory, and the port does not pin
        it: never close() the port from another thread while a consume() runs (it would unmap the rings
        under it). An RX descriptor outside its UMEM frame raises RuntimeError only from a call that took no
        frame: the frames before it are given back and returned, it stays on the RX ring."""
        if self._closed:
            raise UsageError(CLOSED)
        if not self.can_consume:
            raise UsageError("consume() needs the C batch backend: use receive() and free()")
        n = max(1, max_frames)
        if len(self._lat) < n:
            self._lat, self._seqs = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        off = stamp_offset if seq is not None else 0
        try:
            k, nbytes, nlat, first, last = self.umem.ops.drain(
                self._rx.shared, self._fill.shared, self.xsk.fd, self.umem.array, self.umem.frame_size,
                self.counters, n, off, seq.state if off else None, seq.seen if off else None, self._seqs,
                self._lat, math.ceil(wait * 1000) if wait > 0 else 0, self._lock.memory if self._lock else None)
        except TimeoutError:
            # the pool's lock stayed busy for one wait: back to the caller's loop (its Ctrl-C), and after
            # PoolLock's patience in all, the holder is named as PoolLock names it
            now = time.monotonic()
            if self._lock_busy_since is None:
                self._lock_busy_since = now
            elif now - self._lock_busy_since >= PATIENCE:
                raise stuck() from None
            return 0, 0, self._lat[:0], 0.0, 0.0
        self._lock_busy_since = None
        return k, nbytes, self._lat[:nlat], first / 1e9, last / 1e9

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the RX ring has frames or timeout seconds pass; True if frames are ready."""
        if self._rx.available():
            return True
        if self.poll_mode == "wakeup":
            return self.xsk.poll(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.xsk.wake_rx()
            if self._rx.available():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    # ---- transmit ---------------------------------------------------------------------------------
    def alloc(self, n: int, size: int | None = None) -> Batch:
        """Up to n empty frames (len 0, at the frame start + headroom); yours until transmitted or freed.

        size: up to n packets of `size` bytes each, lengths set: one frame each when it fits one, else (a
        multi-buffer port) a chain of as many frames as it needs, every frame full but the last; fill them
        with batch.fill(data) or batch.write_packet(i, data). UsageError past the kernel's frag limit or past
        the interface's MTU (+ the Ethernet header). Fewer free frames than one chain: an empty Batch."""
        if self._closed:
            raise UsageError(CLOSED)
        if size is not None and self.mtu and size > self.mtu + multibuf.ETH_HLEN:
            raise UsageError(f"a {size}-byte packet is longer than {self.ifname}'s MTU {self.mtu} + the "
                             f"{multibuf.ETH_HLEN}-byte Ethernet header allow ({self.mtu + multibuf.ETH_HLEN}): "
                             "allocate at most that, or raise the MTU")
        room = multibuf.tx_room(self.umem.frame_size, self.umem.headroom)
        k = 1 if size is None or size <= room else self._frames_for(size)
        if self.umem.free_count < n * k:
            self.reap()
        if k == 1:
            batch = self._take_frames(n, self.umem.headroom)
            if size is not None:
                batch.set_len(size)
            return batch
        frames = self._take_frames(min(n * k, self.umem.free_count // k * k), self.umem.headroom)
        if len(frames) == 0:  # not one whole chain free: the plain empty Batch every method takes
            return frames
        chains = frames.descs.reshape(-1, k)
        chains["len"] = room
        chains[:, -1]["len"] = size - (k - 1) * room
        return Batch(np.ascontiguousarray(chains[:, 0]), self.umem.array, self,
                     tails=np.ascontiguousarray(chains[:, 1:]).reshape(-1),
                     ntails=np.full(len(chains), k - 1, dtype=np.uint32))

    def _frames_for(self, size: int) -> int:
        if not self.multi_buffer:
            raise UsageError(f"a {size}-byte packet does not fit one {self.umem.frame_size}-byte frame and this port "
                             "is not multi-buffer: open it with multi_buffer=True (Linux >= 6.6)")
        return multibuf.tx_frames_for(size, self.umem.frame_size, self.umem.headroom)

    def transmit(self, batch: Batch) -> int:
        """Queue frames for sending; returns k, the accepted prefix. batch[k:] stays yours.

        Descriptors outside the UMEM, crossing a frame or empty are refused with a UsageError before the
        kernel sees any of them. A packet of more frames than the kernel sends as one (`max_tx_frames`; a
        peer's jumbo datagram received in small frames) is never a UsageError, since a peer controls it: the
        accepted prefix ends before it, it stays yours, and `stats["tx_too_long"]` counts it (once per
        call that stops at it). `sendable(batch)` says beforehand which packets would go.
        """
        n = len(batch)
        if n == 0:
            return 0
        if self._closed:
            raise UsageError(CLOSED)
        self._own(batch, "transmit")
        if batch.tails is not None:
            return self._transmit_chains(batch)
        descs = batch.descs
        # valid descriptors of frames that are yours, each once; all now TX (the refused tail goes back)
        nbytes = self.umem.hand_over(descs["addr"], APP, TX, "transmit", descs=descs)
        self.reap()
        idx, k = self._tx.reserve(n)
        if k < n:
            self.umem.state[descs["addr"][k:] >> self._shift] = APP
            nbytes -= int(descs["len"][k:].sum())
        if k:
            out = descs[:k].copy()
            out["options"] = 0
            self._submit(idx, out, k, nbytes)
        self.flush()
        return k

    def _submit(self, idx: int, out: np.ndarray, packets: int, nbytes: int) -> None:
        """Write descriptors `out` (`packets` packets, `nbytes` bytes) to the reserved TX slots from idx on
        and publish them."""
        self._tx.write_slots(idx, out)
        self._tx.submit(len(out))
        if self._lock is not None:  # a shared queue's: whichever member reaps its completion owns it next
            self.umem.state[out["addr"] >> self._shift] = FILL
        c = self._c
        c[IN_TX] += len(out)
        c[TX_PACKETS] += packets
        c[TX_BYTES] += nbytes

    def _transmit_chains(self, batch: Batch) -> int:
        """transmit() of multi-frame packets: the accepted prefix is of whole packets (a chain is never
        split), XDP_PKT_CONTD on every descriptor but each packet's last."""
        if not self.multi_buffer:
            raise UsageError("this batch holds packets of several frames and the port is not multi-buffer: open it "
                             "with multi_buffer=True (Linux >= 6.6)")
        return self._transmit_packets(batch.ring_descs())[0]

    def transmit_ring(self, descs: np.ndarray) -> tuple[int, int]:
        """transmit() of packets given as descriptors in ring order (XDP_PKT_CONTD on all but each packet's
        last: frames from alloc() written as chains, kbypass._fastxfer.write_chains), with no Batch made of
        them: a sender of jumbo chains split them into one (Batch.from_ring) only for transmit() to join them
        again (ring_descs). Returns (packets, frames) accepted, a prefix of whole packets; descs[frames:]
        stay yours. The same checks as transmit(); a packet longer than `max_tx_frames` ends the prefix."""
        if self._closed:
            raise UsageError(CLOSED)
        if not self.multi_buffer:
            raise UsageError("transmit_ring sends chains of frames and the port is not multi-buffer: open it "
                             "with multi_buffer=True (Linux >= 6.6)")
        return self._transmit_packets(descs)

    def _transmit_packets(self, descs: np.ndarray) -> tuple[int, int]:
        """Descriptors of whole packets in ring order onto the TX ring: (packets, frames) accepted, a prefix
        of whole packets; the rest stays yours. Where each packet ends, and the first one longer than the
        kernel sends (it and what follows stay yours), in one pass of the batch backend (chain_ends: in numpy
        ~10% of a jumbo sender's CPU)."""
        ends = np.empty(len(descs), dtype=np.int64)
        k, stopped = self.umem.ops.chain_ends(descs, ends, self.max_tx_frames)
        if stopped < 0:
            raise UsageError("the descriptors end in the middle of a packet (XDP_PKT_CONTD on the last): give "
                             "whole packets")
        if stopped:  # the kernel would drop it whole (kbypass.xsk.multibuf): it and what follows stay yours
            self._c[TX_TOO_LONG] += 1
        if not k:
            return 0, 0
        ends = ends[:k]
        descs = descs[:int(ends[-1])]
        nbytes = self.umem.hand_over(descs["addr"], APP, TX, "transmit", descs=descs)
        self.reap()
        idx, room = self._tx.reserve(len(descs))
        k = int(np.searchsorted(ends, room, side="right"))  # whole packets that fit the slots reserved
        used = int(ends[k - 1]) if k else 0
        self._tx.cancel(room - used)
        if used < len(descs):
            self.umem.state[descs["addr"][used:] >> self._shift] = APP
            nbytes -= int(descs["len"][used:].sum())
        if used:
            out = descs[:used].copy()
            out["options"] &= XDP_PKT_CONTD
            self._submit(idx, out, k, nbytes)
        self.flush()
        return k, used

    def sendable(self, batch: Batch) -> np.ndarray:
        """Which packets of `batch` transmit() can send: those of at most `max_tx_frames` frames."""
        return batch.frame_counts() <= self.max_tx_frames

    def flush(self) -> None:
        """Make the kernel send what is on the TX ring (needed after transmit in copy mode)."""
        if self._tx.outstanding() == 0:
            return
        if self.mode == "copy":
            # Copy mode sends only inside sendto(), at most _tx_budget frames per call (EAGAIN: more).
            for _ in range(math.ceil(self._tx.outstanding() / self._tx_budget) + 1):
                self._c[TX_KICKS] += 1
                err = self.xsk.kick_tx()
                self.reap()
                if err == 0 or self._tx.outstanding() == 0:
                    break
        elif self._tx.needs_wakeup() or self.poll_mode == "busy":
            self._c[TX_KICKS] += 1
            self.xsk.kick_tx()

    def reap(self) -> int:
        """Return completed TX frames to the free list; returns how many (on a shared queue: any member's)."""
        if self._lock is None:
            return self._reap()
        if not self._comp.pending():  # the lock only when there is something to take
            return 0
        with self._lock:
            self._comp.resync()
            return self._reap()

    def _reap(self) -> int:
        idx, n = self._comp.peek(self._comp.size)
        if n == 0:
            return 0
        addrs = self._comp.read_slots(idx, n)
        self._comp.release(n)
        self.umem.give_free(addrs, TX, "completion", trusted=True)
        self._c[IN_TX] -= n
        self._c[TX_COMPLETED] += n
        return n

    # ---- one message at a time ------------------------------------------------------------------------
    def message_lane(self, udp=None, *, native: bool | None = None, stash: int | None = None):
        """A MessageLane on this port's rings (kbypass.port.lane): `receive_one()` / `send_one(frame)` and,
        given `udp` (a proto.udp.PlainUdp: what is plain UDP to us), `receive_udp()` / `send_udp(flow,
        payload, ident)`. native: the per-message work in C (kbypass._fastlane), in Python (False), or C when
        built (None). stash: the C lane's TX stash in frames (NativeMessageLane). The port owns the lane:
        `check()` counts the frames it holds, `close()` closes it."""
        if self._closed:
            raise UsageError(CLOSED)
        if self._lock is not None:
            raise UsageError("a message lane (the UDP endpoint, pingpong) refills per message and needs a queue of "
                             "its own: open this port without sharing its queue")
        from .lane import open_lane

        lane = open_lane(self, (self._rx, self._fill, self._tx, self._comp), udp, native, stash)
        self._lanes.append(lane)
        return lane

    def _forget_lane(self, lane) -> None:
        if lane in self._lanes:
            self._lanes.remove(lane)

    # ---- free, stats, teardown -----------------------------------------------------------------------
    def free(self, batch: Batch) -> None:
        """Give frames back without sending them (checked: each frame must be yours, once)."""
        if len(batch) == 0:
            return
        if self._closed:
            raise UsageError(CLOSED)
        self._own(batch, "free")
        self.umem.give_free(batch.all_addrs(), APP, "free")

    @property
    def fd(self) -> int:
        return self.xsk.fd

    @property
    def in_fill(self) -> int:
        """Frames lent to the kernel for receiving (net of those received, on a shared queue)."""
        return self._c[IN_FILL]

    @property
    def in_tx(self) -> int:
        """Frames submitted for sending, not yet completed (net of those reaped, on a shared queue)."""
        return self._c[IN_TX]

    @property
    def shared(self) -> bool:
        """Whether this port is a member of a shared queue (module doc)."""
        return self._lock is not None

    @property
    def stats(self) -> dict:
        c = self._c
        s = {name: c[i] for i, name in enumerate(_STATS_KEYS)}
        s.update(self.xsk.statistics())
        s.update(frames_in_fill=self.in_fill, frames_in_tx=self.in_tx, frames_free=self.umem.free_count)
        return s

    def check(self, *, app: int | None = None) -> dict:
        """Verify the UMEM accounting (no leak, no double hand-out); `app`: frames you should hold now (the
        frames the port's message lanes hold are added to it)."""
        self.reap()
        if app is not None:
            app += sum(lane.held for lane in self._lanes)
        if self._lock is not None:  # frames float between the members: only this member's own can be checked
            return self.umem.check(app=app)
        counts = self.umem.check(app=app, fill=self._c[IN_FILL], tx=self._c[IN_TX])
        return counts

    def close(self) -> None:
        if self._closed:
            return
        for lane in list(self._lanes):
            try:
                lane.close()
            except Exception:  # the port closes anyway; its memory goes with it
                self._forget_lane(lane)
        self._closed = True
        self._rx = self._tx = self._fill = self._comp = _CLOSED
        self._peek = _closed_peek
        self.xsk.close()
        self.umem.close()
        if self._lock is not None:
            self._lock.close()

    def __repr__(self) -> str:
        return f"<AfXdpPort {self.ifname} queue {self.queue} mode {self.mode} poll {self.poll_mode}>"
