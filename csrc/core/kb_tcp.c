/* kb_tcp.c: TCP header prediction and the established path's frame builder (see kb_tcp.h). */
#include "kb_tcp.h"

#include <string.h>

#include "kb_csum.h"
#include "kb_ipv4.h"

#define ETH_HLEN 14
#define IP_HLEN 20
#define TCP_HLEN 20
#define TS_OPT_WORD 0x0101080Au /* NOP NOP kind 8 length 10: the layout Linux (and Segment.encode) sends */

static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* a < b in 32-bit sequence space (kbypass.proto.tcp.seqnum.seq_lt: a difference of exactly 2**31 is "less") */
static inline int seq_lt(uint32_t a, uint32_t b) { return (uint32_t)(a - b) >= 0x80000000u; }

/* The pseudo-header's sum for a TCP segment of tcp_len bytes between the two addresses. */
static inline uint64_t pseudo_sum(const uint8_t *src, const uint8_t *dst, size_t tcp_len) {
    uint64_t s = kb_csum_add(src, 4, 0);
    s = kb_csum_add(dst, 4, s);
    return s + 6 + tcp_len;
}

int kb_tcp_key(const uint8_t *f, size_t n, uint8_t src_ip[4], uint16_t *sport, uint16_t *dport) {
    if (n < ETH_HLEN + IP_HLEN + TCP_HLEN || f[12] != 0x08 || f[13] != 0x00 || f[ETH_HLEN] != 0x45 ||
        f[ETH_HLEN + 9] != 6)
        return -1;
    const uint8_t *t = f + ETH_HLEN + IP_HLEN;
    memcpy(src_ip, f + ETH_HLEN + 12, 4);
    *sport = kb_be16(t);
    *dport = kb_be16(t + 2);
    return 0;
}

int kb_tcp_predict(struct kb_tcp_pred *p, const uint8_t *f, size_t n, struct kb_tcp_hit *hit) {
    if (!p->armed) return KB_TCP_SLOW;
    size_t total = kb_ipv4_packet(f, n, 6, IP_HLEN + TCP_HLEN); /* TcpHost._frame's parse_ipv4 */
    if (!total) return KB_TCP_SLOW;
    const uint8_t *ip = f + ETH_HLEN, *t = ip + IP_HLEN;
    if (memcmp(ip + 12, p->remote_ip, 4) || memcmp(ip + 16, p->local_ip, 4)) return KB_TCP_SLOW;
    if (kb_be16(t) != p->remote_port || kb_be16(t + 2) != p->local_port) return KB_TCP_SLOW;
    uint8_t flags = t[13];
    if ((flags & ~KB_TCP_PSH) != KB_TCP_ACK) return KB_TCP_SLOW; /* SYN, FIN, RST, URG, ECE, CWR: slow */
    size_t tcp_len = total - IP_HLEN, hlen = (size_t)(t[12] >> 4) * 4;
    uint32_t tsval = 0, tsecr = 0;
    if (p->ts_ok) {
        if (hlen != TCP_HLEN + 12 || tcp_len < hlen || be32(t + 20) != TS_OPT_WORD) return KB_TCP_SLOW;
        tsval = be32(t + 24);
        tsecr = be32(t + 28);
    } else if (hlen != TCP_HLEN) {
        return KB_TCP_SLOW;
    }
    uint32_t seq = be32(t + 4), ack = be32(t + 8);
    uint16_t window = kb_be16(t + 14);
    size_t len = tcp_len - hlen;
    if (seq != p->rcv_nxt || len > p->rcv_wnd) return KB_TCP_SLOW;
    if (p->ts_ok && seq_lt(tsval, p->ts_recent)) return KB_TCP_SLOW; /* PAWS (RFC 7323 5.3): the slow path drops */
    if (seq_lt(ack, p->snd_una) || seq_lt(p->snd_max, ack)) return KB_TCP_SLOW; /* old, or not yet sent */
    if (!kb_csum_ok(kb_csum_add(t, tcp_len, pseudo_sum(ip + 12, ip + 16, tcp_len)))) return KB_TCP_SLOW;
    /* the reference's state change, in the prediction's terms (TcpConnection.receive_predicted) */
    if (p->ts_ok && !seq_lt(p->last_ack_sent, seq)) p->ts_recent = tsval;
    p->rcv_nxt = seq + (uint32_t)len;
    p->rcv_wnd -= (uint32_t)len;
    p->snd_una = ack;
    hit->seq = seq;
    hit->ack = ack;
    hit->tsval = tsval;
    hit->tsecr = tsecr;
    hit->window = window;
    hit->flags = flags;
    hit->has_ts = p->ts_ok;
    hit->payload_off = (uint32_t)(ETH_HLEN + IP_HLEN + hlen);
    hit->payload_len = (uint32_t)len;
    return KB_TCP_HIT;
}

void kb_tcp_frame(uint8_t *out, const struct kb_tcp_fields *h, const uint8_t *payload, size_t len) {
    size_t hlen = TCP_HLEN + (h->has_ts ? 12 : 0), tcp_len = hlen + len;
    memcpy(out, h->eth, ETH_HLEN);
    uint8_t *ip = out + ETH_HLEN, *t = ip + IP_HLEN;
    ip[0] = 0x45; /* the fields of kbypass.proto.ipv4.build_ipv4_header: TOS 0, DF, TTL 64 */
    ip[1] = 0;
    kb_put_be16(ip + 2, (uint16_t)(IP_HLEN + tcp_len));
    kb_put_be16(ip + 4, h->ident);
    kb_put_be16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = 6;
    kb_put_be16(ip + 10, 0);
    memcpy(ip + 12, h->src_ip, 4);
    memcpy(ip + 16, h->dst_ip, 4);
    kb_put_be16(ip + 10, (uint16_t)~kb_csum_fold(kb_csum_add(ip, IP_HLEN, 0)));
    kb_put_be16(t, h->sport);
    kb_put_be16(t + 2, h->dport);
    put_be32(t + 4, h->seq);
    put_be32(t + 8, h->ack);
    t[12] = (uint8_t)((hlen / 4) << 4);
    t[13] = h->flags;
    kb_put_be16(t + 14, h->window);
    kb_put_be16(t + 16, 0);
    kb_put_be16(t + 18, 0); /* urgent pointer */
    if (h->has_ts) {
        put_be32(t + 20, TS_OPT_WORD);
        put_be32(t + 24, h->tsval);
        put_be32(t + 28, h->tsecr);
    }
    if (len && payload != t + hlen) memcpy(t + hlen, payload, len); /* a caller may have put it in place */
    /* the pseudo-header is never all zeros (protocol 6), so the field is never the +0 case */
    kb_put_be16(t + 16, (uint16_t)~kb_csum_fold(kb_csum_add(t, tcp_len, pseudo_sum(h->src_ip, h->dst_ip, tcp_len))));
}
