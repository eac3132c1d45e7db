"""Multi-buffer AF_XDP (XDP_USE_SG, Linux >= 6.6): the limits of packets that span several UMEM frames.

A socket bound with XDP_USE_SG receives a packet larger than one frame as a chain of descriptors, each
with XDP_PKT_CONTD in its options but the last (kbypass.xsk.ring.ConsumerRing.peek_packets reads whole
chains), and sends a chain written the same way. The kernel's limits, from its AF_XDP documentation
(Documentation/networking/af_xdp.rst, "Multi-Buffer Support") and xsk.c:

- receive (copy mode): the packet is copied into as many fill-ring frames as it needs, each holding
  frame_size - headroom - XDP_PACKET_HEADROOM bytes; no frag limit of its own.
- send (copy mode): the first descriptor becomes the skb's linear part, each further one a page frag. In
  xsk_build_skb (net/xdp/xsk.c, Linux 6.6 on) a descriptor that would be frag number MAX_SKB_FRAGS - 1
  (0-based) while XDP_PKT_CONTD says more follow fails with EOVERFLOW: at most MAX_SKB_FRAGS + 1
  descriptors. A longer chain is invalid: the kernel drops the whole packet and counts tx_invalid_descs.
  kbypass never hands it to the kernel: AfXdpPort.transmit sends the packets before it and leaves it with
  the caller (counted in tx_too_long), alloc(size=) refuses to build one (a UsageError).
- receive: no frag limit of its own (as many frames as the packet needs), so a peer can send a packet of
  more frames than the port can send back: `rx_frames_for(mtu, ...)` against `TX_FRAME_LIMIT` says whether
  a forwarder (reflect) can return everything its link delivers.

The frag limit is the kernel's compile-time MAX_SKB_FRAGS, not the sysctl net.core.max_skb_frags: the
sysctl (default MAX_SKB_FRAGS, settable only lower) caps what TCP and GSO build, and xsk.c does not read it.
MAX_SKB_FRAGS is 17 unless the kernel was built with a larger CONFIG_MAX_SKB_FRAGS (Linux 6.7 on, range 17
to 45): 17 is right for every distribution kernel and never more than the kernel takes, so kbypass uses it
everywhere (ports, doctor, gen, the testbed's MTU limit) and never reads the sysctl for it.
- zero-copy: the driver's own limit (xdp_zc_max_segs); veth has no zero-copy.
"""

from __future__ import annotations

import math

from kbypass.errors import UsageError

from .consts import XDP_PACKET_HEADROOM

# the kernel's frags per skb (include/linux/skbuff.h): the module doc says why the compile-time value, and
# why 17 is right or conservative
MAX_SKB_FRAGS = 17
TX_FRAME_LIMIT = MAX_SKB_FRAGS + 1  # descriptors one sent packet may span: the linear part + MAX_SKB_FRAGS
ETH_HLEN = 14


def tx_frame_limit() -> int:
    """Most descriptors (frames) one sent packet may span in copy mode: the linear part + MAX_SKB_FRAGS."""
    return TX_FRAME_LIMIT


def rx_room(frame_size: int, headroom: int = 0) -> int:
    """Bytes of a packet one frame receives in copy mode (the kernel keeps XDP_PACKET_HEADROOM in front)."""
    return frame_size - headroom - XDP_PACKET_HEADROOM


def tx_room(frame_size: int, headroom: int = 0) -> int:
    """Bytes of a packet one frame sends (from the frame start + headroom to the frame's end)."""
    return frame_size - headroom


def rx_frames_for(mtu: int, frame_size: int, headroom: int = 0) -> int:
    """Frames the longest packet of this MTU (+ the Ethernet header) arrives in (copy mode)."""
    return max(1, math.ceil((mtu + ETH_HLEN) / rx_room(frame_size, headroom)))


def return_limit(mtu: int, frame_size: int, headroom: int = 0) -> str | None:
    """Why a port with these frames cannot send back every packet of this MTU it receives (a packet arrives
    in more frames than the kernel sends as one), with the largest MTU it can; None when it can."""
    frames = rx_frames_for(mtu, frame_size, headroom)
    if frames <= TX_FRAME_LIMIT:
        return None
    top = TX_FRAME_LIMIT * rx_room(frame_size, headroom) - ETH_HLEN
    return (f"with {frame_size}-byte frames a packet of MTU {mtu} arrives in up to {frames} frames, more than the "
            f"kernel sends as one packet ({TX_FRAME_LIMIT}), so it could not be sent back; with these frames the "
            f"MTU may be at most {top}")


def needs_multi_buffer(mtu: int, frame_size: int, headroom: int = 0) -> bool:
    """Whether a frame of this MTU (+ the Ethernet header) is larger than one UMEM frame receives."""
    return mtu + ETH_HLEN > rx_room(frame_size, headroom)


def max_tx_packet(frame_size: int, headroom: int = 0) -> int:
    """The longest packet (Ethernet frame, bytes) a multi-buffer port sends in copy mode."""
    return tx_frame_limit() * tx_room(frame_size, headroom)


def tx_frames_for(size: int, frame_size: int, headroom: int = 0) -> int:
    """Frames a `size`-byte packet takes to send; UsageError past the kernel's frag limit."""
    room = tx_room(frame_size, headroom)
    k = max(1, math.ceil(size / room))
    limit = tx_frame_limit()
    if k > limit:
        raise UsageError(f"a {size}-byte packet needs {k} frames of {room} bytes, more than the kernel sends as one "
                         f"packet ({limit}: MAX_SKB_FRAGS {limit - 1} + 1): send at most "
                         f"{limit * room} bytes, or use frame_size 4096 (--frame-size 4096)")
    return k
