/* kbp_iface.c: one interface's AF_XDP sockets, made by the control plane (`open_socket`, one per receive
 * queue: the steering program redirects a flow to the socket of the queue the packet came in on), and the
 * datagrams that go through them, one at a time, on the C core's lane (kb_lane: the rings, kb_udp: "is this
 * plain UDP to us", the 42-byte header and its checksums).
 *
 * Every frame lent to the kernel goes straight back to the fill ring once its bytes are copied out (into
 * the caller's buffer, or the backlog of the socket it is for), so the UMEM is only ever the kernel's fill
 * share plus a stash of KB_LANE_STASH_MAX frames for sending. Sends go out of queue 0's socket.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_xdp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../core/kb_umem.h"
#include "kbp.h"

#ifndef SOL_XDP
#define SOL_XDP 283
#endif
#define HOP_RETRY_NS 50000000ull    /* an unresolved next hop is asked again after 50 ms ... */
#define HOP_REFRESH_NS 30000000000ull /* ... a known one after 30 s */
#define SEND_TRIES 4096
#define TX_BATCH 32           /* frames a copy-mode kick transmits at most (the kernel's TX_BATCH_SIZE) */

static struct kbp_iface *ifaces[KBP_MAX_IFACES];
static void tx_flush(struct kbp_iface *ifc);

static int parse_mac(const char *s, uint8_t mac[6]) {
    unsigned v[6];
    if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) return -1;
    for (int i = 0; i < 6; i++) mac[i] = (uint8_t)v[i];
    return 0;
}

static void ring_map(struct kb_ring *r, void *base, const struct xdp_ring_offset *o, uint32_t size, int producer) {
    r->producer = (uint32_t *)((char *)base + o->producer);
    r->consumer = (uint32_t *)((char *)base + o->consumer);
    r->flags = (uint32_t *)((char *)base + o->flags);
    r->ring = (char *)base + o->desc;
    r->size = size;
    r->mask = size - 1;
    r->cached_prod = *r->producer;
    r->cached_cons = *r->consumer + (producer ? size : 0);
}

static void queue_close(struct kbp_queue *q) {
    for (int i = 0; i < 4; i++)
        if (q->map[i]) munmap(q->map[i], q->maplen[i]);
    if (q->umem) munmap(q->umem, q->umem_size);
    if (q->fd >= 0) kbp_real.close(q->fd);
    memset(q, 0, sizeof(*q));
    q->fd = -1;
}

/* Map the socket the control plane made (and its UMEM), lend half the frames to the fill ring, stash
 * frames for sending: a ready lane. 0, or -1 with why. */
