/* kb_port.h: an AF_XDP port's counters, one u64 each, in one array both front ends update: the Python
 * AfXdpPort owns it (a numpy uint64 array, kbypass.port.afxdp.PORT_STATS names the indexes in this order;
 * the binding exports KB_PORT_STAT_NAMES as kbypass._fastlane.PORT_STATS and a test holds the two equal)
 * and the C lane is given its address. */
#ifndef KB_PORT_H
#define KB_PORT_H

enum kb_port_stat {
    KB_RX_PACKETS,
    KB_RX_BYTES,
    KB_TX_PACKETS,
    KB_TX_BYTES,
    KB_TX_COMPLETED,
    KB_TX_KICKS,
    KB_RX_WAKEUPS,
    KB_TX_TOO_LONG,      /* packets transmit() left with the caller: more frames than the kernel sends as one */
    KB_RX_BROKEN_CHAINS, /* RX descriptors dropped for ending no packet (XDP_PKT_CONTD on the ring's last) */
    KB_IN_FILL, /* frames lent to the kernel for receiving */
    KB_IN_TX,   /* frames submitted for sending, not yet completed */
    KB_PORT_NSTATS,
};

#define KB_PORT_STAT_NAMES                                                                              \
    {"rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tx_completed", "tx_kicks", "rx_wakeups",           \
     "tx_too_long", "rx_broken_chains", "in_fill", "in_tx"}

#include <stdint.h>

#include "kb_ring.h"

/* No whole packet on a multi-buffer RX ring: when it holds continuations alone (kb_ring_cons_peek_broken, a
 * kernel bug), their frames go back to the fill ring and are counted in KB_RX_BROKEN_CHAINS, so a receiver
 * does not wait for an end that cannot come (the sink's C path and the C lane; Python: AfXdpPort's
 * _drop_broken_chain and MessageLane's). A frame outside the UMEM is no frame of ours: no longer lent.
 * Returns the descriptors dropped. */
static inline uint32_t kb_port_drop_broken(struct kb_ring *rx, struct kb_ring *fill, uint64_t umem_size,
                                           uint32_t frame_size, uint64_t *stats) {
    uint32_t ri, fi;
    uint32_t n = kb_ring_cons_peek_broken(rx, &ri);
    if (!n) return 0;
    uint32_t room = kb_ring_prod_reserve(fill, n, &fi); /* every frame taken left a fill slot behind */
    uint64_t chunk = ~(uint64_t)(frame_size - 1);
    uint32_t m = 0;
    for (uint32_t i = 0; i < n && m < room; i++) {
        const struct kb_desc *d = kb_ring_desc(rx, ri + i);
        if (d->addr < umem_size) *kb_ring_addr(fill, fi + m++) = d->addr & chunk;
    }
    kb_ring_prod_cancel(fill, room - m);
    kb_ring_prod_submit(fill, m);
    kb_ring_cons_release(rx, n);
    stats[KB_RX_BROKEN_CHAINS] += n;
    stats[KB_IN_FILL] -= n - m;
    return n;
}

#endif
