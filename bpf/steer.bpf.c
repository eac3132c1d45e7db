// SPDX-License-Identifier: MIT
/*
 * steer.bpf.c - kbypass XDP flow steering.
 *
 * Parses Ethernet, up to two VLAN tags (802.1Q / 802.1ad), IPv4 or IPv6 (a few extension headers),
 * then UDP/TCP ports (ICMP: the protocol, checked for a full 8-byte header), and scans the rules of steer.h in priority order; the first rule
 * that decides wins. Other EtherTypes are matched only by EtherType rules (raw L2 protocols). Anything no rule decides passes to the kernel: we only take what was asked for.
 *
 * Parsing is cursor style: every read is preceded by a bounds check against data_end, so a truncated
 * frame can only end parsing early, never read past the packet (the verifier enforces it as well).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "steer.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STEER_MAX_RULES);
	__type(key, __u32);
	__type(value, struct steer_rule);
} steer_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct steer_order);
} steer_order SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_config);
} steer_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_MAX_RULES);
	__type(key, __u32);
	__type(value, struct steer_counter);
} steer_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, STEER_MAX_GROUPS * STEER_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

/* What the parser learnt about one packet. Addresses are kept as four network-order words so IPv4
 * (word 0 only) and IPv6 share one masked compare against the rule. */
