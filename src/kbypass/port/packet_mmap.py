"""PacketMmapPort: the fallback Port over AF_PACKET's shared rings, for kernels or drivers without XDP.

Theory of operation.
- One AF_PACKET socket, TPACKET_V3. RX is a *block* ring (PACKET_RX_RING with tpacket_req3): the kernel
  packs many frames into a block, each behind a `tpacket3_hdr`, and hands the whole block to us (block
  status TP_STATUS_USER) when it is full or `block_timeout_ms` passes. We give the block back by writing
  TP_STATUS_KERNEL. The kernel fills blocks strictly in order: while we hold the block it wants next, it
  freezes the queue and drops (counted in tp_drops / tp_freeze_q_cnt) until we let go.
- TX is a frame ring (PACKET_TX_RING, V3 frames of `frame_size`, data at offset 48); we write frames in
  ring order, set TP_STATUS_SEND_REQUEST, and kick with send(); the kernel sets TP_STATUS_AVAILABLE when
  the frame's skb is freed. PACKET_QDISC_BYPASS sends straight to the driver (no qdisc, no taps).
- Memory: one np.uint8 array `port.mem`, the memory of every Batch this port hands out, laid out as
      [RX ring: block_count x block_size][TX ring: tx_frames x frame_size][staging: frames x frame_size]
  The kernel maps RX then TX from the socket; the staging area (what alloc() hands out) is anonymous.
  We make the three one range by mapping the socket with MAP_FIXED over the start of an anonymous Python
  mmap: Python's buffer protocol then keeps the whole range alive while numpy views of it exist, and one
  munmap releases everything.

Ownership (kbypass.port.base): receive() hands you frames *inside RX blocks* (no copy); alloc() hands you
staging frames. Each is yours until you transmit() or free() it, once. A block goes back to the kernel only
when every frame of it came back (a count per block), so holding frames holds whole blocks: free promptly.
transmit() *copies* each frame into a TX ring slot (PACKET_MMAP cannot send from the RX ring or from memory
of our choosing, unlike AF_XDP's shared UMEM) and the frame is yours no more once accepted.

What this path is not: AF_PACKET is a tap, not a bypass. The socket sees every frame arriving on the
interface (not one queue, not only steered flows), and the kernel stack still processes each one (a UDP
port nobody listens on answers with rate-limited ICMP port unreachable). `rule` narrows what reaches the
ring with a classic BPF filter (SO_ATTACH_FILTER) compiled from an IPv4 steering rule; otherwise filter in
userspace. Frames we send ourselves are not seen (PACKET_IGNORE_OUTGOING).

Memory ordering: the status words are the only synchronisation, exactly like the AF_XDP ring indexes; we
write frame data and lengths before the status store, and read status before the headers. x86-64 (TSO)
keeps both orders without fences (see kbypass.xsk.ring); elsewhere we refuse to run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import struct

import numpy as np

from kbypass import backend
from kbypass import netns as _netns
from kbypass.errors import EnvironmentProblem, KbypassError, PermissionProblem, UsageError
from kbypass.net.wait import wait_readable
from kbypass.xsk.ring import check_architecture
from kbypass.xsk.umem import OwnershipError

from kbypass.steer.cbpf import compile_filter

from .base import Port
from .batch import DESC, Batch

SOL_PACKET = 263
PACKET_RX_RING, PACKET_STATISTICS, PACKET_VERSION = 5, 6, 10
PACKET_TX_RING, PACKET_LOSS, PACKET_FANOUT = 13, 14, 18
PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING = 20, 23
TPACKET_V3 = 2
ETH_P_ALL = 3
SO_ATTACH_FILTER = 26
TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1
TP_STATUS_AVAILABLE, TP_STATUS_SEND_REQUEST = 0, 1
FANOUT_MODES = {"hash": 0, "lb": 1, "cpu": 2, "rollover": 3, "rnd": 4, "qm": 5}

BLOCK_STATUS, BLOCK_NUM_PKTS, BLOCK_FIRST = 8, 12, 16  # offsets in struct tpacket_block_desc
TX_LEN, TX_STATUS = 16, 20  # tp_len, tp_status in struct tpacket3_hdr
TX_DATA = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr)): where TX frame data starts without TX_HAS_OFF
TX_BLOCK = 1 << 16
GRANULE = 4  # frames are told apart by addr >> 4: RX frames are >= 80 bytes apart, staging frames 2048
APP = 1
FRAME_SIZES = (2048, 4096)

_PKT_HDR = struct.Struct("<I8xI8xH")  # tp_next_offset, tp_snaplen, tp_mac
_BLK_HDR = struct.Struct("<III")  # block_status, num_pkts, offset_to_first_pkt

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
MAP_FIXED = 0x10


class PacketMmapPort(Port):
    """Receive and transmit batches on every queue of `ifname` (in namespace `netns`) via TPACKET_V3 rings.

    block_size/block_count: the RX ring (power-of-two blocks of at least a page); block_timeout_ms: how
    long a partly filled block waits before the kernel hands it over. frame_size: TX slot and staging frame
    size (2048 or 4096); tx_frames: TX ring slots; frames: staging frames for alloc().
    fanout_group: join this PACKET_FANOUT group (one per worker process/port; same id, same mode) with
    fanout_mode hash|lb|cpu|rollover|rnd|qm (the group splits every frame of the interface first and each
    member's filter runs after, so "lb" balances all traffic, not just the matching frames).
    rule: an IPv4 steering rule (text or kbypass.steer.Rule), compiled to a classic BPF filter so only
    matching frames reach the ring. Ownership: see the module doc. batch_ops: the batch backend of the
    batches' header swaps and stamps (None: kbypass.backend.batch()).
    """

    mode = "packet_mmap"

    def __init__(self, ifname: str, *, netns: str | None = None, block_size: int = 1 << 20,
                 block_count: int = 16, block_timeout_ms: int = 2, frame_size: int = 2048,
                 tx_frames: int = 512, frames: int = 1024, fanout_group: int | None = None,
                 fanout_mode: str = "hash", qdisc_bypass: bool = True, rule=None, batch_ops=None) -> None:
        _check_sizes(block_size, block_count, block_timeout_ms, frame_size, tx_frames, frames)
        if fanout_mode not in FANOUT_MODES:
            raise UsageError(f"fanout_mode {fanout_mode!r} is unknown: use one of {', '.join(FANOUT_MODES)}")
        if fanout_group is not None and not (isinstance(fanout_group, int) and 0 <= fanout_group <= 0xFFFF):
            raise UsageError(f"fanout_group {fanout_group!r}: use a group id from 0 to 65535")
        filt = compile_filter(rule) if rule is not None else None
        try:
            check_architecture()
        except EnvironmentProblem:
            raise EnvironmentProblem("PACKET_MMAP's ring status words rely on x86 (TSO) memory ordering here "
                                     "(see kbypass.xsk.ring): use the socket backend on this CPU") from None
        if os.geteuid() != 0:
            raise PermissionProblem("a PACKET_MMAP port needs root (CAP_NET_RAW): run it with sudo")
        self.ifname, self.netns = ifname, netns
        self.batch_ops = batch_ops if batch_ops is not None else backend.batch()
        self.block_size, self.block_count, self.frame_size = block_size, block_count, frame_size
        self._closed = False
        self._sock = None
        self._map = None
        self._mv = None
        self.mem = None
        where = f" in namespace {netns!r}" if netns else ""
        with _netns.entered(netns):
            try:
                self.ifindex = socket.if_nametoindex(ifname)
                self.mtu = _mtu(ifname)
            except OSError:
                raise UsageError(f"no interface {ifname!r}{where}: check the name with 'ip link'") from None
            # Protocol 0: the socket receives nothing until bind() names ETH_P_ALL, after the filter and
            # the rings are in place, so no unfiltered frame lands in the ring.
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._setup(filt, tx_frames, frames, block_timeout_ms, qdisc_bypass)
            try:
                self._sock.bind((ifname, ETH_P_ALL))
            except OSError as e:
                raise UsageError(f"binding a packet socket to {ifname}{where} failed ({e.strerror}): "
                                 "is the interface up?") from None
            if fanout_group is not None:
                self._set(PACKET_FANOUT, fanout_group | (FANOUT_MODES[fanout_mode] << 16),
                          f"joining fanout group {fanout_group} ({fanout_mode})",
                          "every member of a group must use the same fanout mode")
        except BaseException:
            self.close()
            raise
        self.fanout_group = fanout_group
        self._poll_fd = self._sock.fileno()
        self._counters = dict.fromkeys(("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tx_completed",
                                        "tx_kicks", "tx_send_errors", "rx_blocks"), 0)
        self._kstats = dict.fromkeys(("kernel_packets", "rx_dropped", "rx_freeze_q"), 0)

    # ---- setup ------------------------------------------------------------------------------------
    def _set(self, opt: int, value, what: str, hint: str) -> None:
        try:
            self._sock.setsockopt(SOL_PACKET, opt, value)
        except OSError as e:
            raise EnvironmentProblem(f"PACKET_MMAP {what} failed ({e.strerror}): {hint}") from None

    def _setup(self, filt: bytes | None, tx_frames: int, frames: int, timeout_ms: int, bypass: bool) -> None:
        bs, fs = self.block_size, self.frame_size
        if filt is not None:
            self._attach_filter(filt)
        self._set(PACKET_VERSION, TPACKET_V3, "TPACKET_V3", "the kernel needs TPACKET_V3 (Linux 3.2+)")
        self._set(PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING", "the kernel needs Linux 4.20+")
        self._set(PACKET_LOSS, 1, "PACKET_LOSS", "unexpected on Linux")  # a bad TX frame is skipped, not wedged
        if bypass:
            self._set(PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS", "pass qdisc_bypass=False")
        # TX slots come in whole TX_BLOCK blocks; round the slot count up to fill them.
        per_block = max(1, TX_BLOCK // fs)
        tx_blocks = -(-tx_frames // per_block)
        self.tx_frames = tx_blocks * per_block
        rx_req = struct.pack("7I", bs, self.block_count, fs, bs // fs * self.block_count, timeout_ms, 0, 0)
        tx_req = struct.pack("7I", max(TX_BLOCK, fs), tx_blocks, fs, self.tx_frames, 0, 0, 0)
        hint = "lower block_size/block_count (kernel memory) or check 'ulimit -l'"
        self._set(PACKET_RX_RING, rx_req, f"RX ring ({self.block_count} x {bs} bytes)", hint)
        self._set(PACKET_TX_RING, tx_req, f"TX ring ({self.tx_frames} x {fs} bytes)", hint)
        self.rx_len = bs * self.block_count
        self.tx_base = self.rx_len
        self.staging_base = self.tx_base + self.tx_frames * fs
        self.size = self.staging_base + frames * fs
        self._map = mmap.mmap(-1, self.size)
        self.mem = np.frombuffer(self._map, dtype=np.uint8)
        ring_len = self.staging_base
        got = _libc.mmap(self.mem.ctypes.data, ring_len, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_SHARED | MAP_FIXED, self._sock.fileno(), 0)
        if got is None or got != self.mem.ctypes.data:
            err = ctypes.get_errno()
            raise EnvironmentProblem(f"mapping the packet rings ({ring_len} bytes) failed: {os.strerror(err)}: "
                                     "lower block_size/block_count")
        self._mv = memoryview(self._map)
        self._mem32 = self.mem.view(np.uint32)
        # ownership: APP marks per frame (addr >> GRANULE), frames pending per RX block, staging free stack
        self._state = np.zeros((self.size >> GRANULE) + 1, dtype=np.uint8)
        self._mark = np.zeros(len(self._state), dtype=np.int32)
        self._positions = np.arange(max(frames, 1 << 16), dtype=np.int32)
        self._pending = np.zeros(self.block_count, dtype=np.int64)
        self._rx_next = 0  # the next block the kernel will hand us
        self._cur = None  # descriptors of the block being handed out
        self._cur_pos = 0
        self._staging = (self.staging_base + np.arange(frames, dtype=np.uint64)[::-1] * np.uint64(fs)).copy()
        self._staging_top = frames
        self.frames = frames
        self._tx_prod = 0  # next TX slot to fill (runs free)
        self._tx_reap = 0  # oldest slot not yet seen completed
        self._tx_slots = self.tx_base + np.arange(self.tx_frames, dtype=np.int64) * fs
        self.tx_max = min(fs - TX_DATA, self.mtu + 14)

    def _attach_filter(self, prog: bytes) -> None:
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError as e:
            raise EnvironmentProblem(f"attaching the classic BPF filter failed ({e.strerror}): pass rule=None "
                                     "and filter in userspace") from None

    # ---- receive ----------------------------------------------------------------------------------
    def _open_block(self) -> bool:
        """Take the next block from the kernel if it handed it over; parse its frame headers."""
        b = self._rx_next
        base = b * self.block_size
        # pending > 0: still ours from the last lap round the ring (frames not yet back), not a new block
        if self._pending[b] or not self._mem32[(base + BLOCK_STATUS) >> 2] & TP_STATUS_USER:
            return False
        self._rx_next = (b + 1) % self.block_count
        _, num, first = _BLK_HDR.unpack_from(self._mv, base + BLOCK_STATUS)
        self._counters["rx_blocks"] += 1
        if num == 0:
            self._mem32[(base + BLOCK_STATUS) >> 2] = TP_STATUS_KERNEL
            return False
        # The frames of a block form a chain of tp_next_offset; walking it is the one per-frame Python loop.
        descs = np.zeros(num, dtype=DESC)
        addrs, lens = [0] * num, [0] * num
        off, mv, unpack = base + first, self._mv, _PKT_HDR.unpack_from
        for i in range(num):
            nxt, snap, mac = unpack(mv, off)
            addrs[i] = off + mac
            lens[i] = snap
            off += nxt
        descs["addr"] = addrs
        descs["len"] = lens
        self._pending[b] = num
        self._cur, self._cur_pos = descs, 0
        return True

    def receive(self, max_frames: int = 64) -> Batch:
        """Up to max_frames received frames (views into an RX block); yours until you transmit or free them."""
        if self._cur is None and not self._open_block():
            return Batch(np.zeros(0, dtype=DESC), self.mem, self)
        pos = self._cur_pos
        descs = self._cur[pos : pos + max_frames]
        self._cur_pos = pos + len(descs)
        if self._cur_pos >= len(self._cur):
            self._cur = None
        self._state[descs["addr"] >> GRANULE] = APP
        self._counters["rx_packets"] += len(descs)
        self._counters["rx_bytes"] += int(descs["len"].sum())
        return Batch(descs, self.mem, self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a block is ready (or frames of an open one remain) or timeout seconds pass."""
        if self._cur is not None or self._next_ready():
            return True
        wait_readable(self._poll_fd, timeout)  # (a sub-ms timeout sleeps: kbypass.net.wait)
        return self._next_ready()

    def _next_ready(self) -> bool:
        b = self._rx_next
        return not self._pending[b] and bool(self._mem32[(b * self.block_size + BLOCK_STATUS) >> 2] & TP_STATUS_USER)

    # ---- ownership --------------------------------------------------------------------------------
    def _own(self, batch: Batch, what: str) -> None:
        if batch.owner is not self and batch.mem is not self.mem:
            raise OwnershipError(f"{what}: this batch belongs to another port; give frames back to the port "
                                 "they came from")

    def _expect(self, addrs: np.ndarray, what: str) -> np.ndarray:
        """Granules of addrs after checking each frame is yours (APP) and appears once."""
        if int(addrs.max()) >= self.size:
            raise OwnershipError(f"{what}: address {int(addrs.max()):#x} is outside this port's memory; only "
                                 "pass frames this port gave you")
        g = (addrs >> np.uint64(GRANULE)).astype(np.intp)
        bad = self._state[g] != APP
        if bad.any():
            i = int(np.argmax(bad))
            raise OwnershipError(f"{what}: frame at {int(addrs[i]):#x} is not yours (already freed or "
                                 "transmitted, or never handed out): a frame is yours from receive/alloc until "
                                 "you transmit or free it, once")
        pos = self._positions[: len(g)] if len(g) <= len(self._positions) else np.arange(len(g), dtype=np.int32)
        self._mark[g] = pos
        if not (self._mark[g] == pos).all():
            raise OwnershipError(f"{what}: the same frame appears twice in one batch; use each frame once")
        return g

    def _give_back(self, addrs: np.ndarray, g: np.ndarray) -> None:
        """Frames come back: staging ones to the free stack, RX ones to their block's count."""
        self._state[g] = 0
        rx = addrs < np.uint64(self.rx_len)
        if rx.any():
            blocks = (addrs[rx] // np.uint64(self.block_size)).astype(np.intp)
            self._pending -= np.bincount(blocks, minlength=self.block_count)
            for b in np.unique(blocks[self._pending[blocks] == 0]):
                self._mem32[(int(b) * self.block_size + BLOCK_STATUS) >> 2] = TP_STATUS_KERNEL
        st = addrs[~rx]
        if len(st):
            self._staging[self._staging_top : self._staging_top + len(st)] = st - (st - np.uint64(
                self.staging_base)) % np.uint64(self.frame_size)
            self._staging_top += len(st)

    def free(self, batch: Batch) -> None:
        """Give frames back without sending them (checked: each frame must be yours, once)."""
        if len(batch) == 0:
            return
        self._own(batch, "free")
        addrs = batch.addr.astype(np.uint64)
        self._give_back(addrs, self._expect(addrs, "free"))

    def alloc(self, n: int) -> Batch:
        """Up to n empty staging frames (len 0); yours until transmitted (copied to the TX ring) or freed."""
        n = max(0, min(n, self._staging_top))
        top = self._staging_top - n
        descs = np.zeros(n, dtype=DESC)
        descs["addr"] = self._staging[top : self._staging_top]
        self._staging_top = top
        self._state[(descs["addr"] >> GRANULE).astype(np.intp)] = APP
        return Batch(descs, self.mem, self)

    def frame_ends(self, descs: np.ndarray) -> np.ndarray:
        """Where each frame's memory ends (Batch bounds checks): a staging frame may grow to the end of its
        frame_size slot; a received frame sits packed between others in its RX block, so it cannot grow."""
        addr = descs["addr"].astype(np.int64)
        fs = self.frame_size
        staging = addr - (addr - self.staging_base) % fs + fs
        return np.where(addr >= self.staging_base, staging, addr + descs["len"].astype(np.int64))

    # ---- transmit ---------------------------------------------------------------------------------
    def reap(self) -> int:
        """Advance past TX slots the kernel has finished with; returns how many."""
        inflight = self._tx_prod - self._tx_reap
        if inflight == 0:
            return 0
        slots = (self._tx_reap + np.arange(inflight)) % self.tx_frames
        busy = self._mem32[(self._tx_slots[slots] + TX_STATUS) >> 2] != TP_STATUS_AVAILABLE
        done = int(np.argmax(busy)) if busy.any() else inflight
        self._tx_reap += done
        self._counters["tx_completed"] += done
        return done

    def transmit(self, batch: Batch) -> int:
        """Copy frames into TX ring slots and kick; returns k, the accepted prefix. batch[k:] stays yours.

        Frames shorter than an Ethernet header or longer than the slot/MTU are refused with a UsageError
        before anything is queued.
        """
        n = len(batch)
        if n == 0:
            return 0
        self._own(batch, "transmit")
        addrs = batch.addr.astype(np.uint64)
        lens = batch.lens.astype(np.int64)
        if int(lens.min()) < 14 or int(lens.max()) > self.tx_max:
            bad = int(lens.min()) if int(lens.min()) < 14 else int(lens.max())
            raise UsageError(f"cannot send a {bad}-byte frame on {self.ifname}: frames must be 14 to "
                             f"{self.tx_max} bytes (Ethernet header up to MTU + 14 and the {self.frame_size}-byte "
                             "TX slot)")
        g = self._expect(addrs, "transmit")
        self.reap()
        k = min(n, self.tx_frames - (self._tx_prod - self._tx_reap))
        if k:
            slots = self._tx_slots[(self._tx_prod + np.arange(k)) % self.tx_frames]
            self._copy(addrs[:k].astype(np.int64), lens[:k], slots + TX_DATA)
            self._mem32[(slots + TX_LEN) >> 2] = lens[:k]
            # Publish only after data and lengths are written (stores stay in order on x86, see module doc).
            self._mem32[(slots + TX_STATUS) >> 2] = TP_STATUS_SEND_REQUEST
            self._tx_prod += k
            self._give_back(addrs[:k], g[:k])
            self._counters["tx_packets"] += k
            self._counters["tx_bytes"] += int(lens[:k].sum())
        self.flush()
        return k

    def _copy(self, src: np.ndarray, lens: np.ndarray, dst: np.ndarray) -> None:
        width = int(lens.max())
        mem = self.mem
        if width * len(src) <= 1 << 16:
            cols = np.arange(width, dtype=np.int64)
            # Copy `width` bytes of every frame: the bytes past a short frame's end land in its slot's
            # unused tail, and the source index is clipped so it never reads past the mapping.
            mem[dst[:, None] + cols] = mem[np.minimum(src[:, None] + cols, self.size - 1)]
        else:
            for s, n, d in zip(src.tolist(), lens.tolist(), dst.tolist()):
                mem[d : d + n] = mem[s : s + n]

    def flush(self) -> None:
        """Make the kernel send the queued TX slots (send() with no data walks the TX ring)."""
        if self._tx_prod == self._tx_reap:
            return
        for _ in range(4):
            self._counters["tx_kicks"] += 1
            try:
                self._sock.send(b"", socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                return
            except OSError as e:
                # ENOBUFS: the driver refused a frame (qdisc bypass has no queue to wait in); the frame
                # is dropped and the rest stay queued: kick again.
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise KbypassError(f"PACKET_MMAP send on {self.ifname} failed: {e.strerror}") from None
                self._counters["tx_send_errors"] += 1

    # ---- stats, check, teardown -------------------------------------------------------------------
    @property
    def fd(self) -> int:
        return self._sock.fileno()

    @property
    def stats(self) -> dict:
        """Our counters plus PACKET_STATISTICS (read-and-reset by the kernel, so accumulated here):
        kernel_packets (frames that reached the socket, received + dropped), rx_dropped, rx_freeze_q."""
        if not self._closed:
            self.reap()
            packets, drops, freeze = struct.unpack("3I", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
            self._kstats["kernel_packets"] += packets
            self._kstats["rx_dropped"] += drops
            self._kstats["rx_freeze_q"] += freeze
        s = dict(self._counters)
        s.update(self._kstats)
        s.update(tx_inflight=self._tx_prod - self._tx_reap, frames_free=self._staging_top,
                 blocks_held=int((self._pending > 0).sum()))
        return s

    def check(self, *, app: int | None = None) -> dict:
        """Verify the accounting (no leak, no double hand-out); `app`: frames you should hold now.

        Raises OwnershipError on any inconsistency; returns counts: app (frames you hold), rx_held (of
        them, frames inside RX blocks), free (staging frames free), blocks_held, tx_inflight."""
        self.reap()
        held = int((self._state == APP).sum())
        unhanded = 0 if self._cur is None else len(self._cur) - self._cur_pos
        rx_held = int(self._pending.sum()) - unhanded
        staging_held = self.frames - self._staging_top
        if held != rx_held + staging_held:
            raise OwnershipError(f"PACKET_MMAP: {held} frames marked yours but {rx_held} RX + {staging_held} "
                                 "staging frames out")
        free = self._staging[: self._staging_top]
        if len(np.unique(free)) != len(free) or (self._state[(free >> GRANULE).astype(np.intp)] == APP).any():
            raise OwnershipError("PACKET_MMAP staging free list holds a frame twice or one you hold (double free)")
        if app is not None and held != app:
            raise OwnershipError(f"PACKET_MMAP: you hold {held} frames, expected {app} (a leak: some frame was "
                                 "neither transmitted nor freed)")
        return {"app": held, "rx_held": rx_held, "free": self._staging_top,
                "blocks_held": int((self._pending > 0).sum()), "tx_inflight": self._tx_prod - self._tx_reap}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._mv is not None:
            self._mv.release()
        self.mem = self._mem32 = self._mv = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # batches still view it; the mapping (and the socket it holds) goes with the last one
            self._map = None
        if self._sock is not None:
            self._sock.close()

    def __repr__(self) -> str:
        return f"<PacketMmapPort {self.ifname} {self.block_count}x{self.block_size} TX {self.tx_frames}>"


def _check_sizes(block_size, block_count, timeout_ms, frame_size, tx_frames, frames) -> None:
    page = mmap.PAGESIZE
    if not isinstance(block_size, int) or block_size < page or block_size & (block_size - 1):
        raise UsageError(f"block_size {block_size!r} is not a power of two of at least {page} bytes: "
                         "use e.g. 1<<20")
    if block_size > 1 << 26:
        raise UsageError(f"block_size {block_size} is above 64 MiB: use more blocks instead (block_count)")
    if not isinstance(block_count, int) or not 2 <= block_count <= 4096:
        raise UsageError(f"block_count {block_count!r}: use 2 to 4096 blocks (e.g. 16)")
    if frame_size not in FRAME_SIZES:
        raise UsageError(f"frame_size {frame_size!r} is not supported: use 2048 or 4096")
    if not isinstance(timeout_ms, int) or timeout_ms < 0:
        raise UsageError(f"block_timeout_ms {timeout_ms!r}: use a whole number of milliseconds >= 0 (0: kernel "
                         "default)")
    for name, v in (("tx_frames", tx_frames), ("frames", frames)):
        if not isinstance(v, int) or not 1 <= v <= 1 << 20:
            raise UsageError(f"{name} {v!r}: use 1 to {1 << 20} frames")


def _mtu(ifname: str) -> int:
    SIOCGIFMTU = 0x8921
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s.fileno(), SIOCGIFMTU, struct.pack("16si12x", ifname.encode()[:15], 0))
    return struct.unpack_from("i", ifr, 16)[0]
