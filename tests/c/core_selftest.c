/* The C core on its own, with no Python anywhere (tests/unit/test_core.py compiles this against
 * build/libkbcore.a and runs it): proof that a front end other than CPython -- the preload shim -- can link
 * it. The test plays the kernel on rings in plain memory, with indexes that wrap at 2**32. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kb_csum.h"
#include "kb_ring.h"
#include "kb_udp.h"
#include "kb_xfer.h"

#define CHECK(c)                                                       \
    do {                                                               \
        if (!(c)) {                                                    \
            fprintf(stderr, "%s:%d: %s failed\n", __FILE__, __LINE__, #c); \
            return 1;                                                  \
        }                                                              \
    } while (0)

#define SIZE 8
static uint32_t words[2][3]; /* producer, consumer, flags of two rings */
static uint64_t addrs[SIZE];
static struct kb_desc descs[SIZE];

static struct kb_ring ring(int w, void *slots, uint32_t start) {
    words[w][0] = words[w][1] = start;
    struct kb_ring r = {start, start, SIZE - 1, SIZE, &words[w][0], &words[w][1], slots, &words[w][2]};
    return r;
}

static int producer_ring(void) {
    struct kb_ring fill = ring(0, addrs, 0xFFFFFFFCu); /* wraps after 4 slots */
    fill.cached_cons += SIZE;                          /* kept `size` ahead, as ring.py does */
    CHECK(kb_ring_valid(&fill));
    uint32_t idx, n = kb_ring_prod_reserve(&fill, 5, &idx);
    CHECK(n == 5 && idx == 0xFFFFFFFCu);
    for (uint32_t k = 0; k < n; k++) *kb_ring_addr(&fill, idx + k) = 0x1000u * k;
    kb_ring_prod_cancel(&fill, 1); /* the fifth stays ours */
    kb_ring_prod_submit(&fill, 4);
    CHECK(words[0][0] == 0u && fill.cached_prod == 0u); /* the index wrapped */
    CHECK(addrs[(0xFFFFFFFCu + 3) & (SIZE - 1)] == 0x3000);
    CHECK(kb_ring_prod_reserve(&fill, SIZE, &idx) == SIZE - 4); /* only what the kernel left free */
    kb_ring_prod_submit(&fill, SIZE - 4);
    CHECK(kb_ring_prod_reserve(&fill, 1, &idx) == 0); /* full until the kernel consumes */
    words[0][1] += 3;                                  /* the kernel consumes three */
    CHECK(kb_ring_prod_free(&fill, 1) == 3);
    CHECK(!kb_ring_needs_wakeup(&fill));
    words[0][2] = KB_RING_NEED_WAKEUP;
    CHECK(kb_ring_needs_wakeup(&fill));
    return 0;
}

static int consumer_ring(void) {
    struct kb_ring rx = ring(1, descs, 0xFFFFFFFEu);
    uint32_t idx;
    CHECK(kb_ring_cons_peek(&rx, 4, &idx) == 0); /* empty */
    for (uint32_t k = 0; k < 3; k++) descs[(0xFFFFFFFEu + k) & (SIZE - 1)] = (struct kb_desc){0x800u * k, 60 + k, 0};
    words[1][0] += 3; /* the kernel produces three */
    CHECK(kb_ring_cons_avail(&rx, 1) == 3);
    CHECK(kb_ring_cons_peek(&rx, 2, &idx) == 2 && idx == 0xFFFFFFFEu);
    CHECK(kb_ring_desc(&rx, idx + 1)->len == 61);
    kb_ring_cons_cancel(&rx, 1);
    kb_ring_cons_release(&rx, 1);
    CHECK(words[1][1] == 0xFFFFFFFFu);
    CHECK(kb_ring_cons_peek(&rx, 8, &idx) == 2 && idx == 0xFFFFFFFFu && kb_ring_desc(&rx, idx + 1)->len == 62);
    kb_ring_cons_release(&rx, 2);
    CHECK(words[1][1] == 1u);
    return 0;
}

