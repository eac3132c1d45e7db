"""UDP ping-pong latency, wire-compatible with sockperf: a server that answers a real `sockperf ping-pong`
client, and a client that measures a real `sockperf server`.

sockperf's UDP message (its MsgHeader, observed on the wire with tcpdump and matching its source), all
fields big-endian, then filler up to the message size:

    offset 0  u64  sequence number (the client counts from 1)
    offset 8  u16  flags: 1 = sent by a client, 2 = please answer (pong request), 4 = warm-up message
    offset 10 u32  message length (the whole UDP payload, header included)

The server answers a message whose pong-request flag is set with the same bytes and the client flag
cleared, to the address it came from; a sockperf client drops answers that still carry the client flag.
Anything shorter than the header is echoed unchanged (plain echo peers work too). The client sends one
message, waits for the answer with the same sequence number, and records half the round trip, as sockperf
and sfnt-pingpong report; percentiles come from an HdrHistogram (1 ns to 100 s, 3 significant digits).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from kbypass.errors import UsageError

HEADER = struct.Struct("!QHI")
HEADER_LEN = HEADER.size  # 14, sockperf's MsgHeader::EFFECTIVE_SIZE
FLAG_CLIENT, FLAG_PONG, FLAG_WARMUP = 1, 2, 4
PERCENTILES = (("p50_us", 50.0), ("p90_us", 90.0), ("p99_us", 99.0), ("p999_us", 99.9))


def message(seq: int, size: int, *, warmup: bool = False, filler: bytes | None = None) -> bytes:
    """A sockperf client message of `size` bytes (at least the 14-byte header)."""
    if size < HEADER_LEN:
        raise UsageError(f"--size {size}: a sockperf message needs at least {HEADER_LEN} bytes")
    flags = FLAG_CLIENT | FLAG_PONG | (FLAG_WARMUP if warmup else 0)
    body = filler if filler is not None and len(filler) == size - HEADER_LEN else bytes(size - HEADER_LEN)
    return HEADER.pack(seq, flags, size) + body


def answer(data: bytes) -> bytes | None:
    """The server's answer to one datagram: sockperf messages with the client flag cleared (None when the
    sender did not ask for an answer), anything else echoed."""
    if len(data) < HEADER_LEN or not data[9] & FLAG_CLIENT:
        return data
    if not data[9] & FLAG_PONG:
        return None  # sockperf's under-load mode: only some messages want an answer
    return data[:9] + bytes((data[9] & ~FLAG_CLIENT,)) + data[10:]


def is_answer(data: bytes, seq: int) -> bool:
    """Is `data` the server's answer to our message `seq`?"""
    return (len(data) >= HEADER_LEN and data[9] & FLAG_CLIENT == 0
            and int.from_bytes(data[0:8], "big") == seq)


# ------------------------------------------------------------------------------------------------ server


@dataclass
class ServerResult:
    received: int = 0
    answered: int = 0
    seconds: float = 0.0
    peers: set = field(default_factory=set)


def serve(ep, *, duration: float | None = None, count: int | None = None, idle_timeout: float | None = None,
          stop=lambda: False) -> ServerResult:
    """Answer datagrams on endpoint `ep` until duration/count/idle_timeout/stop() ends it. The idle
    timeout counts from the last message, so it starts with the first one."""
    res = ServerResult()
    start = last = time.monotonic()
    end = None if duration is None else start + duration
    recvfrom, sendto = ep.recvfrom, ep.sendto
    while not stop():
        now = time.monotonic()
        if end is not None and now >= end:
            break
        if idle_timeout is not None and res.received and now - last >= idle_timeout:
            break
        slice_ = 0.2 if end is None else max(0.0, min(0.2, end - now))
        try:
            data, peer = recvfrom(slice_)
        except TimeoutError:
            continue
        res.received += 1
        out = answer(data)
        if out is not None:
            sendto(out, peer)
            res.answered += 1
        if res.peers is not None and len(res.peers) < 64:
            res.peers.add(peer)
        last = time.monotonic()
        if count is not None and res.received >= count:
            break
    res.seconds = time.monotonic() - start
    return res


