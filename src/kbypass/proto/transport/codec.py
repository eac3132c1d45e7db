"""The transport codec's reference Python (the C one is kbypass.backend.CCodec over kbypass._fastxfer).

One object with four calls, the same in both (kbypass.backend names them and picks one; a Connection and a
TransportEndpoint are given theirs, `codec=`):

    encode(flags, src_id, dst_id, seq, ack, window, tsval, tsecr, payload) -> bytes
        one datagram without SACK blocks (wire.encode_fields with no sacks); OverflowError or struct.error
        for a field out of range
    encode_segments(src_id, dst_id, ack, window, tsval, tsecr, segments, out) -> None
        append to `out` the datagram of each segment (flags ACK, MSG_END when seg.msg_end, FIN when
        seg.fin)
    rx_run(mem, descs, start, kind, key, local_id, peer_id, seq, ack, right, room_end, room_bytes, mode)
        -> (stop, data, tsval, ends): the run of next-in-line data segments from frame `start` that the
        endpoint may hand to Connection.receive_run at once. The reference takes none (stop == start):
        the general path (encap.peer_datagrams, Connection.receive_datagrams) is what the C run is held
        to, datagram by datagram (tests/unit/test_transport_fastpath.py).
    write_frames(mem, descs, start, frame_size, max_len, kind, header, ident, datagrams) -> int
        frame datagrams[start:] into the batch's frames (kind 0: IPv4/UDP, proto.udp.UdpFlow without UDP
        checksum, from a 42-byte header template; kind 1: a 14-byte Ethernet header), lengths set; returns
        the last IP ident used. A frame is at most max_len bytes (the link's) and stays inside its UMEM
        frame: the aligned chunk of frame_size bytes (a power of two) it starts in. All or nothing: bad
        arguments (ValueError), a datagram that is not bytes (TypeError) or one that does not fit
        (ValueError) raise before any frame is written.
    write_chains(mem, descs, start, frame_size, max_len, max_frames, kind, header, ident, datagrams)
        -> (ident, frames, written): write_frames for a multi-buffer port. `descs` are empty frames and each
        datagram, in order, becomes a chain of as many of them as it needs (each filled to the end of its
        UMEM frame, the last partly; at most max_frames), XDP_PKT_CONTD in the options of all but a chain's
        last, until the frames left do not hold the next one. Returns the last ident, the frames used
        (descs[:frames], in ring order) and the datagrams written. A datagram no chain carries (past
        max_len, the IPv4 limit or max_frames) raises ValueError before anything is written.

Pure Python: no C is imported here (the sans-IO protocol never imports C).
"""

from __future__ import annotations

from .. import udp
from . import wire

_HEADER_LEN = (udp.HEADERS_LEN, 14)  # by kind: IPv4/UDP, Ethernet
_IPV4_CAP = 0xFFFF + 14  # the largest frame an IPv4 total length describes
_PKT_CONTD = 1  # XDP_PKT_CONTD (kbypass.xsk.consts; the sans-IO protocol imports no layer below proto)


