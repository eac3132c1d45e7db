"""The latency floor: a UDP ping answered in the driver by an XDP program (bpf/pong.bpf.c, XDP_TX).

    with XdpPong("kb-b", 11111, netns="kb-b", peer=("kb-a", "kb-a")) as pong:   # bpf_links: a crash detaches
        ...                                             # sockperf ping-pong -i 10.77.0.2 -p 11111 from kb-a
        pong.counters()                                 # {"answered": n, "sockperf": n, "passed": n}

A ping-pong against it measures the wire, the client's stack and nothing of a server: no server is
faster, so it bounds every contender of `kbypass bench latency` from below. sockperf messages come back
as `sockperf server` sends them (client flag cleared, UDP checksum patched; those that ask for no answer
are dropped, counted `unanswered`), anything else echoed with addresses and ports swapped, so a real `sockperf ping-pong` and `kbypass pingpong client` both measure it.
Everything else (other ports, protocols, IP options, fragments, VLANs) passes to the kernel.

On veth the client's end needs an XDP program too (`peer`: bpf/xdp_pass.bpf.c, XDP_PASS): veth schedules
the receiving NAPI for frames its peer sent with XDP_TX only when the receiver has one, and otherwise
leaves them in its ring until some other packet comes (GRO on is not enough). A NIC needs no such thing.
"""

from __future__ import annotations

import socket
import struct

from kbypass import netns as _netns
from kbypass.bpf import libbpf
from kbypass.errors import KbypassError, UsageError

PROGRAM = "xdp_pong"
COUNTERS = ("answered", "sockperf", "passed", "unanswered")  # enum pong_counter in bpf/pong.h


class XdpPong:
    """Answer UDP port `port` on `ifname` (in `netns`) from XDP; see the module doc. `mode`: "native"
    (the driver; veth runs it) or "skb" (generic XDP). A twin answering another protocol (apps/xdp_tcp_pong)
    names its object, program, maps and counters in the class attributes."""

    OBJECT, PROGRAM, CONFIG_MAP, COUNTERS_MAP, COUNTERS = "pong", PROGRAM, "pong_config", "pong_counters", COUNTERS

    def __init__(self, ifname: str, port: int, *, netns: str | None = None, mode: str = "native",
                 peer: tuple[str, str | None] | None = None) -> None:
        if not 1 <= port <= 0xFFFF:
            raise UsageError(f"port {port}: use 1-65535")
        self.ifname, self.port, self.netns = ifname, port, netns
        self._links: list = []
        self._objs = [libbpf.BpfObject.named(self.OBJECT)]
        try:
            self._objs[0].map(self.CONFIG_MAP).update(0, struct.pack("!HH", port, 0))
            self._attach(self._objs[0], self.PROGRAM, ifname, netns, mode)
            if peer is not None:
                self._objs.append(libbpf.BpfObject.named("xdp_pass"))
                self._attach(self._objs[1], "xdp_pass", peer[0], peer[1], mode)
        except BaseException:
            self.close()
            raise

    def _attach(self, obj, program: str, ifname: str, netns: str | None, mode: str) -> None:
        with _netns.entered(netns):
            try:
                ifindex = socket.if_nametoindex(ifname)
            except OSError:
                raise UsageError(f"no interface {ifname!r}{' in ' + netns if netns else ''}") from None
            info = libbpf.xdp_query(ifindex)
            if info.attached:
                raise KbypassError(f"{ifname} already has XDP program id {', '.join(map(str, info.ids))}: the "
                                   "latency floor needs the interface to itself (stop that program first)")
            self._links.append(libbpf.attach_xdp(obj.program_fd(program), ifindex, mode))

    def counters(self) -> dict[str, int]:
        """The program's counters, summed over CPUs."""
        m = self._objs[0].map(self.COUNTERS_MAP)
        out = {}
        for i, name in enumerate(self.COUNTERS):
            raw = m.lookup(i) or b""
            out[name] = sum(struct.unpack(f"<{len(raw) // 8}Q", raw))
        return out

    def close(self) -> None:
        for link in self._links:
            link.close()
        self._links = []
        for obj in self._objs:
            obj.close()
        self._objs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
