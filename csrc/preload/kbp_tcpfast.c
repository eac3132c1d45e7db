/* kbp_tcpfast.c: the established path of the shim's TCP in C.
 *
 * A connection's Prediction (kbypass._fasttcp, armed by the host from its
 * TcpConnection) is shared with this file, so a segment kb_tcp_predict says HIT for is taken here as the
 * host's rx would take it: its payload queued for the app's recv (no Python), its fields and payload logged
 * for the host, which catches up at its next call (ShimTcp.hits: receive_hit at the arrival time, so its ACK,
 * window and timers are the reference's) before anything else. The host is called at the end of the pump when
 * its ACK is due (a pure ACK, or two segments: ACK every second one), else at the app's next call (a reply's
 * send carries the ACK) or CATCH_UP_NS later from the flusher. Order: nothing is queued here while the host
 * holds bytes for the app (PYRX) or after a frame of that connection went to the host in the same pump. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "kbp.h"

#define BUCKETS 4096             /* connections by 4-tuple, for the prediction of a frame */
#define CATCH_UP_NS 200000ull    /* the longest a predicted segment waits for the host (its ACK) */
#define HITLOG_MAX (4u << 20)    /* then the frame goes to the host */
static struct kbp_sock *bucket[BUCKETS];
static unsigned pump_gen = 1;
static uint8_t *hitlog;
static size_t hitlen, hitcap;
static int hits_due;             /* the host must answer at the end of this pump */
static unsigned pump_hits;       /* data segments predicted in this pump */
static uint64_t hits_since;

struct __attribute__((packed)) hit_rec { /* shimtcp.HIT (flags 0: CONSUMED, len the bytes the app read) */
    uint32_t sid, seq, ack, tsval, tsecr;
    uint16_t window;
    uint8_t flags, has_ts;
    uint32_t len;
    double at;
};

static double now_s(void) { return (double)kbp_now_ns() / 1e9; }

static unsigned bucket_of(const uint8_t ip[4], uint16_t rport, uint16_t lport) {
    uint32_t x;
    memcpy(&x, ip, 4);
    x ^= (uint32_t)rport * 2654435761u ^ (uint32_t)lport * 40503u;
    return (x ^ x >> 16) % BUCKETS;
}

static struct kbp_sock *by_tuple(const uint8_t ip[4], uint16_t rport, uint16_t lport) {
    for (struct kbp_sock *s = bucket[bucket_of(ip, rport, lport)]; s; s = s->pnext)
        if (!memcmp(&s->tcp_peer.sin_addr, ip, 4) && ntohs(s->tcp_peer.sin_port) == rport &&
            ntohs(s->tcp_local.sin_port) == lport)
            return s;
    return NULL;
}

/* s's connection is the app's (accepted, or connect called): predict with its Prediction from now on */
void kbp_tcpc_attach(struct kbp_sock *s) {
    long a = kbp_py_call("prediction_address", NULL, 0, "(Id)", s->sid, now_s());
    if (a <= 0 || s->pred) return; /* the host's Python stand-in: no struct to predict with */
    s->pred = (struct kb_tcp_pred *)(uintptr_t)a;
    unsigned b = bucket_of((const uint8_t *)&s->tcp_peer.sin_addr, ntohs(s->tcp_peer.sin_port),
                           ntohs(s->tcp_local.sin_port));
    s->pnext = bucket[b];
    bucket[b] = s;
}

/* ... no longer (the app closed it: the host has the rest) */
void kbp_tcpc_detach(struct kbp_sock *s) {
    if (s->pred) {
        struct kbp_sock **pp = &bucket[bucket_of((const uint8_t *)&s->tcp_peer.sin_addr, ntohs(s->tcp_peer.sin_port),
                                                 ntohs(s->tcp_local.sin_port))];
        while (*pp && *pp != s) pp = &(*pp)->pnext;
        if (*pp) *pp = s->pnext;
        s->pred = NULL;
    }
    free(s->cq);
    s->cq = NULL;
    s->cq_off = s->cq_len = s->cq_cap = s->cq_read = 0;
}

static int room(uint8_t **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    uint8_t *b = realloc(*buf, c);
    if (!b) return -1;
    *buf = b, *cap = c;
    return 0;
}

/* f for s: 1 taken here (a HIT: queued for the app, logged for the host), 0 the host's */
static int take_predicted(struct kbp_sock *s, const uint8_t *f, uint32_t n) {
    if (s->slow_gen == pump_gen || s->py_rx || !s->pred->armed || hitlen + sizeof(struct hit_rec) + n > HITLOG_MAX)
        return 0;
    if (s->cq_len + n > KBP_TCP_CQ_MAX) { /* the window bounds the queue (kbp.h): a bug if this holds instead */
        static int said_cq;
        if (!said_cq++) kbp_say("fd %d: its C queue (%zu bytes) outgrew the receive window: a bug", s->fd, s->cq_len);
        return 0;
    }
    if (s->cq_off && s->cq_off + s->cq_len + n > s->cq_cap) { /* the app read the front: move the rest there */
        memmove(s->cq, s->cq + s->cq_off, s->cq_len);
        s->cq_off = 0;
    }
    if (room(&hitlog, &hitcap, hitlen + sizeof(struct hit_rec) + n) || room(&s->cq, &s->cq_cap, s->cq_off + s->cq_len + n))
        return 0;
    struct kb_tcp_hit h;
    if (kb_tcp_predict(s->pred, f, n, &h) != KB_TCP_HIT) return 0;
    static int said;
    if (!said++) kbp_verbose("fd %d: its connection's predicted segments are queued in C for the app", s->fd);
    uint64_t now = kbp_now_ns();
    struct hit_rec r = {s->sid, h.seq, h.ack, h.tsval, h.tsecr, h.window, h.flags, h.has_ts, h.payload_len,
                        (double)now / 1e9};
    if (!hitlen) hits_since = now;
    memcpy(hitlog + hitlen, &r, sizeof(r));
    memcpy(hitlog + hitlen + sizeof(r), f + h.payload_off, h.payload_len);
    hitlen += sizeof(r) + h.payload_len;
    /* the host answers now: an ACK it owes (two segments), or a pure ACK it may send on (bytes wait for it, or
     * the app for room); else the pure ACK waits for its next call, the app's reply say (nginx's next response) */
    if (h.payload_len ? ++pump_hits >= 2 : s->py_tx || !(s->tcp_mask & POLLOUT)) hits_due = 1;
    if (h.payload_len) {
        memcpy(s->cq + s->cq_off + s->cq_len, f + h.payload_off, h.payload_len);
        s->cq_len += h.payload_len;
        s->tcp_gen++; /* news, for EPOLLET */
    }
    kbp_tcp_wake_by(now + CATCH_UP_NS);
    return 1;
}

