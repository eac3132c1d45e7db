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
from kbypass.proto.transport import wire

ETHERTYPE = 0x88B5  # IEEE 802 local experimental EtherType 1
ETH_HLEN = 14
UDP_HLEN = 42  # Ethernet + IPv4 (no options) + UDP
_MOD = 0xFFFF
# what changes per UDP frame, bytes 16..41: IP total length, ident, [flags..protocol from the template],
# IP checksum, [addresses and ports from the template], UDP length, UDP checksum 0
_UDP_VARIABLE = struct.Struct("!HH4sH12sH2x")
# what parse checks in a received UDP frame, bytes 0..39, in one unpack: source MAC, EtherType, IP
# version/IHL, total length, flags and fragment offset (two bytes), protocol, addresses, ports, UDP length
_UDP_PARSE = struct.Struct("!6x6sHBxH2xBBxB2x4s4sHHH")
# what peer_datagrams reads of a UDP frame, bytes 0..39: EtherType, version/IHL, total length, flags and
# fragment offset, protocol, addresses and ports (26..37, compared as one string), UDP length
_UDP_FAST = struct.Struct("!12xHBxH2xHxB2x12sH")
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


def frame_room(batch) -> int:
    """The bytes every frame of `batch` can hold from its start (the smallest room): what a frame written
    into it may be at most."""
    return int(batch.room().min()) if len(batch) else 0


def frame_limit(mtu: int, batch) -> int:
    """A frame is at most the MTU plus the Ethernet header, and never more than its UMEM frame holds."""
    return min(mtu + ETH_HLEN, frame_room(batch))


