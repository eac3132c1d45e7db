/* kb_xfer.c: the transport codec (see kb_xfer.h). */
#include "kb_xfer.h"

#include <isa-l/crc.h>
#include <isa-l/crc64.h>
#include <string.h>

#include "kb_ring.h"
#include "kb_udp.h"

#define VERSION 2 /* the Python wire.VERSION (tests/unit/test_transport_fastpath.py holds them equal) */
#define ETH_HLEN 14
#define UDP_HLEN 42

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) << 32 | rd32(p + 4); }
static inline void wr16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void wr64(uint8_t *p, uint64_t v) { wr32(p, (uint32_t)(v >> 32)); wr32(p + 4, (uint32_t)v); }

uint32_t kb_xfer_crc32(const uint8_t *p, size_t n) {
    /* ISA-L folds with PCLMULQDQ (picked at run time, plain C on CPUs without it): 122 ns for a
     * 1448-byte datagram here against zlib 1.2.13's 504, on both the sender and the receiver. */
    return crc32_gzip_refl(0, p, n);
}

uint64_t kb_xfer_crc64(uint64_t crc, const uint8_t *p, size_t n) {
    return crc64_ecma_refl(crc, p, n); /* PCLMULQDQ folding, picked at run time like crc32_gzip_refl */
}

static void put_header(uint8_t *p, const struct kb_xfer_fields *h, uint32_t plen) {
    p[0] = VERSION;
    p[1] = (uint8_t)h->flags;
    p[2] = 0; /* no SACK blocks: datagrams with SACKs are encoded in Python */
    p[3] = 0;
    wr32(p + 4, h->src_id);
    wr32(p + 8, h->dst_id);
    wr64(p + 12, h->seq);
    wr64(p + 20, h->ack);
    wr32(p + 28, h->window);
    wr32(p + 32, h->tsval);
    wr32(p + 36, h->tsecr);
    wr16(p + 40, plen);
}

void kb_xfer_encode(uint8_t *out, const struct kb_xfer_fields *h, const uint8_t *payload, uint32_t plen) {
    size_t n = KB_XFER_OVERHEAD + (size_t)plen;
    put_header(out, h, plen);
    if (plen) memcpy(out + KB_XFER_HEADER, payload, plen);
    wr32(out + n - KB_XFER_CRC, kb_xfer_crc32(out, n - KB_XFER_CRC));
}

/* The transport datagram inside frame f of length k, from the peer to us, or NULL: UdpEncap's / EthEncap's
 * one-comparison test (kb_udp_from_peer is proto.udp.PeerUdp.accept). A frame that fails it goes to the
 * Python path, which says why it is dropped (or takes it by its slower test). */
static const uint8_t *datagram_of(const uint8_t *f, uint32_t k, int kind, const uint8_t *key, size_t keylen,
                                  uint32_t *dlen) {
    if (kind == KB_XFER_UDP) return keylen == 12 ? kb_udp_from_peer(f, k, key, dlen) : NULL;
    if (k < ETH_HLEN + KB_XFER_OVERHEAD || keylen != ETH_HLEN || memcmp(f, key, ETH_HLEN) != 0) return NULL;
    *dlen = k - ETH_HLEN;
    return f + ETH_HLEN;
}

size_t kb_xfer_chain_len(const struct kb_descs *d, size_t i) {
    size_t j = i;
    while (j < d->n && (kb_descs_options(d, j) & KB_PKT_CONTD)) j++;
    return j < d->n ? j - i + 1 : 0;
}

size_t kb_xfer_packet_frame(const struct kb_descs *d, size_t packet) {
    size_t i = 0;
    for (size_t k = 0; k < packet && i < d->n; k++) {
        size_t c = kb_xfer_chain_len(d, i);
        if (c == 0) return d->n;
        i += c;
    }
    return i;
}

/* Bytes [from, from + len) of the packet in frames i..i+c-1 (ring order), visited as one span per frame they
 * lie in, in order (the caller checked every frame lies in memory). */
typedef void (*span_fn)(void *ctx, const uint8_t *p, uint32_t n);
static void chain_spans(const uint8_t *mem, const struct kb_descs *d, size_t i, size_t c, uint64_t from,
                        uint64_t len, span_fn fn, void *ctx) {
    uint64_t pos = 0, to = from + len;
    for (size_t j = i; j < i + c && pos < to; j++) {
        uint64_t k = kb_descs_len(d, j);
        uint64_t lo = from > pos ? from - pos : 0, hi = to - pos < k ? to - pos : k;
        if (lo < hi) fn(ctx, mem + kb_descs_addr(d, j) + lo, (uint32_t)(hi - lo));
        pos += k;
    }
}