static int queue_open(struct kbp_queue *q, int xsk, int memfd, const char *reply, char *why, size_t cap) {
    memset(q, 0, sizeof(*q));
    q->fd = xsk;
    char mode[16] = "copy";
    kbp_json_str(reply, "mode", mode, sizeof(mode));
    q->umem_size = (uint64_t)KBP_FRAMES * KBP_FRAME_SIZE;
    q->umem = mmap(NULL, q->umem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, memfd, 0);
    kbp_real.close(memfd);
    if (q->umem == MAP_FAILED) {
        q->umem = NULL;
        snprintf(why, cap, "cannot map the UMEM: %s", strerror(errno));
        return -1;
    }
    struct xdp_mmap_offsets off;
    socklen_t ol = sizeof(off);
    if (getsockopt(xsk, SOL_XDP, XDP_MMAP_OFFSETS, &off, &ol) < 0) {
        snprintf(why, cap, "XDP_MMAP_OFFSETS: %s", strerror(errno));
        return -1;
    }
    const struct {
        struct xdp_ring_offset *o;
        uint64_t pgoff;
        size_t slot;
        struct kb_ring *r;
        int producer;
    } rings[4] = {{&off.rx, XDP_PGOFF_RX_RING, sizeof(struct xdp_desc), &q->rx, 0},
                  {&off.tx, XDP_PGOFF_TX_RING, sizeof(struct xdp_desc), &q->tx, 1},
                  {&off.fr, XDP_UMEM_PGOFF_FILL_RING, sizeof(uint64_t), &q->fill, 1},
                  {&off.cr, XDP_UMEM_PGOFF_COMPLETION_RING, sizeof(uint64_t), &q->comp, 0}};
    for (int i = 0; i < 4; i++) {
        q->maplen[i] = rings[i].o->desc + KBP_RING * rings[i].slot;
        void *m = mmap(NULL, q->maplen[i], PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, xsk,
                       (off_t)rings[i].pgoff);
        if (m == MAP_FAILED) {
            snprintf(why, cap, "cannot map a ring: %s", strerror(errno));
            return -1;
        }
        q->map[i] = m;
        ring_map(rings[i].r, m, rings[i].o, KBP_RING, rings[i].producer);
    }
    for (int i = 0; i < KBP_FRAMES; i++) q->state[i] = KB_FRAME_FREE;
    uint32_t idx, n = kb_ring_prod_reserve(&q->fill, KBP_FRAMES / 2, &idx);
    for (uint32_t k = 0; k < n; k++) {
        *kb_ring_addr(&q->fill, idx + k) = (uint64_t)k * KBP_FRAME_SIZE;
        q->state[k] = KB_FRAME_FILL;
    }
    kb_ring_prod_submit(&q->fill, n);
    q->stats[KB_IN_FILL] = n;
    struct kb_lane *l = &q->lane;
    l->rx = &q->rx, l->fill = &q->fill, l->tx = &q->tx, l->comp = &q->comp;
    l->umem = q->umem, l->umem_size = q->umem_size, l->state = q->state, l->stats = q->stats;
    l->frame_size = KBP_FRAME_SIZE, l->fd = xsk, l->copy_mode = strcmp(mode, "zerocopy") != 0;
    l->busy = 0, l->busy_every = 16, l->stash_cap = KB_LANE_STASH_MAX, l->defer_kick = 1;
    if (kb_lane_setup(l) < 0) {
        snprintf(why, cap, "the lane refused the rings");
        return -1;
    }
    for (int k = 0; k < KB_LANE_STASH_MAX; k++) {
        uint32_t f = KBP_FRAMES / 2 + (uint32_t)k;
        q->state[f] = KB_FRAME_APP;
        kb_lane_give(l, (uint64_t)f * KBP_FRAME_SIZE);
    }
    return 0;
}

static void iface_close(struct kbp_iface *ifc) {
    for (int i = 0; i < ifc->nq; i++) queue_close(&ifc->q[i]);
    free(ifc->chain);
    free(ifc);
}