/* f, a TCP frame off the rings: 1 taken here, 0 the host's (batched by kbp_tcp.c) */
int kbp_tcpc_frame(const uint8_t *f, uint32_t n) {
    uint8_t ip[4];
    uint16_t sport, dport;
    struct kbp_sock *s = kb_tcp_key(f, n, ip, &sport, &dport) == 0 ? by_tuple(ip, sport, dport) : NULL;
    if (!s) return 0;
    if (take_predicted(s, f, n)) return 1;
    s->slow_gen = pump_gen; /* what follows of it in this pump goes to the host too, after this one */
    return 0;
}

/* The pump is over (kbp_tcp.c gives the host its batch next, if any: kbp_py_call catches up first) */
void kbp_tcpc_pump_done(int batched) {
    pump_gen++;
    pump_hits = 0;
    if (!batched && hits_due) kbp_tcp_catch_up();
}

/* The flusher's and the app's calls: the host catches up when a predicted segment waited CATCH_UP_NS; its
 * counters go to the status page every TALLY_NS (shimtcp.ShimTcp.tally: one call, a few microseconds) */
#define TALLY_NS 250000000ull
void kbp_tcpc_timers(uint64_t now) {
    static uint64_t tally_at;
    if (hitlen && now >= hits_since + CATCH_UP_NS) kbp_tcp_catch_up();
    uint64_t *page = kbp_tcp_on && now >= tally_at ? kbp_page_tcp() : NULL;
    if (page) {
        uint64_t t[KBP_PAGE_TCP];
        tally_at = now + TALLY_NS;
        if (kbp_py_call("tally", t, sizeof(t), "(d)", now_s()) == (long)sizeof(t)) memcpy(page, t, sizeof(t));
    }
}

/* The log for a call that takes it itself (ShimTcp.hits_send): its bytes (n, 0: none), the log emptied */
const uint8_t *kbp_tcpc_take_log(size_t *n) {
    *n = hitlen;
    hitlen = 0, hits_due = 0;
    return hitlog;
}

/* The app read s->cq_read bytes of its queue: a CONSUMED record (flags 0, no payload) for the host, which
 * reopens the window by as much (shimtcp.ShimTcp.hits) at the next catch-up, CATCH_UP_NS at the latest */
static void report_read(struct kbp_sock *s) {
    if (room(&hitlog, &hitcap, hitlen + sizeof(struct hit_rec))) return; /* told with the next read */
    uint64_t now = kbp_now_ns();
    struct hit_rec r = {.sid = s->sid, .len = (uint32_t)s->cq_read, .at = (double)now / 1e9};
    if (!hitlen) hits_since = now;
    memcpy(hitlog + hitlen, &r, sizeof(r));
    hitlen += sizeof(r);
    s->cq_read = 0;
    kbp_tcp_wake_by(now + CATCH_UP_NS);
}

/* recv: the bytes queued here first (the oldest): how many copied into buf (MSG_PEEK: left queued). The host's
 * window counts them until told: every KBP_TCP_READ_REPORT bytes, or when the queue empties and the window
 * armed is short of that (a request/response app with a wide open window costs the host nothing) */
size_t kbp_tcpc_read(struct kbp_sock *s, void *buf, size_t len, int peek) {
    size_t k = len < s->cq_len ? len : s->cq_len;
    memcpy(buf, s->cq + s->cq_off, k);
    if (!peek) {
        s->cq_off += k, s->cq_len -= k;
        if (!s->cq_len) s->cq_off = 0;
        s->cq_read += k;
        if (s->cq_read >= KBP_TCP_READ_REPORT ||
            (s->cq_read && !s->cq_len && (!s->pred || !s->pred->armed || s->pred->rcv_wnd < KBP_TCP_READ_REPORT)))
            report_read(s);
    }
    return k;
}

void kbp_tcpc_after_fork_child(void) {
    memset(bucket, 0, sizeof(bucket));
    hitlen = 0;
}

void kbp_tcp_catch_up(void) {
    if (!hitlen) return;
    size_t n = hitlen;
    hitlen = 0; /* before the call: kbp_py_call catches up first, and this is that */
    hits_due = 0;
    kbp_py_call("hits", NULL, 0, "(y#d)", hitlog, (ssize_t)n, now_s());
}