static void crc_span(void *ctx, const uint8_t *p, uint32_t n) {
    uint32_t *crc = ctx;
    *crc = crc32_gzip_refl(*crc, p, n);
}

/* The CRC of a datagram's bytes and the copy of its payload out of UMEM in one read of memory: a chunk at a
 * time the CRC brings the bytes into the cache and the copy takes them from there (checked first and copied
 * after, the receiver read every payload from cold UMEM twice: the CRC 12% of its CPU, memmove 11%). The
 * datagram's bytes [0, n - KB_XFER_CRC) are fed in order, in spans; `pos` counts them; payload bytes (from
 * KB_XFER_HEADER, plen of them) go to dst. A datagram whose CRC fails leaves its copy behind dst's accepted
 * bytes, where the next one overwrites it. */
#define CHECK_COPY_CHUNK 4096 /* well inside L1 with the bytes it copies */
struct check_copy {
    uint32_t crc, plen;
    uint64_t pos;
    uint8_t *dst;
};

static void check_copy_span(void *ctx, const uint8_t *p, uint32_t n) {
    struct check_copy *c = ctx;
    while (n) {
        uint32_t k = n < CHECK_COPY_CHUNK ? n : CHECK_COPY_CHUNK;
        c->crc = crc32_gzip_refl(c->crc, p, k);
        /* the part of [pos, pos + k) inside the payload [HEADER, HEADER + plen) */
        uint64_t lo = c->pos > KB_XFER_HEADER ? c->pos : KB_XFER_HEADER, end = (uint64_t)KB_XFER_HEADER + c->plen;
        uint64_t hi = c->pos + k < end ? c->pos + k : end;
        if (lo < hi) {
            memcpy(c->dst, p + (lo - c->pos), hi - lo);
            c->dst += hi - lo;
        }
        c->pos += k;
        p += k;
        n -= k;
    }
}

static void copy_span(void *ctx, const uint8_t *p, uint32_t n) {
    uint8_t **dst = ctx;
    memcpy(*dst, p, n);
    *dst += n;
}

struct piece_sink {
    const uint8_t *mem;
    struct kb_xfer_piece *out;
    size_t n;
};

static void piece_span(void *ctx, const uint8_t *p, uint32_t n) {
    struct piece_sink *s = ctx;
    s->out[s->n++] = (struct kb_xfer_piece){(uint64_t)(p - s->mem), n, 0, 0};
}

/* The header checks rx_run makes of a datagram g of n bytes (its first KB_XFER_HEADER bytes at g) at the
 * running seq, with sum bytes taken so far: its payload length, or 0 when it is not the next in line. */
static uint32_t next_in_line(const uint8_t *g, uint32_t n, const struct kb_xfer_run *p, uint64_t seq, uint64_t sum) {
    unsigned allowed_end = p->mode == KB_RUN_MESSAGES ? KB_XFER_FLAG_MSG_END : 0;
    uint32_t plen = rd16(g + 40);
    if (n < KB_XFER_OVERHEAD || g[0] != VERSION || (g[1] & ~allowed_end) != KB_XFER_FLAG_ACK || g[2] != 0 ||
        g[3] != 0 || plen == 0 || (uint64_t)plen + KB_XFER_OVERHEAD != n || rd32(g + 4) != p->peer_id ||
        rd32(g + 8) != p->local_id || rd64(g + 12) != seq)
        return 0;
    uint64_t pack = rd64(g + 20);
    /* as subtractions: the limits come from Python and may be near 2^64, where a sum would wrap */
    if (pack != p->ack || pack > p->right || rd32(g + 28) > p->right - pack || seq > p->room_end ||
        plen > p->room_end - seq || sum > p->room_bytes || plen > p->room_bytes - sum)
        return 0;
    return plen;
}

/* rx_run's step for a packet of c > 1 frames from frame i: the payload length (its pieces appended to *s),
 * or 0 when it is not the next in line. The headers must lie whole in the first frame. */
