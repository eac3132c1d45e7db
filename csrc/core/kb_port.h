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

#endif
