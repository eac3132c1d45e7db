/* kb_lane.c: the UDP endpoint's per-message ring path (see kb_lane.h). */
#include "kb_lane.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "kb_port.h"
#include "kb_umem.h"

int kb_lane_setup(struct kb_lane *l) {
    if (!kb_ring_valid(l->rx) || !kb_ring_valid(l->fill) || !kb_ring_valid(l->tx) || !kb_ring_valid(l->comp))
        return KB_LANE_E_RINGS;
    uint32_t fs = l->frame_size;
    /* a whole number of frames: then every address below umem_size has its state in state[addr >> shift] */
    if (fs == 0 || (fs & (fs - 1)) || (l->umem_size & (fs - 1)) || l->stash_cap <= 0 ||
        l->stash_cap > KB_LANE_STASH_SLOTS || l->busy_every == 0)
        return KB_LANE_E_SIZES;
    /* a chain takes all its frames from the stash at once */
    if (l->chains && (l->tx_room == 0 || l->tx_room > fs || l->max_frames == 0 || l->max_frames > (uint32_t)l->stash_cap))
        return KB_LANE_E_SIZES;
    l->shift = (uint32_t)__builtin_ctz(fs);
    l->chunk_mask = ~(uint64_t)(fs - 1);
    l->empty_looks = 0;
    l->nstash = 0;
    return 0;
}

