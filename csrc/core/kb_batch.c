/* kb_batch.c: per-batch header work (see kb_batch.h). */
#include "kb_batch.h"

#include <string.h>

#include "kb_ring.h"

long long kb_batch_check(uint64_t memlen, const struct kb_descs *d, uint64_t need) {
    for (size_t i = 0; i < d->n; i++) {
        uint64_t a = kb_descs_addr(d, i);
        if (kb_descs_len(d, i) < need) return (long long)i;
        if (a > memlen || memlen - a < need) return -2 - (long long)i;
    }
    return -1;
}

int kb_batch_swap_ok(int64_t offset, int64_t width, int64_t need) {
    return offset >= 0 && width > 0 && width <= 64 && need >= offset && need - offset >= 2 * width;
}

void kb_batch_swap(uint8_t *mem, const struct kb_descs *d, size_t offset, size_t width) {
    uint8_t tmp[64];
    for (size_t i = 0; i < d->n; i++) {
        uint8_t *p = mem + kb_descs_addr(d, i) + offset;
        memcpy(tmp, p, width);
        memcpy(p, p + width, width);
        memcpy(p + width, tmp, width);
    }
}

void kb_batch_stamp(uint8_t *mem, const struct kb_descs *d, size_t offset, uint64_t first_seq, uint64_t now_ns) {
    uint64_t t = __builtin_bswap64(now_ns);
    for (size_t i = 0; i < d->n; i++) {
        uint8_t *p = mem + kb_descs_addr(d, i) + offset;
        uint64_t s = __builtin_bswap64(first_seq + (uint64_t)i);
        memcpy(p, &s, 8);
        memcpy(p + 8, &t, 8);
    }
}

static void copy_desc(struct kb_descs *to, size_t j, const struct kb_descs *from, size_t i) {
    memcpy(to->base + (ptrdiff_t)j * to->stride, from->base + (ptrdiff_t)i * from->stride, 16);
}

long long kb_batch_split_chains(const struct kb_descs *ring, struct kb_descs *heads, struct kb_descs *tails,
                                uint32_t *ntails, struct kb_descs *kept) {
    size_t n = ring->n;
    if (n && (kb_descs_options(ring, n - 1) & KB_PKT_CONTD)) return -1;
    size_t k = 0, t = 0;
    int in_packet = 0; /* the previous descriptor had KB_PKT_CONTD: this one continues its packet */
    for (size_t i = 0; i < n; i++) {
        uint32_t opt = kb_descs_options(ring, i);
        copy_desc(kept, i, ring, i);
        kb_descs_set_options(kept, i, opt & KB_PKT_CONTD);
        if (in_packet) {
            copy_desc(tails, t++, ring, i);
            ntails[k - 1]++;
        } else {
            copy_desc(heads, k, ring, i);
            ntails[k++] = 0;
        }
        in_packet = (opt & KB_PKT_CONTD) != 0;
    }
    return (long long)k;
}

size_t kb_batch_chain_ends(const struct kb_descs *d, int64_t *ends, uint64_t max_frames, int *stopped) {
    size_t k = 0, start = 0;
    *stopped = 0;
    if (d->n && (kb_descs_options(d, d->n - 1) & KB_PKT_CONTD)) {
        *stopped = -1;
        return 0;
    }
    for (size_t i = 0; i < d->n; i++) {
        if (kb_descs_options(d, i) & KB_PKT_CONTD) continue;
        if (i + 1 - start > max_frames) {
            *stopped = 1;
            return k;
        }
        ends[k++] = (int64_t)(i + 1);
        start = i + 1;
    }
    return k;
}