/* The interface of an `accelerate` reply, its sockets opened at the first socket on it. */
struct kbp_iface *kbp_iface_get(const char *reply, char *why, size_t cap) {
    char name[32], mac[32], ip[32];
    long long nq, mtu, plen;
    if (kbp_json_str(reply, "iface", name, sizeof(name)) || kbp_json_str(reply, "mac", mac, sizeof(mac)) ||
        kbp_json_str(reply, "ip", ip, sizeof(ip)) || kbp_json_int(reply, "queues", &nq) ||
        kbp_json_int(reply, "mtu", &mtu) || kbp_json_int(reply, "prefixlen", &plen)) {
        snprintf(why, cap, "the control plane's accelerate reply lacks a field");
        return NULL;
    }
    int slot = -1;
    for (int i = 0; i < KBP_MAX_IFACES; i++) {
        if (ifaces[i] && !strcmp(ifaces[i]->name, name)) return ifaces[i];
        if (!ifaces[i] && slot < 0) slot = i;
    }
    if (slot < 0 || nq < 1 || nq > KBP_MAX_QUEUES || plen < 0 || plen > 32) {
        if (slot < 0) snprintf(why, cap, "more than %d interfaces", KBP_MAX_IFACES);
        else snprintf(why, cap, "%s has %lld queues (at most %d)", name, nq, KBP_MAX_QUEUES);
        return NULL;
    }
    struct kbp_iface *ifc = calloc(1, sizeof(*ifc));
    if (!ifc) {
        snprintf(why, cap, "out of memory");
        return NULL;
    }
    snprintf(ifc->name, sizeof(ifc->name), "%s", name);
    parse_mac(mac, ifc->mac);
    inet_pton(AF_INET, ip, ifc->ip);
    ifc->netmask = plen ? htonl(~0u << (32 - plen)) : 0;
    ifc->mtu = (int)mtu;
    /* a frame receives frame_size - XDP_PACKET_HEADROOM bytes in copy mode: a larger MTU needs chains
     * (kbypass.xsk.multibuf.needs_multi_buffer), which rx_packet gathers here */
    if (mtu + 14 > KBP_FRAME_SIZE - 256 && !(ifc->chain = malloc(KBP_CHAIN_BYTES))) {
        free(ifc);
        snprintf(why, cap, "out of memory");
        return NULL;
    }
    long long ifindex = 0; /* IP_PKTINFO's; an older control plane's reply lacks it: 0 */
    ifc->ifindex = kbp_json_int(reply, "ifindex", &ifindex) ? 0 : (int)ifindex;
    for (int q = 0; q < KBP_MAX_QUEUES; q++) ifc->q[q].fd = -1;
    for (int q = 0; q < nq; q++) {
        char req[320], buf[1024];
        int fds[3], nfds;
        snprintf(req, sizeof(req),
                 "{\"op\":\"open_socket\",\"iface\":\"%s\",\"queue\":%d,\"frames\":%d,\"frame_size\":%d,"
                 "\"rx_size\":%d,\"tx_size\":%d,\"fill_size\":%d,\"comp_size\":%d%s}",
                 name, q, KBP_FRAMES, KBP_FRAME_SIZE, KBP_RING, KBP_RING, KBP_RING, KBP_RING,
                 ifc->chain ? ",\"multi_buffer\":true" : "");
        if (kbp_cp_call(req, -1, buf, sizeof(buf), fds, 3, &nfds) < 0 || nfds != 2) {
            if (nfds > 0)
                for (int i = 0; i < nfds; i++) kbp_real.close(fds[i]);
            char *cut = strstr(buf, "'s socket, "); /* the rest names --share-queue, which kbypass run has not */
            if (cut && !nfds)
                snprintf(cut, sizeof(buf) - (size_t)(cut - buf), "'s socket (AF_XDP takes one per queue): stop that "
                         "program, or run this app in a namespace whose queues are free");
            snprintf(why, cap, "no AF_XDP socket for queue %d of %s: %s", q, name, nfds ? "fds missing" : buf);
            ifc->nq = q;
            iface_close(ifc);
            return NULL;
        }
        ifc->nq = q + 1;
        if (queue_open(&ifc->q[q], fds[0], fds[1], buf, why, cap) < 0) {
            iface_close(ifc);
            return NULL;
        }
    }
    ifaces[slot] = ifc;
    return ifc;
}

void kbp_iface_drop_sock(struct kbp_iface *ifc, struct kbp_sock *s) {
    for (int i = 0; i < ifc->nsocks; i++)
        if (ifc->socks[i] == s) {
            ifc->socks[i] = ifc->socks[--ifc->nsocks];
            return;
        }
}

/* The socket a frame is for: of those bound to its port, the one connected to its source, else one that is
 * not connected (a UDP server's connected socket and its listening one share the port, as iperf3's). */
static struct kbp_sock *owner(struct kbp_iface *ifc, const uint8_t *f, uint32_t n) {
    if (n < KB_UDP_HLEN) return NULL;
    uint16_t port = (uint16_t)((f[36] << 8) | f[37]);
    struct kbp_sock *open = NULL;
    for (int i = 0; i < ifc->nsocks; i++) {
        struct kbp_sock *s = ifc->socks[i];
        if (s->me.port != port) continue;
        if (!s->connected) {
            if (!open) open = s;
        } else if (!memcmp(kb_udp_src_ip(f), &s->peer_ip, 4) && kb_udp_src_port(f) == s->peer_port) {
            return s;
        }
    }
    return open;
}

