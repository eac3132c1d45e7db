"""A listening socket, sans-IO: answers SYNs, keeps at most `syn_backlog` half-open connections (each a
TcpConnection in SYN_RCVD that retransmits its SYN-ACK), answers SYNs beyond that with SYN cookies (isn.py)
or drops them, and hands back a TcpConnection once the handshake's ACK arrives.

Only segments for a 4-tuple that has no established connection come here: the endpoint looks its
connections up first. Memory is bounded under a SYN flood: the half-open table is capped and cookies keep
no state.

A cookie ACK is only checked within 2 * COOKIE_PERIOD of the last cookie we sent (Linux's
tcp_synq_no_recent_overflow): a cookie's hash has 24 bits and its time bits are known, so on a listener that
never sent one a blind spoofer could otherwise guess its way into a connection (2^24 ACKs: minutes).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import TcpConfig
from .connection import TcpConnection
from .isn import (
    COOKIE_PERIOD,
    IsnGenerator,
    cookie_options,
    cookie_tsval,
    default_generator,
)
from .segment import ACK, RST, SYN, Options, Segment
from .states import State

MASK = 0xFFFFFFFF


def reset_for(seg: Segment) -> Segment | None:
    """The answer of a closed port (RFC 9293 3.10.7.1), or of a listener to a stray ACK; None for a RST."""
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return Segment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
    return Segment(seg.dst_port, seg.src_port, 0, (seg.seq + seg.seg_len) & MASK, RST | ACK, 0)


@dataclass
class ListenerStats:
    syns: int = 0
    accepted: int = 0
    cookies_sent: int = 0
    cookies_accepted: int = 0
    cookies_rejected: int = 0
    backlog_drops: int = 0  # SYNs dropped: backlog full and cookies off
    resets_sent: int = 0
    half_open_failed: int = 0  # SYN-ACK retries exhausted or reset by the peer


class TcpListener:
    def __init__(self, local_ip: str, local_port: int, config: TcpConfig | None = None,
                 isn: IsnGenerator | None = None) -> None:
        self.local_ip, self.local_port = local_ip, local_port
        self.config = config or TcpConfig()
        self.isn = isn or default_generator()
        self.half_open: dict[tuple[str, int], TcpConnection] = {}
        self._cookie_sent_at: float | None = None  # when we last answered a SYN with a cookie
        self.stats = ListenerStats()

    def receive(self, seg: Segment, remote_ip: str, now: float) -> tuple[list[Segment], TcpConnection | None]:
        """One segment to our port from (remote_ip, seg.src_port). Returns the segments to send back to
        remote_ip, and the new connection when this segment completed a handshake (hand it to accept())."""
        key = (remote_ip, seg.src_port)
        conn = self.half_open.get(key)
        if conn is not None:
            conn.receive(seg, now)
            out = conn.segments_to_send(now)
            if conn.state is State.SYN_RCVD:
                return out, None
            del self.half_open[key]
            if conn.state is State.CLOSED:
                self.stats.half_open_failed += 1
                return out, None
            self.stats.accepted += 1
            return out, conn
        flags = seg.flags
        if flags & RST:
            return [], None
        if flags & ACK:
            if not flags & SYN and self.config.syn_cookies:
                conn = self._from_cookie(seg, remote_ip, now)
                if conn is not None:
                    return conn.segments_to_send(now), conn
            self.stats.resets_sent += 1
            return [reset_for(seg)], None
        if not flags & SYN:
            return [], None
        self.stats.syns += 1
        lip, lport, rport = self.local_ip, self.local_port, seg.src_port
        if len(self.half_open) < self.config.syn_backlog:
            iss = self.isn.isn(lip, lport, remote_ip, rport, now)
            conn = TcpConnection.from_syn((lip, lport), key, seg, now, iss, self.config, self.isn)
            self.half_open[key] = conn
            return conn.segments_to_send(now), None
        if not self.config.syn_cookies:
            self.stats.backlog_drops += 1
            return [], None
        cfg, o = self.config, seg.options
        cookie, _mss = self.isn.make_cookie(lip, lport, remote_ip, rport, seg.seq, o.mss or 536, now)
        self.stats.cookies_sent += 1
        self._cookie_sent_at = now
        opts = Options(mss=cfg.mss)
        if cfg.timestamps and o.timestamps is not None:  # keep what we agree on in our TSval (isn.py)
            wscale = o.wscale if cfg.window_scaling else None
            sack = cfg.sack and o.sack_permitted
            opts = Options(mss=cfg.mss, wscale=cfg.rcv_wscale if wscale is not None else None, sack_permitted=sack,
                           timestamps=(cookie_tsval(now, self.isn.ts_offset(lip, lport, remote_ip, rport), wscale, sack),
                                       o.timestamps[0]))
        return [Segment(lport, rport, cookie, (seg.seq + 1) & MASK, SYN | ACK, min(cfg.recv_buffer, 0xFFFF),
                        opts)], None

    def _from_cookie(self, seg: Segment, remote_ip: str, now: float) -> TcpConnection | None:
        if self._cookie_sent_at is None or now - self._cookie_sent_at > 2 * COOKIE_PERIOD:
            self.stats.cookies_rejected += 1
            return None  # no cookie out lately: this ACK cannot be answering one
        peer_isn, cookie = (seg.seq - 1) & MASK, (seg.ack - 1) & MASK
        mss = self.isn.check_cookie(self.local_ip, self.local_port, remote_ip, seg.src_port, peer_isn, cookie, now)
        if mss is None:
            self.stats.cookies_rejected += 1
            return None
        # Rebuild the SYN the cookie stands for, with the options our TSval kept (none without timestamps).
        opts = Options(mss=mss)
        ts = seg.options.timestamps
        if self.config.timestamps and ts is not None:
            wscale, sack = cookie_options(ts[1])
            opts = Options(mss=mss, wscale=wscale, sack_permitted=sack, timestamps=(ts[0], 0))
        syn = Segment(seg.src_port, self.local_port, peer_isn, 0, SYN, seg.window, opts)
        conn = TcpConnection.from_cookie((self.local_ip, self.local_port), (remote_ip, seg.src_port), syn, now,
                                         cookie, self.config, self.isn)
        conn.receive(seg, now)
        if conn.state is State.SYN_RCVD or conn.state is State.CLOSED:
            self.stats.cookies_rejected += 1
            return None
        self.stats.cookies_accepted += 1
        self.stats.accepted += 1
        return conn

    # ------------------------------------------------------------------ SYN-ACK retransmission
    def next_timer(self) -> float | None:
        best = None
        for conn in self.half_open.values():
            t = conn.next_timer()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def on_timer(self, now: float) -> list[tuple[str, Segment]]:
        """Retransmit due SYN-ACKs, forget half-open connections that gave up. Returns (remote_ip, segment)."""
        out = []
        for key, conn in list(self.half_open.items()):
            t = conn.next_timer()
            if t is None or t > now:
                continue
            conn.on_timer(now)
            out += [(key[0], s) for s in conn.segments_to_send(now)]
            if conn.state is State.CLOSED:
                del self.half_open[key]
                self.stats.half_open_failed += 1
        return out
