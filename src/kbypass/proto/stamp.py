"""The payload stamp every kbypass generator writes and every sink reads.

    payload + 0   u64 sequence number, big endian
    payload + 8   u64 CLOCK_MONOTONIC send time in nanoseconds, big endian

CLOCK_MONOTONIC is shared by all namespaces of one machine (and is what bpf_ktime_get_ns reads), so a sink
on the testbed can compute one-way latency from it.
"""

import struct

STAMP = struct.Struct("!QQ")
STAMP_SIZE = STAMP.size
ETH_IPV4_UDP = 14 + 20 + 8  # payload offset in an untagged IPv4/UDP frame without IP options
