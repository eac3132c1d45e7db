/* kb_csum.h: the internet checksum (RFC 1071) of IPv4 and UDP headers. */
#ifndef KB_CSUM_H
#define KB_CSUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t kb_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline void kb_put_be16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* acc plus the one's-complement sum of n bytes read as big-endian words, an odd tail padded with zero;
 * unfolded (a u64 cannot overflow on any packet: < 2^33 a step), fold it with kb_csum_fold */
static inline uint64_t kb_csum_add(const uint8_t *p, size_t n, uint64_t acc) {
    /* 8 bytes a step (a jumbo datagram's payload is 60 KB, summed on every send and receive): a big-endian
     * u64 is two 32-bit big-endian words, and as 2^16 = 1 in one's-complement arithmetic their sum folds to
     * the sum of the 16-bit words (RFC 1071), down to the representative (0 only for all-zero data) */
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if !defined(__BYTE_ORDER__)
#error "kb_csum_add needs __BYTE_ORDER__ (GCC or Clang) to read network-order words"
#elif __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        acc += (w >> 32) + (w & 0xFFFFFFFFu);
        p += 8;
        n -= 8;
    }
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
