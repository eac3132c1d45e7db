/* kb_lane.c: the UDP endpoint's per-message ring path (see kb_lane.h). */
#include "kb_lane.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "kb_port.h"
#include "kb_umem.h"

int kb_lane_setup(struct kb_lane *l) {
    if (!kb_ring_valid(l->rx) || !kb_ring_valid(l->fill) || !kb_ring_valid(l->tx) || !kb_ring_valid(l->comp))
        return KB_LANE_E_RINGS;
    uint32_t fs = l->frame_size;
    /* a whole number of frames: then every address below umem_size has its state in state[addr >> shift] */
    if (fs == 0 || (fs & (fs - 1)) || (l->umem_size & (fs - 1)) || l->stash_cap <= 0 ||
        l->stash_cap > KB_LANE_STASH_MAX || l->busy_every == 0)
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

int kb_lane_send(struct kb_lane *l, const uint8_t *head, uint32_t hlen, const uint8_t *payload, uint32_t plen,
                 int udp, uint16_t ident) {
    uint64_t n = (uint64_t)hlen + plen;
    if (n == 0 || n > l->frame_size || (udp && (hlen != KB_UDP_HLEN || plen > KB_UDP_MAX_PAYLOAD)))
        return KB_LANE_E_TOO_BIG;
    if (l->nstash == 0) {
        int r = kb_lane_reclaim(l);
        if (r < 0) return r;
        if (l->nstash == 0) return KB_LANE_NO_FRAME;
    }
    uint32_t idx;
    if (!kb_ring_prod_reserve(l->tx, 1, &idx)) {
        if (kick_tx(l)) return KB_LANE_E_SYS; /* let the kernel drain the ring, then look again once */
        if (!kb_ring_prod_reserve(l->tx, 1, &idx)) return KB_LANE_NO_SLOT;
    }
    uint64_t addr = l->stash[l->nstash - 1];
    if (addr >= l->umem_size || n > l->frame_size - (addr & (l->frame_size - 1))) {
        kb_ring_prod_cancel(l->tx, 1);
        return KB_LANE_E_STASH;
    }
    l->nstash--;
    uint8_t *f = l->umem + addr;
    memcpy(f, head, hlen);
    if (plen) memcpy(f + hlen, payload, plen);
    if (udp) kb_udp_finish(f, plen, ident, 1);
    struct kb_desc *d = kb_ring_desc(l->tx, idx);
    d->addr = addr;
    d->len = (uint32_t)n;
    d->options = 0;
    l->state[addr >> l->shift] = KB_FRAME_TX;
    kb_ring_prod_submit(l->tx, 1);
    l->stats[KB_IN_TX]++;
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
