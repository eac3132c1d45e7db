/* kb_sockperf.c: sockperf's ping-pong answer (see kb_sockperf.h). */
#include "kb_sockperf.h"

#include <string.h>

int kb_sockperf_messages(const uint8_t *p, size_t n, uint32_t *lens, int max) {
    int k = 0;
    while (n) {
        if (n < KB_SOCKPERF_HEADER || k == max) return 0;
        uint32_t len = ((uint32_t)p[10] << 24) | ((uint32_t)p[11] << 16) | ((uint32_t)p[12] << 8) | p[13];
        if (len < KB_SOCKPERF_HEADER || len > n) return 0;
        if ((p[9] & (KB_SOCKPERF_CLIENT | KB_SOCKPERF_PONG)) != (KB_SOCKPERF_CLIENT | KB_SOCKPERF_PONG)) return 0;
        lens[k++] = len;
        p += len;
        n -= len;
    }
    return k;
}

void kb_sockperf_answer(uint8_t *out, const uint8_t *p, const uint32_t *lens, int k) {
    for (int i = 0; i < k; i++) {
        if (out != p) memcpy(out, p, lens[i]);
        out[9] = (uint8_t)(p[9] & ~KB_SOCKPERF_CLIENT);
        out += lens[i];
        p += lens[i];
    }
}