/* stamp: the socket asked for SO_TIMESTAMP(NS) (a clock read per datagram costs the others nothing) */
static void take(struct kbp_dgram *g, const uint8_t *f, uint8_t *into, size_t cap, int stamp) {
    uint32_t plen = kb_udp_payload_len(f);
    g->len = plen;
    memcpy(g->src_ip, kb_udp_src_ip(f), 4);
    g->src_port = kb_udp_src_port(f);
    memcpy(g->dst_ip, f + 30, 4); /* IP_PKTINFO, IP_RECVTOS, IP_RECVTTL from the IP header */
    g->tos = f[15];
    g->ttl = f[22];
    g->ts_ns = 0;
    if (stamp) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        g->ts_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    }
    memcpy(into, f + KB_UDP_HLEN, plen < cap ? plen : cap);
}

/* The next packet on q's RX ring, or NULL: a frame in the UMEM (*one: kb_lane_rx_done it once read), or a
 * chain of frames (a multi-buffer socket's packet larger than a frame, descriptors with KB_PKT_CONTD but the
 * last) gathered into ifc->chain, its frames already back on the fill ring. A chain that does not fit the
 * buffer, or has a descriptor outside the UMEM, comes back with *n 0: no socket takes it, nothing garbled
 * is ever handed on. */
static const uint8_t *rx_packet(struct kbp_iface *ifc, struct kbp_queue *q, struct kb_desc *d, uint32_t *n,
                                int *one) {
    uint32_t idx, k = 0;
    if (!kb_ring_cons_peek(&q->rx, 1, &idx)) return NULL;
    int chained = (kb_ring_desc(&q->rx, idx)->options & KB_PKT_CONTD) != 0;
    kb_ring_cons_cancel(&q->rx, 1);
    if (!chained) {
        if (kb_lane_rx_next(&q->lane, d) != KB_LANE_FRAME) return NULL;
        *one = 1, *n = d->len;
        return q->umem + d->addr;
    }
    uint32_t c = kb_ring_cons_peek_packets(&q->rx, KBP_CHAIN_FRAMES, &idx);
    while (k < c && (kb_ring_desc(&q->rx, idx + k)->options & KB_PKT_CONTD)) k++;
    if (k == c || !ifc->chain || !kb_ring_prod_free(&q->fill, k + 1)) { /* not whole yet; no room to give back */
        kb_ring_cons_cancel(&q->rx, c);
        return NULL;
    }
    kb_ring_cons_cancel(&q->rx, c - ++k);
    uint32_t len = 0, fidx;
    int whole = 1;
    for (uint32_t i = 0; i < k; i++) {
        struct kb_desc e = *kb_ring_desc(&q->rx, idx + i);
        if (e.addr >= q->umem_size || e.len > q->umem_size - e.addr || e.len > KBP_CHAIN_BYTES - len) whole = 0;
        else if (whole) memcpy(ifc->chain + len, q->umem + e.addr, e.len), len += e.len;
        kb_ring_prod_reserve(&q->fill, 1, &fidx); /* prod_free saw the room */
        *kb_ring_addr(&q->fill, fidx) = e.addr & q->lane.chunk_mask;
        kb_ring_prod_submit(&q->fill, 1);
    }
    kb_ring_cons_release(&q->rx, k);
    q->stats[KB_RX_PACKETS]++;
    q->stats[KB_RX_BYTES] += len;
    *one = 0, *n = whole ? len : 0;
    return ifc->chain;
}

/* A backlog slot for a datagram of plen bytes: its frame-sized buffer, or one of its own for a jumbo. */
static uint8_t *slot_room(struct kbp_dgram *g, uint32_t plen) {
    free(g->big);
    g->big = NULL;
    if (plen <= KBP_FRAME_SIZE) return g->data;
    return g->big = malloc(plen);
}

