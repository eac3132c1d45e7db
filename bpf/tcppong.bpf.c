// SPDX-License-Identifier: MIT
/* The TCP latency floor: answer a sockperf --tcp message on an established flow in the driver with
 * XDP_TX; see tcppong.h for what is answered, absorbed, turned into an RST or passed, and why. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "answer.h"
#include "tcppong.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct tcppong_config);
	__uint(max_entries, 1);
} tcppong_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct tcppong_key);
	__type(value, struct tcppong_flow);
	__uint(max_entries, TCPPONG_FLOWS);
} tcppong_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, TCPPONG_NCOUNTERS);
} tcppong_counters SEC(".maps");

#define TCP_FLAGS_MASK 0x3f /* URG ACK PSH RST SYN FIN, the low byte of the 13th/14th header bytes */
#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_PSH 0x08
#define F_ACK 0x10
#define TS_OPTS_LEN 12 /* NOP NOP kind 8 len 10 TSval TSecr: what Linux puts in every segment */

static __always_inline int count(__u32 which, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&tcppong_counters, &which);
	if (c)
		*c += 1;
	return verdict;
}

static __always_inline __u16 fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* The sum of the 16-bit words of [p, p + len), bounds-checked word by word for the verifier. */
static __always_inline __u64 sum_words(void *p, __u32 len, void *data_end)
{
	__u64 sum = 0;
	__u16 *w = p;
	for (int i = 0; i < (TCPPONG_MAX_PAYLOAD + 60) / 2; i++) {
		if (len < 2 || (void *)(w + 1) > data_end)
			break;
		sum += *w++;
		len -= 2;
	}
	if (len == 1 && (void *)w + 1 <= data_end)
		sum += *(__u8 *)w; /* the odd last byte, padded with a zero byte (little-endian load) */
	return sum;
}

static __always_inline void ip_checksum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u64 sum = 0;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	ip->check = fold(sum);
}

static __always_inline void tcp_checksum(struct iphdr *ip, struct tcphdr *tcp, __u32 seg_len, void *data_end)
{
	__u64 sum = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) + (ip->daddr >> 16) +
		    bpf_htons(IPPROTO_TCP) + bpf_htons(seg_len);
	tcp->check = 0;
	tcp->check = fold(sum + sum_words(tcp, seg_len, data_end));
}

