"""The UdpEndpoint API shared by both backends: the class users construct (it picks the backend), the
argument checks and the payload limits. `UdpEndpoint(..., backend="afxdp")` is an XdpEndpoint
(kbypass.endpoint.xdp), `backend="socket"` a SocketEndpoint (kbypass.endpoint.kernel)."""

from __future__ import annotations

import ipaddress

from kbypass.errors import UsageError
from kbypass.xsk import multibuf
from kbypass.xsk.consts import XDP_PACKET_HEADROOM

BACKENDS = ("afxdp", "socket")
POLL_MODES = ("wakeup", "busy")


class UdpEndpoint:
    """A bound UDP endpoint. See the module doc; use as a context manager or call close().

    ifname/netns: where; ip/port: what to bind. dedicated: ip is an address the kernel does not have
    (kbypass answers ARP and ping for it); prefixlen: its subnet when the interface has no address there.
    poll: "wakeup" (sleep in poll()) or "busy" (spin; SO_PREFER_BUSY_POLL on the AF_XDP sockets).
    backend: "afxdp" (the bypass) or "socket" (a kernel UDP socket, for comparison).
    queue: one queue, or None for every receive queue (a flow lands on whichever queue the hash picks).
    native: the per-message ring work in C (kbypass._fastlane) or in Python (False); None: C when built.
    gateway: an on-link router, the next hop for peers outside the subnet (without one they are refused);
    the socket backend uses the kernel's routes instead.
    frame_size: UMEM frame size (2048 or 4096). One packet never spans frames, so it caps the message
    size below a jumbo MTU: `max_payload` is what sendto takes, `max_rx_payload` what can arrive (longer
    frames are dropped by the kernel and counted in `stats["rx_dropped"]`).
    Not thread-safe: one thread drives an endpoint. It makes progress (answers ARP and ping, retries
    resolution) only inside its calls, as Onload-style stacks without a helper thread do: call `poll()`
    while you are not receiving if the address must keep answering.
    """

    def __new__(cls, *args, backend: str = "afxdp", **kwargs):
        if cls is UdpEndpoint:
            if backend not in BACKENDS:
                raise UsageError(f"backend {backend!r} is unknown: use one of {', '.join(BACKENDS)}")
            if backend == "socket":
                from .kernel import SocketEndpoint as cls
            else:
                from .xdp import XdpEndpoint as cls
        return super().__new__(cls)

    # common helpers -------------------------------------------------------------------------------
    def _check_common(self, ip: str, port: int, poll: str) -> None:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise UsageError(f"{ip!r} is not an IPv4 address: give one like 10.77.0.2") from None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise UsageError(f"UDP port {port!r}: use a number from 1 to 65535 (0: pick a free one)")
        if poll not in POLL_MODES:
            raise UsageError(f"poll={poll!r} is unknown: use 'wakeup' or 'busy'")

    def _check_size(self, n: int) -> None:
        if n > self.max_payload:
            frame = getattr(self, "frame_size", None)
            if frame is not None and self.max_payload < self.mtu - 28:  # the UMEM frame is the limit
                raise UsageError(f"a {n}-byte message does not fit one {frame}-byte UMEM frame (at most "
                                 f"{self.max_payload} bytes of UDP payload; the MTU {self.mtu} would allow "
                                 f"{self.mtu - 28}): open the endpoint with frame_size=4096 (--frame-size 4096)"
                                 " or send less; kbypass does not fragment")
            raise UsageError(f"a {n}-byte message exceeds the MTU ({self.mtu}: at most {self.max_payload} "
                             "bytes of UDP payload); kbypass does not fragment: send less")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def wake_lanes(lanes: list, busy: bool) -> None:
    """Let the kernel make progress on every lane before waiting: busy polling wakes (its busy-poll call
    every few empty looks), wakeup mode only when the fill ring asks (XDP_RING_NEED_WAKEUP)."""
    for lane in lanes:
        if busy:
            lane.wake()
        else:
            lane.wake_if_asked()


def spin_lanes(lanes: list, seconds: float) -> bool:
    """Busy polling's wait: read the lanes' RX rings until a frame is on one (True) or `seconds` passed
    (False), waking them as wake() does. With C lanes the spin is in C (kbypass._fastlane.spin: a frame is
    seen within a ring read of its arrival, not an interpreter loop's ~2 us); else once round in Python."""
    if lanes and all(lane.native for lane in lanes):
        from kbypass import backend

        return backend.native_module("lane").spin(tuple(lane.c for lane in lanes), seconds)
    for lane in lanes:
        if lane.waiting():
            return True
        lane.wake()
    return False


def close_steered(lanes: list, steered) -> None:
    """Close an endpoint's message lanes (each gives its frames back to its port), then the steered port
    under them (its rules and AF_XDP sockets go); a lane that fails to close does not keep the rest open."""
    for lane in lanes:
        try:
            lane.close()
        except Exception:
            pass
    if steered is not None:
        steered.close()


def payload_limits(mtu: int, frame_size: int, headroom: int = 0, *, multi_buffer: bool = False) -> tuple[int, int]:
    """(largest UDP payload we can send, largest we can receive) on a link of `mtu` with UMEM frames of
    `frame_size` bytes. One frame per packet: the frame caps both (a sent frame starts at the frame +
    headroom; a received one also after the kernel's XDP_PACKET_HEADROOM, and the kernel drops longer ones,
    counted in the socket's rx_dropped). multi_buffer: a packet is a chain of frames, so the MTU is the
    limit, and for sending also the most frames the kernel sends as one packet (kbypass.xsk.multibuf)."""
    if frame_size not in (2048, 4096):
        raise UsageError(f"frame_size {frame_size} is not supported: use 2048 or 4096")
    tx_room = frame_size - headroom
    cap = mtu + 14
    if multi_buffer:
        return min(cap, multibuf.max_tx_packet(frame_size, headroom)) - 42, cap - 42
    return min(cap, tx_room) - 42, min(cap, tx_room - XDP_PACKET_HEADROOM) - 42


def check_peer(addr) -> tuple[str, int]:
    try:
        ip, port = addr
        ipaddress.IPv4Address(ip)
        port = int(port)
    except (TypeError, ValueError):
        raise UsageError(f"bad peer address {addr!r}: give (ip, port) like ('10.77.0.1', 4321)") from None
    if not 1 <= port <= 0xFFFF:
        raise UsageError(f"peer port {port}: use 1-65535")
    return ip, port