/* Frames off the RX rings: those for `want` into buf (at most one: 1 and *got), the others into their
 * socket's backlog (or dropped when it is full, not plain UDP to it, or not from its connected peer). */
static int pump(struct kbp_iface *ifc, struct kbp_sock *want, void *buf, size_t len, struct kbp_dgram *got);

/* ... and the TCP frames taken on the way go to the host in one call (kbp_tcp.c) */
int kbp_iface_pump(struct kbp_iface *ifc, struct kbp_sock *want, void *buf, size_t len, struct kbp_dgram *got) {
    int r = pump(ifc, want, buf, len, got);
    if (kbp_tcp_on) kbp_tcp_frames_done();
    return r;
}

static int pump(struct kbp_iface *ifc, struct kbp_sock *want, void *buf, size_t len, struct kbp_dgram *got) {
    for (int qi = 0; qi < ifc->nq; qi++) {
        struct kbp_queue *q = &ifc->q[qi];
        for (int budget = 0; budget < 64; budget++) {
            struct kb_desc d;
            uint32_t n;
            int one = 0;
            const uint8_t *f = rx_packet(ifc, q, &d, &n, &one);
            if (!f) break;
            if (kbp_tcp_on && n >= 54 && f[12] == 0x08 && f[13] == 0x00 && f[23] == 6) { /* TCP: kbp_tcp.c's */
                kbp_tcp_frame(ifc, f, n);
                if (one) kb_lane_rx_done(&q->lane, &d);
                continue;
            }
            struct kbp_sock *s = owner(ifc, f, n);
            int ok = s && kb_udp_accept(&s->me, f, n); /* owner(): a connected socket hears only its peer */
            if (!ok) {
                if (s && s->slot) s->slot->rx_dropped++;
                if (one) kb_lane_rx_done(&q->lane, &d);
                continue;
            }
            if (s->slot) s->slot->rx++;
            if (s == want && buf && s->bhead == s->btail) {
                take(got, f, buf, len, s->ts_mode);
                if (one) kb_lane_rx_done(&q->lane, &d);
                return 1;
            }
            uint8_t *room;
            struct kbp_dgram *g = &s->backlog[s->btail % KBP_BACKLOG];
            if (s->btail - s->bhead >= KBP_BACKLOG || !(room = slot_room(g, kb_udp_payload_len(f)))) {
                if (s->slot) s->slot->rx_dropped++; /* a full receive buffer, as the kernel's */
            } else {
                take(g, f, room, kb_udp_payload_len(f), s->ts_mode);
                s->btail++;
            }
            if (one) kb_lane_rx_done(&q->lane, &d);
        }
    }
    return 0;
}

void kbp_iface_wake(struct kbp_iface *ifc) {
    for (int i = 0; i < ifc->nq; i++) kb_lane_wake(&ifc->q[i].lane);
}

int kbp_iface_fds(struct kbp_iface *ifc, int *fds, int cap) {
    int n = 0;
    for (int i = 0; i < ifc->nq && n < cap; i++) fds[n++] = ifc->q[i].fd;
    return n;
}