/* sendto(MSG_DONTWAIT) runs copy-mode TX; the transient errors only mean "later". */
static int kick_tx(struct kb_lane *l) {
    if (sendto(l->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0) {
        int e = errno;
        if (e == EAGAIN || e == EBUSY || e == ENOBUFS || e == ENETDOWN || e == EINTR) return 0;
        l->sys_errno = e;
        return KB_LANE_E_SYS;
    }
    return 0;
}

int kb_lane_rx_next(struct kb_lane *l, struct kb_desc *d) {
    uint32_t idx;
    if (!kb_ring_cons_peek(l->rx, 1, &idx)) return KB_LANE_EMPTY;
    if (!kb_ring_prod_free(l->fill, 1)) {
        kb_ring_cons_cancel(l->rx, 1);
        return KB_LANE_FILL_FULL;
    }
    *d = *kb_ring_desc(l->rx, idx);
    if (!kb_desc_in_frame(d, l->umem_size, l->frame_size)) {
        /* the kernel only hands back frames we lent it, each within its frame; never read past one */
        kb_ring_cons_cancel(l->rx, 1);
        return KB_LANE_E_RX_DESC;
    }
    return KB_LANE_FRAME;
}

int kb_lane_rx_copy(struct kb_lane *l, uint8_t *out, uint32_t cap, uint32_t *len) {
    uint32_t idx, n = l->chains ? kb_ring_cons_peek_packets(l->rx, 1, &idx) : kb_ring_cons_peek(l->rx, 1, &idx);
    if (!n) {
        if (l->chains) kb_port_drop_broken(l->rx, l->fill, l->umem_size, l->frame_size, l->stats);
        return KB_LANE_EMPTY;
    }
    if (kb_ring_prod_free(l->fill, n) < n) {
        kb_ring_cons_cancel(l->rx, n);
        return KB_LANE_FILL_FULL;
    }
    uint64_t total = 0;
    for (uint32_t k = 0; k < n; k++) {
        const struct kb_desc *d = kb_ring_desc(l->rx, idx + k);
        /* the kernel only hands back frames we lent it, each within its own frame; never read past one */
        if (!kb_desc_in_frame(d, l->umem_size, l->frame_size)) {
            kb_ring_cons_cancel(l->rx, n);
            return KB_LANE_E_RX_DESC;
        }
        total += d->len;
    }
    if (total > cap) {
        kb_ring_cons_cancel(l->rx, n);
        *len = total > UINT32_MAX ? UINT32_MAX : (uint32_t)total;
        return KB_LANE_E_TOO_BIG;
    }
    uint32_t at = 0, fidx;
    for (uint32_t k = 0; k < n; k++) {
        /* read once more from shared ring memory: copy the descriptor and check it again, so that a
         * descriptor rewritten since the check above can never take the copy past `out` or its frame */
        struct kb_desc d = *kb_ring_desc(l->rx, idx + k);
        if (!kb_desc_in_frame(&d, l->umem_size, l->frame_size) || d.len > cap - at) {
            kb_ring_cons_cancel(l->rx, n);
            return KB_LANE_E_RX_DESC;
        }
        memcpy(out + at, l->umem + d.addr, d.len);
        at += d.len;
    }
    kb_ring_prod_reserve(l->fill, n, &fidx); /* prod_free saw the room */
    for (uint32_t k = 0; k < n; k++) /* the frames never leave state FILL */
        *kb_ring_addr(l->fill, fidx + k) = kb_ring_desc(l->rx, idx + k)->addr & l->chunk_mask;
    kb_ring_cons_release(l->rx, n);
    kb_ring_prod_submit(l->fill, n);
    l->stats[KB_RX_PACKETS]++;
    l->stats[KB_RX_BYTES] += total;
    *len = at;
    return KB_LANE_FRAME;
}

void kb_lane_rx_done(struct kb_lane *l, const struct kb_desc *d) {
    uint32_t idx;
    kb_ring_cons_release(l->rx, 1);
    kb_ring_prod_reserve(l->fill, 1, &idx); /* rx_next saw the free slot */
    *kb_ring_addr(l->fill, idx) = d->addr & l->chunk_mask; /* it never leaves state FILL */
    kb_ring_prod_submit(l->fill, 1);
    l->stats[KB_RX_PACKETS]++;
    l->stats[KB_RX_BYTES] += d->len;
}

void kb_lane_rx_abort(struct kb_lane *l) { kb_ring_cons_cancel(l->rx, 1); }

void kb_lane_wake(struct kb_lane *l) {
    /* on veth and generic XDP the ring is filled from the sender's softirq: a syscall on every empty look
     * of a busy spin only delays seeing the frame */
    if (kb_ring_needs_wakeup(l->fill) || (l->busy && ++l->empty_looks % l->busy_every == 0)) {
        char b;
        (void)recv(l->fd, &b, 0, MSG_DONTWAIT); /* EAGAIN and friends: the rings tell the rest */
    }
}

static uint64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int kb_lanes_spin(struct kb_lane *const *lanes, int n, uint64_t ns) {
    uint64_t end = mono_ns() + ns;
    for (unsigned k = 1;; k++) {
        for (int i = 0; i < n; i++)
            if (kb_ring_cons_avail(lanes[i]->rx, 1)) return 1;
        if ((k & 255) == 0) {
            for (int i = 0; i < n; i++) kb_lane_wake(lanes[i]);
            if (mono_ns() >= end) return 0;
        }
    }
}

int kb_lane_reclaim(struct kb_lane *l) {
    uint32_t room = (uint32_t)(l->stash_cap - l->nstash), idx;
    uint32_t n = room ? kb_ring_cons_peek(l->comp, room, &idx) : 0;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t a = *kb_ring_addr(l->comp, idx + k);
        if (a >= l->umem_size) { /* as push_free and mark check theirs: never write past the states */
            kb_ring_cons_cancel(l->comp, n);
            l->bad_addr = a;
            return KB_LANE_E_COMP_ADDR;
        }
    }
    for (uint32_t k = 0; k < n; k++) {
        uint64_t a = *kb_ring_addr(l->comp, idx + k);
        l->state[a >> l->shift] = KB_FRAME_APP;
        l->stash[l->nstash++] = a;
    }
    if (n) {
        kb_ring_cons_release(l->comp, n);
        l->stats[KB_IN_TX] -= n;
        l->stats[KB_TX_COMPLETED] += n;
    }
    return (int)n;
}

/* Bytes [off, off + n) of the message [head][payload] into dst. */
static void copy_span(uint8_t *dst, const uint8_t *head, uint32_t hlen, const uint8_t *payload, uint32_t off,
                      uint32_t n) {
    if (off < hlen) {
        uint32_t h = hlen - off < n ? hlen - off : n;
        memcpy(dst, head + off, h);
        dst += h, off += h, n -= h;
    }
    if (n) memcpy(dst, payload + (off - hlen), n);
}

