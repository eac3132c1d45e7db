"""Multi-buffer AF_XDP (XDP_USE_SG, Linux >= 6.6): the limits of packets that span several UMEM frames.

A socket bound with XDP_USE_SG receives a packet larger than one frame as a chain of descriptors, each
with XDP_PKT_CONTD in its options but the last (kbypass.xsk.ring.ConsumerRing.peek_packets reads whole
chains), and sends a chain written the same way. The kernel's limits, from its AF_XDP documentation
(Documentation/networking/af_xdp.rst, "Multi-Buffer Support") and xsk.c:

- receive (copy mode): the packet is copied into as many fill-ring frames as it needs, each holding
  frame_size - headroom - XDP_PACKET_HEADROOM bytes; no frag limit of its own.
- send (copy mode): the first descriptor becomes the skb's linear part, each further one a page frag, and
  the kernel refuses a chain with more frags than MAX_SKB_FRAGS (max_skb_frags, 17 by default): at most
  max_skb_frags + 1 descriptors. A longer chain is invalid: the kernel drops the whole packet and counts
  tx_invalid_descs. kbypass refuses it before the kernel sees it (AfXdpPort.transmit, a UsageError).
- zero-copy: the driver's own limit (xdp_zc_max_segs); veth has no zero-copy.
"""

from __future__ import annotations

import math

from kbypass.errors import UsageError

from .consts import XDP_PACKET_HEADROOM

MAX_SKB_FRAGS_PATH = "/proc/sys/net/core/max_skb_frags"
DEFAULT_MAX_SKB_FRAGS = 17
ETH_HLEN = 14


def max_skb_frags(path: str | None = None) -> int:
    """The kernel's frag limit per packet (net.core.max_skb_frags; 17 when it cannot be read)."""
    try:
        with open(path or MAX_SKB_FRAGS_PATH) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_MAX_SKB_FRAGS


def tx_frame_limit() -> int:
    """Most descriptors (frames) one sent packet may span in copy mode: the linear part + max_skb_frags."""
    return max_skb_frags() + 1


def rx_room(frame_size: int, headroom: int = 0) -> int:
    """Bytes of a packet one frame receives in copy mode (the kernel keeps XDP_PACKET_HEADROOM in front)."""
    return frame_size - headroom - XDP_PACKET_HEADROOM


def tx_room(frame_size: int, headroom: int = 0) -> int:
    """Bytes of a packet one frame sends (from the frame start + headroom to the frame's end)."""
    return frame_size - headroom


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
                         f"packet ({limit}: net.core.max_skb_frags {limit - 1} + 1): send at most "
                         f"{limit * room} bytes, or use frame_size 4096 (--frame-size 4096)")
    return k