/* The next hop's MAC for dst: 1 known, 0 not yet (send through the kernel this time). */
static int hop(struct kbp_iface *ifc, uint32_t dst, uint8_t mac[6]) {
    struct kbp_hop *h = NULL, *free_h = NULL;
    for (int i = 0; i < KBP_MAX_HOPS; i++) {
        if (ifc->hops[i].ip == dst) {
            h = &ifc->hops[i];
            break;
        }
        if (!ifc->hops[i].ip && !free_h) free_h = &ifc->hops[i];
    }
    uint64_t now = kbp_now_ns();
    if (h && h->known && now - h->asked_ns < HOP_REFRESH_NS) {
        memcpy(mac, h->mac, 6);
        return 1;
    }
    if (h && !h->known && now - h->asked_ns < HOP_RETRY_NS) return 0;
    if (!h) {
        h = free_h ? free_h : &ifc->hops[dst % KBP_MAX_HOPS];
        memset(h, 0, sizeof(*h));
        h->ip = dst;
    }
    char req[128], buf[512], txt[32], ms[32];
    inet_ntop(AF_INET, &dst, txt, sizeof(txt));
    snprintf(req, sizeof(req), "{\"op\":\"next_hop\",\"iface\":\"%s\",\"dst\":\"%s\"}", ifc->name, txt);
    h->asked_ns = now;
    if (kbp_cp_call(req, -1, buf, sizeof(buf), NULL, 0, NULL) < 0 || kbp_json_str(buf, "mac", ms, sizeof(ms)) ||
        parse_mac(ms, h->mac) < 0) {
        if (h->known) { /* a refresh that failed: keep using what we knew */
            memcpy(mac, h->mac, 6);
            return 1;
        }
        return 0;
    }
    h->known = 1;
    memcpy(mac, h->mac, 6);
    return 1;
}

static void build_template(struct kbp_iface *ifc, struct kbp_sock *s, const uint8_t dmac[6], uint32_t dst_ip,
                           uint16_t dst_port) {
    uint8_t *t = s->tmpl;
    memset(t, 0, KB_UDP_HLEN);
    memcpy(t, dmac, 6);
    memcpy(t + 6, ifc->mac, 6);
    t[12] = 0x08, t[13] = 0x00;
    t[14] = 0x45, t[15] = (uint8_t)s->tos;
    t[20] = 0x40; /* DF: the kernel's UDP sets it too (path MTU discovery) */
    t[22] = 64, t[23] = 17;
    memcpy(t + 26, s->me.ip, 4);
    memcpy(t + 30, &dst_ip, 4);
    t[34] = (uint8_t)(s->me.port >> 8), t[35] = (uint8_t)s->me.port;
    t[36] = (uint8_t)(dst_port >> 8), t[37] = (uint8_t)dst_port;
    s->tmpl_ip = dst_ip;
    s->tmpl_port = dst_port;
    s->tmpl_ok = 1;
}

/* A frame went on the TX ring: kick now, or leave it to the burst's batch (see kbp_iface_send). */
static void sent_one(struct kbp_iface *ifc) {
    uint64_t now = kbp_now_ns();
    int burst = now - ifc->last_send_ns < kbp_tx_burst_ns;
    ifc->last_send_ns = now;
    if (ifc->unkicked++ == 0) {
        ifc->first_unkicked_ns = now;
        kbp_tx_pending++;
    }
    if ((!burst && !kbp_batching) || ifc->unkicked >= TX_BATCH) tx_flush(ifc);
    if (ifc->unkicked) kbp_flusher_arm(); /* frames wait: the flusher bounds how long (a lone send: no wake-up) */
}

/* One datagram out of the rings: 0 sent, -1 the kernel's to send (an unknown next hop, a datagram too big
 * for one frame, a destination not on the link, rings that stay full).
 *
 * The kick (the sendto on the socket, in which copy mode transmits) is what a send costs most, so a send
 * that is part of a burst (within KBYPASS_TX_BURST_US of the previous one, 100 us by default; 0: every send
 * kicks) only puts its frame on the TX ring; the frames go out at the TX_BATCH-th, at the app's next call
 * that may wait (recv*, poll, select, epoll, close, fork, exec, exit: kbp_iface_flush) or within TX_FLUSH_NS
 * (the flusher thread, kbp_flush.c). The first send after a quiet spell kicks at once: a lone datagram never
 * waits, even for an app that _exit()s next. A TX ring or stash that stays full: the kernel socket sends. */
