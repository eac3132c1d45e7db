"""TransportEndpoint's data path: frames in (the codec's runs, then the general path: encapsulation
checks, the listener or connection) and datagrams out (frames allocated, written by the codec, transmitted).
A mixin of TransportEndpoint (endpoint.py, which holds the state and says how the loop runs).
"""

from __future__ import annotations

import time

import numpy as np

from kbypass import backend
from kbypass.errors import UsageError
from kbypass.port.batch import Batch
from kbypass.proto.transport import wire

from .encap import UdpEncap

_MAX_ALLOC = 1024  # frames allocated for one write_chains call (a 1 MiB flight of 4 KiB frames is ~256)
_LANE_MOST = 4  # a send of at most this many datagrams tries the message lane (ACKs, pings, a paced few)
# The lane's stash for a sender of chains (lane_chains): a pacing burst (bbr.BURST_DATAGRAMS, 32) of jumbo datagrams
# of 17 frames of 4 KiB; a send's frames come back into it from the completion ring, in C, before the next needs them
_CHAIN_STASH = 544


class DataPath:
    """TransportEndpoint's receive and send paths (state in TransportEndpoint.__init__)."""

    __slots__ = ()

    def _take_frames(self, now: float) -> int:
        batch = self.port.receive(self.rx_batch)
        n = len(batch)
        if not n:
            return 0
        # the codec reads descriptors in ring order: a multi-buffer packet is a chain of frames (jumbo frames)
        descs = batch.descs if batch.tails is None else batch.ring_descs()
        mv = memoryview(batch.mem)
        try:  # the datagrams are views of packet memory: handled (copied by the decoder) before the frames go back
            i = 0
            if self._rx_link is None:
                # runs of bulk data through C; each frame that ends a run through Python, then C again. A
                # frame C cannot take where a run could start (a retransmission filling the hole, a duplicate)
                # goes to Python alone and C tries the next: under 1% loss that frame heads a batch of up to
                # 64 jumbo datagrams, and all of them went through Python's gather and decode (0.25 CPU s/GB
                # of the receiver's, as much as the C runs of all the rest, bench/xfer_cpu_split.py). Once C
                # takes nothing twice running, or cannot run at all now (rx_run_params: the sender's ACKs),
                # the rest of the batch goes to Python together. A run also ends where the connection wants
                # an ACK out (ack_due): it goes, then C goes on.
                after_ack = stalled = False
                while i < n:
                    j = self._take_run(batch, descs, i, now)
                    if j == n:
                        i = j
                        break
                    if j > i and self._ack_early(now):
                        i, after_ack, stalled = j, True, False
                        continue
                    if j == i and not after_ack and (stalled or not self._may_run()):
                        break
                    self._take_general(mv, batch, j, j + 1, now)
                    i, after_ack, stalled = j + 1, False, j == i
            if i < n:
                self._take_general(mv, batch, i, n, now)
        finally:
            mv.release()
            self.port.free(batch)
        return n

    def _may_run(self) -> bool:
        """Whether the connection's state lets C take a run at all now (its rx_run_params)."""
        return self.conn is not None and self.encap.peer is not None and self.conn.rx_run_params() is not None

    def _ack_early(self, now: float) -> bool:
        """Send what the connection has due now if it asks for an ACK in the middle of a batch (ack_due:
        ConnConfig.ack_bytes arrived since its last datagram), so the sender hears of the batch's first
        datagrams before the last is taken. True if it did."""
        conn = self.conn
        if conn is None or not conn.ack_due:
            return False
        self._send_out(conn.datagrams_to_send(now), now)
        return True

    def _take_general(self, mv: memoryview, batch, start: int, stop: int, now: float) -> None:
        """Frames start..stop-1 of `batch` through the general path: the Python checks and decoder, or the
        userspace fault link."""
        datagrams = self._datagrams(mv, batch, start, stop, now)
        if self._rx_link is not None:
            t = self._t(now)
            for data in datagrams:
                self._rx_link.send(bytes(data), t)  # the link keeps it past this batch: a copy of its own
        elif datagrams:
            self._deliver_all(datagrams, now)

    def _take_run(self, batch, descs, start: int, now: float) -> int:
        """Take the run of next-in-line data segments from frame `start` of `batch` in one C call (rx_run
        under the connection's rx_run_params): a bulk transfer's arrivals, in order or filling the buffer
        above a hole, with no Python per datagram. `descs`: the batch's descriptors in ring order (chains of
        frames gathered in C). Returns the index of the first packet it did not take."""
        conn = self.conn
        if conn is None or self.encap.peer is None:
            return start
        params = conn.rx_run_params()
        if params is None:
            return start
        stop, data, tsval, ends = self.codec.rx_run(batch.mem, descs, start, self.encap.kind,
                                                    self.encap.peer_key, *params)
        if stop > start:
            conn.receive_run(data, stop - start, tsval, now, params[-1], ends)
            self.counters["rx_datagrams"] += stop - start
            self.counters["rx_c"] += stop - start
        return stop

    def _datagrams(self, mv: memoryview, batch, start: int, stop: int, now: float) -> list:
        """The transport datagrams (views into `mv`, the batch's memory) of frames start..stop-1 of `batch`
        that come from our peer; everything else counted in `drops` by reason. Packets of several frames
        are gathered into one copy first (the general path: handshake, ACKs, the odd datagram)."""
        if batch.tails is not None and batch.ntails[start:stop].any():
            mv, addrs, lens = gathered(batch, start, stop)
        elif start or stop < len(batch):
            addrs, lens = batch.addr[start:stop].tolist(), batch.lens[start:stop].tolist()
        else:
            addrs, lens = batch.addr.tolist(), batch.lens.tolist()
        if self.encap.peer is None:
            return self._datagrams_learning(mv, addrs, lens, now)
        return self.encap.peer_datagrams(mv, addrs, lens, self.drops)

    def _datagrams_learning(self, mv: memoryview, addrs: list, lens: list, now: float) -> list:
        """_datagrams before the peer is known (a server until its listener takes a SYN). The sender of the
        SYN that made a connection becomes the peer (_deliver_all), not the sender of any SYN: the listener
        may refuse one (message mode mismatch, full), and locking onto its sender would turn the real
        client away as other_peer. Without userspace faults each SYN goes to the listener at once, so the
        frames after it in the batch are checked against the peer it made."""
        out = []
        for a, k in zip(addrs, lens):
            f = mv[a:a + k]
            if self.encap.peer is not None:
                r = self.encap.parse_peer(f)
                if type(r) is str:
                    self.drops[r] += 1
                else:
                    out.append(r)
                continue
            r = self.encap.parse(f)
            if type(r) is str:
                self.drops[r] += 1
            elif self._listener is None:
                self.drops["not_listening"] += 1
            else:
                out.append(r[0])
                if self._note_syn(r[0], r[1]) and self._rx_link is None:
                    self._deliver_all(out, now)  # the listener decides on it now (and sets the peer, or not)
                    out = []
        return out

    def _note_syn(self, data, src) -> bool:
        """Remember where a SYN came from, by its sender's connection id (the peer_id of the connection it
        may make). True if `data` is a SYN."""
        try:
            pkt = wire.decode(data)
        except Exception:
            return False  # counted by the listener when fed
        if not (pkt.has(wire.SYN) and not pkt.has(wire.ACK)):
            return False
        if len(self._syn_sources) >= 64:  # refused SYNs from many ids must not grow it without bound
            del self._syn_sources[next(iter(self._syn_sources))]
        self._syn_sources[pkt.src_id] = src
        return True

    def _learn_peer(self) -> None:
        """The listener made our connection: its SYN's sender is the peer from now on."""
        src = self._syn_sources.get(self.conn.peer_id)
        if src is None:
            return  # forgotten (see _note_syn): the client's next SYN retransmission is noted again
        if isinstance(self.encap, UdpEncap):
            self.encap.set_peer(src[0], src[1], src[2])
        else:
            self.encap.set_peer(src[0])
        self._syn_sources.clear()

    def _deliver_all(self, datagrams: list, now: float) -> None:
        """Give a batch of datagrams to the connection (or listener) in one call: it decodes and handles
        them in a loop of its own, and one ACK at the next datagrams_to_send answers them all."""
        self.counters["rx_datagrams"] += len(datagrams)
        machine = self._machine()
        if machine is None:
            self.drops["not_listening"] += len(datagrams)  # before connect()/accept(): nobody to give it to
            return
        cfg = self.conn.config if self.conn is not None else None
        # an ACK due inside the batch (ConnConfig.ack_bytes) goes out between slices of it, as between the
        # C runs (_take_frames)
        step = -(-cfg.ack_bytes // cfg.mss) if cfg is not None and cfg.ack_bytes else 0  # full segments that fill it
        if 0 < step < len(datagrams):
            for k in range(0, len(datagrams), step):
                machine.receive_datagrams(datagrams[k:k + step], now)
                self._ack_early(now)
        else:
            machine.receive_datagrams(datagrams, now)
        if self._listener is not None:
            if self.conn is None:
                self.conn = self._listener.accept()
            if self.conn is not None and self.encap.peer is None:
                self._learn_peer()

    def _send_out(self, datagrams: list[bytes], now: float) -> None:
        if self._tx_link is not None:
            t = self._t(now)
            for d in datagrams:
                self._tx_link.send(bytes(d), t)  # (Unencoded ones encoded: the link may corrupt or keep them)
            datagrams = self._tx_link.deliver(t)
        if not datagrams:
            return
        if self.encap.peer is None:
            self.drops["no_peer_yet"] += len(datagrams)
            return
        lane = self._small_lane()
        if len(datagrams) <= _LANE_MOST and lane is not None:
            datagrams = self._send_small(lane, datagrams)
            if not datagrams:
                return
        if self._chain_frames:
            if lane is not None and self._lane_chains is not None:
                datagrams = self._send_lane_chains(lane, datagrams)
                if not datagrams:
                    return
            self._send_chains(datagrams)
        else:
            self._send_frames(datagrams)

    def _small_lane(self):
        """The port's message lane in C (kbypass._fastlane) for our small datagrams, or None (not the C codec,
        not AF_XDP, a shared queue, a userspace fault link, the lane not built). A receiver's every send is
        one ACK: as a batch (frames allocated, written, put on the TX ring, given back) it cost ~75 us, most
        of it numpy bookkeeping of one descriptor; the lane takes a stash frame, writes it, submits it and
        kicks in one C call. The lane's rings, frame states and counters are the port's own (port/lane.py),
        so it and the batch path take turns on one port."""
        lane = self._lane
        if lane is None:
            lane = False
            first = (getattr(self.port, "ports", None) or [self.port])[0]
            if (self.native and self._tx_link is None and hasattr(first, "message_lane")
                    and backend.lane() == "c" and backend.built("lane")):
                try:
                    # a sender of chains keeps its data frames cycling through the lane's stash (lane_chains)
                    lane = first.message_lane(native=True, stash=_CHAIN_STASH if self._chain_frames else None)
                    lane.defer_kick = True  # one kick for a send's datagrams (_send_small)
                    self._lane_core = lane.c.core if self._lane_chains is not None else None
                except UsageError:  # a shared queue: its members refill per batch, the lane per message
                    lane = False
            self._lane = lane
        return lane or None

    def _send_small(self, lane, datagrams: list) -> list:
        """Datagrams one at a time through the message lane while they are bytes that fit one frame (not a
        jumbo data segment encoded in its frames, datapath.Unencoded), then one kick; returns the rest, for
        the batch path (also what the lane had no frame or TX slot for)."""
        room = lane.tx_room - self.encap.header_len
        send = self.encap.send_lane
        k = 0
        for d in datagrams:
            if type(d) is not bytes or len(d) > room or not send(lane, d):
                break
            k += 1
        if k:
            lane.flush_tx()
            self.counters["tx_lane"] += k
            self.counters["tx_frames"] += k
        return datagrams[k:]

    def _send_lane_chains(self, lane, datagrams: list) -> list:
        """Datagrams out as chains of the lane's stash frames, written and put on its TX ring in one C call
        (kbypass._fastxfer.lane_chains), then one flush; returns the rest, for the batch path (what the stash
        or the TX ring had no room for). The batch path took frames from the port's free list, wrote them,
        found each packet's end and handed the frames to the ring through numpy at every send, and gave the
        completions back the same way: ~20% of a jumbo sender's Python."""
        total = len(datagrams)
        i = 0
        while i < total:
            sent = self.encap.lane_chains(self._lane_chains, self._lane_core, datagrams, i)
            i += sent
            if i == total:
                break
            need = (len(datagrams[i]) + self.encap.header_len - 1) // self._chain_room + 1
            if lane.c.stashed >= need or lane.stock(_CHAIN_STASH) < need:
                break  # the TX ring is full, or the port has no free frames: the batch path's retries take it
        if i:
            lane.flush_tx()
            self.counters["tx_lane"] += i
            self.counters["tx_batches"] += 1
        return datagrams[i:]

    def _close_lane(self) -> None:
        """Give the lane's frames back to the port (before the port closes, or while it lives on: own_port=False)."""
        lane, self._lane = self._lane, False
        self._lane_core = None  # (the capsule holds the lane)
        if lane:
            lane.close()

    def _send_frames(self, datagrams: list[bytes]) -> None:
        """Datagrams out, one frame each: the one-frame path."""
        port = self.port
        total = len(datagrams)
        i = 0
        tries = 0
        while i < total:
            batch = port.alloc(total - i)
            if not len(batch):
                tries += 1
                if tries > 50:
                    self.counters["tx_no_frames"] += total - i
                    return  # the transport retransmits: to it this is loss
                time.sleep(0)
                continue
            self._write_frames(batch, datagrams, i)
            sent = port.transmit(batch)
            if sent < len(batch):
                port.free(batch[sent:])
                tries += 1
                if tries > 50:
                    self.counters["tx_ring_full"] += total - i - sent
                    i = total
                    break
            i += sent
            self.counters["tx_frames"] += sent
            self.counters["tx_batches"] += 1

    def _send_chains(self, datagrams: list[bytes]) -> None:
        """Datagrams out as chains of frames (multi-buffer AF_XDP, datagrams larger than one frame): empty
        frames allocated for the lot, written as chains by one codec call (write_chains), transmitted in ring
        order (AfXdpPort.transmit_ring); frames left over and packets the ring did not take go back."""
        port = self.port
        total = len(datagrams)
        hlen = self.encap.header_len
        room = self._chain_room
        i = 0
        tries = 0
        while i < total:
            # the frames every datagram left takes, each chain's last partly full: exactly (frames left over
            # went back with a free() of their own, ~20 us, at nearly every send)
            need = sum([(len(d) + hlen - 1) // room + 1 for d in datagrams[i:]])
            frames = port.alloc(min(need, _MAX_ALLOC))
            wrote = used = 0
            if len(frames):
                used, wrote = self.encap.write_chains(self.codec, frames, datagrams, i, self._chain_frames)
                if used < len(frames):
                    port.free(frames[used:])
            if not wrote:
                tries += 1
                if tries > 50:
                    self.counters["tx_no_frames"] += total - i
                    return  # the transport retransmits: to it this is loss
                time.sleep(0)
                continue
            # straight from ring order to the TX ring of the port the frames came from (no Batch of packets
            # made only to be joined again: AfXdpPort.transmit_ring)
            sent, sent_frames = frames.owner.transmit_ring(frames.descs[:used])
            if sent < wrote:
                port.free(Batch.from_ring(frames.descs[sent_frames:used], frames.mem, frames.owner, frames.frame_size))
                tries += 1
                if tries > 50:
                    self.counters["tx_ring_full"] += total - i - sent
                    return
            i += sent
            self.counters["tx_frames"] += sent
            self.counters["tx_batches"] += 1

    def _write_frames(self, batch, datagrams: list, start: int) -> None:
        """Fill the frames of `batch` with datagrams[start:...] and set their lengths: one codec call
        (write_frames) through the encapsulation, which gives it the header and the frame room."""
        self.encap.write_frames(self.codec, batch, datagrams, start)


class Unencoded:
    """A new data segment's datagram, not encoded yet: the C codec's write_chains encodes it straight into the
    frames of its chain (header, payload, CRC32), the payload copied once, from the send buffer into UMEM.
    Encoded in encode_segments and copied into the frames after, each payload byte was copied twice on the
    sender (a jumbo transfer's sender spent 13-15% of its CPU in memmove). len() is the datagram's length;
    bytes() encodes it (the userspace fault link, or anything else that needs the bytes)."""

    __slots__ = ("fields", "seg", "_encode")

    def __init__(self, encode, fields: tuple, seg) -> None:
        self.fields = fields  # src_id, dst_id, ack, window, tsval, tsecr: encode_segments' header fields
        self.seg = seg  # a sendbuf.Segment: seq, data (a view of the send buffer's bytes), msg_end, fin
        self._encode = encode

    def __len__(self) -> int:
        return wire.OVERHEAD + len(self.seg.data)

    def __bytes__(self) -> bytes:
        src, dst, ack, window, tsval, tsecr = self.fields
        seg = self.seg
        flags = wire.ACK | (wire.MSG_END if seg.msg_end else 0) | (wire.FIN if seg.fin else 0)
        return self._encode(flags, src, dst, seg.seq, ack, window, tsval, tsecr, seg.data)


class EncodeInFrames:
    """The C codec for an endpoint that sends chains of frames: encode_segments leaves each new segment's
    datagram Unencoded for write_chains to encode in its frames; everything else is the codec's."""

    name = "c"

    def __init__(self, codec) -> None:
        self.codec = codec
        self.encode, self.rx_run = codec.encode, codec.rx_run
        self.write_frames, self.write_chains = codec.write_frames, codec.write_chains

    def encode_segments(self, src_id: int, dst_id: int, ack: int, window: int, tsval: int, tsecr: int,
                        segments: list, out: list) -> None:
        fields = (src_id, dst_id, ack, window, tsval, tsecr)
        encode = self.encode
        out.extend([Unencoded(encode, fields, seg) for seg in segments])

    def __repr__(self) -> str:
        return "<codec c, encoding in frames>"


def gathered(batch, start: int, stop: int) -> tuple[memoryview, list, list]:
    """Packets start..stop-1 of a multi-buffer `batch` copied one after the other into new memory, each
    contiguous: (its memoryview, their offsets, their lengths), what peer_datagrams takes."""
    parts = [batch.packet(i) for i in range(start, stop)]
    lens = [len(p) for p in parts]
    addrs = np.cumsum([0] + lens[:-1]).tolist()
    return memoryview(np.concatenate(parts)), addrs, lens
