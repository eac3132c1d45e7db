"""TCP_INFO of a userspace connection: what Linux's getsockopt(TCP_INFO) says of a kernel one.

Programs read it of their own sockets: iperf3 its congestion window, RTT and retransmissions, nginx its
$tcpinfo_rtt, $tcpinfo_snd_cwnd and $tcpinfo_rcv_space, monitoring agents the rest. Under `kbypass run` the
kernel socket behind an accelerated fd is only a placeholder (its TCP_INFO says CLOSE, RTT 0), so the shim
answers from this instead (csrc/preload/kbp_tcpinfo.c).

Units are Linux's (struct tcp_info, include/uapi/linux/tcp.h): times in microseconds, the last_* ages in
milliseconds, snd_cwnd, snd_ssthresh, unacked and sacked in segments, byte counts since the connection began,
counted as Linux's tcp_get_info counts them where this TCP keeps the same thing (bytes_acked counts an active
open's SYN, bytes_received the peer's FIN; a connection past both FINs says CLOSE, as a Linux socket whose
TIME_WAIT went to its timewait sock). Where it keeps something near but not the same it says that: rcv_space
and rcv_ssthresh are the window now advertised (Linux: its buffer-tuning estimate and window clamp),
last_data_recv is the last segment's age, bytes_sent counts new data only, segs_in/segs_out leave out the
handshake's segments on a listener's side. What it does not measure (pacing and delivery rates, busy time,
data segments apart from all segments, bytes retransmitted) is 0."""

from __future__ import annotations

from .states import State

# The order the values travel in (u64 each), and the names of struct tcp_info's fields without "tcpi_":
# kbp_tcpinfo.c's TCPI_FIELDS lists the same names in the same order (tests/unit/test_tcp_info.py holds them so).
# Fields past snd_wnd (Linux 6.2's rcv_wnd, 6.7's total_rto...) are not in the headers the shim is built with.
FIELDS = ("state", "ca_state", "retransmits", "probes", "backoff", "options", "snd_wscale", "rcv_wscale",
          "rto", "ato", "snd_mss", "rcv_mss", "unacked", "sacked", "last_data_sent", "last_data_recv",
          "last_ack_recv", "pmtu", "rcv_ssthresh", "rtt", "rttvar", "snd_ssthresh", "snd_cwnd", "advmss",
          "reordering", "rcv_space", "total_retrans", "max_pacing_rate", "bytes_acked", "bytes_received",
          "segs_out", "segs_in", "notsent_bytes", "min_rtt", "bytes_sent", "snd_wnd")

# include/net/tcp_states.h
LINUX_STATE = {State.ESTABLISHED: 1, State.SYN_SENT: 2, State.SYN_RCVD: 3, State.FIN_WAIT_1: 4, State.FIN_WAIT_2: 5,
               State.TIME_WAIT: 7, State.CLOSED: 7, State.CLOSE_WAIT: 8, State.LAST_ACK: 9, State.CLOSING: 11}
CA_OPEN, CA_DISORDER, CA_RECOVERY, CA_LOSS = 0, 1, 3, 4  # enum tcp_ca_state
OPT_TIMESTAMPS, OPT_SACK, OPT_WSCALE = 1, 2, 4  # TCPI_OPT_*
INFINITE_SSTHRESH = 0x7FFFFFFF  # TCP_INFINITE_SSTHRESH: slow start has not ended
NO_MIN_RTT = 0xFFFFFFFF  # ~0U: no RTT sample yet
UNLIMITED_PACING = (1 << 64) - 1  # sk_max_pacing_rate's default: SO_MAX_PACING_RATE never set
DUPACK_THRESHOLD = 3  # the connection's fast retransmit threshold (Linux: sysctl tcp_reordering)


def _us(seconds: float | None) -> int:
    return 0 if seconds is None else max(0, round(seconds * 1e6))


def _ms_since(then: float, now: float) -> int:
    return max(0, int((now - then) * 1000))


def tcp_info(conn, now: float) -> dict[str, int]:
    """struct tcp_info's values for `conn` (a TcpConnection) at `now`, by FIELDS' names."""
    cfg, sq, rtt, st = conn.config, conn.sq, conn.rtt, conn.stats
    mss = conn.snd_mss
    options = ((OPT_TIMESTAMPS if conn.ts_ok else 0) | (OPT_SACK if conn.sack_ok else 0)
               | (OPT_WSCALE if conn.wscale_ok else 0))
    if conn._retries:
        ca = CA_LOSS  # a retransmission timeout, not yet recovered
    elif conn._in_recovery:
        ca = CA_RECOVERY
    else:
        ca = CA_DISORDER if sq.sacked_bytes or conn._dupacks else CA_OPEN
    advmss = cfg.mss - (12 if conn.ts_ok else 0)  # what we take per segment, the timestamp option counted
    rcv_wnd = max(0, conn._adv_right - conn.rcv_nxt)
    ssthresh = conn.cc.ssthresh
    return {
        "state": LINUX_STATE[conn.state],
        "ca_state": ca,
        "retransmits": conn._retries,
        "probes": conn._probes,
        "backoff": conn._retries,
        "options": options,
        "snd_wscale": conn.snd_wscale if conn.wscale_ok else 0,
        "rcv_wscale": conn.rcv_wscale if conn.wscale_ok else 0,
        "rto": _us(rtt.rto),
        "ato": _us(cfg.delayed_ack),
        "snd_mss": mss,
        "rcv_mss": min(mss, advmss),
        "unacked": -(-(sq.snd_max - sq.snd_una) // mss),
        "sacked": sq.sacked_bytes // mss,
        "last_data_sent": _ms_since(conn._last_data_at, now),
        "last_data_recv": _ms_since(conn._last_recv, now),
        "last_ack_recv": _ms_since(conn._last_recv, now),
        "pmtu": cfg.mss + 40,
        "rcv_ssthresh": rcv_wnd,
        "rtt": _us(rtt.srtt),
        "rttvar": _us(rtt.rttvar),
        "snd_ssthresh": INFINITE_SSTHRESH if ssthresh >= INFINITE_SSTHRESH * mss else ssthresh // mss,
        "snd_cwnd": conn.cc.cwnd // mss,
        "advmss": advmss,
        "reordering": DUPACK_THRESHOLD,
        "rcv_space": rcv_wnd,
        "total_retrans": st.retransmits,
        "max_pacing_rate": UNLIMITED_PACING,
        # as Linux counts them: an active open's SYN and our FIN acknowledged, the peer's FIN received
        "bytes_acked": max(0, sq.snd_una - conn.iss - (1 if conn.passive else 0)),
        "bytes_received": max(0, conn.rcv_nxt - conn.irs - 1),
        "segs_out": st.segs_out,
        "segs_in": st.segs_in,
        "notsent_bytes": sq.unsent,
        "min_rtt": NO_MIN_RTT if rtt.min_rtt is None else _us(rtt.min_rtt),
        "bytes_sent": st.bytes_out,
        "snd_wnd": conn.snd_wnd,
    }
