"""The reliable transport's bulk path in C (csrc/fastxfer.c over the C core's kb_xfer).
Wrapped as the C transport codec by kbypass.backend.CCodec (API of kbypass.proto.transport.codec)."""

import numpy as np
from _typeshed import ReadableBuffer, WriteableBuffer

def rx_run(mem: ReadableBuffer, descs: np.ndarray, start: int, kind: int, key: bytes, local_id: int, peer_id: int,
           seq: int, ack: int, right: int, room_end: int, room_bytes: int, mode: int,
           /) -> tuple[int, bytes | list[bytes], int, list[int]]:
    """The run of next-in-line data segments from start: (stop, data, tsval, message ends)."""
def encode(flags: int, src_id: int, dst_id: int, seq: int, ack: int, window: int, tsval: int, tsecr: int,
           payload: ReadableBuffer, /) -> bytes:
    """wire.encode_fields without SACK blocks."""
def encode_segments(src_id: int, dst_id: int, ack: int, window: int, tsval: int, tsecr: int, segments: list,
                    out: list[bytes], /) -> None:
    """Append to out the datagram of each segment, without SACK blocks."""
def write_frames(mem: WriteableBuffer, descs: np.ndarray, start: int, frame_size: int, max_len: int, kind: int,
                 header: bytes, ident: int, datagrams: list[bytes], /) -> int:
    """Frame datagrams[start:] into the batch's frames (each at most max_len bytes, inside its aligned
    frame_size chunk); returns the last IP ident used."""

def write_chains(mem: WriteableBuffer, descs: np.ndarray, start: int, frame_size: int, max_len: int,
                 max_frames: int, kind: int, header: bytes, ident: int, datagrams: list, /) -> tuple[int, int, int]:
    """Frame datagrams[start:] as chains of the batch's empty frames (at most max_frames each, XDP_PKT_CONTD on
    all but a chain's last); returns (last IP ident, frames used, datagrams written). A datagram is bytes, or
    a kbypass.xfer.datapath.Unencoded segment, encoded straight into its chain."""

def lane_chains(core: object, max_len: int, kind: int, header: bytes, ident: int, datagrams: list, start: int,
                /) -> tuple[int, int]:
    """write_chains into the stash frames of a chains lane (core: kbypass._fastlane.Lane.core), straight onto
    its TX ring (no kick); stops where the stash or the ring runs short. Returns (last IP ident, datagrams sent)."""

def crc64(crc: int, data: ReadableBuffer) -> int:
    """CRC-64/XZ of data continuing crc (0 to start): crc64(crc64(0, a), b) == crc64(0, a + b)."""
