/* kbp_tcpinfo.c: getsockopt(TCP_INFO) of an accelerated TCP connection, answered from the shim's TCP.
 *
 * The kernel socket behind an accelerated fd is a placeholder: its own TCP_INFO says CLOSE, RTT 0, and
 * programs that read their connection's state (iperf3's cwnd, RTT and retransmissions; nginx's $tcpinfo_*)
 * would report nonsense. The values come from kbypass.proto.tcp.info (one u64 each, in its FIELDS' order:
 * TCPI_FIELDS below lists the same names, tests/unit/test_tcp_info.py holds the two lists equal) and go into
 * the kernel headers' struct tcp_info, so the layout is the one the app was built against; a caller's shorter
 * buffer gets the first bytes and the length, as Linux does. */
#define _GNU_SOURCE
#include <linux/tcp.h>
#include <string.h>

#include "kbp.h"

#define TCPI_FIELDS(X)                                                                                         \
    X(state) X(ca_state) X(retransmits) X(probes) X(backoff) X(options) X(snd_wscale) X(rcv_wscale) X(rto)      \
    X(ato) X(snd_mss) X(rcv_mss) X(unacked) X(sacked) X(last_data_sent) X(last_data_recv) X(last_ack_recv)      \
    X(pmtu) X(rcv_ssthresh) X(rtt) X(rttvar) X(snd_ssthresh) X(snd_cwnd) X(advmss) X(reordering) X(rcv_space) \
    X(total_retrans) X(max_pacing_rate) X(bytes_acked) X(bytes_received) X(segs_out) X(segs_in)                \
    X(notsent_bytes) X(min_rtt) X(bytes_sent) X(snd_wnd)

#define ONE(f) +1
#define SET(f) ti.tcpi_##f = v[i++];

/* 0 with *out filled (the connection's), -1 when the host has no connection for s (the kernel answers). Under
 * kbp_lock. */
int kbp_tcp_info(struct kbp_sock *s, void *out, socklen_t *len) {
    uint64_t v[0 TCPI_FIELDS(ONE)];
    if (kbp_py_call("tcp_info", v, sizeof(v), "(Id)", s->sid, (double)kbp_now_ns() / 1e9) != (long)sizeof(v))
        return -1;
    struct tcp_info ti;
    memset(&ti, 0, sizeof(ti));
    int i = 0;
    TCPI_FIELDS(SET)
    socklen_t n = *len < sizeof(ti) ? *len : (socklen_t)sizeof(ti);
    memcpy(out, &ti, n);
    *len = n;
    return 0;
}
