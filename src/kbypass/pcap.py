"""A pcap writer fed whole batches: record headers and frame bytes laid out with numpy, no Python loop per
packet. Classic pcap (not pcapng), microsecond timestamps, LINKTYPE_ETHERNET, which tcpdump, tshark and
scapy all read.
"""

from __future__ import annotations

import struct
import time

import numpy as np

from kbypass.errors import UsageError
from kbypass.port.batch import Batch

LINKTYPE_ETHERNET = 1
PCAP_MAGIC_US = 0xA1B2C3D4
RECORD = np.dtype([("sec", "<u4"), ("usec", "<u4"), ("incl", "<u4"), ("orig", "<u4")])


class PcapWriter:
    def __init__(self, path: str, snaplen: int = 65535) -> None:
        """Create (or truncate) `path` and write the pcap header; a path that cannot be written is a
        UsageError naming it and the reason, not an OSError."""
        self.snaplen = snaplen
        self.packets = 0
        self.path = str(path)
        try:
            self.file = open(path, "wb")
        except OSError as e:
            raise UsageError(f"cannot write the capture file {self.path!r}: {e.strerror}; choose a file in a "
                             "directory you can write") from None
        try:
            self.file.write(struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
            self.file.flush()
        except OSError as e:
            self.file.close()
            raise UsageError(f"cannot write the capture file {self.path!r}: {e.strerror}") from None

    def write_batch(self, batch: Batch, now: float | None = None) -> None:
        """Append every frame of the batch (cut to snaplen), all stamped `now` (default: the time of call)."""
        n = len(batch)
        if n == 0:
            return
        now = time.time() if now is None else now
        orig = batch.lens.astype(np.int64)
        incl = np.minimum(orig, self.snaplen)
        rec_len = RECORD.itemsize + incl
        rec_start = np.concatenate(([0], np.cumsum(rec_len)[:-1]))
        out = np.empty(int(rec_len.sum()), dtype=np.uint8)
        # Record headers: scatter the 16 header bytes of each record to its start.
        hdr = np.zeros(n, dtype=RECORD)
        hdr["sec"], hdr["usec"] = int(now), int((now % 1) * 1e6)
        hdr["incl"], hdr["orig"] = incl, orig
        out[(rec_start[:, None] + np.arange(RECORD.itemsize)).ravel()] = hdr.view(np.uint8)
        # Frame bytes: one gather from the packet memory, one scatter into the records.
        total = int(incl.sum())
        within = np.arange(total) - np.repeat(np.cumsum(incl) - incl, incl)
        src = np.repeat(batch.addr.astype(np.int64), incl) + within
        dst = np.repeat(rec_start + RECORD.itemsize, incl) + within
        out[dst] = batch.mem[src]
        self.file.write(out.tobytes())
        self.packets += n

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
