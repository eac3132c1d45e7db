/* SPDX-License-Identifier: MIT */
/*
 * livegen.h - the contract between bpf/livegen.bpf.c and src/kbypass/gen/live.py.
 *
 * The live-frames generator: user space runs the program with BPF_PROG_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES on the sending interface, `repeat` times; each run gets a copy of the
 * template frame and returns XDP_TX, so the kernel transmits it out of that interface at XDP speed.
 *
 * Maps:
 *   livegen_config  ARRAY  key u32 0  value struct livegen_config  1
 *   livegen_state   ARRAY  key u32 0  value struct livegen_state   1
 */
#ifndef KBYPASS_LIVEGEN_H
#define KBYPASS_LIVEGEN_H

#include <linux/types.h>

/* Stamp fields in the payload when stamp_offset != 0 (byte offset from the frame start):
 *   stamp_offset + 0: u64 sequence number, big endian (network order), counting from next_seq
 *   stamp_offset + 8: u64 CLOCK_MONOTONIC nanoseconds at the send (bpf_ktime_get_ns), big endian, on the
 *                     frames whose sequence number has (seq & time_mask) == 0; zero on the others.
 *                     Reading the clock is the program's main cost per frame (read_tsc, ~11% of the
 *                     sending core in perf here), so time_mask = 63 stamps the time on one frame in 64:
 *                     latency is sampled, the sequence number (loss, reordering) stays on every frame.
 * The template must carry a UDP checksum of zero ("none" in IPv4), since the payload changes per frame. */
struct livegen_config {
	__u32 stamp_offset;
	__u32 time_mask; /* 2^k - 1: stamp the send time on one frame in 2^k (0: on every frame) */
};

/* Written by the program: the next sequence number. One generator runs on one CPU at a time. */
struct livegen_state {
	__u64 next_seq;
};

#endif