static uint32_t chain_step(const uint8_t *mem, uint64_t memlen, const struct kb_descs *d, size_t i, size_t c,
                           const struct kb_xfer_run *p, uint64_t seq, uint64_t sum, struct piece_sink *s,
                           uint32_t *tsval, uint8_t *dst) {
    uint64_t total = 0;
    for (size_t j = i; j < i + c; j++) {
        uint64_t a = kb_descs_addr(d, j), k = kb_descs_len(d, j);
        if (a > memlen || k > memlen - a) return 0;
        total += k;
    }
    uint32_t hlen = kb_xfer_frame_header(p->kind), n;
    if (total > 0xFFFFFFFFu || kb_descs_len(d, i) < hlen + KB_XFER_HEADER) return 0;
    const uint8_t *f = mem + kb_descs_addr(d, i);
    const uint8_t *g = datagram_of(f, (uint32_t)total, p->kind, p->key, p->keylen, &n);
    uint32_t plen;
    if (g == NULL || !(plen = next_in_line(g, n, p, seq, sum))) return 0;
    uint32_t crc = 0;
    uint8_t trailer[KB_XFER_CRC], *t = trailer;
    if (dst) {
        struct check_copy cc = {0, plen, 0, dst};
        chain_spans(mem, d, i, c, hlen, n - KB_XFER_CRC, check_copy_span, &cc);
        crc = cc.crc;
    } else {
        chain_spans(mem, d, i, c, hlen, n - KB_XFER_CRC, crc_span, &crc);
    }
    chain_spans(mem, d, i, c, hlen + n - KB_XFER_CRC, KB_XFER_CRC, copy_span, &t);
    if (crc != rd32(trailer)) return 0;
    chain_spans(mem, d, i, c, hlen + KB_XFER_HEADER, plen, piece_span, s);
    s->out[s->n - 1].last = 1;
    s->out[s->n - 1].msg_end = (g[1] & KB_XFER_FLAG_MSG_END) != 0;
    *tsval = rd32(g + 32);
    return plen;
}

size_t kb_xfer_rx_run(const uint8_t *mem, uint64_t memlen, const struct kb_descs *d, size_t start,
                      const struct kb_xfer_run *p, struct kb_xfer_piece *pieces, size_t *npieces, uint64_t *total,
                      uint32_t *tsval, size_t *packets, uint8_t *dst) {
    uint64_t seq = p->seq, sum = 0;
    struct piece_sink s = {mem, pieces, 0};
    size_t i = start, taken = 0;
    while (i < d->n) {
        size_t c = kb_xfer_chain_len(d, i);
        uint32_t plen;
        if (c == 0) break;
        if (c > 1) {
            if (!(plen = chain_step(mem, memlen, d, i, c, p, seq, sum, &s, tsval, dst ? dst + sum : NULL))) break;
        } else {
            uint64_t a = kb_descs_addr(d, i);
            uint32_t k = kb_descs_len(d, i), n;
            if (a > memlen || k > memlen - a) break;
            const uint8_t *g = datagram_of(mem + a, k, p->kind, p->key, p->keylen, &n);
            if (g == NULL || !(plen = next_in_line(g, n, p, seq, sum))) break;
            if (dst) {
                struct check_copy cc = {0, plen, 0, dst + sum};
                check_copy_span(&cc, g, n - KB_XFER_CRC);
                if (cc.crc != rd32(g + n - KB_XFER_CRC)) break;
            } else if (kb_xfer_crc32(g, n - KB_XFER_CRC) != rd32(g + n - KB_XFER_CRC)) {
                break;
            }
            s.out[s.n++] = (struct kb_xfer_piece){(uint64_t)(g + KB_XFER_HEADER - mem), plen,
                                                  (g[1] & KB_XFER_FLAG_MSG_END) != 0, 1};
            *tsval = rd32(g + 32);
        }
        seq += plen;
        sum += plen;
        i += c;
        taken++;
    }
    *total = sum;
    *npieces = s.n;
    *packets = taken;
    return i;
}

uint64_t kb_xfer_rx_bound(const struct kb_descs *d, size_t start, uint64_t room_bytes) {
    uint64_t sum = 0;
    for (size_t j = start; j < d->n && sum < room_bytes; j++) sum += kb_descs_len(d, j);
    return sum < room_bytes ? sum : room_bytes;
}

int kb_xfer_frame_fits(int kind, uint64_t dlen, uint64_t max_len, uint64_t frame_size, uint64_t addr,
                       uint64_t memlen) {
    uint64_t need = kb_xfer_frame_header(kind) + dlen;
    /* as subtractions: every argument comes from the caller and may be near 2^64 */
    if (frame_size == 0 || (frame_size & (frame_size - 1)) || dlen > memlen) return 0;
    return need <= max_len && need <= 0xFFFF + (uint64_t)ETH_HLEN && addr <= memlen && need <= memlen - addr &&
           need <= frame_size - (addr & (frame_size - 1));
}

uint32_t kb_xfer_frame_write(uint8_t *f, int kind, const uint8_t *hdr, uint32_t *ident, const uint8_t *dgram,
                             uint32_t dlen) {
    uint32_t hlen = kb_xfer_frame_header(kind);
    memcpy(f, hdr, hlen);
    memcpy(f + hlen, dgram, dlen);
    if (kind == KB_XFER_UDP) {
        *ident = (*ident + 1) & 0xFFFF;
        kb_udp_finish(f, dlen, (uint16_t)*ident, 0);
    }
    return hlen + dlen;
}

