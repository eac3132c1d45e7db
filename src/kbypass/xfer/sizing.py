"""How large a transport datagram may be: the path's MTU (the interface's, or one the caller configures)
with the encapsulation's headers counted, up to what one packet of the port carries.
`default_config` sizes a connection (flight, buffers, ACK spacing) for the datagram size chosen here.

`packet_limit` is the one place that knows the port's side. A packet is one frame on most ports: an AF_XDP
UMEM frame (less the kernel's XDP headroom on receive), a PACKET_MMAP TX slot, a socket port's staging frame.
A multi-buffer AF_XDP port (XDP_USE_SG) chains a packet over up to `max_tx_frames` frames, so it answers
with its chain's limit (capped by what an IPv4 total length describes), and `chain_frames` tells the
endpoint to send its datagrams as chains (datapath.DataPath._send_chains) when one frame does not hold them.
"""

from __future__ import annotations

from kbypass.errors import UsageError
from kbypass.proto.transport import wire
from kbypass.proto.transport.bbr import BURST_DATAGRAMS
from kbypass.proto.transport.config import ConnConfig
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


JUMBO_FLIGHT = 64  # datagrams in flight at least (default_config)


def _jumbo_ack_bytes(max_datagram: int) -> int:
    """A jumbo receiver's ACK spacing: one pacing burst of full datagrams (bbr.BURST_DATAGRAMS, 2 MiB of 64 KiB
    ones), so that the room an ACK frees goes out in one send (at 2 MiB flat it took 33 datagrams: a send of
    the burst's 32, then one of 1)."""
    return BURST_DATAGRAMS * (max_datagram - wire.OVERHEAD)


