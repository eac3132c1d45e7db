/* kb_seq.h: sequence-number accounting of a numbered stream, one batch at a time (kbypass/apps/seqcheck.py
 * is the front end; the reference Python is kbypass.backend.PyBatch.seq_update, and a same-verdict test
 * holds the two to the same counts on the same batches).
 *
 * The state is eight int64 words in this order (SeqChecker's `state` array, kbypass.apps.seqcheck.FIELDS)
 * plus a window of `window` flags, one byte each: seen[n mod window] for n in (highest - window, highest].
 * The verdict of a batch is the batch's, not the packet's: "late" is against the highest number before
 * each packet, the window's edge is the highest after the whole batch (as the numpy reference sees it).
 * A sequence number is any int64, INT64_MIN and INT64_MAX included (a datagram can carry any stamp): the
 * arithmetic never overflows, so C and numpy give the same verdict for every input.
 */
#ifndef KB_SEQ_H
#define KB_SEQ_H

#include <stddef.h>
#include <stdint.h>

struct kb_seq {
    int64_t received;   /* every packet */
    int64_t reordered;  /* not a duplicate, older than one already seen */
    int64_t duplicates; /* a number seen before (in the window) */
    int64_t too_old;    /* below the window: cannot be told from a duplicate, counted as arrived */
    int64_t distinct;   /* distinct numbers from `first` up that arrived */
    int64_t first;      /* the first number seen (valid once started) */
    int64_t highest;    /* the highest number seen */
    int64_t started;    /* 0 until the first packet */
};

/* Account for the batch s[0..n-1]. window > 0; seen holds window bytes. */
void kb_seq_update(struct kb_seq *q, uint8_t *seen, uint64_t window, const int64_t *s, size_t n);

#endif
