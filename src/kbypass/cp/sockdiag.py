"""The namespace's kernel TCP and UDP sockets through sock_diag (NETLINK_SOCK_DIAG), as /proc/net/{tcp,udp}{,6}
list them but without their cost: reading /proc/net/tcp walks the whole established hash (262,144 buckets here,
shared by every namespace) once per 4 KiB page of text, ~7 ms a read even in an empty namespace; a dump walks
it once, in the kernel, ~50x cheaper. The control plane reads it every PROOF_TICK (kbypass.cp.accel)."""

from __future__ import annotations

import errno
import itertools
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_DUMP_INTR = 0x10
INET_DIAG_SKV6ONLY = 11
TIMEOUT = 1.0  # seconds for the kernel's reply (it comes at once; never wait for ever in the control plane)
TCP_SYN_RECV, TCP_NEW_SYN_RECV = 3, 12
# every state but the request sockets of a listener's handshakes (the listener is listed, with its uid)
STATES = 0xFFFFFFFF & ~(1 << TCP_SYN_RECV | 1 << TCP_NEW_SYN_RECV)
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_REQUEST = struct.Struct("=BBBBI48x")  # inet_diag_req_v2: family, protocol, ext, pad, states, id (any)
_ATTR = struct.Struct("=HH")  # rtattr: length, type
# inet_diag_msg: family, state, .., sport, dport, src, dst, .., cookie, .., uid, inode
_MSG = struct.Struct("=BBBB2s2s16s16s4xQ4x4x4xII")
MSG_LEN = 72  # sizeof(struct inet_diag_msg): then the attributes
_PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_MAPPED = bytes(10) + b"\xff\xff"
_seq = itertools.count(1)


def ipv4_of(family: int, src: bytes, v6only: bool = False) -> str | None:
    """A socket's local address as IPv4 ("0.0.0.0": a wildcard, IPv6's :: too, a dual-stack socket takes IPv4),
    None for an IPv6 address no IPv4 packet reaches (an IPV6_V6ONLY socket's :: among them: it shares no port
    with IPv4 sockets, so any user may bind one beside a proof, and it must not count as the proof's rival)."""
    if family == socket.AF_INET:
        return socket.inet_ntoa(src[:4])
    if src == bytes(16):
        return None if v6only else "0.0.0.0"
    return socket.inet_ntoa(src[12:]) if src[:12] == _MAPPED else None


def _v6only(data: bytes, at: int, end: int) -> bool:
    """INET_DIAG_SKV6ONLY among a message's attributes (the kernel adds it to an AF_INET6 socket that listens
    or is unconnected, the states a wildcard bind is in)."""
    while at + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, at)
        if length < _ATTR.size or at + length > end:
            break
        if kind == INET_DIAG_SKV6ONLY and length > _ATTR.size:
            return data[at + _ATTR.size] != 0
        at += (length + 3) & ~3
    return False


def _dump(nl: socket.socket, proto: str, family: int, states: int) -> list[tuple]:
    """One family's sockets, as (local IPv4 or None, port, uid, state, peer IPv4 or None, peer port, inode,
    cookie); OSError for a refusal, a malformed or truncated reply, or an interrupted dump (the tables changed
    while the kernel walked them: the caller asks again)."""
    seq = next(_seq)
    body = _REQUEST.pack(family, _PROTOS[proto], 0, 0, states)
    nl.send(_HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    out = []
    while True:
        data = nl.recv(1 << 16)
        at = 0
        while at + _HEADER.size <= len(data):
            length, kind, flags, got_seq, _ = _HEADER.unpack_from(data, at)
            if length < _HEADER.size or at + length > len(data):
                raise OSError(errno.EPROTO, f"sock_diag: a truncated {proto} message")
            if got_seq == seq:
                if flags & NLM_F_DUMP_INTR:
                    raise OSError(errno.EAGAIN, f"sock_diag: the {proto} dump was interrupted")
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    if length < _HEADER.size + 4:
                        raise OSError(errno.EPROTO, f"sock_diag: a short {proto} error message")
                    code = -struct.unpack_from("=i", data, at + _HEADER.size)[0]
                    raise OSError(code, f"sock_diag: {proto} dump refused")
                if length < _HEADER.size + _MSG.size:
                    raise OSError(errno.EPROTO, f"sock_diag: a short {proto} socket message")
                fam, state, _, _, sport, dport, src, dst, cookie, uid, inode = _MSG.unpack_from(data, at + _HEADER.size)
                v6only = fam == socket.AF_INET6 and _v6only(data, at + _HEADER.size + MSG_LEN, at + length)
                out.append((ipv4_of(fam, src, v6only), int.from_bytes(sport, "big"), uid, state, ipv4_of(fam, dst),
                            int.from_bytes(dport, "big"), inode, cookie))
            at += (length + 3) & ~3


def sockets(proto: str, states: int = STATES, ids: bool = False) -> list[tuple]:
    """(local IPv4 or None, local port, uid, state) of each kernel socket of `proto` ("tcp" or "udp") in this
    namespace, IPv4 and IPv6, in `states` (a mask of 1 << TCP state; a request socket of a handshake shows as
    SYN_RECV). A TIME_WAIT (or FIN_WAIT2 timewait) socket shows uid 0, as in /proc: it has none. OSError when the
    kernel refuses the dump, its reply is malformed, does not come within TIMEOUT, or is interrupted twice.
    ids: each row ends with the socket's inode (0: no file holds it: a timewait socket, one the app closed that
    still finishes, a connection not accepted yet) and its cookie (SO_COOKIE: never reused, unlike an inode
    number, which comes from a counter every namespace shares and wraps)."""
    return [row[:4] + row[6:] if ids else row[:4] for row in _sockets(proto, states)]


def tcp_flows(states: int = STATES) -> set[tuple[str, int, str, int]]:
    """(local IPv4, local port, peer IPv4, peer port) of each kernel TCP socket with a peer (IPv4, or IPv6
    mapped), TIME_WAIT included; OSError as sockets()."""
    return {(r[0], r[1], r[4], r[5]) for r in _sockets("tcp", states) if r[0] and r[4] and r[4] != "0.0.0.0"}


def _sockets(proto: str, states: int) -> list[tuple]:
    out = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(TIMEOUT)
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                out += _dump(nl, proto, family, states)
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    raise
                out += _dump(nl, proto, family, states)  # once more: an interrupted dump may list a socket twice
    return out
