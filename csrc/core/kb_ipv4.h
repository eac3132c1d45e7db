/* kb_ipv4.h: the IPv4 check every receive path of the C core makes (kb_udp_accept, kb_tcp_predict), the one
 * kbypass.proto.ipv4.parse_ipv4 makes in Python. */
#ifndef KB_IPV4_H
#define KB_IPV4_H

#include <stddef.h>
#include <stdint.h>

#include "kb_csum.h"

/* f is a frame of n bytes, Ethernet first. An IPv4 packet of protocol proto without options or fragments
 * (neither MF nor an offset), TTL above zero, a total length of at least min_total that fits in the frame,
 * and a right header checksum: its total length. Anything else: 0. */
static inline size_t kb_ipv4_packet(const uint8_t *f, size_t n, uint8_t proto, size_t min_total) {
    if (n < 14 + 20 || f[12] != 0x08 || f[13] != 0x00) return 0;
    const uint8_t *ip = f + 14;
    if (ip[0] != 0x45 || ip[9] != proto || ip[8] == 0 || (kb_be16(ip + 6) & 0x3FFF)) return 0;
    size_t total = kb_be16(ip + 2);
    if (total < min_total || 14 + total > n) return 0;
    if (!kb_csum_ok(kb_csum_add(ip, 20, 0))) return 0;
    return total;
}

#endif