/* The room of the frame at addr: to the end of its aligned chunk of frame_size bytes. */
static inline uint64_t frame_room(uint64_t addr, uint64_t frame_size) { return frame_size - (addr & (frame_size - 1)); }

size_t kb_xfer_chain_fits(int kind, uint64_t dlen, uint64_t max_len, uint64_t frame_size, size_t max_frames,
                          const struct kb_descs *d, size_t i, uint64_t memlen) {
    uint64_t need = kb_xfer_frame_header(kind) + dlen;
    if (frame_size == 0 || (frame_size & (frame_size - 1)) || dlen > memlen || need > max_len ||
        need > 0xFFFF + (uint64_t)ETH_HLEN)
        return 0;
    uint64_t have = 0;
    size_t j = i;
    for (; have < need; j++) {
        if (j - i >= max_frames) return 0;
        if (j >= d->n) return KB_XFER_NO_FRAMES;
        uint64_t a = kb_descs_addr(d, j), room = frame_room(a, frame_size);
        if (a > memlen || room > memlen - a) return 0;
        if (j == i && room < kb_xfer_frame_header(kind)) return 0;
        have += room;
    }
    return j - i;
}

/* A datagram in pieces (header, payload, trailer...): what a chain is written from. */
struct span {
    const uint8_t *p;
    uint32_t n;
};

/* The frame header then the spans (dlen bytes in all) scattered over a chain of `frames` frames from i. With
 * `crc`: the last span is the 4-byte trailer, written with the CRC of the spans before it, which is computed
 * piece by piece as each is copied (a frame's room at most, in L1 for the copy that follows): computed over the
 * payload first and copied after, the sender read every payload twice. */
static void chain_scatter(uint8_t *mem, struct kb_descs *d, size_t i, size_t frames, uint64_t frame_size, int kind,
                          const uint8_t *hdr, uint32_t *ident, struct span *src, size_t nsrc, uint32_t dlen,
                          uint32_t *crc) {
    uint32_t hlen = kb_xfer_frame_header(kind);
    size_t s = 0;
    for (size_t j = i; j < i + frames; j++) {
        uint64_t a = kb_descs_addr(d, j);
        uint32_t room = (uint32_t)frame_room(a, frame_size), at = 0;
        uint8_t *f = mem + a;
        if (j == i) {
            memcpy(f, hdr, hlen);
            if (kind == KB_XFER_UDP) {
                *ident = (*ident + 1) & 0xFFFF;
                kb_udp_finish(f, dlen, (uint16_t)*ident, 0);
            }
            at = hlen;
        }
        while (at < room && s < nsrc) {
            uint32_t take = room - at < src[s].n ? room - at : src[s].n;
            if (crc && s + 1 < nsrc) {
                *crc = crc32_gzip_refl(*crc, src[s].p, take);
                if (take == src[s].n && s + 2 == nsrc) wr32((uint8_t *)src[s + 1].p, *crc); /* the trailer, next */
            }
            memcpy(f + at, src[s].p, take);
            at += take;
            src[s].p += take;
            if (!(src[s].n -= take)) s++;
        }
        kb_descs_set_len(d, j, at);
        kb_descs_set_options(d, j, j + 1 < i + frames ? KB_PKT_CONTD : 0);
    }
}

void kb_xfer_chain_write(uint8_t *mem, struct kb_descs *d, size_t i, size_t frames, uint64_t frame_size, int kind,
                         const uint8_t *hdr, uint32_t *ident, const uint8_t *dgram, uint32_t dlen) {
    struct span src[1] = {{dgram, dlen}};
    chain_scatter(mem, d, i, frames, frame_size, kind, hdr, ident, src, dlen ? 1 : 0, dlen, NULL);
}

void kb_xfer_chain_encode(uint8_t *mem, struct kb_descs *d, size_t i, size_t frames, uint64_t frame_size, int kind,
                          const uint8_t *hdr, uint32_t *ident, const struct kb_xfer_fields *h, const uint8_t *payload,
                          uint32_t plen) {
    uint8_t head[KB_XFER_HEADER], trailer[KB_XFER_CRC];
    uint32_t crc = 0;
    put_header(head, h, plen);
    struct span src[3] = {{head, KB_XFER_HEADER}, {payload, plen}, {trailer, KB_XFER_CRC}};
    if (!plen) src[1] = src[2];
    chain_scatter(mem, d, i, frames, frame_size, kind, hdr, ident, src, plen ? 3 : 2, KB_XFER_OVERHEAD + plen, &crc);
}
