/* kb_seq.c: see kb_seq.h. Sequence numbers are any int64 (a stamp is a u64 read as int64, and a datagram
 * can carry any): every difference below is taken in uint64 between two numbers whose order is known, so it
 * is exact and nothing overflows (signed overflow is undefined behaviour; the numpy reference computes the
 * same quantities with Python's unbounded ints). */
#include "kb_seq.h"

#include <string.h>

/* n mod w, never negative (numpy's and Python's % on int64); w < 2**63 */
static inline uint64_t floor_mod(int64_t n, uint64_t w) {
    int64_t m = n % (int64_t)w;
    return (uint64_t)(m < 0 ? m + (int64_t)w : m);
}

/* b - a for a <= b: exact in uint64 (the true difference is at most 2**64 - 1) */
static inline uint64_t span(int64_t a, int64_t b) { return (uint64_t)b - (uint64_t)a; }

/* Move the window's top from `old` to `highest`: the flags of the numbers it newly covers start clear. */
static void advance(struct kb_seq *q, uint8_t *seen, uint64_t w, int64_t highest) {
    int64_t old = q->highest;
    if (highest <= old) return;
    if (span(old, highest) >= w) {
        memset(seen, 0, w);
    } else { /* clear old+1 .. highest (mod w), without computing old + 1 or highest + 1 */
        uint64_t lo = (floor_mod(old, w) + 1) % w, hi = (floor_mod(highest, w) + 1) % w;
        if (lo < hi) {
            memset(seen + lo, 0, hi - lo);
        } else {
            memset(seen + lo, 0, w - lo);
            memset(seen, 0, hi);
        }
    }
    q->highest = highest;
}

void kb_seq_update(struct kb_seq *q, uint8_t *seen, uint64_t w, const int64_t *s, size_t n) {
    if (!n) return;
    size_t i0 = 0; /* the stream's first packet is late against nothing */
    if (!q->started) {
        /* "nothing seen yet" is not highest = s[0] - 1 (no such int64 below INT64_MIN): the window's top
         * starts at s[0] with s[0]'s flag clear, and s[0] is not late */
        q->started = 1;
        q->first = s[0];
        q->highest = s[0];
        seen[floor_mod(s[0], w)] = 0;
        i0 = 1;
    }
    int64_t before = q->highest, top = q->highest;
    int64_t late = 0;
    for (size_t i = i0; i < n; i++) {
        if (s[i] <= before) late++;
        if (s[i] > before) before = s[i];
        if (s[i] > top) top = s[i];
    }
    advance(q, seen, w, top);
    q->received += (int64_t)n;
    if (!late) { /* the usual batch: rising, all above what came before, so all new and distinct */
        for (size_t i = 0; i < n; i++) seen[floor_mod(s[i], w)] = 1;
        q->distinct += (int64_t)n;
        return;
    }
    int64_t old = 0, fresh = 0, dups = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < q->first) continue; /* before the stream's start: late, neither distinct nor duplicate */
        if (span(s[i], q->highest) >= w) { /* s[i] <= highest - w, below the window */
            old++;
            continue;
        }
        uint8_t *f = &seen[floor_mod(s[i], w)];
        if (*f) {
            dups++;
        } else {
            *f = 1;
            fresh++;
        }
    }
    q->too_old += old;
    q->duplicates += dups;
    q->distinct += fresh + old;
    q->reordered += late - dups;
}
