"""The indexes of an AF_XDP port's counters array (`AfXdpPort.counters`), which the port, its Python
message lane and the C lane all count in: csrc/core/kb_port.h's order, and a test holds them to it."""

PORT_STATS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "tx_completed", "tx_kicks", "rx_wakeups",
              "tx_too_long", "rx_broken_chains", "in_fill", "in_tx")
(RX_PACKETS, RX_BYTES, TX_PACKETS, TX_BYTES, TX_COMPLETED, TX_KICKS, RX_WAKEUPS, TX_TOO_LONG, RX_BROKEN_CHAINS, IN_FILL,
 IN_TX) = range(len(PORT_STATS))
