// SPDX-License-Identifier: MIT
/* The latency floor: answer a UDP ping in the driver with XDP_TX; see pong.h. Frags-aware: only the
 * headers and the 14-byte sockperf header are read, and they are in the first buffer of any frame. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "answer.h"
#include "pong.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct pong_config);
	__uint(max_entries, 1);
} pong_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, PONG_NCOUNTERS);
} pong_counters SEC(".maps");

static __always_inline int count(__u32 which, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&pong_counters, &which);
	if (c)
		*c += 1;
	return verdict;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for one 16-bit word changing from m to m' */
static __always_inline __u16 csum_replace(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

SEC("xdp.frags")
int xdp_pong(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	__u32 zero = 0;
	struct pong_config *cfg = bpf_map_lookup_elem(&pong_config, &zero);

	if (!cfg || (void *)(udp + 1) > data_end)
		return count(PONG_PASSED, XDP_PASS);
	if (!answer_plain_ipv4_to(eth, ip, udp, IPPROTO_UDP, cfg->port))
		return count(PONG_PASSED, XDP_PASS);

	/* a sockperf question: clear the client flag, as its server does, so its client takes the answer */
	__u8 *msg = (void *)(udp + 1);
	__u32 plen = bpf_ntohs(udp->len) - sizeof(*udp);
	int sockperf = 0;
	if ((void *)(msg + PONG_SOCKPERF_HEADER) <= data_end && plen >= PONG_SOCKPERF_HEADER &&
	    ((__u32)msg[10] << 24 | (__u32)msg[11] << 16 | (__u32)msg[12] << 8 | msg[13]) == plen) {
		if ((msg[9] & (PONG_SOCKPERF_CLIENT | PONG_SOCKPERF_PONG)) != (PONG_SOCKPERF_CLIENT | PONG_SOCKPERF_PONG))
			return count(PONG_UNANSWERED, XDP_DROP);
		/* payload byte 9 is the low byte of the 16-bit word at UDP offset 16 (even: word aligned) */
		__u16 old = bpf_htons((__u16)msg[8] << 8 | msg[9]);
		msg[9] &= ~PONG_SOCKPERF_CLIENT;
		__u16 new = bpf_htons((__u16)msg[8] << 8 | msg[9]);
		if (udp->check) {
			udp->check = csum_replace(udp->check, old, new);
			if (!udp->check)
				udp->check = 0xffff;
		}
		sockperf = 1;
	}

	answer_turn_around(eth, ip, udp); /* the UDP checksum stays right too */
	if (sockperf)
		count(PONG_SOCKPERF, 0);
	return count(PONG_ANSWERED, XDP_TX);
}

char _license[] SEC("license") = "GPL";
