/* kb_sink.h: receive and give straight back, for a receiver that only reads its frames (`kbypass sink`;
 * kbypass.port.afxdp.AfXdpPort.consume is the front end, and its Python path, receive() then free(), is
 * the reference).
 *
 * One call takes up to `budget` frames off the RX ring and puts the same frames back on the fill ring, so
 * they stay in the kernel's share (state FILL) throughout and the UMEM's frame states are not touched; the
 * port's counters (kb_port.h) count them as received. With stamp_off, each frame of at least stamp_off + 16
 * bytes gives its generator stamp (kbypass.proto.stamp: big-endian u64 sequence number, then u64 send time
 * in CLOCK_MONOTONIC ns, 0 when not sampled): the numbers go to the sequence check (kb_seq.h), the latency
 * now - sent of the sampled ones to `lat`. On an empty RX ring it makes the syscall the kernel asks for
 * (need_wakeup) and looks once more.
 *
 * Multi-buffer sockets (XDP_USE_SG): a packet is several descriptors (KB_PKT_CONTD on all but its last,
 * kb_ring.h); a call takes whole packets only (kb_ring_cons_peek_packets), counts and returns packets, sums
 * the bytes of every frame, and reads the stamp from each packet's first frame alone. `budget` bounds the
 * descriptors taken per look (at least one whole packet).
 */
#ifndef KB_SINK_H
#define KB_SINK_H

#include <stddef.h>
#include <stdint.h>

#include "kb_ring.h"
#include "kb_seq.h"

struct kb_sink {
    struct kb_ring *rx, *fill;
    const uint8_t *umem;
    uint64_t umem_size;
    uint32_t frame_size; /* a power of two: a frame's chunk is addr & ~(frame_size - 1) */
    uint64_t *stats;     /* the port's counters (kb_port.h) */
    int fd;
    size_t stamp_off; /* 0: no stamps read */
    struct kb_seq *seq;
    uint8_t *seen;
    uint64_t window;
    int64_t *seqs; /* scratch: room for budget numbers */
    int64_t *lat;  /* room for budget latencies */
    /* a shared queue's lock (kb_pool_lock.h), taken around the fill ring; NULL: a queue of one's own */
    void *lock;
    /* out: CLOCK_MONOTONIC ns of the first and the last drain that took frames (first_ns stays as the
     * caller set it once non-zero: zero both before a call) */
    int64_t first_ns, last_ns;
    /* out, with KB_SINK_E_RX_DESC: the descriptor refused */
    uint64_t bad_addr;
    uint32_t bad_len;
    int lock_err; /* out, with KB_SINK_E_LOCK: kb_pool_lock's error */
};

/* An RX descriptor outside its UMEM frame (kb_desc_in_frame) at the head of the RX ring: nothing taken, it stays there. */
#define KB_SINK_E_RX_DESC (-1)
#define KB_SINK_E_LOCK (-2) /* a shared queue's lock not taken (lock_err: ETIMEDOUT when busy): nothing taken */

/* Packets taken (frames on a one-buffer socket; 0: none there, or no fill slot to give them back), or KB_SINK_E_RX_DESC or KB_SINK_E_LOCK. *bytes: their
 * total length; *nlat: latencies written to lat. The rings and counts stay consistent on a bad descriptor:
 * the frames before it are taken (given back, counted, checked) and returned; it and those after stay on
 * the RX ring, so the error comes only from a call that took nothing. */
long long kb_sink_drain(struct kb_sink *k, uint32_t budget, uint64_t *bytes, size_t *nlat);

/* kb_sink_drain until `budget` frames were taken, sleeping in poll() whenever the RX ring is empty, for at
 * most wait_ms in all: the receive loop of a sink in C, so that the caller (Python) runs once per budget
 * frames or per quiet wait, not once per wakeup of the kernel. Returns early on a signal (poll's EINTR). lat
 * needs room for budget latencies. Frames taken, or KB_SINK_E_RX_DESC when it took none (a bad descriptor met
 * after frames were taken ends the call with those frames: the next call meets it first). */
long long kb_sink_run(struct kb_sink *k, uint32_t budget, int wait_ms, uint64_t *bytes, size_t *nlat);

#endif
