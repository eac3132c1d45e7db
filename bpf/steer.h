/* SPDX-License-Identifier: MIT */
/*
 * steer.h - the one contract between bpf/steer.bpf.c and src/kbypass/steer/ (rules.py, steering.py).
 *
 * Change this file and the Python side together: rules.py packs `struct steer_rule` with a single
 * struct format (RULE_FORMAT) and tests/unit/test_steer_prog.py checks that format against the BTF of
 * the built object, so a drift here fails a test instead of silently mis-steering traffic.
 *
 * Maps (names as seen by libbpf / bpftool):
 *   steer_rules     ARRAY          key u32 rule id (slot)   value struct steer_rule     STEER_MAX_RULES
 *   steer_order     ARRAY          key u32 0 or 1           value struct steer_order    2
 *   steer_config    ARRAY          key u32 0                value struct steer_config   1
 *   steer_counters  PERCPU_ARRAY   key u32 rule id          value struct steer_counter  STEER_MAX_RULES
 *   steer_stats     PERCPU_ARRAY   key u32 STEER_STAT_*     value __u64                 STEER_STAT_MAX
 *   xsks_map        XSKMAP         key u32 group * STEER_MAX_QUEUES + rx queue index
 *                                  value u32 AF_XDP socket fd  STEER_MAX_GROUPS * STEER_MAX_QUEUES
 *
 * Why two order lists: rules are matched in priority order, and user space changes that order (insert,
 * remove) while packets flow. It writes the whole new list into the inactive steer_order entry, then
 * flips steer_config.active with one aligned 4-byte store, so a packet sees either the old list or the
 * new one, never half of each. The rule a list points to is written before the list is published and
 * cleared only after it is unpublished.
 */
#ifndef KBYPASS_STEER_H
#define KBYPASS_STEER_H

#include <linux/types.h>

#define STEER_MAX_RULES 128
#define STEER_MAX_QUEUES 64
/* Socket groups: each user of the program (one process of the control plane's clients, or the
 * in-process steering's 0) has its own row of STEER_MAX_QUEUES sockets, so a rule of one client
 * redirects only to that client's sockets, whichever queue the packet arrives on. */
#define STEER_MAX_GROUPS 64
/* IPv6 extension headers walked before giving up on finding the L4 header. */
#define STEER_MAX_V6_EXT 4

/* steer_rule.action. 0 marks an empty slot, which never matches. */
#define STEER_ACT_NONE 0
#define STEER_ACT_REDIRECT 1 /* to the AF_XDP socket of the rule's group for ctx->rx_queue_index; no
                              * socket there (or a queue >= STEER_MAX_QUEUES) -> PASS */
#define STEER_ACT_DROP 2
#define STEER_ACT_PASS 3
#define STEER_ACT_SAMPLE 4   /* drop with probability sample_thresh / 2^32, else keep scanning later rules */

/* steer_rule.proto. ICMP means ICMP on IPv4 and ICMPv6 on IPv6. */
#define STEER_PROTO_ANY 0
#define STEER_PROTO_ICMP 1
#define STEER_PROTO_TCP 6
#define STEER_PROTO_UDP 17

/* steer_rule.family: which IP version a rule applies to (0 = both; set by the addresses it names), or
 * ETHER: the rule matches non-IP frames by EtherType (raw L2 protocols such as kbypass xfer's 0x88B5). */
#define STEER_FAMILY_ANY 0
#define STEER_FAMILY_ETHER 1
#define STEER_FAMILY_V4 4
#define STEER_FAMILY_V6 6

/* sample_thresh value that means "always drop" (2^32 itself does not fit). */
#define STEER_SAMPLE_ALWAYS 0xffffffffu

