"""How large a transport datagram may be: the path's MTU (the interface's, or one the caller configures)
with the encapsulation's headers counted, up to what one packet of the port carries.

`packet_limit` is the one place that knows the port's side. A packet is one frame on most ports: an AF_XDP
UMEM frame (less the kernel's XDP headroom on receive), a PACKET_MMAP TX slot, a socket port's staging frame.
A multi-buffer AF_XDP port (XDP_USE_SG) chains a packet over up to `max_tx_frames` frames, so it answers
with its chain's limit (capped by what an IPv4 total length describes), and `chain_frames` tells the
endpoint to send its datagrams as chains (datapath.DataPath._send_chains) when one frame does not hold them.
"""

from __future__ import annotations

from kbypass.errors import UsageError
from kbypass.xsk import multibuf
from kbypass.xsk.consts import XDP_PACKET_HEADROOM

ETH_HLEN = 14
IPV4_FRAME_CAP = 0xFFFF + ETH_HLEN  # the largest frame an IPv4 total length describes
_PACKET_MMAP_TX_DATA = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) (port/packet_mmap.py's TX_DATA)
_SOCKET_FRAME_HEADERS = 42  # a socket port's synthetic Ethernet/IPv4/UDP headers


def frame_size_for(mtu: int, headroom: int = 0) -> int:
    """The frame size (2048 or 4096) a port needs for MTU-sized packets in one frame."""
    return 2048 if mtu + ETH_HLEN + XDP_PACKET_HEADROOM <= 2048 - headroom else 4096


def _first_port(port):
    inner = getattr(port, "ports", None)
    return inner[0] if inner else port


def _multi_buffer(p) -> bool:
    return getattr(p, "xsk", None) is not None and bool(getattr(p, "multi_buffer", False))


def packet_limit(port) -> int | None:
    """The largest Ethernet frame (header included) one packet of `port` carries, or None if unknown."""
    p = _first_port(port)
    umem = getattr(p, "umem", None)
    if _multi_buffer(p):  # a chain of frames on send; the kernel receives into as many as a packet needs
        return min(p.max_tx_frames * multibuf.tx_room(umem.frame_size, umem.headroom), IPV4_FRAME_CAP)
    if getattr(p, "xsk", None) is not None and umem is not None:
        return umem.frame_size - umem.headroom - XDP_PACKET_HEADROOM  # what the kernel copies into on receive
    if hasattr(p, "block_size") and hasattr(p, "frame_size"):
        return p.frame_size - _PACKET_MMAP_TX_DATA
    if umem is not None:
        return umem.frame_size  # a socket port: a datagram of frame_size - 42 bytes in a 42 + that frame
    return None


def chain_frames(port, frame_len: int) -> tuple[int, int]:
    """(most frames per chain, bytes one frame sends) when frames of `frame_len` bytes must be sent as chains
    of several frames on `port` (multi-buffer AF_XDP, one frame too small), else (0, 0): the one-frame path."""
    p = _first_port(port)
    if not _multi_buffer(p):
        return 0, 0
    room = multibuf.tx_room(p.umem.frame_size, p.umem.headroom)
    return (p.max_tx_frames, room) if frame_len > room else (0, 0)


def check_fits(encap, datagram_size: int, port) -> None:
    """UsageError naming the fix when datagrams of `datagram_size` bytes make frames one packet of `port`
    cannot carry (the MTU is larger than a frame, and frames are not chained)."""
    limit = packet_limit(port)
    frame = encap.header_len + datagram_size
    if limit is None or frame <= limit:
        return
    largest = limit - ETH_HLEN
    raise UsageError(
        f"MTU {encap.mtu}: a {encap.name} datagram of {datagram_size} bytes makes a {frame}-byte frame, and one "
        f"packet of this port carries at most {limit} (one frame: open it multi-buffer, the default when the "
        f"interface's MTU needs it, for chains of frames): lower the MTU to {largest} or below (ip link set dev IF mtu {largest}; on the testbed "
        f"kbypass testbed up --mtu {largest}), or size datagrams for a smaller one (--mtu {largest})")