class UdpEncap:
    """IPv4/UDP frames from (local_mac, local_ip, local_port) to one peer. `peer` may be set later
    (a server learns it from the first SYN). MTU: the IP MTU of the interface."""

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
        self._tmpl = b""
        self._ip_partial = 0
        self._ident = 0
        self._names: dict[bytes, str] = {}  # source address bytes -> text, so parse() converts once

    def set_peer(self, ip: str, port: int, mac: str | bytes) -> None:
        dst = _ip(ip, "peer address")
        if not 0 < port <= 0xFFFF:
            raise UsageError(f"peer port {port}: use 1-65535")
        self.peer = (ip, port)
        self._peer_mac = mac_bytes(mac)
        h = bytearray(UDP_HLEN)
        h[0:6], h[6:12], h[12:14] = self._peer_mac, self.mac, b"\x08\x00"
        h[14:24] = bytes((0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17))
        h[26:30], h[30:34] = self.ip, dst
        h[34:36], h[36:38] = self.port.to_bytes(2, "big"), port.to_bytes(2, "big")
        self._tmpl = bytes(h)
        self._peer_raw = (dst, port)  # what parse_peer compares a source with: no text per frame
        # peer_datagrams (and kbypass._fastxfer.rx_run) compare bytes 26..37 (addresses and ports) of a
        # received frame with this at once
        self.peer_key = bytes(dst + self.ip + h[36:38] + h[34:36])
        self._eth_ip = self._tmpl[0:16]  # Ethernet header and the IP version/TOS: the same in every frame
        self._ip_fixed1, self._ip_fixed2 = self._tmpl[20:24], self._tmpl[26:38]
        # IPv4 checksum: the fixed words summed once; total length and ident are added per frame
        self._ip_partial = int.from_bytes(h[14:34], "big") % _MOD

    def write_frames(self, codec, batch, datagrams: list, start: int) -> None:
        """frame() of datagrams[start:...] written into the frames of `batch`, lengths set, in one call of
        `codec` (kbypass.backend: C or Python): what _write_frames in the endpoint does with frame(). The limit is the
        room of the batch's UMEM frames, not the MTU: with headroom, or 2 KiB frames under a large MTU, an
        MTU-sized frame wrote past its chunk into the next one (maybe a kernel RX buffer)."""
        self._ident = codec.write_frames(batch.mem, batch.descs, start, frame_limit(self.mtu, batch), 0, self._tmpl,
                                          self._ip_partial, self._ident, datagrams)

    def frame(self, datagram: bytes) -> bytes:
        """One frame carrying `datagram` to the peer (set_peer first)."""
        n = len(datagram)
        total = n + 28
        self._ident = ident = (self._ident + 1) & 0xFFFF
        r = (self._ip_partial + total + ident) % _MOD
        variable = _UDP_VARIABLE.pack(total, ident, self._ip_fixed1, _MOD - r if r else 0, self._ip_fixed2, n + 8)
        return b"".join((self._eth_ip, variable, datagram))

    def _check(self, f):
        """The header checks of parse and parse_peer: (end of the datagram, source address bytes, source
        port, source MAC), or the drop reason."""
        n = len(f)
        if n < UDP_HLEN:
            return "not_udp"
        src_mac, ethertype, ver_ihl, total, frag_hi, frag_lo, proto, src, dst, sport, dport, ulen = \
            _UDP_PARSE.unpack_from(f)
        if ethertype != 0x0800:
            return "not_udp"
        if ver_ihl != 0x45 or proto != 17 or frag_hi & 0x3F or frag_lo:
            return "not_udp"  # options, fragments or another protocol: not something we send
        if dport != self.port:
            return "wrong_port"
        if dst != self.ip and dst != b"\0\0\0\0":
            return "wrong_address"
        if total + 14 > n or ulen != total - 20 or ulen < 8:
            return "bad_length"
        return 14 + total, src, sport, src_mac

    def parse_peer(self, f):
        """The datagram of a UDP frame from the peer to our port (a slice of `f`), else a drop reason:
        parse's, or "other_peer" for a valid frame from another address or port. set_peer first."""
        r = self._check(f)
        if type(r) is str:
            return r
        if r[1] != self._peer_raw[0] or r[2] != self._peer_raw[1]:
            return "other_peer"
        return f[UDP_HLEN:r[0]]

    def peer_datagrams(self, mv, addrs, lens, drops) -> list:
        """parse_peer over a batch of frames (in `mv` at addrs, lens): the datagrams (views of `mv`) of the
        frames from the peer, in order; every other frame counted in `drops` by parse_peer's reason.
        A frame that passes all of parse_peer's checks is recognised by one unpack and one comparison,
        in this loop (a call per frame cost as much again); any other goes through parse_peer itself."""
        key = self.peer_key
        unpack = _UDP_FAST.unpack_from
        out = []
        for a, k in zip(addrs, lens):
            if k >= UDP_HLEN:
                ethertype, ver_ihl, total, frag, proto, ends, ulen = unpack(mv, a)
                if (ends == key and ethertype == 0x0800 and ver_ihl == 0x45 and proto == 17 and not frag & 0x3FFF
                        and total + ETH_HLEN <= k and ulen == total - 20 and ulen >= 8):
                    out.append(mv[a + UDP_HLEN:a + ETH_HLEN + total])
                    continue
            _slow_peer_datagram(self, mv[a:a + k], out, drops)
        return out

    def parse(self, f: bytes):
        """(datagram, (src_ip, src_port, src_mac)) for a UDP frame to our port, else a drop reason.

        Frames from the socket backend are synthetic (zero MACs, destination maybe 0.0.0.0): the MAC
        is not checked, the destination IP only when it is set."""
        r = self._check(f)
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
        self.max_datagram = mtu
        self.peer: bytes | None = None
        self._hdr = b""

    def set_peer(self, mac: str | bytes) -> None:
        self.peer = mac_bytes(mac)
        self._hdr = self.peer + self.mac + self._et
        # a frame's first 14 bytes, when from the peer to us (what peer_datagrams and rx_run compare)
        self.peer_key = self.mac + self.peer + self._et

    def frame(self, datagram: bytes) -> bytes:
        return self._hdr + datagram

    def write_frames(self, codec, batch, datagrams: list, start: int) -> None:
        """See UdpEncap.write_frames."""
        codec.write_frames(batch.mem, batch.descs, start, frame_limit(self.mtu, batch), 1, self._hdr, 0, 0,
                            datagrams)

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
    """peer_datagrams' path for a frame its one-comparison test did not pass: parse_peer decides, and the
    datagram joins `out` or the reason is counted in `drops`."""
    r = encap.parse_peer(f)
    if type(r) is str:
        drops[r] += 1
    else:
        out.append(r)
