/* kb_seq.c: see kb_seq.h. */
#include "kb_seq.h"

#include <string.h>

/* n mod w, never negative (numpy's and Python's % on int64) */
static inline uint64_t floor_mod(int64_t n, uint64_t w) {
    int64_t m = n % (int64_t)w;
    return (uint64_t)(m < 0 ? m + (int64_t)w : m);
}

/* Move the window's top to `highest`: the flags of the numbers it newly covers start clear. */
static void advance(struct kb_seq *q, uint8_t *seen, uint64_t w, int64_t highest) {
    int64_t old = q->highest;
    if (highest <= old) return;
    if ((uint64_t)(highest - old) >= w) {
        memset(seen, 0, w);
    } else {
        uint64_t lo = floor_mod(old + 1, w), hi = floor_mod(highest + 1, w);
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
    if (!q->started) {
        q->started = 1;
        q->first = s[0];
        q->highest = s[0] - 1;
    }
    int64_t before = q->highest, top = q->highest;
    int64_t late = 0;
    for (size_t i = 0; i < n; i++) {
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
    int64_t edge = q->highest - (int64_t)w, old = 0, fresh = 0, dups = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < q->first) continue; /* before the stream's start: late, neither distinct nor duplicate */
        if (s[i] <= edge) {
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