struct flow {
	__be32 src[4];
	__be32 dst[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;     /* STEER_PROTO_* for ICMP/TCP/UDP, else the IP protocol number */
	__u8 family;    /* STEER_FAMILY_V4 / _V6, or _ETHER for a non-IP frame */
	__u8 has_l4;    /* sport/dport are valid (for _ETHER: dport is the EtherType) */
	__u8 malformed; /* truncated or lying headers: never redirect */
	__u8 tagged;    /* the frame has a VLAN tag; vlan is the outer tag's VLAN id */
	__u16 vlan;
	__u16 queue;    /* ctx->rx_queue_index, 0xffff from there up */
};

struct cursor {
	void *pos;
	void *end;  /* the end of the first buffer: headers are read from it alone */
	__u32 frags; /* bytes of the packet past `end`, in frags (multi-buffer; 0 for a one-buffer packet) */
};

/* What the packet holds from p on, frags included: the bound a length field is checked against (a header
 * that claims more is a lie; one that claims more than the first buffer holds is not, with frags). */
static __always_inline __u32 left_from(const struct cursor *c, void *p)
{
	__u32 in_first = c->end - p;

	/* a barrier, so clang does not fold this into end + frags - p: the verifier refuses arithmetic on
	 * pkt_end, and on packet pointers with a length it cannot bound */
	asm volatile("" : "+r"(in_first));
	return in_first + c->frags;
}

#define IP_MF 0x2000      /* IPv4 frag_off: more fragments */
#define IP_OFFSET 0x1fff  /* IPv4 frag_off: fragment offset in 8-byte units */
#define IP6_FRAG_OFFSET 0xfff8 /* IPv6 fragment header: offset << 3 */
#define IP6_FRAG_MORE 0x0001   /* IPv6 fragment header: M flag */

/* Hand out `len` bytes at the cursor, or NULL when the packet is shorter. */
static __always_inline void *take(struct cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	c->pos = p + len;
	return p;
}

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct ext_hdr { /* common start of IPv6 hop-by-hop, routing, destination options, fragment, AH */
	__u8 nexthdr;
	__u8 len;
	__be16 frag_off; /* fragment header only: offset << 3 | flags */
};

static __always_inline void stat_inc(__u32 key)
{
	__u64 *v = bpf_map_lookup_elem(&steer_stats, &key);

	if (v)
		*v += 1;
}

static __always_inline int is_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/* A protocol number that is no ICMP of this family: STEER_PROTO_ICMP (1) is IPv4's ICMP number, so an IPv6
 * next header of 1 (not ICMPv6) must not read as it, or an `icmp` rule would take it without the ICMP
 * length check. 255 is reserved (RFC 5237) and no rule names it. */
static __always_inline __u8 other_proto(__u8 p)
{
	return p == STEER_PROTO_ICMP ? 255 : p;
}

/* Read the L4 header at the cursor; `avail` is the L4 length the IP header claims; `icmp` is the
 * family's ICMP protocol number (1 or 58). */
static __always_inline void parse_l4(struct cursor *c, struct flow *f, __u8 l4proto, __u32 avail, __u8 icmp)
{
	if (l4proto == IPPROTO_UDP) {
		struct udphdr *uh = take(c, sizeof(*uh));
		__u32 ulen;

		f->proto = STEER_PROTO_UDP;
		if (!uh || avail < sizeof(*uh)) {
			f->malformed = 1;
			return;
		}
		ulen = bpf_ntohs(uh->len);
		if (ulen < sizeof(*uh) || ulen > avail) {
			f->malformed = 1;
			return;
		}
		f->sport = uh->source;
		f->dport = uh->dest;
		f->has_l4 = 1;
	} else if (l4proto == IPPROTO_TCP) {
		struct tcphdr *th = take(c, sizeof(*th));

		f->proto = STEER_PROTO_TCP;
		if (!th || avail < sizeof(*th) || th->doff < 5 || (__u32)th->doff * 4 > avail) {
			f->malformed = 1;
			return;
		}
		f->sport = th->source;
		f->dport = th->dest;
		f->has_l4 = 1;
	} else if (l4proto == icmp) {
		/* type, code, checksum and 4 bytes of rest-of-header: what the kernel pulls too. */
		f->proto = STEER_PROTO_ICMP;
		if (!take(c, 8) || avail < 8) {
			f->malformed = 1;
			return;
		}
		f->has_l4 = 1;
	} else {
		f->proto = other_proto(l4proto);
	}
}

/* Returns 0 when the IPv4 header could not be read at all (nothing to match on). */
static __always_inline int parse_ipv4(struct cursor *c, struct flow *f)
{
	struct iphdr *iph = c->pos;
	__u32 hlen, tot, have;

	if (!take(c, sizeof(*iph)))
		return 0;
	if (iph->version != 4 || iph->ihl < 5)
		return 0;
	hlen = iph->ihl * 4;
	/* Options: skip them, but only if they are really there. */
	c->pos = iph;
	if (!take(c, hlen))
		return 0;

	f->family = STEER_FAMILY_V4;
	f->src[0] = iph->saddr;
	f->dst[0] = iph->daddr;
	f->proto = iph->protocol;

	tot = bpf_ntohs(iph->tot_len);
	have = left_from(c, iph);
	if (tot < hlen || tot > have) {
		/* Addresses are readable, the rest is a lie: match on L3 only. */
		f->malformed = 1;
		if (iph->protocol == IPPROTO_ICMP)
			f->proto = STEER_PROTO_ICMP;
		return 1;
	}
	/* Any fragment (more-fragments set, or an offset): L3 only. A non-first fragment has no L4 header,
	 * so a port rule can never match it; were the first fragment matched on its ports, a port rule
	 * would send the first fragment one way and the rest another (half a datagram in the AF_XDP ring,
	 * half waiting in the kernel's reassembly queue). Rules without ports see every fragment of a
	 * datagram alike: same addresses, same protocol. */
	if (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		if (iph->protocol == IPPROTO_ICMP)
			f->proto = STEER_PROTO_ICMP;
		return 1;
	}
	parse_l4(c, f, iph->protocol, tot - hlen, IPPROTO_ICMP);
	return 1;
}

static __always_inline int is_v6_ext(__u8 next)
{
	return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	       next == IPPROTO_FRAGMENT || next == IPPROTO_AH;
}

static __always_inline int parse_ipv6(struct cursor *c, struct flow *f)
{
	struct ipv6hdr *ip6 = take(c, sizeof(*ip6));
	__u32 avail, have, elen;
	__u8 next;
	int i;

	if (!ip6 || ip6->version != 6)
		return 0;

	f->family = STEER_FAMILY_V6;
	__builtin_memcpy(f->src, &ip6->saddr, 16);
	__builtin_memcpy(f->dst, &ip6->daddr, 16);
	next = ip6->nexthdr;
	f->proto = other_proto(next);

	avail = bpf_ntohs(ip6->payload_len);
	have = left_from(c, c->pos);
	if (avail == 0 || avail > have) {
		/* payload_len 0 is a jumbogram, which we do not parse; larger than the frame is a lie. */
		f->malformed = 1;
		if (next == IPPROTO_ICMPV6)
			f->proto = STEER_PROTO_ICMP;
		return 1;
	}

	for (i = 0; i < STEER_MAX_V6_EXT; i++) {
		struct ext_hdr *eh;

		if (!is_v6_ext(next))
			break;
		eh = c->pos;
		if (!take(c, sizeof(*eh))) {
			f->malformed = 1;
			return 1;
		}
		if (next == IPPROTO_FRAGMENT)
			elen = 8;
		else if (next == IPPROTO_AH)
			elen = ((__u32)eh->len + 2) * 4;
		else
			elen = ((__u32)eh->len + 1) * 8;
		c->pos = eh;
		if (elen > avail || !take(c, elen)) {
			f->malformed = 1;
			return 1;
		}
		avail -= elen;
		if (next == IPPROTO_FRAGMENT && (eh->frag_off & bpf_htons(IP6_FRAG_OFFSET | IP6_FRAG_MORE))) {
			f->proto = eh->nexthdr == IPPROTO_ICMPV6 ? STEER_PROTO_ICMP : other_proto(eh->nexthdr);
			return 1; /* a fragment: L3 only, as in parse_ipv4 (an atomic fragment is whole: go on) */
		}
		next = eh->nexthdr;
		f->proto = next;
	}
	if (is_v6_ext(next)) {
		/* Chain longer than we walk: the L4 protocol is unknown, only proto-"any" rules match. */
		f->proto = 255;
		return 1;
	}
	parse_l4(c, f, next, avail, IPPROTO_ICMPV6);
	return 1;
}

static __always_inline int match(const struct steer_rule *r, const struct flow *f)
{
	int k;

	/* family 0 means "IPv4 or IPv6": IP rules never see non-IP frames, nor EtherType rules IP ones. */
	if (r->family != f->family && (r->family != STEER_FAMILY_ANY || f->family == STEER_FAMILY_ETHER))
		return 0;
	/* untagged frames for rules that name no VLAN; the named VLAN's frames for those that do */
	if (r->tagged != f->tagged || (f->tagged && r->vlan != f->vlan))
		return 0;
	if (r->proto && r->proto != f->proto)
		return 0;
	if ((f->queue & r->queue_mask) != r->queue)
		return 0;
	if ((r->sport_mask || r->dport_mask) && !f->has_l4)
		return 0;
	if ((f->sport & r->sport_mask) != r->sport || (f->dport & r->dport_mask) != r->dport)
		return 0;
	for (k = 0; k < 4; k++) {
		if ((f->src[k] & r->src_mask[k]) != r->src[k] || (f->dst[k] & r->dst_mask[k]) != r->dst[k])
			return 0;
	}
	return 1;
}

/* The rule scan's state, on the program's stack, shared with rule_step through bpf_loop. */
struct scan {
	struct flow f;
	struct steer_order *ord; /* the live rule order */
	__u32 slot;              /* out: the deciding rule's slot */
	__u32 group;             /* out: its socket group (whose sockets a REDIRECT uses) */
	__u8 action;             /* out: its action, STEER_ACT_NONE while no rule decided */
};

/* Does the rule in `slot` decide the packet? Sets s->slot and s->action when it does. */
static __always_inline int decides(struct scan *s, __u32 slot)
{
	struct steer_rule *r = bpf_map_lookup_elem(&steer_rules, &slot);

	if (!r || r->action == STEER_ACT_NONE || !match(r, &s->f))
		return 0;
	if (r->action == STEER_ACT_SAMPLE && r->sample_thresh != STEER_SAMPLE_ALWAYS &&
	    bpf_get_prandom_u32() >= r->sample_thresh)
		return 0; /* spared by the sampler: later rules decide */
	s->slot = slot;
	s->group = r->group;
	s->action = r->action;
	return 1;
}

/* Rule i + 1 of the scan, in priority order (rule 0 is tried inline before the loop): 1 stops the
 * scan (a rule decided). A bpf_loop callback rather than an inline bounded loop: the verifier checks it
 * once, where a loop of STEER_MAX_RULES iterations over every parse outcome cost it ~900k instructions
 * (limit 1M) and seconds of load time. */
static long rule_step(__u32 i, void *data)
{
	struct scan *s = data;

	i += 1;
	if (i >= STEER_MAX_RULES)
		return 1;
	/* The mask changes nothing (i < STEER_MAX_RULES, a power of two) but bounds the index register the
	 * verifier sees: clang indexes with a copy of i the comparison did not bound, and would drop a plain
	 * mask as redundant, hence the empty asm that hides i's range from it. */
	asm volatile("" : "+r"(i));
	return decides(s, s->ord->slot[i & (STEER_MAX_RULES - 1)]);
}

/* Section xdp.frags: the program declares multi-buffer support (BPF_F_XDP_HAS_FRAGS), so a veth or a driver
 * lets it run with an MTU larger than one page (a veth up to 65,000) and hands it packets as a first buffer
 * plus frags. Everything it parses (Ethernet, VLAN, IP, L4 headers) is read from the first buffer, the
 * linear part between data and data_end, bounds-checked as before: a header that does not fit the first
 * buffer is a short packet and passes. Packet lengths it counts are the whole packet's
 * (bpf_xdp_get_buff_len), not the first buffer's. */
SEC("xdp.frags")
int kbypass_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data, .end = data_end };
	__u32 pkt_len = bpf_xdp_get_buff_len(ctx);
	struct scan s = { .action = STEER_ACT_NONE }; /* the parser fills s.f in place: no copy per packet */
	struct ethhdr *eth;
	struct vlan_hdr *vh;
	struct steer_counter *cnt;
	struct steer_order *ord;
	__be16 proto;
	__u32 key = 0, i, n;
	int ok = 0;
	struct steer_config *cfg;

	/* a queue past 16 bits reads as 0xffff, which no rule names (user space takes queues up to 4095) */
	c.frags = pkt_len - (__u32)(data_end - data);
	s.f.queue = ctx->rx_queue_index > 0xffff ? 0xffff : ctx->rx_queue_index;
	eth = take(&c, sizeof(*eth));
	if (!eth) {
		stat_inc(STEER_STAT_NOT_IP);
		return XDP_PASS;
	}
	proto = eth->h_proto;
	/* Two tags at most (802.1ad outer + 802.1Q inner); a third leaves proto a VLAN type -> not IP. */
	for (i = 0; i < 2; i++) {
		if (!is_vlan(proto))
			break;
		vh = take(&c, sizeof(*vh));
		if (!vh) {
			stat_inc(STEER_STAT_NOT_IP);
			return XDP_PASS;
		}
		if (!s.f.tagged) {
			s.f.tagged = 1;
			s.f.vlan = bpf_ntohs(vh->tci) & 0x0fff;
		}
		proto = vh->proto;
	}

	if (proto == bpf_htons(ETH_P_IP))
		ok = parse_ipv4(&c, &s.f);
	else if (proto == bpf_htons(ETH_P_IPV6))
		ok = parse_ipv6(&c, &s.f);
	else if (is_vlan(proto)) {
		stat_inc(STEER_STAT_NOT_IP); /* a third tag: deeper than we parse */
		return XDP_PASS;
	} else {
		/* Raw L2: only EtherType rules can match; what they do not decide is counted NOT_IP. */
		s.f.family = STEER_FAMILY_ETHER;
		s.f.dport = proto;
		s.f.has_l4 = 1;
		ok = 1;
	}
	if (!ok) {
		stat_inc(STEER_STAT_PARSE_ERROR);
		stat_inc(STEER_STAT_UNMATCHED);
		return XDP_PASS;
	}
	if (s.f.malformed)
		stat_inc(STEER_STAT_PARSE_ERROR);

	cfg = bpf_map_lookup_elem(&steer_config, &key);
	if (!cfg)
		goto unmatched;
	key = cfg->active & 1;
	ord = bpf_map_lookup_elem(&steer_order, &key);
	if (!ord)
		goto unmatched;
	n = ord->count;
	if (n > STEER_MAX_RULES)
		n = STEER_MAX_RULES;
	s.ord = ord;
	/* The first rule inline (most set-ups have one or two, and a callback per rule costs ~15 ns here
	 * where the inline loop cost ~8), the rest through bpf_loop. */
	if (n && !decides(&s, ord->slot[0]) && n > 1)
		bpf_loop(n - 1, rule_step, &s, 0);
	if (s.action == STEER_ACT_NONE)
		goto unmatched;

	cnt = bpf_map_lookup_elem(&steer_counters, &s.slot);
	if (cnt) {
		cnt->packets += 1;
		cnt->bytes += pkt_len;
	}
	switch (s.action) {
	case STEER_ACT_REDIRECT:
		if (s.f.malformed)
			return XDP_PASS;
		/* XDP_PASS in the flags is the verdict when the group has no socket on this queue (an
		 * out-of-range key is a failed lookup too, so a queue >= STEER_MAX_QUEUES passes). */
		if (ctx->rx_queue_index >= STEER_MAX_QUEUES)
			return XDP_PASS;
		return bpf_redirect_map(&xsks_map, s.group * STEER_MAX_QUEUES + ctx->rx_queue_index, XDP_PASS);
	case STEER_ACT_PASS:
		return XDP_PASS;
	default: /* DROP, and SAMPLE when the sampler chose this packet */
		return XDP_DROP;
	}
unmatched:
	stat_inc(s.f.family == STEER_FAMILY_ETHER ? STEER_STAT_NOT_IP : STEER_STAT_UNMATCHED);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
