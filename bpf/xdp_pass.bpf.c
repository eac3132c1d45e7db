// SPDX-License-Identifier: MIT
/* XDP_PASS for every frame. veth delivers frames that its peer sent with XDP_TX only to a receiver with
 * an XDP program (it schedules the receiving NAPI for XDP frames only then; GRO is not enough), so the
 * client side of the latency floor (pong.bpf.c) carries this one. Frags-aware, so veth never linearises
 * a frame for it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp.frags")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
