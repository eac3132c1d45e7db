/* kb_lane.h: one AF_XDP socket's rings, one UDP message at a time (the UDP endpoint's per-message path;
 * kbypass.port.lane.MessageLane is the Python twin and the reference).
 *
 * RX frames go straight back to the fill ring once their bytes are taken, so they stay in the kernel's
 * share (state FILL) throughout. TX frames come from a small stash of frames in state APP, are TX once
 * submitted, and come back from the completion ring straight into the stash (reclaim). The rings, the
 * UMEM states and the port's counters are the port's own (shared memory, see kb_ring.h and kb_port.h),
 * kept exactly as the port's batch path keeps them, so the two paths can take turns.
 *
 * Multi-buffer sockets (XDP_USE_SG, `chains`): a packet larger than a frame arrives as a chain of frames
 * (KB_PKT_CONTD on all descriptors but the last); kb_lane_rx_copy takes it whole, each descriptor checked
 * against its own frame, and kb_lane_send sends a message longer than tx_room as such a chain of stash
 * frames, of at most max_frames (the kernel's MAX_SKB_FRAGS + 1, kbypass.xsk.multibuf).
 *
 * The front end fills in the members above `private` and calls kb_lane_setup; then, per message:
 *   kb_lane_rx_copy (a whole packet, copied out and given back), or for one frame read in place:
 *   kb_lane_rx_next -> take the frame's bytes -> kb_lane_rx_done (or kb_lane_rx_abort)
 *   kb_lane_send (reclaims by itself when the stash is short; KB_LANE_NO_FRAME: kb_lane_give it frames)
 */
#ifndef KB_LANE_H
#define KB_LANE_H

#include <stdint.h>

#include "kb_ring.h"
#include "kb_udp.h"

#define KB_LANE_STASH_MAX 64
/* The most frames a stash holds (stash_cap): a sender of jumbo chains (kbypass._fastxfer.lane_chains) keeps
 * a flight's frames cycling through it, from its completions back to the TX ring with no Python in between. */
#define KB_LANE_STASH_SLOTS 1024

/* The name of the capsule kbypass._fastlane.Lane.core hands out (a struct kb_lane *, the Lane held while the
 * capsule lives), for another binding's burst over the same rings (kbypass._fasttcp.rx_burst). */
#define KB_LANE_CAPSULE "kbypass._fastlane.kb_lane"

enum kb_lane_result {
    KB_LANE_EMPTY = 0,     /* rx_next: nothing on the RX ring */
    KB_LANE_FRAME = 1,     /* rx_next: a frame */
    KB_LANE_FILL_FULL = 2, /* rx_next: no fill slot to give the frame back (the port's quota prevents it) */
    KB_LANE_NO_SLOT = 0,   /* send: the TX ring is full even after a kick */
    KB_LANE_SENT = 1,      /* send */
    KB_LANE_NO_FRAME = 2,  /* send: the stash is empty and nothing completed */
    /* errors */
    KB_LANE_E_RX_DESC = -1,   /* an RX descriptor outside its UMEM frame (kb_desc_in_frame) */
    KB_LANE_E_COMP_ADDR = -2, /* a completed address outside the UMEM (bad_addr) */
    KB_LANE_E_TOO_BIG = -3,   /* send: longer than a UMEM frame or max_frames of chain (or empty);
                               * rx_copy: a packet longer than the caller's buffer */
    KB_LANE_E_STASH = -4,     /* a stash frame outside the UMEM or without room for the frame */
    KB_LANE_E_SYS = -5,       /* a syscall failed (sys_errno) */
    KB_LANE_E_NOT_APP = -6,   /* give: not an application-held frame of this UMEM (bad_addr) */
    KB_LANE_E_RINGS = -7,     /* setup: a ring is not usable (kb_ring_valid) */
    KB_LANE_E_SIZES = -8,     /* setup: frame_size not a power of two, umem_size not whole frames,
                               * stash_cap or busy_every out of range */
};