SEC("xdp.frags")
int xdp_tcppong(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct tcphdr *tcp = (void *)(ip + 1);
	__u32 zero = 0;
	struct tcppong_config *cfg = bpf_map_lookup_elem(&tcppong_config, &zero);

	if (!cfg || (void *)(tcp + 1) > data_end)
		return count(TCPPONG_PASSED, XDP_PASS);
	if (!answer_plain_ipv4_to(eth, ip, tcp, IPPROTO_TCP, cfg->port))
		return count(TCPPONG_PASSED, XDP_PASS);

	__u32 doff = tcp->doff * 4;
	__u32 ip_len = bpf_ntohs(ip->tot_len);
	if ((doff != sizeof(*tcp) && doff != sizeof(*tcp) + TS_OPTS_LEN) || ip_len < sizeof(*ip) + doff)
		return count(TCPPONG_PASSED, XDP_PASS);
	__u32 plen = ip_len - sizeof(*ip) - doff;
	__u8 flags = ((__u8 *)tcp)[13] & TCP_FLAGS_MASK;
	struct tcppong_key key = {.addr = ip->saddr, .port = tcp->source};
	struct tcppong_flow *flow = bpf_map_lookup_elem(&tcppong_flows, &key);

	/* a flow taken over: the kernel must see neither the ACKs of our answers nor a FIN past its rcv_nxt */
	if (flow && plen == 0 && flags == F_ACK)
		return count(TCPPONG_ABSORBED, XDP_DROP);
	if (flow && (flags & (F_FIN | F_RST))) {
		__u32 *seq = &tcp->seq;
		*seq = bpf_htonl(flow->kern_rcv_nxt);
		tcp->ack_seq = 0;
		((__u8 *)tcp)[13] = F_RST;
		bpf_map_delete_elem(&tcppong_flows, &key);
		if ((void *)tcp + doff + plen <= data_end && plen <= TCPPONG_MAX_PAYLOAD)
			tcp_checksum(ip, tcp, doff + plen, data_end);
		return count(TCPPONG_RESET, XDP_PASS);
	}

	/* one whole sockperf message asking for an answer, in the first buffer (plen bounds the loop) */
	__u8 *opt = (void *)(tcp + 1);
	__u8 *msg = (void *)tcp + doff;
	if ((flags & ~F_PSH) != F_ACK || plen < TCPPONG_SOCKPERF_HEADER || plen > TCPPONG_MAX_PAYLOAD ||
	    (void *)msg + plen > data_end || (void *)(msg + TCPPONG_SOCKPERF_HEADER) > data_end ||
	    ((__u32)msg[10] << 24 | (__u32)msg[11] << 16 | (__u32)msg[12] << 8 | msg[13]) != plen ||
	    !(msg[9] & TCPPONG_SOCKPERF_CLIENT))
		return count(TCPPONG_PASSED, XDP_PASS);
	__u32 tsval = 0, tsecr = 0;
	if (doff != sizeof(*tcp)) {
		if ((void *)(opt + TS_OPTS_LEN) > data_end || opt[0] != 1 || opt[1] != 1 || opt[2] != 8 || opt[3] != 10)
			return count(TCPPONG_PASSED, XDP_PASS);
		tsval = *(__u32 *)(opt + 4);
		tsecr = *(__u32 *)(opt + 8);
	}
	__u64 now = bpf_ktime_get_ns();
	if (!flow) {
		struct tcppong_flow fresh = {.t0_ns = now, .ts_base = bpf_ntohl(tsecr), .kern_rcv_nxt = bpf_ntohl(tcp->seq)};
		bpf_map_update_elem(&tcppong_flows, &key, &fresh, BPF_ANY);
		flow = bpf_map_lookup_elem(&tcppong_flows, &key);
		if (!flow)
			return count(TCPPONG_PASSED, XDP_PASS);
	}

	/* the answer, in place */
	answer_turn_around(eth, ip, tcp);
	__u32 their_seq = bpf_ntohl(tcp->seq);
	tcp->seq = tcp->ack_seq;                      /* our next byte is what they expect */
	tcp->ack_seq = bpf_htonl(their_seq + plen);   /* we took the whole message */
	tcp->window = bpf_htons(0xffff);              /* the kernel's scale is unknown here: 64K at least */
	tcp->urg_ptr = 0;
	if (doff != sizeof(*tcp)) {
		/* TSval in the kernel's clock for this flow (never ahead of it: the base is older than t0),
		 * so the kernel's own later segments (its RST) pass the client's PAWS check */
		*(__u32 *)(opt + 4) = bpf_htonl(flow->ts_base + (__u32)((now - flow->t0_ns) / 1000000));
		*(__u32 *)(opt + 8) = tsval;
	}
	/* as `sockperf server`: answer the pong requests, not the warm-up messages sent before the test */
	int answered = (msg[9] & (TCPPONG_SOCKPERF_PONG | TCPPONG_SOCKPERF_WARMUP)) == TCPPONG_SOCKPERF_PONG;
	if (answered) {
		msg[9] &= ~TCPPONG_SOCKPERF_CLIENT;
		((__u8 *)tcp)[13] = F_ACK | F_PSH;
	} else {
		/* a warm-up message, or sockperf's under-load mode: no answer, but it still needs its ACK */
		((__u8 *)tcp)[13] = F_ACK;
		ip->tot_len = bpf_htons(sizeof(*ip) + doff);
	}
	ip_checksum(ip);
	tcp_checksum(ip, tcp, doff + (answered ? plen : 0), data_end);
	if (!answered) {
		if (bpf_xdp_adjust_tail(ctx, -(int)plen))
			return count(TCPPONG_PASSED, XDP_DROP);
		return count(TCPPONG_ACKED, XDP_TX);
	}
	return count(TCPPONG_ANSWERED, XDP_TX);
}

char _license[] SEC("license") = "GPL";
