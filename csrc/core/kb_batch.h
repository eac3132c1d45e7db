/* kb_batch.h: header work on every frame of a batch, in one pass (the Port API's per-batch helpers;
 * kbypass/port/batch.py and kbypass/gen/stamp.py hold the numpy reference). */
#ifndef KB_BATCH_H
#define KB_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "kb_descs.h"

/* Check that every frame of d has `need` bytes inside mem (memlen bytes). Returns -1 when all do, the index
 * of the first frame whose descriptor length is shorter than need (the caller's "short frame"), or
 * -2 - i when frame i lies (partly) outside the memory. Frames before a short one are checked only. */
long long kb_batch_check(uint64_t memlen, const struct kb_descs *d, uint64_t need);

/* Is (offset, width, need) a swap kb_batch_swap can do: two adjacent fields of width bytes (1..64) at
 * offset, inside the first need bytes of a frame? Written as subtractions: offset + 2 * width wraps for a
 * huge offset and once let a swap past the frame through. */
int kb_batch_swap_ok(int64_t offset, int64_t width, int64_t need);

/* Swap bytes [offset, offset+width) with [offset+width, offset+2*width) in every frame (MAC, IPv4
 * address and port swaps of a reflector). Only after kb_batch_check said -1 for that need. */
void kb_batch_swap(uint8_t *mem, const struct kb_descs *d, size_t offset, size_t width);

/* The generator's stamp at offset in frame i: first_seq + i, then now_ns, big-endian u64s. Only after
 * kb_batch_check said -1 for offset + 16. */
void kb_batch_stamp(uint8_t *mem, const struct kb_descs *d, size_t offset, uint64_t first_seq, uint64_t now_ns);

/* Descriptors in ring order (a multi-buffer ring's: a packet's frames consecutive, options bit KB_PKT_CONTD on
 * all but its last) split into a Batch of packets: each packet's first descriptor into heads (packet order),
 * the others into tails (in order), ntails[k] the tails of packet k, and every descriptor into kept with its
 * options reduced to KB_PKT_CONTD (what a TX ring takes back). Every output has room for ring->n records.
 * Returns the packets; -1 when the last descriptor has KB_PKT_CONTD (nothing is meaningful then).
 * kbypass.port.batch.Batch.from_ring's numpy split (kbypass.backend.PyBatch.split_chains) is its twin. */
long long kb_batch_split_chains(const struct kb_descs *ring, struct kb_descs *heads, struct kb_descs *tails,
                                uint32_t *ntails, struct kb_descs *kept);

/* The packets of descriptors in ring order (as kb_batch_split_chains reads them) up to the first one of more than
 * max_frames frames: ends[k] is one past packet k's last descriptor. Returns the packets; *stopped is 1 when a
 * longer packet ended the list, -1 (and 0 packets) when the last descriptor has KB_PKT_CONTD, else 0. ends has
 * room for d->n. kbypass.backend.PyBatch.chain_ends is its twin. */
size_t kb_batch_chain_ends(const struct kb_descs *d, int64_t *ends, uint64_t max_frames, int *stopped);

#endif
