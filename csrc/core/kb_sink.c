/* kb_sink.c: see kb_sink.h. */
#include "kb_sink.h"

#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "kb_pool_lock.h"
#include "kb_port.h"

static inline uint64_t be64_at(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static long long give_back(struct kb_sink *k, uint32_t n, uint32_t ri, uint64_t *bytes, size_t *nlat);

/* The first n descriptors from ri cut back to whole packets (multi-buffer: never half a packet taken). */
static uint32_t whole_packets(const struct kb_ring *rx, uint32_t ri, uint32_t n) {
    while (n && (kb_ring_desc(rx, ri + n - 1)->options & KB_PKT_CONTD)) n--;
    return n;
}

/* No whole packet on the RX ring: when it holds continuations alone (kb_ring_cons_peek_broken, a kernel bug),
 * their frames go back to the fill ring and are counted in KB_RX_BROKEN_CHAINS, so the sink does not wait
 * for an end that cannot come. Returns 0 (no packet taken). */
static long long drop_broken(struct kb_sink *k) {
    if (k->lock) return 0; /* a shared queue's fill ring needs the pool's lock: left to receive() */
    kb_port_drop_broken(k->rx, k->fill, k->umem_size, k->frame_size, k->stats);
    return 0;
}

long long kb_sink_drain(struct kb_sink *k, uint32_t budget, uint64_t *bytes, size_t *nlat) {
    *bytes = 0;
    *nlat = 0;
    uint32_t ri;
    uint32_t n = kb_ring_cons_peek_packets(k->rx, budget, &ri);
    if (!n) {
        if (kb_ring_needs_wakeup(k->fill)) {
            recvfrom(k->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
            k->stats[KB_RX_WAKEUPS]++;
            n = kb_ring_cons_peek_packets(k->rx, budget, &ri);
        }
        if (!n) return drop_broken(k);
    }
    if (!k->lock) return give_back(k, n, ri, bytes, nlat);
    /* a shared queue: the fill ring is every member's, so under the pool's lock, from its own indexes */
    if ((k->lock_err = kb_pool_lock(k->lock))) {
        kb_ring_cons_cancel(k->rx, n);
        return KB_SINK_E_LOCK;
    }
    kb_ring_prod_resync(k->fill);
    long long r = give_back(k, n, ri, bytes, nlat);
    kb_pool_unlock(k->lock);
    return r;
}

/* The n frames peeked at ri, checked, read and given straight back to the fill ring. */
static long long give_back(struct kb_sink *k, uint32_t n, uint32_t ri, uint64_t *bytes, size_t *nlat) {
    uint32_t fi;
    uint32_t room = kb_ring_prod_reserve(k->fill, n, &fi);
    if (room < n) { /* a queue of one's own: never (every frame taken left a fill slot behind); shared: can */
        uint32_t m = whole_packets(k->rx, ri, room);
        kb_ring_prod_cancel(k->fill, room - m);
        kb_ring_cons_cancel(k->rx, n - m);
        n = m;
        if (!n) return 0;
    }
    uint64_t chunk = ~(uint64_t)(k->frame_size - 1), total = 0;
    for (uint32_t i = 0; i < n; i++) { /* all descriptors checked before anything is given back */
        const struct kb_desc *d = kb_ring_desc(k->rx, ri + i);
        if (!kb_desc_in_frame(d, k->umem_size, k->frame_size)) {
            /* the whole packets before it are taken as usual; it, the packet it is part of and the rest
             * stay on the RX ring, their fill slots unused, so the next call meets it first and takes nothing */
            uint32_t m = whole_packets(k->rx, ri, i);
            kb_ring_prod_cancel(k->fill, n - m);
            kb_ring_cons_cancel(k->rx, n - m);
            if (!m) {
                k->bad_addr = d->addr;
                k->bad_len = d->len;
                return KB_SINK_E_RX_DESC;
            }
            n = m;
            break;
        }
    }
    int64_t now = now_ns();
    if (!k->first_ns) k->first_ns = now;
    k->last_ns = now;
    size_t nseq = 0, nl = 0, need = k->stamp_off + 16;
    uint32_t packets = 0;
    int head = 1; /* the descriptor at hand is a packet's first frame (multi-buffer: the one after a last) */
    for (uint32_t i = 0; i < n; i++) {
        const struct kb_desc *d = kb_ring_desc(k->rx, ri + i);
        total += d->len;
        if (head && k->stamp_off && d->len >= need) { /* the stamp is in the first frame, as headers are */
            const uint8_t *p = k->umem + d->addr + k->stamp_off;
            k->seqs[nseq++] = (int64_t)be64_at(p);
            int64_t sent = (int64_t)be64_at(p + 8);
            if (sent) k->lat[nl++] = now - sent; /* a sampling generator leaves the time zero */
        }
        head = !(d->options & KB_PKT_CONTD);
        packets += head;
        *kb_ring_addr(k->fill, fi + i) = d->addr & chunk;
    }
    kb_ring_prod_submit(k->fill, n);
    kb_ring_cons_release(k->rx, n);
    k->stats[KB_RX_PACKETS] += packets;
    k->stats[KB_RX_BYTES] += total;
    if (k->seq) kb_seq_update(k->seq, k->seen, k->window, k->seqs, nseq);
    *bytes = total;
    *nlat = nl;
    return packets;
}

long long kb_sink_run(struct kb_sink *k, uint32_t budget, int wait_ms, uint64_t *bytes, size_t *nlat) {
    *bytes = 0;
    *nlat = 0;
    struct kb_sink step = *k;
    int64_t deadline = now_ns() + (int64_t)wait_ms * 1000000;
    uint32_t total = 0;
    while (total < budget) {
        uint64_t b;
        size_t nl;
        long long n = kb_sink_drain(&step, budget - total, &b, &nl);
        if (n < 0) { /* after frames were taken: report them, the next call meets the error first */
            if (total) break;
            k->bad_addr = step.bad_addr;
            k->bad_len = step.bad_len;
            k->lock_err = step.lock_err;
            return n;
        }
        if (n > 0) {
            total += (uint32_t)n;
            *bytes += b;
            *nlat += nl;
            step.lat += nl; /* the next step's latencies after these */
            k->first_ns = step.first_ns;
            k->last_ns = step.last_ns;
            continue;
        }
        int64_t left = deadline - now_ns();
        if (left <= 0) break;
        struct pollfd pfd = {.fd = k->fd, .events = POLLIN};
        int ms = (int)((left + 999999) / 1000000);
        if (poll(&pfd, 1, ms) <= 0) break; /* quiet for the whole wait, or a signal: the caller's turn */
    }
    return total;
}
