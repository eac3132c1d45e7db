// SPDX-License-Identifier: MIT
/* The live-frames packet generator; see livegen.h for how user space drives it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "livegen.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct livegen_config);
	__uint(max_entries, 1);
} livegen_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct livegen_state);
	__uint(max_entries, 1);
} livegen_state SEC(".maps");

/* Largest stamp offset we accept: keeps the verifier's range small; frames are at most one page. */
#define LIVEGEN_MAX_OFFSET 2048

/* xdp.frags: frags-aware like every kbypass XDP program, so that loading it never ties a veth to one-page
 * MTUs; it only touches the first buffer. (Live-frames mode itself still refuses frames larger than a page:
 * kbypass.gen.live.MAX_FRAME.) */
SEC("xdp.frags")
int livegen(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct livegen_config *cfg = bpf_map_lookup_elem(&livegen_config, &zero);
	struct livegen_state *st = bpf_map_lookup_elem(&livegen_state, &zero);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off;

	if (!cfg || !st)
		return XDP_ABORTED;
	off = cfg->stamp_offset;
	if (off == 0 || off > LIVEGEN_MAX_OFFSET)
		return XDP_TX;
	if (data + off + 16 > data_end)
		return XDP_TX; /* template too short to stamp: send it as it is */
	__u64 *stamp = data + off;
	__u64 seq = st->next_seq++;
	stamp[0] = bpf_cpu_to_be64(seq);
	/* A recycled page keeps what an earlier run wrote, so the zero is written, not assumed. */
	stamp[1] = (seq & cfg->time_mask) == 0 ? bpf_cpu_to_be64(bpf_ktime_get_ns()) : 0;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