int kb_lane_send(struct kb_lane *l, const uint8_t *head, uint32_t hlen, const uint8_t *payload, uint32_t plen,
                 int udp, uint16_t ident) {
    uint64_t n = (uint64_t)hlen + plen;
    /* one frame of frame_size bytes, or on a chains lane a chain of frames of tx_room bytes each */
    uint32_t room = l->chains ? l->tx_room : l->frame_size;
    uint64_t k64 = (n + room - 1) / room;
    if (n == 0 || k64 > (l->chains ? l->max_frames : 1) || (udp && (hlen != KB_UDP_HLEN || plen > KB_UDP_MAX_PAYLOAD)))
        return KB_LANE_E_TOO_BIG;
    uint32_t k = (uint32_t)k64;
    if ((uint32_t)l->nstash < k) {
        int r = kb_lane_reclaim(l);
        if (r < 0) return r;
        if ((uint32_t)l->nstash < k) return KB_LANE_NO_FRAME;
    }
    uint32_t idx, got = kb_ring_prod_reserve(l->tx, k, &idx);
    if (got < k) {
        kb_ring_prod_cancel(l->tx, got);
        if (kick_tx(l)) return KB_LANE_E_SYS; /* let the kernel drain the ring, then look again once */
        got = kb_ring_prod_reserve(l->tx, k, &idx);
        if (got < k) {
            kb_ring_prod_cancel(l->tx, got);
            return KB_LANE_NO_SLOT;
        }
    }
    uint64_t *addrs = &l->stash[l->nstash - (int)k]; /* the chain's frames, in order */
    for (uint32_t m = 0; m < k; m++) {
        uint64_t piece = n - (uint64_t)m * room < room ? n - (uint64_t)m * room : room;
        if (addrs[m] >= l->umem_size || piece > l->frame_size - (addrs[m] & (l->frame_size - 1))) {
            kb_ring_prod_cancel(l->tx, k); /* a completion the kernel made up: nothing is written */
            return KB_LANE_E_STASH;
        }
    }
    uint8_t hdr[KB_UDP_HLEN];
    if (udp) { /* the header completed apart: the checksum sums the payload where it is */
        memcpy(hdr, head, KB_UDP_HLEN);
        kb_udp_finish_split(hdr, payload, plen, ident, 1);
        head = hdr;
    }
    l->nstash -= (int)k;
    for (uint32_t m = 0; m < k; m++) {
        uint64_t addr = addrs[m];
        uint32_t off = m * room, piece = (uint32_t)(n - off < room ? n - off : room);
        copy_span(l->umem + addr, head, hlen, payload, off, piece);
        struct kb_desc *d = kb_ring_desc(l->tx, idx + m);
        d->addr = addr;
        d->len = piece;
        d->options = m + 1 < k ? KB_PKT_CONTD : 0;
        l->state[addr >> l->shift] = KB_FRAME_TX;
    }
    kb_ring_prod_submit(l->tx, k);
    l->stats[KB_IN_TX] += k;
    l->stats[KB_TX_PACKETS]++;
    l->stats[KB_TX_BYTES] += n;
    if (!l->defer_kick && (l->copy_mode || l->busy || kb_ring_needs_wakeup(l->tx))) {
        l->stats[KB_TX_KICKS]++;
        return kick_tx(l) ? KB_LANE_E_SYS : KB_LANE_SENT;
    }
    return KB_LANE_SENT;
}

int kb_lane_give(struct kb_lane *l, uint64_t addr) {
    if (l->nstash >= l->stash_cap) return 0;
    if (addr >= l->umem_size || l->state[addr >> l->shift] != KB_FRAME_APP) {
        l->bad_addr = addr;
        return KB_LANE_E_NOT_APP;
    }
    l->stash[l->nstash++] = addr;
    return 1;
}