int kbp_iface_send(struct kbp_iface *ifc, struct kbp_sock *s, uint32_t dst_ip, uint16_t dst_port,
                   const uint8_t *payload, uint32_t len) {
    if (len > (uint32_t)ifc->mtu - 28 || len > KBP_FRAME_SIZE - KB_UDP_HLEN) {
        if (!s->said_big && len <= (uint32_t)ifc->mtu - 28)
            kbp_verbose("fd %d: datagrams larger than %d bytes are sent through the kernel socket", s->fd,
                        KBP_FRAME_SIZE - KB_UDP_HLEN);
        s->said_big = 1;
        return -1;
    }
    uint8_t b0 = ((uint8_t *)&dst_ip)[0];
    if (b0 == 127 || b0 >= 224 || !memcmp(&dst_ip, ifc->ip, 4) || dst_ip == (*(uint32_t *)ifc->ip | ~ifc->netmask))
        return -1; /* loopback, multicast, broadcast, ourselves: the kernel's */
    if (!s->tmpl_ok || s->tmpl_ip != dst_ip || s->tmpl_port != dst_port) {
        uint8_t mac[6];
        if (!hop(ifc, dst_ip, mac)) return -1;
        build_template(ifc, s, mac, dst_ip, dst_port);
    }
    struct kb_lane *l = &ifc->q[0].lane; /* defer_kick: the kicks are tx_flush's */
    int r = KB_LANE_NO_FRAME;
    for (int i = 0; i < SEND_TRIES && r != KB_LANE_SENT && r >= 0; i++) {
        r = kb_lane_send(l, s->tmpl, KB_UDP_HLEN, payload, len, 1, s->ident++);
        if (r != KB_LANE_SENT) tx_flush(ifc); /* the deferred frames out, to get stash frames back */
    }
    if (r != KB_LANE_SENT) return -1;
    sent_one(ifc);
    return 0;
}

/* A peer's MAC as its frame says (TCP: the answers go where the segments came from, no control plane call). */
void kbp_iface_learn(struct kbp_iface *ifc, uint32_t ip, const uint8_t mac[6]) {
    struct kbp_hop *h = NULL;
    for (int i = 0; i < KBP_MAX_HOPS && !h; i++)
        if (ifc->hops[i].ip == ip) h = &ifc->hops[i];
    for (int i = 0; i < KBP_MAX_HOPS && !h; i++)
        if (!ifc->hops[i].ip) h = &ifc->hops[i];
    if (!h) h = &ifc->hops[ip % KBP_MAX_HOPS];
    if (h->ip == ip && h->known && !memcmp(h->mac, mac, 6)) return;
    h->ip = ip;
    memcpy(h->mac, mac, 6);
    h->known = 1;
    h->asked_ns = kbp_now_ns();
}

/* Whether the next hop toward dst is known (asking the control plane when it is time to). */
int kbp_iface_hop_known(struct kbp_iface *ifc, uint32_t dst) {
    uint8_t mac[6];
    return hop(ifc, dst, mac);
}

/* One IPv4 packet (a TCP segment of kbp_tcp.c) out of the rings behind an Ethernet header to its next hop,
 * with the kick logic of kbp_iface_send: 0 sent, -1 dropped (next hop unknown, rings full: TCP retransmits). */
int kbp_iface_send_ip(struct kbp_iface *ifc, const uint8_t *pkt, uint32_t len) {
    uint32_t dst;
    uint8_t eth[14];
    if (len < 20 || len + 14 > KBP_FRAME_SIZE) return -1;
    memcpy(&dst, pkt + 16, 4);
    if (!hop(ifc, dst, eth)) return -1;
    memcpy(eth + 6, ifc->mac, 6);
    eth[12] = 0x08, eth[13] = 0x00;
    struct kb_lane *l = &ifc->q[0].lane;
    int r = KB_LANE_NO_FRAME;
    for (int i = 0; i < SEND_TRIES && r != KB_LANE_SENT && r >= 0; i++) {
        r = kb_lane_send(l, eth, 14, pkt, len, 0, 0);
        if (r != KB_LANE_SENT) tx_flush(ifc);
    }
    if (r != KB_LANE_SENT) return -1;
    sent_one(ifc);
    return 0;
}

__thread int kbp_batching;
unsigned kbp_tx_pending;

