"""The Port API's per-batch bookkeeping in C (csrc/fastbatch.c over the C core's kb_umem and kb_batch).
Wrapped as the C batch backend by kbypass.backend.CBatch (reference: kbypass.backend.PyBatch)."""

import numpy as np
from _typeshed import WriteableBuffer

FRAME_FREE: int
"""UMEM frame state: on the free stack."""
FRAME_FILL: int
"""UMEM frame state: lent to the kernel for receiving."""
FRAME_APP: int
"""UMEM frame state: the application's."""
FRAME_TX: int
"""UMEM frame state: handed to the kernel for sending."""

def swap(mem: WriteableBuffer, descs: np.ndarray, offset: int, width: int, need: int, /) -> int:
    """Swap two adjacent fields in every frame: -1, or the first frame shorter than need (nothing done)."""
def claim(state: WriteableBuffer, descs: np.ndarray, shift: int, umem_size: int, frame_size: int,
          expected: int, to: int, tx: bool, /) -> int:
    """Move every frame from state expected to to: their total length, or -1 with nothing changed."""
def mark(state: WriteableBuffer, descs: np.ndarray, shift: int, to: int, /) -> int:
    """Received frames into state to; returns their total length."""
def push_free(state: WriteableBuffer, free: np.ndarray, top: int, addrs: np.ndarray, shift: int, /) -> int:
    """Completed frames back on the free stack; returns the new top."""
def stamp(mem: WriteableBuffer, descs: np.ndarray, offset: int, first_seq: int, now_ns: int, /) -> int:
    """The generator's sequence and time stamp: -1, or the first frame too short (nothing written)."""
def chain_ends(descs: np.ndarray, ends: np.ndarray, max_frames: int, /) -> tuple[int, int]:
    """Ring-order packets up to the first longer than max_frames (kb_batch_chain_ends): (packets, stopped), ends
    one past each packet's last descriptor; stopped 1 at a longer packet, -1 when the last descriptor continues."""
def split_chains(ring: np.ndarray, heads: np.ndarray, tails: np.ndarray, ntails: np.ndarray, kept: np.ndarray,
                 /) -> int:
    """Ring-order descriptors split into packets (kb_batch_split_chains): the packet count, or -1 when the
    last descriptor continues a packet."""
def seq_update(state: WriteableBuffer, seen: WriteableBuffer, seqs: np.ndarray, /) -> None:
    """Sequence accounting of one batch (kb_seq_update): state is kbypass.apps.seqcheck.FIELDS as int64; any
    int64 is a sequence number. TypeError unless seqs is an int64 array (by format, not only item size)."""
def drain(rx: WriteableBuffer, fill: WriteableBuffer, fd: int, umem: WriteableBuffer, frame_size: int,
          stats: WriteableBuffer, budget: int, stamp_off: int, state: WriteableBuffer | None,
          seen: WriteableBuffer | None, seqs: np.ndarray, lat: np.ndarray, wait_ms: int, lock: int = 0, /
          ) -> tuple[int, int, int, int, int]:
    """Receive and give straight back to the fill ring (kb_sink_drain, or kb_sink_run when wait_ms > 0):
    (frames, bytes, latencies written to lat, CLOCK_MONOTONIC ns of the first and the last frame taken).
    An RX descriptor outside the UMEM: the frames before it are taken and returned; it stays on the RX ring,
    and the call that meets it first raises RuntimeError, taking nothing. Runs without the GIL on the ring
    memory, which it does not pin: the port must not be closed meanwhile. lock: the address of a shared
    queue's pool lock, taken around the fill ring (TimeoutError when held past its patience), 0: none."""
