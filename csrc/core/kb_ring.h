/* kb_ring.h: the AF_XDP ring protocol in C, the twin of kbypass/xsk/ring.py (libxdp's xsk.h is the model).
 *
 * A ring is a power-of-two array of slots plus three u32 words the kernel shares with us: producer,
 * consumer, flags. Indexes run free and wrap at 2**32; a slot is `index & mask`.
 *   producer rings (fill, TX):      reserve(n) -> write the slots -> submit(n)
 *   consumer rings (RX, completion): peek(n)   -> read the slots  -> release(n)
 * Each side keeps a cached copy of the other side's index and re-reads the shared one only when the cache
 * shows fewer entries than asked for; a producer's consumer cache is kept `size` ahead, so free slots are
 * cached_cons - cached_prod. Unlike libxdp's xsk_ring_prod__reserve (all or nothing), reserve and peek
 * here return up to n, as ring.py's do: the two implement one protocol and take turns on the same ring.
 *
 * One struct kb_ring per ring, in memory both front ends see: the Python Ring owns it (ring.py's KbRing,
 * a ctypes Structure with these fields in this order; a test compares the layouts) and C is given its
 * address. So the cached indexes exist once, and Python and C can each take the next step on a ring.
 *
 * Memory ordering. The kernel (net/xdp/xsk_queue.h) pairs its side with smp_load_acquire /
 * smp_store_release; ours must be the mirror image:
 *  - the load of the other side's index is an acquire: our slot reads (consumer) or slot writes (producer)
 *    cannot move before it, so we never read a slot before the kernel filled it, nor overwrite one it has
 *    not read yet;
 *  - the store of our index is a release: our slot accesses before it are done (visible) first, so the
 *    kernel never sees the index move past a slot we have not finished with.
 * x86-64 (TSO) already gives both for plain MOVs (loads are not reordered with later loads or stores,
 * stores not with earlier stores): __atomic acquire/release compile to plain MOVs there and only stop the
 * compiler. arm64 is weakly ordered: they compile to LDAR / STLR, which give exactly these two orders.
 * The one pair neither orders is a store then a load of another word (submit, then needs_wakeup): as in
 * libxdp, the worst case is a late wakeup, and callers re-read the flag on their next empty look.
 * No Python in this directory: the core links into a preload shim as well as into the CPython modules.
 */
#ifndef KB_RING_H
#define KB_RING_H

#include <stdint.h>

#define KB_RING_NEED_WAKEUP 1u /* XDP_RING_NEED_WAKEUP in the flags word */
#define KB_PKT_CONTD 1u        /* XDP_PKT_CONTD in a descriptor's options: not the packet's last frame */

struct kb_ring {
    /* do not touch these members, use the functions below (Python's ring.py is the other user) */
    uint32_t cached_prod;
    uint32_t cached_cons;
    uint32_t mask;
    uint32_t size;
    uint32_t *producer;
    uint32_t *consumer;
    void *ring;
    uint32_t *flags;
};

/* struct xdp_desc: the slots of the RX and TX rings (fill and completion slots are u64 addresses) */
struct kb_desc {
    uint64_t addr;
    uint32_t len;
    uint32_t options;
};

/* Whether an RX descriptor lies wholly inside its own UMEM frame (aligned mode: the chunk of frame_size bytes,
 * a power of two, that addr is in) in a UMEM of umem_size bytes (whole frames): all the kernel ever writes. A
 * descriptor that crosses into the next frame is refused as one outside the UMEM is (kbypass.xsk.umem's
 * desc_in_frame is the Python twin; a test holds the two to one verdict). */
static inline int kb_desc_in_frame(const struct kb_desc *d, uint64_t umem_size, uint32_t frame_size) {
    return d->addr < umem_size && d->len <= frame_size - (d->addr & (uint64_t)(frame_size - 1));
}

