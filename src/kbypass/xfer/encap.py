"""Encapsulations of transport datagrams in Ethernet frames: UDP over IPv4 (routable) and raw Ethernet
with our own EtherType (one L2 segment, addressed by MAC).

Each encapsulation builds frames for one peer (headers cached; only lengths and the IPv4 checksum change
per frame) and parses received frames into (datagram, source) or a drop reason (a short string, counted
by the caller; nothing here raises on bad input).

The endpoint's receive path uses `peer_datagrams` (`parse_peer` for a whole batch): it reads frames where
they lie (a memoryview of packet memory), keeps those from the peer and returns their datagrams as slices
of that memory, with no copy. (Sending, building each frame with one join and copying it into packet
memory with one slice assignment measured cheaper here than writing header and datagram in place
separately: 0.8 against 1.4 us a frame, each memoryview assignment costing about 0.25 us.)

Layouts (offsets from the start of the frame):
  udp: Ethernet 0..13 (EtherType 0x0800), IPv4 14..33 (IHL 5, DF, TTL 64, protocol 17), UDP 34..41
       (checksum 0 = "none", legal on IPv4: the transport's own CRC32 covers every datagram), datagram 42..
  eth: Ethernet 0..13 (EtherType ETHERTYPE, default 0x88B5, IEEE 802 "local experimental"), datagram 14..
       No length field: a transport datagram is at least 46 bytes (wire.OVERHEAD), so the frame is at
       least the 60-byte Ethernet minimum and is never padded; the frame length is the datagram's.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from kbypass.errors import UsageError
from kbypass.proto import udp
from kbypass.proto.transport import wire

ETHERTYPE = 0x88B5  # IEEE 802 local experimental EtherType 1
ETH_HLEN = 14
UDP_HLEN = udp.HEADERS_LEN  # Ethernet + IPv4 (no options) + UDP
_ETH_FAST = struct.Struct("14s")  # an eth frame's header, compared as one string


def mac_bytes(mac: str | bytes) -> bytes:
    if isinstance(mac, (bytes, bytearray)) and len(mac) == 6:
        return bytes(mac)
    try:
        b = bytes.fromhex(str(mac).replace(":", "").replace("-", ""))
    except ValueError:
        b = b""
    if len(b) != 6:
        raise UsageError(f"bad MAC address {mac!r}: write six hex bytes like 02:00:00:00:00:02")
    return b


def mac_str(mac: bytes) -> str:
    return ":".join(f"{x:02x}" for x in mac)


def _ip(ip: str, what: str) -> bytes:
    try:
        return ipaddress.IPv4Address(ip).packed
    except ValueError:
        raise UsageError(f"{what} {ip!r} is not an IPv4 address: give one like 10.77.0.2") from None


MAX_DATAGRAM = 65507  # a transport datagram's limit (ConnConfig), UDP's: an eth MTU past it gains nothing


def frame_limit(mtu: int) -> int:
    """A frame is at most the MTU plus the Ethernet header (the codec also keeps it inside its UMEM frame)."""
    return mtu + ETH_HLEN


def chunk_of(batch) -> int:
    """The size of the aligned UMEM frames (chunks) the frames of `batch` lie in: the codec writes no frame
    past the end of its chunk, whatever the MTU allows."""
    size = batch.chunk_size()
    if size is None:
        raise ValueError("write_frames: the batch's frame size is unknown (give the Batch a frame_size)")
    return size


class UdpEncap:
    """IPv4/UDP frames from (local_mac, local_ip, local_port) to one peer. `peer` may be set later
    (a server learns it from the first SYN). MTU: the IP MTU of the interface.

    The frame and the check are proto.udp's: a UdpFlow without UDP checksum, and PeerUdp."""

    name = "udp"
    header_len = UDP_HLEN
    kind = 0  # kbypass._fastxfer's name for this layout

    def __init__(self, local_mac: str | bytes, local_ip: str, local_port: int, mtu: int = 1500) -> None:
        self.mac = mac_bytes(local_mac)
        self.ip = _ip(local_ip, "local address")
        if not 0 < local_port <= 0xFFFF:
            raise UsageError(f"UDP port {local_port}: use 1-65535")
        self.port = local_port
        self.mtu = mtu
        self.max_datagram = mtu - 28
        self.peer: tuple[str, int] | None = None
        self._peer_mac: bytes | None = None
        self._flow: udp.UdpFlow | None = None
        self._from_peer = udp.PeerUdp(self.ip, local_port)
        self._ident = 0
        self._names: dict[bytes, str] = {}  # source address bytes -> text, so parse() converts once

    def set_peer(self, ip: str, port: int, mac: str | bytes) -> None:
        dst = _ip(ip, "peer address")
        if not 0 < port <= 0xFFFF:
            raise UsageError(f"peer port {port}: use 1-65535")
        self.peer = (ip, port)
        self._peer_mac = mac_bytes(mac)
        self._flow = udp.UdpFlow(udp.frame_template(self.mac, self._peer_mac, self.ip, dst, self.port, port),
                                 udp_checksum=False)
        self._from_peer.set_peer(dst, port)
        # kbypass._fastxfer.rx_run compares bytes 26..37 (addresses and ports) of a received frame with this
        self.peer_key = self._from_peer.key

    def write_frames(self, codec, batch, datagrams: list, start: int) -> None:
        """frame() of datagrams[start:...] written into the frames of `batch`, lengths set, in one call of
        `codec` (kbypass.backend: C or Python). Each frame stays inside its UMEM frame (the codec checks it
        against the chunk size): with headroom, or 2 KiB frames under a large MTU, an MTU-sized frame once
        wrote past its chunk into the next one (maybe a kernel RX buffer)."""
        self._ident = codec.write_frames(batch.mem, batch.descs, start, chunk_of(batch), frame_limit(self.mtu), 0,
                                         self._flow.template, self._ident, datagrams)

    def write_chains(self, codec, batch, datagrams: list, start: int, max_frames: int) -> tuple[int, int]:
        """write_frames for a multi-buffer port: datagrams[start:...] as chains of the empty frames of
        `batch` (codec.write_chains); returns (frames used, datagrams written)."""
        self._ident, used, wrote = codec.write_chains(batch.mem, batch.descs, start, chunk_of(batch),
                                                      frame_limit(self.mtu), max_frames, 0, self._flow.template,
                                                      self._ident, datagrams)
        return used, wrote

    def lane_chains(self, lane_chains, core, datagrams: list, start: int) -> int:
        """write_chains straight onto a chains lane's TX ring, from its stash (kbypass._fastxfer.lane_chains
        over `core`, the lane's C struct): returns how many of datagrams[start:] went."""
        self._ident, sent = lane_chains(core, frame_limit(self.mtu), 0, self._flow.template, self._ident, datagrams,
                                        start)
        return sent

    def send_lane(self, lane, datagram: bytes) -> bool:
        """frame() of `datagram` sent through a message lane (port/lane.py), built there from the flow's
        header: False when the lane has no frame or TX slot for it now."""
        self._ident = ident = (self._ident + 1) & 0xFFFF
        return lane.send_udp(self._flow, datagram, ident)

    def frame(self, datagram: bytes) -> bytes:
        """One frame carrying `datagram` to the peer (set_peer first)."""
        self._ident = ident = (self._ident + 1) & 0xFFFF
        return self._flow.frame(datagram, ident)

    def parse_peer(self, f):
        """The datagram of a UDP frame from the peer to our port (a slice of `f`), else a drop reason:
        parse's, or "other_peer" for a valid frame from another address or port. set_peer first."""
        return self._from_peer.datagram(f)

    def peer_datagrams(self, mv, addrs, lens, drops) -> list:
        """parse_peer over a batch of frames (in `mv` at addrs, lens): the datagrams (views of `mv`) of the
        frames from the peer, in order; every other frame counted in `drops` by parse_peer's reason."""
        return self._from_peer.datagrams(mv, addrs, lens, drops)

    def parse(self, f: bytes):
        """(datagram, (src_ip, src_port, src_mac)) for a UDP frame to our port, else a drop reason.

        Frames from the socket backend are synthetic (zero MACs, destination maybe 0.0.0.0): the MAC
        is not checked, the destination IP only when it is set."""
        r = self._from_peer.source(f)
        if type(r) is str:
            return r
        end, src, sport, src_mac = r
        name = self._names.get(src)
        if name is None:
            if len(self._names) > 1024:  # a flood of spoofed sources must not grow it without bound
                self._names.clear()
            name = self._names[src] = socket.inet_ntoa(src)
        return f[UDP_HLEN:end], (name, sport, src_mac)


