"""UDP ping-pong latency, wire-compatible with sockperf: a server that answers a real `sockperf ping-pong`
client, and a client that measures a real `sockperf server`.

sockperf's UDP message (its MsgHeader, observed on the wire with tcpdump and matching its source), all
fields big-endian, then filler up to the message size:

    offset 0  u64  sequence number (the client counts from 1)
    offset 8  u16  flags: 1 = sent by a client, 2 = please answer (pong request), 4 = warm-up message
    offset 10 u32  message length (the whole UDP payload, header included)

The server answers a message whose pong-request flag is set with the same bytes and the client flag
cleared, to the address it came from; a sockperf client drops answers that still carry the client flag.
A sockperf message (its length field equal to its size) without the client flag is an answer, never
answered again: two servers pointed at each other must not reflect one message for ever. Anything else
(shorter than the header, or a length field that does not match) is echoed unchanged, so plain echo
peers work too. The client sends one message, waits for the answer with the same sequence number from
the server's address, and records half the round trip, as sockperf and sfnt-pingpong report; percentiles
come from an HdrHistogram (1 ns to 100 s, 3 significant digits). Warm-up round trips are counted apart
from the measured ones. They do not carry sockperf's warm-up flag: a `sockperf server` does not answer a
message with that flag, and our warm-up warms both ends' paths with real round trips.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import dataclass, field

from kbypass.errors import KbypassError, UsageError

HEADER = struct.Struct("!QHI")
HEADER_LEN = HEADER.size  # 14, sockperf's MsgHeader::EFFECTIVE_SIZE
FLAG_CLIENT, FLAG_PONG = 1, 2
FLAG_WARMUP = 4  # sockperf's warm-up flag: a sockperf server leaves such messages unanswered, so we never set it
PERCENTILES = (("p50_us", 50.0), ("p90_us", 90.0), ("p99_us", 99.0), ("p999_us", 99.9))


def message(seq: int, size: int, *, filler: bytes | None = None) -> bytes:
    """A sockperf client message of `size` bytes (at least the 14-byte header)."""
    if size < HEADER_LEN:
        raise UsageError(f"--size {size}: a sockperf message needs at least {HEADER_LEN} bytes")
    flags = FLAG_CLIENT | FLAG_PONG
    body = filler if filler is not None and len(filler) == size - HEADER_LEN else bytes(size - HEADER_LEN)
    return HEADER.pack(seq, flags, size) + body


def is_sockperf(data: bytes) -> bool:
    """Does `data` look like a sockperf message (header present, its length field equal to its size)?"""
    return len(data) >= HEADER_LEN and int.from_bytes(data[10:14], "big") == len(data)


def answer(data: bytes) -> bytes | None:
    """The server's answer to one datagram: sockperf messages with the client flag cleared; None when the
    sender did not ask for an answer, or when the message is itself an answer (no client flag: another
    server's reply, which must not bounce back and forth); anything that is not sockperf echoed."""
    if not is_sockperf(data):
        return data
    if not data[9] & FLAG_CLIENT:
        return None  # an answer, not a question
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
    answered_apart: int = 0  # of them, by the endpoint itself (kbypass.apps.tcpmsg pongs: in C, unseen here)
    send_failed: int = 0
    seconds: float = 0.0
    peers: set = field(default_factory=set)


def serve(ep, *, duration: float | None = None, count: int | None = None, idle_timeout: float | None = None,
          stop=lambda: False) -> ServerResult:
    """Answer datagrams on endpoint `ep` until duration/count/idle_timeout/stop() ends it. The idle
    timeout counts from the last message, or from the start while none came: a server nobody talks to
    stops too."""
    res = ServerResult()
    start = last = time.monotonic()
    end = None if duration is None else start + duration
    recvfrom, sendto = ep.recvfrom, ep.sendto
    taken = getattr(ep, "take_answered", None)  # messages the endpoint answered itself (kbypass.apps.tcpmsg)
    while not stop():
        now = time.monotonic()
        if end is not None and now >= end:
            break
        if idle_timeout is not None and now - last >= idle_timeout:
            break
        slice_ = 0.2 if end is None else max(0.0, min(0.2, end - now))
        try:
            data, peer = recvfrom(slice_)
        except TimeoutError:
            data = None
        if taken is not None and (n := taken()):  # answered as answer() would: counted, the idle clock restarted
            res.received += n
            res.answered += n
            res.answered_apart += n
            last = time.monotonic()
        if data is None:
            continue
        res.received += 1
        out = answer(data)
        if out is not None:
            try:
                sendto(out, peer)
                res.answered += 1
            except BlockingIOError:  # TX ring full for now: the client counts it lost
                res.send_failed += 1
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
    """`sent`/`lost` count measured messages only; the warm-up has its own `warmup` (sent) and
    `warmup_lost`. `gave_up`: no answer came for `give_up` seconds, so the run stopped early."""

    histogram: object
    samples: int
    sent: int
    lost: int
    seconds: float
    warmup: int
    warmup_lost: int = 0
    gave_up: bool = False

    def summary(self) -> dict:
        """Percentiles in us; None (not 0) when there is no sample to take them from."""
        h = self.histogram
        have = self.samples > 0
        out = {k: round(h.get_value_at_percentile(p) / 1000, 3) if have else None for k, p in PERCENTILES}
        out["max_us"] = round(h.get_max_value() / 1000, 3) if have else None
        out["min_us"] = round(h.get_min_value() / 1000, 3) if have else None
        out["mean_us"] = round(h.get_mean_value() / 1000, 3) if have else None
        out.update(samples=self.samples, sent=self.sent, lost=self.lost, warmup=self.warmup,
                   warmup_lost=self.warmup_lost, seconds=round(self.seconds, 3))
        if self.gave_up:
            out["gave_up"] = True
        return out

    def failure(self, server: str, give_up: float | None = None, stopped: bool = False) -> str | None:
        """Why this run failed (measured nothing, or the server went silent for `give_up` seconds) as a
        one-line error naming what to check; None when it did not fail. `stopped`: a signal ended the run;
        when that came before the first message or while the server was answering the warm-up, nothing
        was measured because of the signal, not because of the server's silence."""
        if self.samples and not self.gave_up:
            return None
        if stopped and (self.warmup > self.warmup_lost or not (self.sent or self.warmup)):
            return None
        why = (f"no answer from {server} for {give_up:g} s, run stopped" if self.gave_up and give_up
               else f"no answer from {server}")
        return (f"{why} (measured: {self.samples} samples, {self.sent} sent, {self.lost} lost; warm-up: "
                f"{self.warmup} sent, {self.warmup_lost} lost): check that the server runs, its address and "
                "port, and that nothing in between drops UDP")


def new_histogram():
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, 100_000_000_000, 3)  # nanoseconds, 1 ns .. 100 s