static inline uint32_t kb_load_acquire(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void kb_store_release(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* Is r a ring these functions can use (power-of-two size, matching mask, all pointers set)? */
static inline int kb_ring_valid(const struct kb_ring *r) {
    return r->size && !(r->size & (r->size - 1)) && r->mask == r->size - 1 && r->producer && r->consumer &&
           r->ring && r->flags;
}

static inline uint64_t *kb_ring_addr(const struct kb_ring *r, uint32_t idx) {
    return &((uint64_t *)r->ring)[idx & r->mask];
}

static inline struct kb_desc *kb_ring_desc(const struct kb_ring *r, uint32_t idx) {
    return &((struct kb_desc *)r->ring)[idx & r->mask];
}

static inline int kb_ring_needs_wakeup(const struct kb_ring *r) {
    return (kb_load_acquire(r->flags) & KB_RING_NEED_WAKEUP) != 0;
}

/* ---- producer rings (fill, TX) */

/* Free slots, re-reading the kernel's consumer index only when the cache shows fewer than nb. */
static inline uint32_t kb_ring_prod_free(struct kb_ring *r, uint32_t nb) {
    uint32_t free_entries = r->cached_cons - r->cached_prod;
    if (free_entries >= nb) return free_entries;
    r->cached_cons = kb_load_acquire(r->consumer) + r->size;
    return r->cached_cons - r->cached_prod;
}

/* Claim up to nb slots from *idx on; returns how many. Write them, then submit that many. */
static inline uint32_t kb_ring_prod_reserve(struct kb_ring *r, uint32_t nb, uint32_t *idx) {
    uint32_t free_entries = kb_ring_prod_free(r, nb);
    uint32_t n = free_entries < nb ? free_entries : nb;
    *idx = r->cached_prod;
    r->cached_prod += n;
    return n;
}

/* Drop the cached indexes and read the ring's own: for a ring other processes produce into too (a shared
 * queue's fill ring), under their common lock, before reserving (ring.py ProducerRing.resync). */
static inline void kb_ring_prod_resync(struct kb_ring *r) {
    r->cached_prod = *r->producer;
    r->cached_cons = kb_load_acquire(r->consumer) + r->size;
}

/* Give back the last nb reserved, not yet submitted slots. */
static inline void kb_ring_prod_cancel(struct kb_ring *r, uint32_t nb) { r->cached_prod -= nb; }

/* Publish nb reserved slots (the release store: the slot writes are visible first). */
static inline void kb_ring_prod_submit(struct kb_ring *r, uint32_t nb) {
    kb_store_release(r->producer, *r->producer + nb);
}

/* ---- consumer rings (RX, completion) */

/* Filled slots, re-reading the kernel's producer index only when the cache holds fewer than nb. */
static inline uint32_t kb_ring_cons_avail(struct kb_ring *r, uint32_t nb) {
    uint32_t entries = r->cached_prod - r->cached_cons;
    if (entries >= nb) return entries;
    r->cached_prod = kb_load_acquire(r->producer);
    return r->cached_prod - r->cached_cons;
}

/* Up to nb filled slots from *idx on; returns how many. Read them, then release that many. */
static inline uint32_t kb_ring_cons_peek(struct kb_ring *r, uint32_t nb, uint32_t *idx) {
    uint32_t entries = kb_ring_cons_avail(r, nb);
    uint32_t n = entries < nb ? entries : nb;
    *idx = r->cached_cons;
    r->cached_cons += n;
    return n;
}

/* Un-peek the last nb slots (the next peek returns them again). */
static inline void kb_ring_cons_cancel(struct kb_ring *r, uint32_t nb) { r->cached_cons -= nb; }

/* kb_ring_cons_peek for the RX ring of a multi-buffer socket (XDP_USE_SG), the twin of ring.py's
 * peek_packets: up to nb slots ending at the end of a packet (a descriptor without KB_PKT_CONTD); when the
 * first packet alone has more than nb frames, all of them; none when the ring holds no whole packet (the
 * kernel publishes a packet's descriptors with one producer store, so that is only "not yet"). On a socket
 * without multi-buffer no descriptor has KB_PKT_CONTD: one extra load per call. */
static inline uint32_t kb_ring_cons_peek_packets(struct kb_ring *r, uint32_t nb, uint32_t *idx) {
    uint32_t n = kb_ring_cons_peek(r, nb, idx);
    if (!n || !(kb_ring_desc(r, *idx + n - 1)->options & KB_PKT_CONTD)) return n;
    uint32_t keep = n;
    while (keep && (kb_ring_desc(r, *idx + keep - 1)->options & KB_PKT_CONTD)) keep--;
    if (keep) {
        kb_ring_cons_cancel(r, n - keep);
        return keep;
    }
    kb_ring_cons_cancel(r, n);
    uint32_t have = kb_ring_cons_avail(r, n + 1);
    for (uint32_t i = 0; i < have; i++)
        if (!(kb_ring_desc(r, *idx + i)->options & KB_PKT_CONTD)) return kb_ring_cons_peek(r, i + 1, idx);
    return 0;
}

/* peek_broken: every descriptor on the ring when none of them ends a packet (all KB_PKT_CONTD), 0 when the
 * ring is empty or holds a packet's end. The kernel publishes a packet's descriptors with one producer
 * store, so a ring of continuations alone never completes (a kernel bug): the caller takes them off and
 * counts them (KB_RX_BROKEN_CHAINS) rather than waiting for an end that cannot come. */
static inline uint32_t kb_ring_cons_peek_broken(struct kb_ring *r, uint32_t *idx) {
    uint32_t have = kb_ring_cons_avail(r, r->size);
    *idx = r->cached_cons;
    for (uint32_t i = 0; i < have; i++)
        if (!(kb_ring_desc(r, *idx + i)->options & KB_PKT_CONTD)) return 0;
    return have ? kb_ring_cons_peek(r, have, idx) : 0;
}

/* Hand nb peeked slots back to the kernel (the release store: the slot reads are done first). */
static inline void kb_ring_cons_release(struct kb_ring *r, uint32_t nb) {
    kb_store_release(r->consumer, *r->consumer + nb);
}

#endif
