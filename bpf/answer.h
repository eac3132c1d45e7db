/* answer.h: what the two latency-floor programs (pong.bpf.c for UDP, tcppong.bpf.c for TCP) share: the
 * first-buffer check that a frame is a plain IPv4 packet of one protocol to one port, and the turn of a
 * frame into its answer in place. One copy, so the two floors measure the same work. */
#ifndef KB_BPF_ANSWER_H
#define KB_BPF_ANSWER_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>

/* IPv4 without options and not a fragment, carrying `proto` to destination port `port` (network order,
 * 0: none configured). `l4` is the transport header after the IPv4 header; its ports are its first two
 * 16-bit words in UDP and TCP alike, and the caller has checked they lie in the first buffer. */
static __always_inline int answer_plain_ipv4_to(const struct ethhdr *eth, const struct iphdr *ip, const void *l4,
						__u8 proto, __be16 port)
{
	const __be16 *ports = l4;
	return eth->h_proto == bpf_htons(ETH_P_IP) && ip->version == 4 && ip->ihl == 5 && ip->protocol == proto &&
	       !(ip->frag_off & bpf_htons(0x3fff)) && port != 0 && ports[1] == port;
}

/* Swap both MACs, both IPv4 addresses and both ports (the first two words of `l4`): the frame now goes
 * back where it came from. Swapping pairs keeps the IP and pseudo-header checksums as they were. */
static __always_inline void answer_turn_around(struct ethhdr *eth, struct iphdr *ip, void *l4)
{
	unsigned char mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	__be32 a = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = a;
	__be16 *ports = l4;
	__be16 p = ports[0];
	ports[0] = ports[1];
	ports[1] = p;
}

#endif
