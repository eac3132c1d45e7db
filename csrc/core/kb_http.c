/* kb_http.c: canned answers on the TCP fast path (see kb_http.h). */
#include "kb_http.h"

/* the run's doubles must be the reference's, operation for operation: no a*b+c fused into one rounding */
#pragma GCC optimize("fp-contract=off")

#include <math.h>
#include <string.h>

size_t kb_http_head_len(const uint8_t *p, size_t n) {
    for (size_t i = 3; i < n; i++) {
        if (p[i] == '\n' && p[i - 1] == '\r' && p[i - 2] == '\n' && p[i - 3] == '\r') return i + 1;
    }
    return 0;
}

uint16_t kb_http_wnd_field(struct kb_http_pred *h, uint32_t rcv_nxt) {
    int64_t avail = h->avail;
    int64_t edge = (int32_t)(h->adv_right - rcv_nxt); /* _adv_right - rcv_nxt: within 2**31 of each other */
    if (edge >= 0 && avail - edge < (int64_t)h->sws) avail = edge;
    uint64_t f = (uint64_t)avail >> h->rcv_wscale;
    uint16_t field = f > 0xFFFF ? 0xFFFF : (uint16_t)f;
    uint32_t right = rcv_nxt + ((uint32_t)field << h->rcv_wscale);
    if ((int32_t)(right - h->adv_right) > 0) h->adv_right = right; /* _make: max(_adv_right, ...) */
    return field;
}

int kb_http_may_send(const struct kb_http_pred *h, uint32_t snd_max, uint32_t ack, uint16_t window, size_t len,
                     double now) {
    if (!h->armed || len == 0 || len > h->mss || now >= h->valid_until) return 0;
    uint32_t right = ack + ((uint32_t)window << h->snd_wscale); /* the window this ACK sets (always taken) */
    if ((int64_t)(int32_t)(right - snd_max) < (int64_t)len) return 0;
    return (uint32_t)(snd_max - ack) < h->cwnd; /* the pipe after the ACK, below cwnd (which an ACK only grows) */
}

int kb_http_run_ok(const struct kb_http_run *r, uint32_t snd_una, uint32_t snd_max, uint32_t ack) {
    return r->armed && ack == snd_max && ack != snd_una;
}

/* The controller's on_ack (kbypass.proto.tcp.congestion: NewReno.on_ack, Cubic.on_ack), operation for operation */
static void cc_on_ack(struct kb_http_run *r, uint32_t acked, double now) {
    if (r->cwnd < r->ssthresh) { /* slow start: min(cwnd + acked, max(ssthresh, cwnd)) */
        uint64_t grown = r->cwnd + acked;
        r->cwnd = grown < r->ssthresh ? grown : r->ssthresh;
        return;
    }
    if (!r->cubic) {
        r->acc += acked;
        if (r->acc >= (int64_t)r->cwnd) {
            r->acc -= (int64_t)r->cwnd;
            r->cwnd += r->cc_mss;
        }
        return;
    }
    const double C = 0.4, BETA = 0.7;
    double seg = r->cc_mss, cwnd_seg = (double)r->cwnd / seg;
    if (isnan(r->epoch)) {
        r->epoch = now;
        if (cwnd_seg < r->w_max) {
            r->k = pow((r->w_max - cwnd_seg) / C, 1.0 / 3);
        } else {
            r->k = 0.0;
            r->w_max = cwnd_seg;
        }
        r->w_est = cwnd_seg;
    }
    double t = now - r->epoch + r->srtt;
    double d = t - r->k;
    double cube = d < 0 ? -pow(-d, 3) : pow(d, 3); /* CPython's float ** takes the sign off an odd power */
    double target = C * cube + r->w_max;
    double alpha = 3 * (1 - BETA) / (1 + BETA);
    r->w_est += alpha * ((double)acked / seg) / cwnd_seg;
    if (r->w_est > target) target = r->w_est;
    if (target > cwnd_seg) {
        double grow = target - cwnd_seg, half = cwnd_seg / 2;
        double inc = (half < grow ? half : grow) / cwnd_seg * ((double)acked / seg);
        r->acc += (int64_t)(inc * seg);
        if (r->acc >= 1) {
            r->cwnd += (uint64_t)r->acc;
            r->acc = 0;
        }
    }
}

/* RttEstimator.sample, operation for operation (the same doubles) */
static void rtt_sample(struct kb_http_run *r, double s) {
    if (s < 0) return;
    r->latest = s;
    if (s < r->min_rtt) r->min_rtt = s;
    r->rttvar = 0.75 * r->rttvar + 0.25 * fabs(r->srtt - s);
    r->srtt = 0.875 * r->srtt + 0.125 * s;
    double var = 4 * r->rttvar, m = r->granularity; /* max(granularity, K * rttvar, min_rto): the first largest */
    if (var > m) m = var;
    if (r->min_rto > m) m = r->min_rto;
    double base = r->srtt + m;
    if (r->min_rto > base) base = r->min_rto;
    r->rto = r->max_rto < base ? r->max_rto : base;
}

void kb_http_run_step(struct kb_http_run *r, struct kb_http_pred *h, uint32_t acked, uint32_t seq,
                      uint16_t window, uint32_t req_len, uint32_t answer_len, uint32_t ts_recent, double now) {
    rtt_sample(r, now - r->rtt_time);              /* _new_ack: the timed answer is acked */
    cc_on_ack(r, acked, now);                      /* after the sample: on_ack takes the new srtt */
    uint32_t win = (uint32_t)window << h->snd_wscale; /* the window update (_ack_fields) */
    if (win > r->max_snd_wnd) r->max_snd_wnd = win;
    r->rtt_time = now;                             /* send_now: the answer timed */
    r->n++;
    r->bytes_in += req_len;
    r->bytes_out += answer_len;
    r->seq = seq;
    r->window = window;
    r->ts_recent = ts_recent;
    r->adv_right = h->adv_right;
    r->now = now;
    /* canned_refresh: the next timer is the tail probe's (_arm_tlp) or the RTO's; the send room less the answer */
    double rto_at = now + r->rto, pto = 2 * r->srtt;
    if (0.002 > pto) pto = 0.002;
    pto += answer_len <= r->snd_mss ? 0.05 : 0.0;
    double at = now + pto;
    h->valid_until = at < rto_at ? at : rto_at;
    uint32_t room = r->send_buffer > answer_len ? r->send_buffer - answer_len : 0;
    h->mss = r->snd_mss < room ? r->snd_mss : room;
    h->cwnd = r->cwnd > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)r->cwnd;
}
