/* kb_umem.h: who owns each UMEM frame (kbypass/xsk/umem.py is the Python twin and the reference).
 *
 * One u8 state per frame, one bit per state, so "all these frames are in state S" is one OR equal to S.
 * These numbers are THE definition: the CPython binding exports them (kbypass._fastbatch.FRAME_*) and a
 * test holds umem.py's FREE/FILL/APP/TX to them. Frames are aligned chunks of frame_size = 1 << shift
 * bytes, so the frame of any address inside one is addr >> shift.
 */
#ifndef KB_UMEM_H
#define KB_UMEM_H

#include <stddef.h>
#include <stdint.h>

#include "kb_descs.h"

enum kb_frame_state {
    KB_FRAME_FREE = 1, /* on our free stack */
    KB_FRAME_FILL = 2, /* lent to the kernel for receiving (fill ring, driver, unread on the RX ring) */
    KB_FRAME_APP = 4,  /* the application's: received and not yet sent or freed, or allocated */
    KB_FRAME_TX = 8,   /* handed to the kernel for sending (TX ring, or awaiting completion) */
};

struct kb_umem_states {
    uint8_t *state; /* one per frame */
    uint64_t frames;
    uint32_t shift;
};

/* Every frame of d inside umem_size bytes, in state `expected` and listed once (and, with tx, with a
 * length > 0 that stays inside its frame): all of them now in state `to`, returns their total length.
 * Otherwise -1 and nothing changed (all or nothing). */
long long kb_umem_claim(struct kb_umem_states *u, const struct kb_descs *d, uint64_t umem_size,
                        uint32_t frame_size, uint8_t expected, uint8_t to, int tx);

/* Frames the kernel handed us (RX descriptors) now in state `to`; *total their length. -1 - i when
 * descriptor i points outside the UMEM (frames before it were marked), else 0. */
long long kb_umem_mark(struct kb_umem_states *u, const struct kb_descs *d, uint8_t to, uint64_t *total);

/* Completed frames (u64 addresses) back on the free stack `stack` (frame numbers, room for cap) above
 * `top`, in state FREE; returns the new top. -1 when they do not fit on the stack (nothing changed); -2
 * when an address is outside the UMEM: *bad is it, the frames before it were written above the top, and
 * the caller keeps its top (the error is a broken kernel or ring, not something to recover from). */
long long kb_umem_push_free(struct kb_umem_states *u, ptrdiff_t *stack, size_t cap, size_t top,
                            const uint64_t *addrs, size_t n, uint64_t *bad);

#endif