/*
 * One rule, 88 bytes. Rules are scanned linearly (about 11.5 ns per rule that does not match with 128
 * rules, measured with BPF_PROG_TEST_RUN here: bench/cp_steering.py), so keep the list short. A packet matches when every field matches:
 *   family   == 0 or the packet's IP version; STEER_FAMILY_ETHER rules match only non-IP frames and
 *            family 0/4/6 rules only IP packets
 *   vlan     tagged == 0: untagged frames only; tagged == 1: frames whose outer VLAN tag (802.1Q or
 *            802.1ad) has VLAN id `vlan` (host order), whatever is inside it. A frame with a tag is the
 *            kernel's VLAN device's (eth0.100) unless a rule names that VLAN, and every user-space
 *            consumer of the untagged default (the UDP endpoint, xfer, reflect) parses untagged frames
 *   proto    == 0 or the packet's L4 protocol (ICMPv6 counts as STEER_PROTO_ICMP)
 *   (packet sport & sport_mask) == sport, same for dport; a non-zero mask also needs an L4 header, so
 *            fragments (first or not) and malformed packets match only rules without ports: every
 *            fragment of a datagram then goes the same way (a port rule that took the first fragment
 *            would leave the rest to the kernel). Like NIC ntuple filters, port rules see whole datagrams.
 *   (packet src word i & src_mask[i]) == src[i] for i in 0..3, same for dst; an IPv4 address lives in
 *            word 0 (words 1-3 are zero), so a wildcard is an all-zero mask
 *   (ctx->rx_queue_index & queue_mask) == queue: the receive queue the packet arrived on (queue_mask
 *            0xffff) or any (0). One worker per queue gives each worker the same flows "on its queue",
 *            so their rules are disjoint and a worker that dies takes only its own queue's rule with it.
 * Byte order: ports, port masks, addresses and masks are network order (compared against the packet
 * as read); sample_thresh is host order. Host bits of src/dst are zero (user space masks them).
 *
 * EtherType rules (family == STEER_FAMILY_ETHER) keep the struct small by reusing the dport pair:
 * dport holds the EtherType (network order, the 16 bits after the MACs and up to two VLAN tags) and
 * dport_mask is 0xffff (or 0 for "any non-IP frame"). The parser puts a non-IP frame's EtherType in
 * flow.dport, so match() compares it like a port; proto, sport and the addresses are wildcards (zero).
 * IPv4/IPv6 EtherTypes and VLAN tags are never matched this way (user space refuses such rules).
 *
 *   offset size field
 *        0    1 action
 *        1    1 proto
 *        2    1 family         (STEER_FAMILY_*)
 *        3    1 tagged         (0 or 1, see vlan)
 *        4    4 sample_thresh
 *        8    2 sport          10 2 sport_mask     12 2 dport (EtherType)  14 2 dport_mask
 *       16   16 src            32 16 src_mask      48 16 dst      64 16 dst_mask
 *       80    2 vlan           82  2 group (host order, < STEER_MAX_GROUPS: whose sockets REDIRECT uses)
 *       84    2 queue          86  2 queue_mask    (host order)
 */
struct steer_rule {
	__u8 action;
	__u8 proto;
	__u8 family;
	__u8 tagged;
	__u32 sample_thresh;
	__be16 sport;
	__be16 sport_mask;
	__be16 dport;
	__be16 dport_mask;
	__be32 src[4];
	__be32 src_mask[4];
	__be32 dst[4];
	__be32 dst_mask[4];
	__u16 vlan;
	__u16 group;
	__u16 queue;
	__u16 queue_mask;
};

/* The priority list: rule ids (slots of steer_rules) in match order, first match wins. */
struct steer_order {
	__u32 count;
	__u32 slot[STEER_MAX_RULES];
};

struct steer_config {
	__u32 active; /* which steer_order entry (0 or 1) packets use */
};

struct steer_counter {
	__u64 packets;
	__u64 bytes;
};

/* steer_stats keys. Every packet lands in exactly one of: a rule counter, UNMATCHED, NOT_IP.
 * (A non-IP frame that an EtherType rule decides lands in that rule's counter; one no rule decides in
 * NOT_IP.)
 * PARSE_ERROR is counted on top of that when an IP packet's headers are truncated or its lengths lie
 * (IHL < 5, header past the end, total/payload/UDP length beyond the data, TCP data offset < 5).
 * Such a packet is matched on what could be read: nothing when the IP header itself is unreadable,
 * L3 fields only when the L4 header is bad. A REDIRECT verdict on it turns into PASS, so the AF_XDP
 * side never sees a frame whose lengths are wrong; the kernel then drops it and counts it in its own
 * statistics. The IPv4 header checksum is not verified here (a per-packet cost the kernel's receive
 * path pays anyway): the UDP stack and its C lane check it (kbypass.proto.ipv4, csrc/core/kb_udp.c), and
 * the transport's datagrams carry a CRC32 of their own. */
#define STEER_STAT_UNMATCHED 0   /* IPv4/IPv6 (well-formed or not), no rule decided: XDP_PASS */
#define STEER_STAT_PARSE_ERROR 1 /* truncated or lying headers (in addition to the above) */
#define STEER_STAT_NOT_IP 2      /* not IPv4/IPv6 and no EtherType rule decided, or more than two
                                  * VLAN tags: XDP_PASS */
#define STEER_STAT_MAX 3

#endif /* KBYPASS_STEER_H */