class PythonCodec:
    """See the module doc."""

    name = "python"

    def encode(self, flags: int, src_id: int, dst_id: int, seq: int, ack: int, window: int, tsval: int,
               tsecr: int, payload) -> bytes:
        return wire.encode_fields(flags, src_id, dst_id, seq, ack, window, tsval, tsecr, (), payload)

    def encode_segments(self, src_id: int, dst_id: int, ack: int, window: int, tsval: int, tsecr: int,
                        segments: list, out: list) -> None:
        enc = wire.encode_fields
        ack_f, end_f, fin_f = wire.ACK, wire.MSG_END, wire.FIN
        for seg in segments:
            flags = ack_f | (end_f if seg.msg_end else 0) | (fin_f if seg.fin else 0)
            out.append(enc(flags, src_id, dst_id, seg.seq, ack, window, tsval, tsecr, (), seg.data))

    def rx_run(self, mem, descs, start: int, kind: int, key: bytes, local_id: int, peer_id: int, seq: int,
               ack: int, right: int, room_end: int, room_bytes: int, mode: int):
        return start, b"", 0, []

    def __init__(self) -> None:
        self._flows: dict[bytes, udp.UdpFlow] = {}  # header template -> its flow (one per peer, in practice)

    def write_frames(self, mem, descs, start: int, frame_size: int, max_len: int, kind: int, header: bytes,
                     ident: int, datagrams: list) -> int:
        mv = memoryview(mem).cast("B")
        try:
            if mv.readonly:
                raise BufferError("write_frames: the memory is read-only")
            if getattr(descs, "ndim", None) != 1 or descs.dtype.itemsize != 16:
                raise TypeError("descriptors must be a 1-D array of kbypass.port.batch.DESC")
            if type(datagrams) is not list:
                raise TypeError("write_frames: datagrams must be a list")
            if (kind not in (0, 1) or len(header) != _HEADER_LEN[kind] or not 0 <= start <= len(datagrams)
                    or not 0 <= ident <= 0xFFFF or frame_size <= 0 or frame_size & (frame_size - 1) or max_len < 0):
                raise ValueError("write_frames: bad kind, header, start, ident, frame size or limit")
            n = min(len(descs), len(datagrams) - start)
            addrs = descs["addr"][:n].tolist()
            todo = datagrams[start:start + n]
            hlen, cap, memlen = len(header), min(max_len, _IPV4_CAP), len(mv)
            for a, d in zip(addrs, todo):  # every frame first: either all are written or none
                if not isinstance(d, bytes):
                    raise TypeError("write_frames: datagrams must be bytes")
                need = hlen + len(d)
                if need > cap or need > memlen - a or need > frame_size - (a & (frame_size - 1)):
                    raise ValueError(f"write_frames: a {len(d)}-byte datagram does not fit its frame")
            lens = []
            if kind == 0:
                frame = self._flow(bytes(header)).frame
                for a, d in zip(addrs, todo):
                    ident = (ident + 1) & 0xFFFF
                    f = frame(d, ident)
                    mv[a:a + len(f)] = f
                    lens.append(len(f))
            else:
                header = bytes(header)
                for a, d in zip(addrs, todo):
                    f = header + d
                    mv[a:a + len(f)] = f
                    lens.append(len(f))
        finally:
            mv.release()
        descs["len"][:n] = lens
        return ident

    def write_chains(self, mem, descs, start: int, frame_size: int, max_len: int, max_frames: int, kind: int,
                     header: bytes, ident: int, datagrams: list) -> tuple[int, int, int]:
        if (kind not in (0, 1) or len(header) != _HEADER_LEN[kind] or type(datagrams) is not list
                or not 0 <= start <= len(datagrams) or not 0 <= ident <= 0xFFFF or frame_size <= 0
                or frame_size & (frame_size - 1) or max_len < 0 or max_frames < 1):
            raise ValueError("write_chains: bad kind, header, start, ident, frame size or limit")
        addrs = descs["addr"].tolist()
        rooms = [frame_size - (a & (frame_size - 1)) for a in addrs]
        hlen, cap = len(header), min(max_len, _IPV4_CAP)
        memlen = memoryview(mem).nbytes
        plan = []  # (datagram, first frame, frames) of each datagram that fits the frames left
        at = 0
        for d in datagrams[start:]:
            if not isinstance(d, bytes):
                raise TypeError("write_chains: datagrams must be bytes")
            need, have, j = hlen + len(d), 0, at
            while have < need and j < len(addrs) and j - at < max_frames:
                if addrs[j] + rooms[j] > memlen or (j == at and rooms[j] < hlen):
                    have = -1  # a frame outside the memory, or a head too small for the header
                    break
                have += rooms[j]
                j += 1
            if need > cap or have < 0 or (have < need and j - at >= max_frames):
                raise ValueError(f"write_chains: a {len(d)}-byte datagram fits no chain of at most {max_frames} frames")
            if have < need:
                break  # out of frames: the rest is for the next call
            plan.append((d, at, j - at))
            at = j
        mv = memoryview(mem).cast("B")
        try:
            if mv.readonly:
                raise BufferError("write_chains: the memory is read-only")
            for d, first, k in plan:
                if kind == 0:
                    ident = (ident + 1) & 0xFFFF
                    f = self._flow(bytes(header)).frame(d, ident)
                else:
                    f = bytes(header) + d
                pos = 0
                for j in range(first, first + k):
                    take = min(rooms[j], len(f) - pos)
                    mv[addrs[j]:addrs[j] + take] = f[pos:pos + take]
                    descs["len"][j] = take
                    descs["options"][j] = _PKT_CONTD if j + 1 < first + k else 0
                    pos += take
        finally:
            mv.release()
        return ident, at, len(plan)

    def _flow(self, header: bytes) -> udp.UdpFlow:
        flow = self._flows.get(header)
        if flow is None:
            if len(self._flows) > 64:
                self._flows.clear()
            flow = self._flows[header] = udp.UdpFlow(header, udp_checksum=False)
        return flow

    def __repr__(self) -> str:
        return "<codec python>"