def default_config(max_datagram: int, **kw) -> ConnConfig:
    """ConnConfig for one L2 segment: datagrams as large as the encapsulation allows, 1 MiB buffers with
    at most 512 KiB in flight, and an RTO floor of 20 ms instead of 200 ms (Python's scheduling jitter is
    milliseconds, not tens of them; tail losses and lost ACKs are repaired by the tail loss probe, at
    2 SRTT, long before the RTO).

    Why 512 KiB in flight: with the receiver's bulk path in C (kbypass._fastxfer) the round trip in
    wakeup mode is 1.5-4 ms, and 256 KiB (what suited the all-Python receiver, which a bigger flight only
    queued in its RX ring) capped a transfer near 1 Gbit/s; 1 MiB gave no more loss-free and less at 1%
    loss (RTTs of 4-11 ms, RTOs). Measured here, 500 MB, wakeup mode, 2 runs each, Mbit/s loss-free / at
    1% loss: 256 KiB 1039-1351 / 756-794, 512 KiB 1117-1202 / 969-986, 1 MiB 1199-1638 / 810-846.
    Why buffers twice that: a lost datagram pins the peer's window at the hole and keeps the SACKed data
    above it in our send buffer until the retransmission lands, about one flight later; with buffers the
    size of the flight the sender stalled once per loss (sim.measure_goodput, 1% loss: 0.67 of the
    loss-free goodput even with no window cuts at all, 0.97 with the headroom).

    With bbr (the default controller) 1 MiB in flight and 2 MiB buffers: the model's window (two BDPs and
    the ACK aggregation of a batching receiver) sat at the 512 KiB cap in every run, with RTTs of 5-15 ms
    in wakeup mode. Measured on veth, 60 MB, two rounds, Mbit/s at 0 / 1% / 5% loss (busy machine):
    512 KiB 458-476 / 147-278 / 136-156, 1 MiB 539-609 / 224-488 / 276-750, 2 MiB 570-580 / 323-376 /
    146-218.

    Jumbo datagrams (multi-buffer, MTU 9000 to 65535): 1 MiB is only 16 datagrams of 64 KiB, and the flight,
    not the wire, capped a 65535-MTU transfer (1 MiB / an RTT of 6-9 ms in wakeup mode on a busy machine:
    ~1 Gbit/s). Measured at MTU 65535, 4 s, Mbit/s loss-free / at 1% loss (busy machine, one round each,
    noisy): 1 MiB 457-1849 / 528, 4 MiB 465-2415 / 987, 8 MiB 747-3850 / 2746; 8 MiB is more
    than the receiver's fill ring holds (~7.8 MB) when it is late to read, so 4 MiB.

    An ACK every 512 KiB taken (ack_bytes; 8 datagrams of 64 KiB, more than a batch of 1500-byte ones, so
    only jumbo datagrams see it): a receiver that took a batch of up to 64 jumbo datagrams acknowledged it
    once, after the last, milliseconds after the first arrived, and the sender, its flight out, heard
    nothing for as long: tail probes, and RTOs that the next ACK showed spurious. Measured at MTU 65535, 4 s,
    three rounds interleaved with the per-batch ACK (busy machine): RTOs 0 in 6 runs against 10 in 6, tail
    probes 9-30 against 27-52 a run; goodput within the noise (+-30% here). Since 2026-12-06 every 1 MiB (16
    datagrams, the sender's pacing burst too: bbr.BURST_DATAGRAMS): each ACK costs the receiver a send of its
    own (~50-120 us: frames, ring, the kernel's kick) and the sender an ACK's processing and a send; at 512
    KiB those were ~15% of the receiver's CPU and, with the pacer's 512 KiB bursts, a quarter of the
    sender's. Measured (busy machine, MTU 65535): the ACKs ack_bytes called for fell from 1,240 per GB to 600
    (a receiver also acknowledges each batch it takes, the part of a burst that had landed when it woke: about
    3,000 ACKs per GB in all, each now one C call through the message lane, datapath._small_lane).
    Since 2026-12-07 every 32 jumbo datagrams (2 MiB of 64 KiB ones, bbr.BURST_DATAGRAMS: the pacer's burst), and
    the endpoint's send() corks while data is in flight (TransportEndpoint._corked): the sender pumps once
    per 2 MiB of room instead of once per 1 MiB block, 1,000 -> 520 pumps per GB, sender CPU 0.50-0.55 ->
    0.45-0.52 s/GB in the same runs (MTU 65535, 0 and 1% loss, busy machine).

    A delayed ACK of 1 ms with jumbo flights (ack_delay; an in-order ACK waits for ack_bytes or the timer):
    the receiver acknowledged what each wake-up took and each 128 KiB its application read (window updates),
    1,750-3,900 ACKs per GB; with it ~950, the ack_bytes ones. Measured 2026-12-06, MTU 65535, loss-free, 4 s,
    three interleaved pairs (busy machine): sender CPU 1.11-1.53 -> 0.85-1.23 s/GB, receiver 0.94-1.07 ->
    0.73-0.96, goodput 3,692-8,111 -> 4,950-10,300 Mbit/s."""
    window = 1 << 20 if kw.get("congestion", ConnConfig.congestion) == "bbr" else 1 << 19
    # jumbo datagrams: at least JUMBO_FLIGHT of them in flight, up to 4 MiB (a receiver's fill ring of 2048
    # 4 KiB frames holds ~7.8 MB, so a flight and its ACK aggregation still land without ring overflow)
    window = max(window, min(JUMBO_FLIGHT * max_datagram, 4 << 20))
    # jumbo flights: a delayed ACK (ConnConfig.ack_delay) of 1 ms, about what ack_bytes takes to arrive at
    # 8 Gbit/s (see the docstring)
    jumbo = window > 1 << 20
    base = dict(max_datagram_size=max_datagram, send_buffer=2 * window, recv_buffer=2 * window, max_window=window,
                ack_delay=1e-3 if jumbo else 0.0, max_message_size=64 * 1024, ack_bytes=_jumbo_ack_bytes(max_datagram) if jumbo else (1 << 20), initial_rto=0.25, min_rto=0.02, max_rto=2.0, time_wait=2.0)
    base.update(kw)
    return ConnConfig(**base)
