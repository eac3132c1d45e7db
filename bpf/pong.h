/* SPDX-License-Identifier: MIT */
/*
 * pong.h - the contract between bpf/pong.bpf.c and src/kbypass/apps/xdp_pong.py.
 *
 * The latency floor: an XDP program that answers a UDP ping in the driver (XDP_TX) with the Ethernet
 * and IP addresses and the UDP ports swapped, so a ping-pong against it measures the wire, the peer's
 * stack and nothing of a server. A sockperf client message (its header's length field equal to the
 * payload length) is answered as `sockperf server` (and kbypass.apps.pingpong.answer) answers it: with
 * the client and pong-request flags set, answered with the client flag cleared and the UDP checksum
 * patched incrementally (RFC 1624); without either, dropped unanswered (a warm-up or under-load message,
 * or another server's answer, which must not bounce for ever); any other payload is echoed unchanged.
 * Frames it does not answer (not IPv4 UDP to the port, IP options, fragments, VLANs) pass to the kernel.
 *
 * Maps:
 *   pong_config    ARRAY         key u32 0  value struct pong_config       1
 *   pong_counters  PERCPU_ARRAY  key u32 i  value u64 (enum pong_counter)  PONG_NCOUNTERS
 */
#ifndef KBYPASS_PONG_H
#define KBYPASS_PONG_H

#include <linux/types.h>

struct pong_config {
	__u16 port; /* UDP destination port to answer, network byte order; 0 answers none */
	__u16 _pad;
};

enum pong_counter {
	PONG_ANSWERED = 0,  /* answered with XDP_TX */
	PONG_SOCKPERF = 1,  /* of those, sockperf messages answered with the client flag cleared */
	PONG_PASSED = 2,    /* passed to the kernel */
	PONG_UNANSWERED = 3, /* sockperf messages that ask for no answer: dropped, as its server drops them */
	PONG_NCOUNTERS = 4,
};

#define PONG_SOCKPERF_HEADER 14 /* u64 seq, u16 flags, u32 length: sockperf's MsgHeader */
#define PONG_SOCKPERF_CLIENT 1  /* flags bit: sent by a client */
#define PONG_SOCKPERF_PONG 2    /* flags bit: please answer */

#endif