def _canonical_ip(ip: str) -> str:
    try:
        return str(ipaddress.IPv4Address(ip))
    except ValueError:
        return ip


GIVE_UP = 5.0  # seconds without any answer before the client stops (--idle-timeout)


def check_client_options(*, reply_timeout: float, give_up: float | None, warmup: int) -> None:
    """The client's numeric options, checked before any endpoint opens (UsageError naming the fix)."""
    if not reply_timeout > 0:  # also refuses NaN
        raise UsageError(f"--reply-timeout {reply_timeout}: give seconds > 0 (e.g. 1); with 0 every message "
                         "would count as lost")
    if give_up is not None and not give_up > 0:
        raise UsageError(f"--idle-timeout {give_up}: give seconds > 0 (default {GIVE_UP:g})")
    if warmup < 0:
        raise UsageError(f"--warmup {warmup}: give a number of messages >= 0")


def ping(ep, server: tuple[str, int], *, size: int = 64, duration: float | None = None,
         count: int | None = None, warmup: int = 100, reply_timeout: float = 1.0,
         give_up: float | None = GIVE_UP, stop=lambda: False) -> ClientResult:
    """Ping-pong with `server` through endpoint `ep`: `warmup` unrecorded round trips (answered ones: no
    sockperf warm-up flag, which a sockperf server does not answer), then until `count` recorded samples or `duration` seconds. A message without answer from
    `server` within `reply_timeout` is lost. When no answer at all came for `give_up` seconds (None:
    never), the run stops with `gave_up` set, so a dead server cannot keep a --count run going for ever."""
    if duration is None and count is None:
        raise UsageError("say how long: give --duration SECONDS or --count MESSAGES")
    check_client_options(reply_timeout=reply_timeout, give_up=give_up, warmup=warmup)
    hist = new_histogram()
    filler = bytes((i * 7) & 0xFF for i in range(max(0, size - HEADER_LEN)))
    message(0, size)  # size check before any traffic
    recvfrom, sendto, clock = ep.recvfrom, ep.sendto, time.perf_counter_ns
    server = (_canonical_ip(server[0]), int(server[1]))  # as recvfrom names senders
    seq = sent = lost = samples = warm_sent = warm_lost = 0
    gave_up = False
    start = time.monotonic()
    last_answer = start
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
        if warm:
            warm_sent += 1
        else:
            sent += 1
        deadline = t0 + int(reply_timeout * 1e9)
        answered = heard = False
        try:
            sendto(msg, server)
        except BlockingIOError:  # not sent (TX ring full): lost, without waiting for an answer
            deadline = t0
        while True:
            left = (deadline - clock()) / 1e9
            if left <= 0:
                break
            try:
                data, peer = recvfrom(left)
            except TimeoutError:
                break
            if (peer[0], peer[1]) != server:
                continue  # not from the server: never an answer
            heard = True
            if is_answer(data, seq):
                t1 = clock()
                answered = True
                if not warm:
                    hist.record_value(max(1, (t1 - t0) // 2))
                    samples += 1
                break
            # a late answer to an earlier message: the server lives; keep waiting for ours
        now = time.monotonic()
        if heard:
            last_answer = now
        if not answered:
            if warm:
                warm_lost += 1
            else:
                lost += 1
            if give_up is not None and now - last_answer >= give_up:
                gave_up = True
                break
        if not warm and count is not None and samples >= count:
            break
    return ClientResult(hist, samples, sent, lost, time.monotonic() - start, warm_sent, warm_lost, gave_up)


def client_error(result: ClientResult, server: str, give_up: float | None = GIVE_UP,
                 stopped: bool = False) -> KbypassError | None:
    """The error a client run that measured nothing ends with (None when it measured something, or a
    signal stopped it before the server could be judged: ClientResult.failure)."""
    why = result.failure(server, give_up, stopped)
    return None if why is None else KbypassError(why)


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