class EthEncap:
    """Raw Ethernet frames of EtherType `ethertype` from local_mac to one peer MAC (set later by a
    server from the first SYN). MTU: the interface MTU (the whole datagram rides in the payload)."""

    name = "eth"
    header_len = ETH_HLEN
    kind = 1  # kbypass._fastxfer's name for this layout

    def __init__(self, local_mac: str | bytes, ethertype: int = ETHERTYPE, mtu: int = 1500) -> None:
        self.mac = mac_bytes(local_mac)
        if not 0x0600 <= ethertype <= 0xFFFF or ethertype in (0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8):
            raise UsageError(f"EtherType {ethertype:#06x}: use an unassigned one such as 0x88b5 (not IP, ARP, "
                             "VLAN, nor below 0x0600)")
        self.ethertype = ethertype
        self._et = ethertype.to_bytes(2, "big")
        self.mtu = mtu
        self.max_datagram = min(mtu, MAX_DATAGRAM)
        self.peer: bytes | None = None
        self._hdr = b""

    def set_peer(self, mac: str | bytes) -> None:
        self.peer = mac_bytes(mac)
        self._hdr = self.peer + self.mac + self._et
        # a frame's first 14 bytes, when from the peer to us (what peer_datagrams and rx_run compare)
        self.peer_key = self.mac + self.peer + self._et

    def frame(self, datagram: bytes) -> bytes:
        return self._hdr + datagram

    def lane_chains(self, lane_chains, core, datagrams: list, start: int) -> int:
        """See UdpEncap.lane_chains."""
        return lane_chains(core, frame_limit(self.mtu), 1, self._hdr, 0, datagrams, start)[1]

    def send_lane(self, lane, datagram: bytes) -> bool:
        """See UdpEncap.send_lane."""
        return lane.send_one(self._hdr + datagram)

    def write_frames(self, codec, batch, datagrams: list, start: int) -> None:
        """See UdpEncap.write_frames."""
        codec.write_frames(batch.mem, batch.descs, start, chunk_of(batch), frame_limit(self.mtu), 1, self._hdr, 0,
                           datagrams)

    def write_chains(self, codec, batch, datagrams: list, start: int, max_frames: int) -> tuple[int, int]:
        """See UdpEncap.write_chains."""
        _, used, wrote = codec.write_chains(batch.mem, batch.descs, start, chunk_of(batch), frame_limit(self.mtu),
                                            max_frames, 1, self._hdr, 0, datagrams)
        return used, wrote

    def _check(self, f):
        """parse's checks: None for a frame of ours, else the drop reason."""
        if len(f) < ETH_HLEN + wire.OVERHEAD:
            return "too_short" if f[12:14] == self._et else "not_ours"
        if f[12:14] != self._et:
            return "not_ours"
        if f[0:6] != self.mac:
            return "wrong_address"
        return None

    def parse_peer(self, f):
        """The datagram of a frame from the peer (a slice of `f`), else a drop reason: parse's, or
        "other_peer" for a frame of ours from another MAC. set_peer first."""
        r = self._check(f)
        if r is not None:
            return r
        if f[6:12] != self.peer:
            return "other_peer"
        return f[ETH_HLEN:]

    def peer_datagrams(self, mv, addrs, lens, drops) -> list:
        """parse_peer over a batch of frames (see UdpEncap.peer_datagrams): a frame from the peer is
        recognised by its first 14 bytes and its length."""
        key = self.peer_key
        unpack = _ETH_FAST.unpack_from
        least = ETH_HLEN + wire.OVERHEAD
        out = []
        for a, k in zip(addrs, lens):
            if k >= least and unpack(mv, a)[0] == key:
                out.append(mv[a + ETH_HLEN:a + k])
                continue
            _slow_peer_datagram(self, mv[a:a + k], out, drops)
        return out

    def parse(self, f: bytes):
        """(datagram, (src_mac,)) for a frame of our EtherType to our MAC, else a drop reason."""
        r = self._check(f)
        if r is not None:
            return r
        return f[ETH_HLEN:], (bytes(f[6:12]),)


def _slow_peer_datagram(encap, f, out: list, drops) -> None:
    """EthEncap.peer_datagrams' path for a frame its one-comparison test did not pass: parse_peer decides,
    and the datagram joins `out` or the reason is counted in `drops`."""
    r = encap.parse_peer(f)
    if type(r) is str:
        drops[r] += 1
    else:
        out.append(r)
