/* kb_http.c: canned answers on the TCP fast path (see kb_http.h). */
#include "kb_http.h"

#include <string.h>

size_t kb_http_head_len(const uint8_t *p, size_t n) {
    for (size_t i = 3; i < n; i++) {
        if (p[i] == '\n' && p[i - 1] == '\r' && p[i - 2] == '\n' && p[i - 3] == '\r') return i + 1;
    }
    return 0;
}

uint16_t kb_http_wnd_field(struct kb_http_pred *h, uint32_t rcv_nxt) {
    int64_t avail = h->avail;
    int64_t edge = (int32_t)(h->adv_right - rcv_nxt); /* _adv_right - rcv_nxt: within 2**31 of each other */
    if (edge >= 0 && avail - edge < (int64_t)h->sws) avail = edge;
    uint64_t f = (uint64_t)avail >> h->rcv_wscale;
    uint16_t field = f > 0xFFFF ? 0xFFFF : (uint16_t)f;
    uint32_t right = rcv_nxt + ((uint32_t)field << h->rcv_wscale);
    if ((int32_t)(right - h->adv_right) > 0) h->adv_right = right; /* _make: max(_adv_right, ...) */
    return field;
}

int kb_http_may_send(const struct kb_http_pred *h, uint32_t snd_max, uint32_t ack, uint16_t window, size_t len,
                     double now) {
    if (!h->armed || len == 0 || len > h->mss || now >= h->valid_until) return 0;
    uint32_t right = ack + ((uint32_t)window << h->snd_wscale); /* the window this ACK sets (always taken) */
    if ((int64_t)(int32_t)(right - snd_max) < (int64_t)len) return 0;
    return (uint32_t)(snd_max - ack) < h->cwnd; /* the pipe after the ACK, below cwnd (which an ACK only grows) */
}
