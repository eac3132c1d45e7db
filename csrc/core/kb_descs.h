/* kb_descs.h: a batch's descriptors seen from C: kbypass.port.batch.DESC records (u64 addr, u32 len,
 * u32 options, the layout of struct xdp_desc) in any 1-D array with any stride (a numpy slice of a batch
 * is one). The front end says where they are; the core reads and writes them through these accessors. */
#ifndef KB_DESCS_H
#define KB_DESCS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct kb_descs {
    uint8_t *base; /* record 0 */
    size_t n;
    ptrdiff_t stride; /* bytes from one record to the next */
};

/* memcpy: a strided record need not be aligned */
static inline uint64_t kb_descs_addr(const struct kb_descs *d, size_t i) {
    uint64_t a;
    memcpy(&a, d->base + (ptrdiff_t)i * d->stride, 8);
    return a;
}

static inline uint32_t kb_descs_len(const struct kb_descs *d, size_t i) {
    uint32_t n;
    memcpy(&n, d->base + (ptrdiff_t)i * d->stride + 8, 4);
    return n;
}

static inline void kb_descs_set_len(struct kb_descs *d, size_t i, uint32_t n) {
    memcpy(d->base + (ptrdiff_t)i * d->stride + 8, &n, 4);
}

static inline uint32_t kb_descs_options(const struct kb_descs *d, size_t i) {
    uint32_t o;
    memcpy(&o, d->base + (ptrdiff_t)i * d->stride + 12, 4);
    return o;
}

static inline void kb_descs_set_options(struct kb_descs *d, size_t i, uint32_t o) {
    memcpy(d->base + (ptrdiff_t)i * d->stride + 12, &o, 4);
}

#endif