static void kick(struct kb_lane *l) {
    (void)kbp_real.sendto(l->fd, NULL, 0, MSG_DONTWAIT, NULL, 0); /* copy mode sends in this call; errors: "later" */
}

/* The frames put on queue 0's TX ring since the last kick go out: one kick per TX_BATCH of them (what one
 * copy-mode sendto takes), and again while the kernel has not taken them all (a few times at most). Frames
 * the kernel still leaves on the ring (a full device queue: EAGAIN) stay deferred, for the next flush. */
static void tx_flush(struct kbp_iface *ifc) {
    struct kbp_queue *q = &ifc->q[0];
    unsigned kicks = ifc->unkicked / TX_BATCH + 1;
    uint32_t left = 0;
    for (unsigned i = 0; i < kicks + 2; i++) {
        kick(&q->lane);
        q->stats[KB_TX_KICKS]++;
        left = q->tx.cached_prod - kb_load_acquire(q->tx.consumer);
        if (i + 1 >= kicks && !left) break;
    }
    if (left) {
        if (!ifc->unkicked) kbp_tx_pending++;
        ifc->unkicked = left;
        ifc->first_unkicked_ns = kbp_now_ns();
    } else if (ifc->unkicked) {
        ifc->unkicked = 0;
        kbp_tx_pending--;
    }
}

/* Every interface's deferred frames out now (under kbp_lock). */
void kbp_iface_flush(void) {
    for (int i = 0; i < KBP_MAX_IFACES && kbp_tx_pending; i++)
        if (ifaces[i] && ifaces[i]->unkicked) tx_flush(ifaces[i]);
}

/* The flusher's look: the deferred frames older than TX_FLUSH_NS out; when the next are due (0: none). */
uint64_t kbp_iface_flush_due(uint64_t now) {
    uint64_t next = 0;
    for (int i = 0; i < KBP_MAX_IFACES && kbp_tx_pending; i++) {
        struct kbp_iface *ifc = ifaces[i];
        if (!ifc || !ifc->unkicked) continue;
        uint64_t due = ifc->first_unkicked_ns + TX_FLUSH_NS;
        if (now >= due) tx_flush(ifc);
        else if (!next || due < next) next = due;
    }
    return next;
}

int kbp_iface_owns(int fd) {
    for (int i = 0; i < KBP_MAX_IFACES; i++)
        for (int q = 0; ifaces[i] && q < ifaces[i]->nq; q++)
            if (ifaces[i]->q[q].fd == fd) return 1;
    return 0;
}

/* A fork's parent with nothing left on the rings (kbp_socket.c's before_fork: nginx's master, whose listener went
 * back to the kernel): its AF_XDP sockets go back to the control plane, since it takes one per queue and the
 * child that adopts the listener (kbp_tcpadopt.c) needs its own. A later socket of the parent's opens them anew.
 * Under kbp_lock. */
void kbp_iface_release_all(void) {
    for (int i = 0; i < KBP_MAX_IFACES; i++) {
        if (!ifaces[i]) continue;
        for (int q = 0; q < ifaces[i]->nq; q++) {
            char req[160], buf[512];
            snprintf(req, sizeof(req), "{\"op\":\"unregister\",\"iface\":\"%s\",\"queue\":%d}", ifaces[i]->name, q);
            kbp_cp_call(req, -1, buf, sizeof(buf), NULL, 0, NULL);
        }
        kbp_verbose("fork: nothing of this process is on %s's rings any more: its AF_XDP sockets go back to the "
                    "control plane, for the child", ifaces[i]->name);
        iface_close(ifaces[i]);
        ifaces[i] = NULL;
    }
    kbp_tx_pending = 0;
}

void kbp_iface_forget_all(int close_fds) {
    for (int i = 0; i < KBP_MAX_IFACES; i++) {
        if (!ifaces[i]) continue;
        if (close_fds) iface_close(ifaces[i]);
        ifaces[i] = NULL;
    }
    kbp_tx_pending = 0;
}
