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
    write_frames(mem, descs, start, frame_size, kind, header, ip_partial, ident, datagrams) -> int
        frame datagrams[start:] into the batch's frames (kind 0: IPv4/UDP from a 42-byte header template,
        IP checksum from its precomputed partial sum; kind 1: a 14-byte Ethernet header), lengths set;
        returns the last IP ident used. ValueError, nothing written, when one does not fit frame_size.

Pure Python: no C is imported here (the sans-IO protocol never imports C).
"""

from __future__ import annotations

import struct

from . import wire

_MOD = 0xFFFF
_UDP_VARIABLE = struct.Struct("!HH4sH12sH2x")  # IP total length, ident, (flags..proto), checksum, addrs+ports,
# UDP length, UDP checksum 0


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

    def write_frames(self, mem, descs, start: int, frame_size: int, kind: int, header: bytes, ip_partial: int,
                     ident: int, datagrams: list) -> int:
        n = min(len(descs), len(datagrams) - start)
        if n <= 0:
            return ident
        hlen = len(header)
        if kind == 0:
            eth_ip, fixed1, fixed2 = header[0:16], header[20:24], header[26:38]
            pack = _UDP_VARIABLE.pack
        todo = datagrams[start:start + n]
        for d in todo:
            if hlen + len(d) > frame_size:
                raise ValueError(f"a {len(d)}-byte datagram does not fit its {frame_size}-byte frame")
        mv = memoryview(mem).cast("B")
        try:
            addrs = descs["addr"].tolist()
            lens = []
            for a, d in zip(addrs, todo):
                k = len(d)
                if kind == 0:
                    total = k + 28
                    ident = (ident + 1) & 0xFFFF
                    r = (ip_partial + total + ident) % _MOD
                    f = b"".join((eth_ip, pack(total, ident, fixed1, _MOD - r if r else 0, fixed2, k + 8), d))
                else:
                    f = header + d
                mv[a:a + len(f)] = f
                lens.append(len(f))
        finally:
            mv.release()
        descs["len"][:n] = lens
        return ident

    def __repr__(self) -> str:
        return "<codec python>"
