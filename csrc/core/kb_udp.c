/* kb_udp.c: the UDP lane's per-frame check and build (see kb_udp.h). */
#include "kb_udp.h"

#include <string.h>

#include "kb_csum.h"
#include "kb_ipv4.h"

int kb_udp_accept(const struct kb_udp_local *me, const uint8_t *f, uint32_t n) {
    if (n < KB_UDP_HLEN) return 0;
    if (memcmp(f, me->mac, 6) || (f[6] & 1)) return 0;
    const uint8_t *ip = f + 14;
    if (memcmp(ip + 16, me->ip, 4) || kb_be16(f + 36) != me->port) return 0; /* not ours: skip the sums */
    uint32_t ulen = kb_be16(f + 38), total = ulen + 20;
    if (kb_ipv4_packet(f, n, 17, 28) != total) return 0;
    const uint8_t *src = ip + 12;
    if (src[0] == 0 || src[0] == 127 || src[0] >= 224 || !memcmp(src, me->ip, 4) ||
        (me->has_bcast && !memcmp(src, me->bcast, 4)))
        return 0;
    if (kb_be16(f + 40)) { /* zero: the sender did not compute one (allowed over IPv4) */
        uint64_t pseudo = kb_csum_add(ip + 12, 8, 17 + ulen);
        if (!kb_csum_ok(kb_csum_add(f + 34, ulen, pseudo))) return 0;
    }
    return 1;
}

const uint8_t *kb_udp_from_peer(const uint8_t *f, uint32_t n, const uint8_t key[12], uint32_t *plen) {
    if (n < KB_UDP_HLEN) return NULL;
    uint32_t total = kb_be16(f + 16), ulen = kb_be16(f + 38);
    if (kb_be16(f + 12) != 0x0800 || f[14] != 0x45 || f[23] != 17 || (kb_be16(f + 20) & 0x3FFF) ||
        memcmp(f + 26, key, 12) != 0 || total + 14 > n || ulen != total - 20 || ulen < 8)
        return NULL;
    *plen = ulen - 8;
    return f + KB_UDP_HLEN;
}

void kb_udp_finish(uint8_t *f, uint32_t plen, uint16_t ident, int udp_checksum) {
    kb_udp_finish_split(f, f + KB_UDP_HLEN, plen, ident, udp_checksum);
}

void kb_udp_finish_split(uint8_t *h, const uint8_t *payload, uint32_t plen, uint16_t ident, int udp_checksum) {
    uint32_t ulen = plen + 8;
    kb_put_be16(h + 16, (uint16_t)(ulen + 20));
    kb_put_be16(h + 18, ident);
    kb_put_be16(h + 24, 0);
    kb_put_be16(h + 24, (uint16_t)~kb_csum_fold(kb_csum_add(h + 14, 20, 0)));
    kb_put_be16(h + 38, (uint16_t)ulen);
    kb_put_be16(h + 40, 0);
    if (!udp_checksum) return;
    /* the UDP header's 8 bytes are an even count: the payload's sum continues it without a byte swap */
    uint64_t s = kb_csum_add(payload, plen, kb_csum_add(h + 34, 8, kb_csum_add(h + 26, 8, 17 + ulen)));
    uint16_t u = (uint16_t)~kb_csum_fold(s);
    kb_put_be16(h + 40, u ? u : 0xFFFF);
}
