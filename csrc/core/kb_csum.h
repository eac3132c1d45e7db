/* kb_csum.h: the internet checksum (RFC 1071) of IPv4 and UDP headers. */
#ifndef KB_CSUM_H
#define KB_CSUM_H

#include <stddef.h>
#include <stdint.h>

static inline uint16_t kb_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline void kb_put_be16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* acc plus the one's-complement sum of n bytes read as big-endian words, an odd tail padded with zero;
 * unfolded (a u64 cannot overflow on any frame), fold it with kb_csum_fold */
static inline uint64_t kb_csum_add(const uint8_t *p, size_t n, uint64_t acc) {
    while (n >= 2) {
        acc += ((uint32_t)p[0] << 8) | p[1];
        p += 2;
        n -= 2;
    }
    if (n) acc += (uint32_t)p[0] << 8;
    return acc;
}

static inline uint16_t kb_csum_fold(uint64_t s) {
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)s;
}

/* A checksum field over data that includes it is right when the folded sum is all ones (or zero: the two
 * zeros of one's complement, as the Python reference accepts both). */
static inline int kb_csum_ok(uint64_t s) {
    uint16_t f = kb_csum_fold(s);
    return f == 0xFFFF || f == 0;
}

#endif
