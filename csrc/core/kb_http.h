/* kb_http.h: canned answers on the TCP fast path (kbypass.proto.tcp is the reference for the TCP side,
 * kbypass.apps.httpserve and kbypass.proto.http for what a request is answered with).
 *
 * Why: a keep-alive HTTP client (wrk, a health check, a browser fetching the same resource) sends the same
 * request head again and again and gets the same pre-encoded answer (kbypass.proto.http.respond_whole). Run
 * through Python, each of those costs a segment's receive processing, the parser, the answer's send path and a
 * frame build: tens of microseconds. Here a segment the header prediction (kb_tcp.h) accepted whose payload is
 * one or more whole request heads, each a key of the application's table of canned answers, is answered in C:
 * the answer's frame is built at once (kb_tcp_frame), and the Python connection is told afterwards (the one
 * source of truth: TcpConnection.answer_predicted queues the answer in its send queue, for retransmission,
 * times it, and runs the reference's ACK processing).
 *
 * struct kb_http_pred is the per-connection part of that prediction: what the reference's send path
 * (kbypass.proto.tcp.output: _send_data and _make) needs to emit the answer as the one segment it would emit
 * itself, armed by Python (TcpConnection.canned_state) only when that send path's shortcut holds: nothing
 * unsent, lost or SACKed, no FIN, Nagle off, the application has read everything. A segment is answered only
 * when the answer fits one segment (mss), the peer's window (from this segment's ACK and window field) and
 * the congestion window; anything else goes the Python way. A reported answer spends the arming: Python
 * re-arms after it has taken the report (the next flush). With a run armed too (struct kb_http_run, arm_run), an
 * answer whose exchange C keeps leaves the arming in place, moved past the exchange (kb_http_run_step), for as
 * many answers as the run holds; a segment left to Python (no HIT, or a HIT not answered) disarms both.
 */
#ifndef KB_HTTP_H
#define KB_HTTP_H

#include <stddef.h>
#include <stdint.h>

struct kb_http_pred {
    uint8_t eth[14];     /* our Ethernet header toward the peer */
    uint8_t armed;
    uint8_t snd_wscale, rcv_wscale;
    uint32_t mss;        /* payload bytes per segment (the timestamps option taken off) */
    uint32_t cwnd;       /* bytes; the pipe is snd_max - snd_una (nothing SACKed or lost when armed) */
    uint32_t avail;      /* receive buffer minus what the application has not read */
    uint32_t sws;        /* receiver SWS threshold: min(recv_buffer / 2, mss) */
    uint32_t adv_right;  /* right edge of the window we last advertised (wire value) */
    uint32_t ts_offset;  /* RFC 7323 5.4: tsval = ms + offset */
    double valid_until;  /* seconds: the connection's next timer, or the idle restart of its cwnd: the slow path */
};

/* The length of the first request head of p (up to and with its CRLF CRLF), or 0 when none ends in p. */
size_t kb_http_head_len(const uint8_t *p, size_t n);

/* The window field of an ACK for rcv_nxt (TcpConnection._wnd_field, receiver SWS avoidance), and the
 * advertised right edge moved as _make moves it. */
uint16_t kb_http_wnd_field(struct kb_http_pred *h, uint32_t rcv_nxt);

/* Whether an answer of len bytes may leave now as one segment at snd_max, after the ACK `ack` with the peer's
 * window field `window` (the reference's _send_data would send it whole, now). */
int kb_http_may_send(const struct kb_http_pred *h, uint32_t snd_max, uint32_t ack, uint16_t window, size_t len,
                     double now);

/* Exchanges C answers and keeps (a "run"): while armed (TcpConnection.canned_run), an answered request that
 * acknowledges all we sent, on a connection whose answer in flight is being timed, is not reported to Python
 * one by one. C makes the reference's state change itself (TcpConnection.answer_hit: the ACK's RTT sample,
 * RFC 6298 as kbypass.proto.transport.rtt; the congestion window's growth, NewReno's or CUBIC's as
 * kbypass.proto.tcp.congestion; the peer's window; the answer queued, timed and its RTO and tail probe armed)
 * and counts what Python must apply when it next looks at the connection (TcpConnection.canned_run_taken, one
 * call for any number of exchanges). tests/unit/test_http_run.py holds the two to the same state. Anything
 * else (a partial ACK, loss) is reported per exchange as before. */
struct kb_http_run {
    uint8_t armed;
    uint32_t snd_mss;          /* payload per segment: the tail probe's one-segment allowance */
    uint32_t send_buffer;
    uint32_t max_snd_wnd;
    uint64_t cwnd, ssthresh;   /* bytes (cc.cwnd, cc.ssthresh) */
    uint8_t cubic;             /* the controller: CUBIC (kbypass.proto.tcp.congestion.Cubic), else NewReno */
    uint32_t cc_mss;           /* the controller's segment size */
    int64_t acc;               /* bytes acked toward the next increase (NewReno._acc) */
    double w_max, k, epoch, w_est; /* CUBIC's (epoch NaN: None) */
    double srtt, rttvar, min_rtt, latest, rto; /* RttEstimator's */
    double min_rto, max_rto, granularity;
    double rtt_time;           /* when the answer in flight left (TcpConnection._rtt_time) */
    /* since the last take: the count, the bytes each way, the last exchange's fields */
    uint32_t n;
    uint64_t bytes_in, bytes_out;
    uint32_t seq, ts_recent, adv_right;
    uint16_t window;
    double now;
};

/* Whether an answered segment may be kept: armed, its ACK new and covering all we sent (snd_una, snd_max:
 * before the segment). */
int kb_http_run_ok(const struct kb_http_run *r, uint32_t snd_una, uint32_t snd_max, uint32_t ack);

/* The reference's state change for one kept exchange (acked: the bytes its ACK took; req_len, answer_len:
 * the payload each way; window: the segment's field), and the arming moved as canned_refresh would move it.
 * ts_recent and adv_right: the prediction's after the exchange. */
void kb_http_run_step(struct kb_http_run *r, struct kb_http_pred *h, uint32_t acked, uint32_t seq,
                      uint16_t window, uint32_t req_len, uint32_t answer_len, uint32_t ts_recent, double now);

#endif
