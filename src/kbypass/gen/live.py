"""The live-frames generator: BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES.

The kernel runs bpf/livegen.bpf.c `repeat` times over copies of one template frame; the program stamps a
sequence number and send time into each copy and returns XDP_TX, so the frame leaves the interface as if
the XDP program had bounced a received packet. No socket, no ring, no copy from user space: on this machine
it is the fastest sender we have, and it costs the sending core only (the receiver is the system under
test). The call blocks for the whole burst, so we run it in slices to report progress, honour --duration
and stop on Ctrl-C.

The frame leaves through `ifindex` towards its veth peer; veth accepts it only when the peer has GRO or an
XDP program (the testbed switches GRO on).
"""

from __future__ import annotations

import socket
import struct
import time

from kbypass import netns
from kbypass.bpf import libbpf
from kbypass.errors import EnvironmentProblem, UsageError
from kbypass.gen.result import GenResult
from kbypass.gen.stamp import ETH_IPV4_UDP, STAMP_SIZE

XDP_MD = struct.Struct("IIIIII")  # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress
SLICE = 1 << 18  # frames per BPF_PROG_RUN call: ~50 ms at 5 Mpps, short enough for progress and Ctrl-C
BATCH = 64  # frames the kernel builds and transmits per internal batch (its default)


class LiveGenerator:
    """Send `template` out of `ifname` (in namespace `netns_name`) at XDP speed.

    `stamp_offset`: where the sequence/time stamp goes (default: the UDP payload of an IPv4 frame;
    0 = do not stamp). The template's UDP checksum must be zero when stamping (the payload changes)."""

    def __init__(self, ifname: str, template: bytes, *, netns_name: str | None = None,
                 stamp_offset: int = ETH_IPV4_UDP, first_seq: int = 0) -> None:
        if len(template) < 14:
            raise UsageError(f"template of {len(template)} bytes: a frame needs at least an Ethernet header")
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
        self.obj.map("livegen_config").update(0, struct.pack("II", stamp_offset, 0))
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
                raise EnvironmentProblem(
                    f"live-frames run failed: {e}; it needs Linux >= 5.18 and root (see 'kbypass doctor')"
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
        sent = 0
        start = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - start
            if (count is not None and sent >= count) or (duration is not None and elapsed >= duration):
                break
            n = SLICE if count is None else min(SLICE, count - sent)
            self._burst(n)
            sent += n
            if progress:
                progress(sent, time.perf_counter() - start)
        return GenResult(sent, sent * len(self.template), time.perf_counter() - start)

