/* kb_umem.c: UMEM frame-state transitions of whole batches (see kb_umem.h). */
#include "kb_umem.h"

long long kb_umem_claim(struct kb_umem_states *u, const struct kb_descs *d, uint64_t umem_size,
                        uint32_t frame_size, uint8_t expected, uint8_t to, int tx) {
    long long total = 0;
    size_t i = 0;
    int ok = 1;
    for (; i < d->n; i++) {
        uint64_t a = kb_descs_addr(d, i);
        if (a >= umem_size || (a >> u->shift) >= u->frames) {
            ok = 0;
            break;
        }
        if (tx) {
            uint32_t n = kb_descs_len(d, i);
            if (n == 0 || (a & (frame_size - 1)) + n > frame_size) {
                ok = 0;
                break;
            }
        }
        uint8_t *s = &u->state[a >> u->shift];
        if (*s != expected) { /* wrong owner, or this frame already appeared in this batch */
            ok = 0;
            break;
        }
        *s = to;
        total += kb_descs_len(d, i);
    }
    if (ok) return total;
    for (size_t j = 0; j < i; j++) u->state[kb_descs_addr(d, j) >> u->shift] = expected; /* put back */
    return -1;
}

long long kb_umem_mark(struct kb_umem_states *u, const struct kb_descs *d, uint8_t to, uint64_t *total) {
    uint64_t sum = 0;
    for (size_t i = 0; i < d->n; i++) {
        uint64_t f = kb_descs_addr(d, i) >> u->shift;
        if (f >= u->frames) return -1 - (long long)i; /* the kernel's addresses, still checked */
        u->state[f] = to;
        sum += kb_descs_len(d, i);
    }
    *total = sum;
    return 0;
}

long long kb_umem_push_free(struct kb_umem_states *u, ptrdiff_t *stack, size_t cap, size_t top,
                            const uint64_t *addrs, size_t n, uint64_t *bad) {
    if (top > cap || n > cap - top) return -1; /* `top + n` could wrap */
    for (size_t i = 0; i < n; i++) {
        uint64_t f = addrs[i] >> u->shift;
        if (f >= u->frames) {
            *bad = addrs[i];
            return -2;
        }
        u->state[f] = KB_FRAME_FREE;
        stack[top + i] = (ptrdiff_t)f;
    }
    return (long long)(top + n);
}
