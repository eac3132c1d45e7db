/* SPDX-License-Identifier: MIT */
/*
 * tcppong.h - the contract between bpf/tcppong.bpf.c and src/kbypass/apps/xdp_tcp_pong.py.
 *
 * The TCP latency floor: an XDP program that answers a sockperf `--tcp` ping-pong message on an
 * established connection in the driver (XDP_TX), so a ping-pong against it measures the wire and the
 * client's stack and nothing of a server. A kernel listener in the same namespace does the handshake;
 * the program takes a flow over at its first data segment and from then on:
 *   - a data segment holding one whole sockperf message (header length field == payload length) with
 *     the client and pong flags set is answered in place: MACs, IPs, ports swapped, seq = its ack,
 *     ack = its seq + payload length, TSecr = its TSval, TSval = the kernel's clock for this flow (its
 *     last TSval seen as the first message's TSecr, plus the milliseconds since), the client flag cleared
 *     (as `sockperf server` and kbypass.apps.pingpong.answer do), IP and TCP checksums computed afresh;
 *     a message that asks for no answer (no pong flag, or sockperf's warm-up flag) gets a pure ACK
 *     instead (the tail trimmed);
 *   - the client's pure ACKs are absorbed (XDP_DROP): they acknowledge the program's answers, bytes the
 *     kernel never sent, which it would take for ACKs of unsent data;
 *   - the client's FIN or RST is turned into an RST carrying the kernel's own receive sequence (the first
 *     message's seq: the kernel saw none of the data) and passed, so the kernel drops its socket at once;
 *     the client's FIN retransmission then meets no socket and the kernel resets the client too.
 * Everything else (other ports, SYNs, the handshake's ACK, IP options, fragments, TCP options other than
 * none or Linux's NOP NOP TS, partial or several messages in one segment) passes to the kernel.
 *
 * Maps:
 *   tcppong_config    ARRAY         key u32 0                  value struct tcppong_config     1
 *   tcppong_flows     LRU_HASH      key struct tcppong_key     value struct tcppong_flow       TCPPONG_FLOWS
 *   tcppong_counters  PERCPU_ARRAY  key u32 i                  value u64 (enum tcppong_counter) TCPPONG_NCOUNTERS
 */
#ifndef KBYPASS_TCPPONG_H
#define KBYPASS_TCPPONG_H

#include <linux/types.h>

struct tcppong_config {
	__u16 port; /* TCP port to answer, network byte order; 0 answers none */
	__u16 _pad;
};

struct tcppong_key { /* the client's end of a flow (the server's is the configured port) */
	__u32 addr;  /* network byte order */
	__u16 port;  /* network byte order */
	__u16 _pad;
};

struct tcppong_flow {
	__u64 t0_ns;        /* bpf_ktime_get_ns() at the first message */
	__u32 ts_base;      /* the first message's TSecr: the kernel's last TSval (its handshake) */
	__u32 kern_rcv_nxt; /* the first message's seq: the kernel's rcv_nxt, which XDP's answers never advance */
};

enum tcppong_counter {
	TCPPONG_ANSWERED = 0,  /* messages answered with XDP_TX */
	TCPPONG_ACKED = 1,     /* messages that asked for no answer, acknowledged with a pure ACK */
	TCPPONG_ABSORBED = 2,  /* the client's pure ACKs dropped */
	TCPPONG_RESET = 3,     /* the client's FIN/RST passed to the kernel as an RST */
	TCPPONG_PASSED = 4,    /* passed to the kernel unchanged */
	TCPPONG_NCOUNTERS = 5,
};

#define TCPPONG_FLOWS 1024
#define TCPPONG_MAX_PAYLOAD 1448 /* answered in the first buffer only; bounds the checksum loop */
#define TCPPONG_SOCKPERF_HEADER 14 /* u64 seq, u16 flags, u32 length: sockperf's MsgHeader */
#define TCPPONG_SOCKPERF_CLIENT 1  /* flags bit: sent by a client */
#define TCPPONG_SOCKPERF_PONG 2    /* flags bit: please answer */
#define TCPPONG_SOCKPERF_WARMUP 4  /* flags bit: a warm-up message, which its server leaves unanswered */

#endif
