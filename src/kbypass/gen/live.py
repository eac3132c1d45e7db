"""The live-frames generator: BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES.

The kernel runs bpf/livegen.bpf.c `repeat` times over copies of one template frame; the program stamps a
sequence number and send time into each copy and returns XDP_TX, so the frame leaves the interface as if
the XDP program had bounced a received packet. No socket, no ring, no copy from user space: on this machine
it is the fastest sender we have, and it costs the sending core only (the receiver is the system under
test). The call blocks for the whole burst, so we run it in slices to report progress, honour --duration
and stop on Ctrl-C.

Slices are long (about SLICE_SECONDS each): every BPF_PROG_RUN call builds a page pool for its frames and
tears it down at the end, and the teardown waits for an RCU grace period (synchronize_rcu, seen in
/proc/PID/wchan). On this 2-vCPU VM that wait was ~40 ms, so slices of 2^18 frames (~60 ms) left the
sending core idle 41% of the time. SIGINT/SIGTERM are held during a slice (a signal would make the kernel
end the run early without saying how many frames it sent) and acted on right after it, so a count stays
exact and Ctrl-C takes at most a slice.

The frame leaves through `ifindex` towards its veth peer; veth accepts it only when the peer has GRO or an
XDP program (the testbed switches GRO on).
"""

from __future__ import annotations

import errno
import mmap
import signal
import socket
import struct
import time
from contextlib import contextmanager

from kbypass import netns
from kbypass.bpf import libbpf
from kbypass.errors import EnvironmentProblem, UsageError
from kbypass.gen.result import GenResult
from kbypass.port.loop import Stopper
from kbypass.proto.stamp import ETH_IPV4_UDP, STAMP_SIZE

XDP_MD = struct.Struct("IIIIII")  # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress
FIRST_SLICE = 1 << 18  # frames in the first BPF_PROG_RUN call, which measures the rate for the next ones
SLICE_SECONDS = 1.0  # then slices of about this long: the per-call RCU wait becomes a few percent
MAX_SLICE = 1 << 26
HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}
BATCH = 64  # frames the kernel builds and transmits per internal batch (its default)
# The largest frame live mode takes: each copy lives in one page after XDP_PACKET_HEADROOM (256) and the
# kernel's struct xdp_page_head (two struct xdp_buff, 112 bytes), before the skb_shared_info tailroom (320
# bytes on x86-64); longer data makes BPF_PROG_RUN fail with EINVAL ("no live mode for jumbo frames").
MAX_FRAME = mmap.PAGESIZE - 256 - 112 - 320


class LiveGenerator:
    """Send `template` out of `ifname` (in namespace `netns_name`) at XDP speed.

    `stamp_offset`: where the sequence/time stamp goes (default: the UDP payload of an IPv4 frame;
    0 = do not stamp). The template's UDP checksum must be zero when stamping (the payload changes).
    `time_every`: stamp the send time on one frame in this many (a power of two; the others carry time 0,
    which receivers skip); the sequence number is on every frame. Reading the clock is the program's main
    per-frame cost (read_tsc: ~11% of the sending core in perf here), so sampling it leaves that to sending."""

    def __init__(self, ifname: str, template: bytes, *, netns_name: str | None = None,
                 stamp_offset: int = ETH_IPV4_UDP, first_seq: int = 0, time_every: int = 1) -> None:
        if time_every < 1 or time_every & (time_every - 1):
            raise UsageError(f"--time-every {time_every}: give a power of two (1, 2, 4, ... 64)")
        if len(template) < 14:
            raise UsageError(f"template of {len(template)} bytes: a frame needs at least an Ethernet header")
        if len(template) > MAX_FRAME:
            raise UsageError(f"--size {len(template)}: the live engine sends frames of at most {MAX_FRAME} bytes "
                             "(one page less the kernel's XDP headroom and tailroom); use a smaller --size")
        if stamp_offset and stamp_offset + STAMP_SIZE > len(template):
            raise UsageError(
                f"frame of {len(template)} bytes has no room for the {STAMP_SIZE}-byte stamp at offset "
                f"{stamp_offset}: use --size {stamp_offset + STAMP_SIZE} or more"
            )
        with netns.entered(netns_name):
            try:
                self.ifindex = socket.if_nametoindex(ifname)
            except OSError:
                raise UsageError(f"no interface {ifname!r} here: check 'kbypass testbed status'") from None
        self.template = template
        self.netns_name = netns_name
        self.obj = libbpf.BpfObject.named("livegen")
        self.prog_fd = self.obj.program_fd("livegen")
        self.obj.map("livegen_config").update(0, struct.pack("II", stamp_offset, time_every - 1))
        self.obj.map("livegen_state").update(0, struct.pack("Q", first_seq))

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> LiveGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _burst(self, count: int) -> None:
        ctx = XDP_MD.pack(0, len(self.template), 0, self.ifindex, 0, 0)
        # ingress_ifindex is looked up in the calling thread's namespace: run inside the interface's.
        with netns.entered(self.netns_name):
            try:
                libbpf.test_run(self.prog_fd, self.template, ctx=ctx, repeat=count,
                                flags=libbpf.BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=BATCH)
            except libbpf.BpfCallError as e:
                size = len(self.template)
                if e.errno == errno.EINVAL:
                    raise EnvironmentProblem(
                        f"live-frames run of {size}-byte frames failed: {e}; the kernel refuses frames that do not "
                        f"fit one page with its headroom (here at most about {MAX_FRAME} bytes: use a smaller "
                        "--size) and needs Linux >= 5.18 (see 'kbypass doctor')"
                    ) from None
                raise EnvironmentProblem(
                    f"live-frames run of {size}-byte frames failed: {e}; it needs Linux >= 5.18 and root "
                    "(see 'kbypass doctor')"
                ) from None

    def run(self, *, count: int | None = None, duration: float | None = None, progress=None) -> GenResult:
        """Send `count` frames, or for `duration` seconds, whichever ends first (one of them is needed).
        `progress(sent, seconds)` is called after every slice."""
        if count is None and duration is None:
            raise UsageError("give --count or --duration")
        if count is not None and count <= 0:
            raise UsageError(f"--count {count}: give a positive number of packets")
        if duration is not None and duration <= 0:
            raise UsageError(f"--duration {duration}: give a positive number of seconds")
        start = time.perf_counter()
        with Stopper() as stop:  # Ctrl-C ends the run after the current slice, with its summary
            sent = self._slices(count, duration, progress, stop, start)
        return GenResult(sent, sent * len(self.template), time.perf_counter() - start)

    def _slices(self, count, duration, progress, stop, start: float) -> int:
        """Run BPF_PROG_RUN slices until count/duration/stop; returns the frames sent."""
        sent, n = 0, FIRST_SLICE
        while not stop.stopped:
            elapsed = time.perf_counter() - start
            if (count is not None and sent >= count) or (duration is not None and elapsed >= duration):
                break
            if count is not None:
                n = min(n, count - sent)
            if duration is not None and sent:  # end the last slice near the deadline
                n = max(1, min(n, int(sent / elapsed * (duration - elapsed)) + 1))
            with _signals_held():
                t0 = time.perf_counter()
                self._burst(n)
                took = time.perf_counter() - t0
            sent += n
            if progress:
                progress(sent, time.perf_counter() - start)
            n = max(FIRST_SLICE, min(MAX_SLICE, int(n / max(took, 1e-6) * SLICE_SECONDS)))
        return sent


@contextmanager
def _signals_held():
    """Block SIGINT/SIGTERM for the body (a slice); one that came meanwhile is delivered on exit."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