static int udp_and_crc(void) {
    uint8_t f[64] = {0};
    struct kb_udp_local me = {{2, 0, 0, 0, 0, 2}, {10, 9, 0, 2}, {10, 9, 0, 255}, 1, 4321};
    memcpy(f, me.mac, 6);
    f[6] = 2;
    f[12] = 0x08;
    f[14] = 0x45;
    f[22] = 64;
    f[23] = 17;
    memcpy(f + 26, (uint8_t[]){10, 9, 0, 1}, 4);
    memcpy(f + 30, me.ip, 4);
    kb_put_be16(f + 34, 5000);
    kb_put_be16(f + 36, 4321);
    memcpy(f + 42, "hello", 5);
    kb_udp_finish(f, 5, 7, 1);
    CHECK(kb_udp_accept(&me, f, 47));
    CHECK(kb_udp_payload_len(f) == 5 && kb_udp_src_port(f) == 5000);
    f[44] ^= 1; /* a flipped payload bit fails the UDP checksum */
    CHECK(!kb_udp_accept(&me, f, 47));
    CHECK(kb_xfer_crc32((const uint8_t *)"123456789", 9) == 0xCBF43926u); /* CRC-32/ISO-HDLC check value */
    /* a frame stays inside its UMEM frame (2 KiB chunks), whatever limit the caller gives */
    CHECK(kb_xfer_frame_fits(KB_XFER_UDP, 2006, 0xFFFF, 2048, 0, 4096));
    CHECK(!kb_xfer_frame_fits(KB_XFER_UDP, 2007, 0xFFFF, 2048, 0, 4096));
    CHECK(!kb_xfer_frame_fits(KB_XFER_UDP, 1800, 0xFFFF, 2048, 256, 4096));
    /* chains (multi-buffer): four empty 4 KiB frames; a 9,000-byte datagram takes three, and is written
     * with XDP_PKT_CONTD on all but the last; a fifth frame it would need past max_frames is refused */
    uint64_t recs[8] = {0, 0, 4096, 0, 8192, 0, 12288, 0}; /* DESC: addr, then len and options as one u64 */
    struct kb_descs d = {(uint8_t *)recs, 4, 16};
    static uint8_t mem[16384], dgram[9000], hdr[42];
    CHECK(kb_xfer_chain_fits(KB_XFER_UDP, 9000, 9042, 4096, 18, &d, 0, sizeof mem) == 3);
    CHECK(kb_xfer_chain_fits(KB_XFER_UDP, 9000, 9041, 4096, 18, &d, 0, sizeof mem) == 0); /* past the MTU */
    CHECK(kb_xfer_chain_fits(KB_XFER_UDP, 9000, 9042, 4096, 2, &d, 0, sizeof mem) == 0);
    CHECK(kb_xfer_chain_fits(KB_XFER_UDP, 9000, 9042, 4096, 18, &d, 2, sizeof mem) == KB_XFER_NO_FRAMES);
    hdr[12] = 0x08;
    hdr[14] = 0x45;
    uint32_t ident = 0;
    kb_xfer_chain_write(mem, &d, 0, 3, 4096, KB_XFER_UDP, hdr, &ident, dgram, 9000);
    CHECK(kb_descs_len(&d, 0) == 4096 && kb_descs_len(&d, 2) == 9042 - 8192);
    CHECK(kb_descs_options(&d, 0) == KB_PKT_CONTD && kb_descs_options(&d, 1) == KB_PKT_CONTD &&
          kb_descs_options(&d, 2) == 0);
    CHECK(kb_xfer_chain_len(&d, 0) == 3 && kb_xfer_chain_len(&d, 3) == 1 && kb_xfer_packet_frame(&d, 1) == 3);
    return 0;
}

int main(void) {
    if (producer_ring() || consumer_ring() || udp_and_crc()) return 1;
    puts("core selftest: ok");
    return 0;
}