struct kb_lane {
    struct kb_ring *rx, *fill, *tx, *comp;
    uint8_t *umem;
    uint64_t umem_size;
    uint8_t *state;  /* the UMEM's frame states (kb_umem.h) */
    uint64_t *stats; /* the port's counters (kb_port.h) */
    uint32_t frame_size;
    int fd, copy_mode, busy;
    int defer_kick; /* send never kicks the kernel (a full TX ring aside): the front end kicks for a batch */
    unsigned busy_every; /* a busy spin makes the busy-poll syscall every busy_every-th empty look */
    int stash_cap;
    struct kb_udp_local me;
    int chains;          /* a multi-buffer socket (XDP_USE_SG): packets span frames (0: one frame each) */
    uint32_t tx_room;    /* chains: the bytes one TX frame carries (frame_size - headroom), where a chain is cut */
    uint32_t max_frames; /* chains: the most frames one sent packet spans (<= stash_cap) */
    /* private: kb_lane_setup and the functions below keep these */
    uint32_t shift;
    uint64_t chunk_mask;
    unsigned empty_looks;
    int nstash;
    uint64_t stash[KB_LANE_STASH_SLOTS]; /* frame addresses, state APP */
    uint64_t bad_addr;
    int sys_errno;
};

/* Check the members the front end set and derive the rest; the stash starts empty. 0 or an error. */
int kb_lane_setup(struct kb_lane *l);

/* The next RX frame's descriptor (inside the UMEM), peeked: KB_LANE_FRAME, KB_LANE_EMPTY,
 * KB_LANE_FILL_FULL or KB_LANE_E_RX_DESC. After KB_LANE_FRAME call rx_done or rx_abort. */
int kb_lane_rx_next(struct kb_lane *l, struct kb_desc *d);
/* The next whole packet on the RX ring (on a chains lane all the frames of a chain, gathered in order) copied
 * into out (cap bytes), its frames given back on the fill ring and counted: KB_LANE_FRAME with *len its
 * length; KB_LANE_EMPTY (a chains lane first drops a ring of continuations alone: kb_port_drop_broken);
 * KB_LANE_FILL_FULL; KB_LANE_E_RX_DESC (a
 * descriptor outside its own UMEM frame); KB_LANE_E_TOO_BIG (*len: the packet's length, above cap). All but
 * KB_LANE_FRAME leave the packet on the ring. */
int kb_lane_rx_copy(struct kb_lane *l, uint8_t *out, uint32_t cap, uint32_t *len);
/* The frame of rx_next is read: release its RX slot, give it back on the fill ring, count it. */
void kb_lane_rx_done(struct kb_lane *l, const struct kb_desc *d);
/* The frame of rx_next stays on the RX ring (the front end could not take it). */
void kb_lane_rx_abort(struct kb_lane *l);

/* Nothing on the RX ring: the syscall the kernel asks for (need_wakeup), or a busy-poll call every
 * busy_every-th empty look of a busy spin. */
void kb_lane_wake(struct kb_lane *l);

/* Busy polling's wait over n lanes: read their RX rings until a frame is on one (1) or ns nanoseconds have
 * passed (0), with kb_lane_wake every few hundred looks (the busy-poll call at its cadence, or when the fill
 * ring asks). In C the ring is seen within a look's time of the kernel's write, not a Python loop's. */
int kb_lanes_spin(struct kb_lane *const *lanes, int n, uint64_t ns);

/* Completed TX frames into the stash (TX -> APP), at most what it has room for: the count, or
 * KB_LANE_E_COMP_ADDR (nothing taken). Completions beyond the room are the port's to reap. */
int kb_lane_reclaim(struct kb_lane *l);

/* Put [head][payload] on the TX ring in a stash frame (a chains lane: longer than tx_room, in a chain of
 * stash frames cut every tx_room bytes, KB_PKT_CONTD on all but the last) and kick the kernel when it needs
 * it; udp: head is a flow's 42-byte template, completed by kb_udp_finish_split with ident. KB_LANE_SENT,
 * KB_LANE_NO_SLOT, KB_LANE_NO_FRAME (fewer stash frames than the chain needs, even after a reclaim) or an
 * error (KB_LANE_E_SYS after the frames were submitted, when the kick failed). */
int kb_lane_send(struct kb_lane *l, const uint8_t *head, uint32_t hlen, const uint8_t *payload, uint32_t plen,
                 int udp, uint16_t ident);

/* One frame in state APP for the stash: 1 taken, 0 the stash is full, KB_LANE_E_NOT_APP. */
int kb_lane_give(struct kb_lane *l, uint64_t addr);

#endif
