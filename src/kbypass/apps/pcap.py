"""A pcap writer fed whole batches: record headers and frame bytes laid out with numpy, no Python loop per
packet. Classic pcap (not pcapng) with nanosecond timestamps (magic 0xa1b23c4d) and LINKTYPE_ETHERNET,
which tcpdump, tshark and scapy all read. "-" writes to standard output, flushed after every batch, so
`kbypass capture -w - | tcpdump -r -` shows packets as they come.
"""

from __future__ import annotations

import struct
import sys
import time

import numpy as np

from kbypass.errors import UsageError
from kbypass.port.batch import DESC, Batch

LINKTYPE_ETHERNET = 1
PCAP_MAGIC_NS = 0xA1B23C4D
RECORD = np.dtype([("sec", "<u4"), ("nsec", "<u4"), ("incl", "<u4"), ("orig", "<u4")])


class PcapWriter:
    def __init__(self, path: str, snaplen: int = 65535, *, name: str | None = None) -> None:
        """Create (or truncate) `path` ("-": standard output) and write the pcap header; a path that cannot
        be written is a UsageError naming it (or `name`, the file the user asked for when `path` is a
        partial file beside it) and the reason, not an OSError."""
        self.snaplen = snaplen
        self.packets = 0
        self.path = str(path)
        self.name = str(name or path)
        self.to_stdout = self.path == "-"
        try:
            self.file = sys.stdout.buffer if self.to_stdout else open(path, "wb")
        except OSError as e:
            raise UsageError(f"cannot write the capture file {self.name!r}: {e.strerror}; choose a file in a "
                             "directory you can write") from None
        try:
            self.file.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
            self.file.flush()
        except OSError as e:
            self.close()
            raise UsageError(f"cannot write the capture file {self.name!r}: {e.strerror}") from None

    def write_batch(self, batch: Batch, now: float | None = None, times_ns: np.ndarray | None = None) -> None:
        """Append every frame of the batch (cut to snaplen). Stamps: `times_ns`, one per frame (nanoseconds
        since the epoch), or else `now` (seconds; default the time of call) for all of them."""
        n = len(batch)
        if n == 0:
            return
        if times_ns is None:
            times_ns = np.full(n, round((time.time() if now is None else now) * 1e9), dtype=np.int64)
        if batch.tails is not None:  # multi-frame packets: each gathered whole, then written as one frame
            batch = _gathered(batch)
        orig = batch.lens.astype(np.int64)
        incl = np.minimum(orig, self.snaplen)
        rec_len = RECORD.itemsize + incl
        rec_start = np.concatenate(([0], np.cumsum(rec_len)[:-1]))
        out = np.empty(int(rec_len.sum()), dtype=np.uint8)
        # Record headers: scatter the 16 header bytes of each record to its start.
        hdr = np.zeros(n, dtype=RECORD)
        hdr["sec"], hdr["nsec"] = times_ns // 1_000_000_000, times_ns % 1_000_000_000
        hdr["incl"], hdr["orig"] = incl, orig
        out[(rec_start[:, None] + np.arange(RECORD.itemsize)).ravel()] = hdr.view(np.uint8)
        # Frame bytes: one gather from the packet memory, one scatter into the records.
        total = int(incl.sum())
        within = np.arange(total) - np.repeat(np.cumsum(incl) - incl, incl)
        src = np.repeat(batch.addr.astype(np.int64), incl) + within
        dst = np.repeat(rec_start + RECORD.itemsize, incl) + within
        out[dst] = batch.mem[src]
        self.file.write(out.tobytes())
        if self.to_stdout:
            self.file.flush()  # a reader on the pipe sees each batch as it comes
        self.packets += n

    def close(self) -> None:
        if self.to_stdout:
            try:
                self.file.flush()
            except OSError:
                pass  # the reader left (BrokenPipe): nothing more to give it
        elif not self.file.closed:
            self.file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


HEADER_SIZE = 24


def _gathered(batch: Batch) -> Batch:
    """A free-standing Batch of one-frame packets holding copies of `batch`'s packets, all frames of each
    gathered in order (for writing multi-frame packets whole)."""
    packets = [batch.packet(i) for i in range(len(batch))]
    descs = np.zeros(len(packets), dtype=DESC)
    descs["len"] = [len(p) for p in packets]
    descs["addr"] = np.cumsum(descs["len"]) - descs["len"]
    return Batch(descs, np.concatenate(packets))


def records(path: str):
    """(time in ns, record bytes) of each whole record of a file PcapWriter wrote; a torn last record (its
    writer was killed mid-write) ends the file."""
    with open(path, "rb") as f:
        if len(f.read(HEADER_SIZE)) < HEADER_SIZE:
            return
        while True:
            head = f.read(RECORD.itemsize)
            if len(head) < RECORD.itemsize:
                return
            sec, nsec, incl, _ = struct.unpack("<IIII", head)
            data = f.read(incl)
            if len(data) < incl:
                return
            yield sec * 1_000_000_000 + nsec, head + data


def merge(paths: list[str], out: PcapWriter) -> int:
    """Append the records of `paths` (pcap files PcapWriter wrote, each in time order: one per worker) to
    `out` in time-stamp order, streaming (one record per file in memory); returns how many."""
    import heapq

    n = 0
    for _, record in heapq.merge(*(records(p) for p in paths), key=lambda r: r[0]):
        out.file.write(record)
        n += 1
    out.file.flush()
    out.packets += n
    return n