# ------------------------------------------------------------------------------------------------ client


@dataclass
class ClientResult:
    histogram: object
    samples: int
    sent: int
    lost: int
    seconds: float
    warmup: int

    def summary(self) -> dict:
        h = self.histogram
        out = {k: round(h.get_value_at_percentile(p) / 1000, 3) for k, p in PERCENTILES}
        out["max_us"] = round(h.get_max_value() / 1000, 3) if self.samples else 0.0
        out["min_us"] = round(h.get_min_value() / 1000, 3) if self.samples else 0.0
        out["mean_us"] = round(h.get_mean_value() / 1000, 3) if self.samples else 0.0
        out.update(samples=self.samples, sent=self.sent, lost=self.lost, warmup=self.warmup,
                   seconds=round(self.seconds, 3))
        return out


def new_histogram():
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, 100_000_000_000, 3)  # nanoseconds, 1 ns .. 100 s


def ping(ep, server: tuple[str, int], *, size: int = 64, duration: float | None = None,
         count: int | None = None, warmup: int = 100, reply_timeout: float = 1.0,
         stop=lambda: False) -> ClientResult:
    """Ping-pong with `server` through endpoint `ep`: `warmup` unrecorded round trips, then until `count`
    recorded samples or `duration` seconds. A message without answer within `reply_timeout` is lost."""
    if duration is None and count is None:
        raise UsageError("say how long: give --duration SECONDS or --count MESSAGES")
    if warmup < 0:
        raise UsageError(f"--warmup {warmup}: give a number of messages >= 0")
    hist = new_histogram()
    filler = bytes((i * 7) & 0xFF for i in range(max(0, size - HEADER_LEN)))
    message(0, size)  # size check before any traffic
    recvfrom, sendto, clock = ep.recvfrom, ep.sendto, time.perf_counter_ns
    seq = sent = lost = samples = 0
    start = time.monotonic()
    end = None
    measuring = False
    while not stop():
        seq += 1
        warm = seq <= warmup
        if not warm and not measuring:  # the clock for --duration starts after the warm-up
            measuring = True
            start = time.monotonic()
            end = start + duration if duration is not None else None
        if end is not None and time.monotonic() >= end:
            break
        msg = HEADER.pack(seq, FLAG_CLIENT | FLAG_PONG, size) + filler
        t0 = clock()
        sendto(msg, server)
        sent += 1
        deadline = t0 + int(reply_timeout * 1e9)
        while True:
            left = (deadline - clock()) / 1e9
            if left <= 0:
                lost += 1
                break
            try:
                data, _ = recvfrom(left)
            except TimeoutError:
                lost += 1
                break
            if is_answer(data, seq):
                t1 = clock()
                if not warm:
                    hist.record_value(max(1, (t1 - t0) // 2))
                    samples += 1
                break
            # a late answer to an earlier message: ignore it and keep waiting for ours
        if not warm and count is not None and samples >= count:
            break
    return ClientResult(hist, samples, sent, lost, time.monotonic() - start, min(warmup, seq))


def plot_histogram(result: ClientResult, path: str, title: str) -> None:
    """Latency distribution (bars) and the percentile curve, as HdrHistogram plots show it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = result.histogram
    values, counts = [], []
    for item in h.get_recorded_iterator():
        values.append(item.value_iterated_to / 1000)
        counts.append(item.count_added_in_this_iter_step)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(values, counts, width=max(values[-1] - values[0], 1) / max(len(values), 1) if values else 1)
    ax1.set_xlabel("one-way latency (us, half the round trip)")
    ax1.set_ylabel("samples")
    ax1.set_title(title)
    pct = [50, 75, 90, 99, 99.9, 99.99, 100]
    ax2.plot([str(p) for p in pct], [h.get_value_at_percentile(p) / 1000 for p in pct], marker="o")
    ax2.set_xlabel("percentile")
    ax2.set_ylabel("us")
    ax2.set_yscale("log")
    ax2.set_title(f"{result.samples} samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
