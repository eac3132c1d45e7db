/* kbp_socket.c: libkbypass-preload.so's socket calls (`kbypass run -- APP`, LD_PRELOAD).
 *
 * The app's fds stay real: every UDP socket it makes is a kernel socket, and bind/connect/getsockname/
 * getpeername/setsockopt go to the kernel as they would without us. So the port is taken in the kernel (nobody
 * else binds it), getsockname tells the truth, and a socket that cannot be accelerated simply stays what it
 * is. Once such a socket has an address (bind, connect, or its first send, which autobinds it) the shim
 * hands it to the control plane (`accelerate`): an address on an interface it serves gets a steering rule
 * for `udp dst IP dport PORT` and the interface's AF_XDP sockets (kbp_iface.c); from then on the socket's
 * datagrams go through the rings. Anything else (TCP, unix sockets, files, loopback, other interfaces,
 * datagrams too big for a frame, a next hop still unresolved) goes to libc untouched; the placeholder kernel
 * socket is also read (datagrams the kernel still delivers to it, loopback say), so nothing is lost.
 *
 * Blocking calls spin on the rings for KBYPASS_SPIN_US microseconds, then sleep in poll() on the rings' fds,
 * the placeholder and the control plane's connection (so its death is seen at once: the sockets fall back
 * to the kernel, with one error line). SO_RCVTIMEO and O_NONBLOCK/MSG_DONTWAIT are kept.
 *
 * Sends within a burst put their frames on the TX ring and leave the kick to a batch (kbp_iface_send): the
 * calls that may wait (recv*, read, poll, select, epoll, close, fork, exec, exit) kick first, the flusher
 * thread (kbp_flush.c) within TX_FLUSH_NS otherwise.
 *
 * fork (kbp_fork.c): the child's copies of accelerated sockets fall back to the kernel sockets (rings cannot be
 * shared by two processes without a lock on every message); while the parent lives, the flow stays steered to
 * the parent; a child adopts an inherited TCP listener as a process of its own (kbp_tcpadopt.c). exec: the control plane connection is CLOEXEC, so the new image starts with kernel sockets and
 * the old image's rules go with it; the preloaded shim then accelerates what the new image binds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kbp.h"

/* recursive: the embedded Python (kbp_py.c) closes and reads files while the shim holds it */
pthread_mutex_t kbp_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
struct kbp_sock *kbp_fds[KBP_MAX_FD];
long kbp_spin_us;
uint64_t kbp_tx_burst_ns = 100000;
int kbp_log;

__attribute__((constructor)) static void kbp_init(void) {
    kbp_init_libc();
    kbp_env_snapshot();
    const char *e = getenv("KBYPASS_SPIN_US");
    kbp_spin_us = e ? atol(e) : 0;
    if (kbp_spin_us < 0) kbp_spin_us = 0;
    e = getenv("KBYPASS_TX_BURST_US");
    if (e && atol(e) >= 0) kbp_tx_burst_ns = (uint64_t)atol(e) * 1000;
    e = getenv("KBYPASS_LOG");
    kbp_log = e && *e && strcmp(e, "0") != 0;
    kbp_fork_register();
}

/* exit: TCP connections handed to the kernel or finished (kbp_tcpexit.c), deferred frames go before the rings do
 * (an _exit() skips this; its last lone send kicked anyway) */
__attribute__((destructor)) static void kbp_fini(void) {
    kbp_tcp_exit();
    if (!kbp_tx_pending || pthread_mutex_trylock(&kbp_lock)) return; /* a thread holds the lock: the flusher may */
    kbp_iface_flush();
    pthread_mutex_unlock(&kbp_lock);
}

static void describe(const struct kbp_sock *s, char *out, size_t cap) {
    struct sockaddr_in a;
    socklen_t al = sizeof(a);
    char ip[32] = "?";
    if (getsockname(s->fd, (struct sockaddr *)&a, &al) == 0) inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
    snprintf(out, cap, "fd %d (udp %s:%u)", s->fd, ip, al ? ntohs(a.sin_port) : 0);
}

void kbp_backlog_clear(struct kbp_sock *s) {
    for (int i = 0; s->backlog[0].data && i < KBP_BACKLOG; i++) {
        free(s->backlog[i].big);
        s->backlog[i].big = NULL;
    }
    s->bhead = s->btail = 0;
}

/* Off the rings and back to being the kernel socket it always also was (datagrams queued are dropped). */
static void fall_back(struct kbp_sock *s) {
    if (!s->accel) return;
    s->accel = 0;
    if (s->ifc) kbp_iface_drop_sock(s->ifc, s);
    s->ifc = NULL;
    if (s->slot) s->slot->used = 0;
    s->slot = NULL;
    kbp_backlog_clear(s);
}

void kbp_fall_back_all(void) {
    for (int fd = 0; fd < KBP_MAX_FD; fd++)
        if (kbp_fds[fd]) fall_back(kbp_fds[fd]);
    kbp_iface_forget_all(1);
}

/* Give the steering rule back now (closing the connection would too, but only at the app's exit). */
static void remove_rule(const char *iface, int rule_id) {
    if (kbp_cp_fd() < 0 || rule_id < 0) return;
    char req[160], buf[512];
    snprintf(req, sizeof(req), "{\"op\":\"remove\",\"iface\":\"%s\",\"rule_id\":%d}", iface, rule_id);
    kbp_cp_call(req, -1, buf, sizeof(buf), NULL, 0, NULL);
}

static void release(struct kbp_sock *s) {
    if (s->pend) kbp_tcp_pend_drop(s, 1);
    if (s->tcp && s->accel && kbp_tcp_release(s)) return; /* its connection finishes first (kbp_tcp.c) */
    if (s->accel && s->ifc) remove_rule(s->ifc->name, s->rule_id); /* the port is free for others at once */
    fall_back(s);
    kbp_backlog_clear(s);
    free(s->backlog[0].data);
    s->backlog[0].data = NULL;
    kbp_sock_free(s);
}

void kbp_release(struct kbp_sock *s) { release(s); }

/* Hand the socket to the control plane now that it has an address (under kbp_lock). */
static void try_accel(struct kbp_sock *s) {
    struct sockaddr_in a;
    socklen_t al = sizeof(a);
    if (s->tried || getsockname(s->fd, (struct sockaddr *)&a, &al) < 0 || a.sin_family != AF_INET || !a.sin_port)
        return;
    s->tried = 1;
    char who[96], buf[1024];
    describe(s, who, sizeof(who));
    if ((ntohl(a.sin_addr.s_addr) >> 24) == 127) {
        kbp_verbose("%s not accelerated: loopback stays the kernel's", who);
        return;
    }
    if (kbp_cp_connect() < 0) return; /* said why once */
    if (kbp_cp_call("{\"op\":\"accelerate\"}", s->fd, buf, sizeof(buf), NULL, 0, NULL) < 0) {
        kbp_verbose("%s not accelerated: %s", who, buf);
        return;
    }
    long long rule_id;
    char ip[32], why[256], iface[32] = "?";
    kbp_json_str(buf, "iface", iface, sizeof(iface));
    if (kbp_json_int(buf, "rule_id", &rule_id) || kbp_json_str(buf, "ip", ip, sizeof(ip))) {
        kbp_verbose("%s not accelerated: a malformed accelerate reply", who);
        return;
    }
    s->rule_id = (int)rule_id;
    struct kbp_iface *ifc = kbp_iface_get(buf, why, sizeof(why));
    uint8_t *data = ifc ? malloc((size_t)KBP_BACKLOG * KBP_FRAME_SIZE) : NULL;
    if (!ifc || !data || ifc->nsocks >= KBP_PAGE_SLOTS) {
        free(data);
        remove_rule(iface, s->rule_id);
        kbp_verbose("%s not accelerated: %s", who, ifc ? "too many sockets" : why);
        return;
    }
    for (int i = 0; i < KBP_BACKLOG; i++) s->backlog[i].data = data + (size_t)i * KBP_FRAME_SIZE;
    memcpy(s->me.mac, ifc->mac, 6);
    inet_pton(AF_INET, ip, s->me.ip);
    uint32_t bc = *(uint32_t *)ifc->ip | ~ifc->netmask;
    memcpy(s->me.bcast, &bc, 4);
    s->me.has_bcast = ifc->netmask != 0xFFFFFFFFu && ifc->netmask != htonl(0xFFFFFFFEu);
    s->me.port = ntohs(a.sin_port);
    s->ifc = ifc;
    ifc->socks[ifc->nsocks++] = s;
    s->slot = kbp_page_slot();
    if (s->slot) {
        s->slot->fd = (uint32_t)s->fd;
        memcpy(s->slot->ip, s->me.ip, 4);
        s->slot->port = s->me.port;
        s->slot->proto = IPPROTO_UDP;
        s->slot->used = 1;
    }
    s->tmpl_ok = 0;
    s->accel = 1;
    kbp_verbose("%s accelerated on %s (%d queues, rule %d)", who, ifc->name, ifc->nq, s->rule_id);
}

/* ---- socket, bind, connect, close, dup ------------------------------------------------------------- */

int socket(int domain, int type, int protocol) {
    kbp_init_libc();
    int fd = kbp_real.socket(domain, type, protocol);
    int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    int udp = base == SOCK_DGRAM && (protocol == 0 || protocol == IPPROTO_UDP);
    int tcp = base == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP);
    if (fd < 0 || fd >= KBP_MAX_FD || domain != AF_INET || !(udp || tcp)) return fd;
    kbp_enter();
    struct kbp_sock *s = kbp_sock_new();
    if (s) {
        s->refs = 1;
        s->tcp = tcp;
        s->rule_id = -1;
        s->fd = fd;
        s->nonblock = (type & SOCK_NONBLOCK) != 0;
        if (kbp_fds[fd]) release(kbp_fds[fd]); /* closed behind our back (close_range, say) */
        __atomic_store_n(&kbp_fds[fd], s, __ATOMIC_RELEASE);
    }
    kbp_leave();
    return fd;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    kbp_init_libc();
    int r = kbp_real.bind(fd, addr, len);
    struct kbp_sock *s = kbp_get(fd);
    if (r == 0 && s && !s->tcp) { /* TCP: at listen or connect (kbp_tcp.c) */
        kbp_enter();
        try_accel(s);
        kbp_leave();
    }
    return r;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    if (s && s->tcp) {
        if (!addr || addr->sa_family != AF_INET || len < sizeof(struct sockaddr_in))
            return kbp_real.connect(fd, addr, len);
        int r, ours;
        kbp_enter();
        ours = kbp_tcp_connect(s, (const struct sockaddr_in *)addr, &r);
        int e = errno;
        kbp_leave();
        errno = e;
        return ours ? r : kbp_real.connect(fd, addr, len);
    }
    int r = kbp_real.connect(fd, addr, len);
    if (r == 0 && s) {
        kbp_enter();
        if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
            s->connected = 1;
            s->peer_ip = in->sin_addr.s_addr;
            s->peer_port = ntohs(in->sin_port);
        } else {
            s->connected = 0; /* AF_UNSPEC: dissolved */
        }
        try_accel(s);
        kbp_leave();
    }
    return r;
}

static void forget_fd(int fd) {
    struct kbp_sock *s = kbp_get(fd);
    if (!s) return;
    kbp_fds[fd] = NULL;
    kbp_epoll_drop_member(fd);
    if (--s->refs == 0) release(s);
    else if (s->fd == fd)
        for (int i = 0; i < KBP_MAX_FD; i++)
            if (kbp_fds[i] == s) {
                s->fd = i;
                if (s->slot) s->slot->fd = (uint32_t)i;
                break;
            }
}

int close(int fd) {
    kbp_init_libc();
    if (fd >= 0 && fd < KBP_MAX_FD) {
        kbp_enter();
        kbp_iface_flush(); /* the app may wait next (and the socket's frames are on the ring) */
        if (fd == kbp_cp_fd() || kbp_iface_owns(fd) || kbp_flusher_owns(fd)) {
            /* the shim's own fd (a daemon closing every fd it did not open): not the app's to close */
            kbp_leave();
            errno = EBADF;
            return -1;
        }
        forget_fd(fd);
        kbp_epoll_forget(fd);
        kbp_leave();
    }
    return kbp_real.close(fd);
}

int kbp_share_fd(int oldfd, int newfd) {
    struct kbp_sock *s = kbp_get(oldfd);
    if (newfd < 0 || newfd >= KBP_MAX_FD || newfd == oldfd) return newfd;
    kbp_enter();
    forget_fd(newfd); /* dup2 closed what newfd was */
    if (s) {
        s->refs++;
        kbp_fds[newfd] = s;
    }
    kbp_leave();
    return newfd;
}

int dup(int fd) {
    kbp_init_libc();
    return kbp_share_fd(fd, kbp_real.dup(fd));
}

int dup2(int fd, int fd2) {
    kbp_init_libc();
    return kbp_share_fd(fd, kbp_real.dup2(fd, fd2));
}

int dup3(int fd, int fd2, int flags) {
    kbp_init_libc();
    return kbp_share_fd(fd, kbp_real.dup3(fd, fd2, flags));
}

/* ---- receiving ---------------------------------------------------------------------------------------- */

/* next_dgram's look at the kernel socket: 0 it has a datagram (the kernel's recv answers), 1 nothing, -1 the
 * socket's pending error in errno (an ICMP port unreachable on a connected socket, say). The peek takes that
 * error off the socket (sock_error() clears it, MSG_PEEK or not), so it is handed to the app here, as the
 * kernel's recv would. */
static int kernel_says(int fd) {
    char c;
    if (kbp_real.recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) >= 0) return 0;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 1 : -1;
}

int kbp_readable(struct kbp_sock *s) {
    if (!s->accel) return 0;
    if (s->bhead == s->btail) kbp_iface_pump(s->ifc, NULL, NULL, 0, NULL);
    return s->bhead != s->btail;
}

static long remaining_ms(uint64_t deadline) {
    if (!deadline) return -1;
    uint64_t now = kbp_now_ns();
    return now >= deadline ? 0 : (long)((deadline - now + 999999) / 1000000);
}

/* The next datagram of an accelerated socket: 1 copied into buf (*g its length, source, time), 0 the kernel
 * socket has one (or the socket is no longer accelerated: ask the kernel), -1 with errno. Under kbp_lock;
 * the lock is let go while sleeping. */
static int next_dgram(struct kbp_sock *s, int fd, void *buf, size_t len, int flags, struct kbp_dgram *g) {
    int nonblock = s->nonblock || (flags & MSG_DONTWAIT);
    uint64_t start = kbp_now_ns(), spin_end = start + (uint64_t)kbp_spin_us * 1000;
    uint64_t deadline = s->rcvtimeo_us ? start + (uint64_t)s->rcvtimeo_us * 1000 : 0;
    unsigned sig0 = kbp_sig_count; /* a handler run since: EINTR, or a restart under SA_RESTART (kbp_signal.c) */
    for (unsigned it = 1;; it++) {
        if (!s->accel) return 0;
        if (kbp_sig_count != sig0) {
            if (kbp_sig_interrupted(sig0, !deadline)) { /* the kernel never restarts a recv with SO_RCVTIMEO */
                errno = EINTR;
                return -1;
            }
            sig0 = kbp_sig_count;
        }
        if (s->bhead != s->btail) {
            struct kbp_dgram *d = &s->backlog[s->bhead % KBP_BACKLOG];
            *g = *d;
            memcpy(buf, d->big ? d->big : d->data, d->len < len ? d->len : len);
            if (!(flags & MSG_PEEK)) {
                free(d->big);
                d->big = NULL;
                s->bhead++;
            }
            return 1;
        }
        if (kbp_iface_pump(s->ifc, (flags & MSG_PEEK) ? NULL : s, buf, len, g)) return 1;
        if (s->bhead != s->btail) continue;
        int k;
        if (nonblock) {
            if (s->empty_calls++ % 16 == 0 && (k = kernel_says(fd)) < 1) return k;
            errno = EAGAIN;
            return -1;
        }
        if (it % 256 == 0 && (k = kernel_says(fd)) < 1) return k;
        uint64_t now = (it & 15) && kbp_spin_us ? 0 : kbp_now_ns(); /* KBYPASS_SPIN_US=0: straight to sleep */
        if (now && deadline && now >= deadline) {
            errno = EAGAIN;
            return -1;
        }
        if (!now || now < spin_end) {
            if (!(it & 15)) kbp_iface_wake(s->ifc);
            continue;
        }
        if ((k = kernel_says(fd)) < 1) return k;
        struct pollfd p[KBP_MAX_QUEUES + 2];
        int qfds[KBP_MAX_QUEUES], cp = kbp_cp_fd();
        int n = kbp_iface_fds(s->ifc, qfds, KBP_MAX_QUEUES);
        for (int i = 0; i < n; i++) p[i] = (struct pollfd){qfds[i], POLLIN, 0};
        p[n++] = (struct pollfd){fd, POLLIN, 0};
        if (cp >= 0) p[n++] = (struct pollfd){cp, POLLIN, 0};
        kbp_iface_wake(s->ifc);
        s->refs++; /* another thread may close the fd while we sleep: the socket stays until we are back */
        kbp_sleep_begin();
        kbp_leave();
        int r = kbp_real.poll(p, (unsigned long)n, (int)remaining_ms(deadline));
        int e = errno;
        kbp_sleep_end();
        kbp_enter();
        if (--s->refs == 0) {
            release(s);
            errno = EBADF;
            return -1;
        }
        if (r < 0 && e == EINTR && (kbp_sig_count == sig0 || kbp_sig_interrupted(sig0, !deadline))) {
            errno = EINTR; /* a handler not installed through us (count unchanged) cannot be told: EINTR */
            return -1;
        }
        if (cp >= 0 && cp == kbp_cp_fd() && p[n - 1].revents) kbp_cp_lost();
        if (r == 0 && deadline && kbp_now_ns() >= deadline) {
            errno = EAGAIN;
            return -1;
        }
    }
}

static void fill_name(struct sockaddr *to, socklen_t *tolen, const struct kbp_dgram *g) {
    if (!to || !tolen) return;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(g->src_port)};
    memcpy(&a.sin_addr, g->src_ip, 4);
    memcpy(to, &a, *tolen < sizeof(a) ? *tolen : sizeof(a));
    *tolen = sizeof(a);
}

/* recvfrom's work; -2: the kernel's to answer. */
static ssize_t rx_one(struct kbp_sock *s, int fd, void *buf, size_t len, int flags, struct kbp_dgram *g) {
    kbp_enter();
    int r = s->accel ? next_dgram(s, fd, buf, len, flags, g) : 0;
    if (r == 0 && s->slot) s->slot->rx_kernel++;
    kbp_leave();
    if (r == 0) return -2;
    if (r < 0) return -1;
    return (ssize_t)g->len;
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *fromlen) {
    kbp_init_libc();
    kbp_flush_before(fd); /* a send followed by a receive: the send's frame goes now (ping-pong) */
    struct kbp_sock *s = kbp_get(fd);
    if (s && s->tcp) {
        ssize_t r = s->accel ? kbp_tcp_recv(s, buf, len, flags) : -2;
        if (r == -2) return kbp_real.recvfrom(fd, buf, len, flags, from, fromlen);
        if (r >= 0 && fromlen) *fromlen = 0; /* a connected stream says no source, as the kernel's */
        return r;
    }
    struct kbp_dgram g;
    ssize_t r = s && s->accel ? rx_one(s, fd, buf, len, flags, &g) : -2;
    if (r == -2) return kbp_real.recvfrom(fd, buf, len, flags, from, fromlen);
    if (r < 0) return r;
    fill_name(from, fromlen, &g);
    return (flags & MSG_TRUNC) ? (ssize_t)g.len : (ssize_t)(g.len < len ? g.len : len);
}

ssize_t recv(int fd, void *buf, size_t len, int flags) { return recvfrom(fd, buf, len, flags, NULL, NULL); }

ssize_t read(int fd, void *buf, size_t len) {
    kbp_init_libc();
    kbp_flush_before(fd);
    struct kbp_sock *s = kbp_get(fd);
    if (!s || !s->accel) return kbp_real.read(fd, buf, len);
    return recvfrom(fd, buf, len, 0, NULL, NULL);
}

/* One control message into m's buffer at *used: 0, or -1 (MSG_CTRUNC) when it does not fit. */
static int put_cmsg(struct msghdr *m, size_t *used, int level, int type, const void *data, size_t dl) {
    if (m->msg_controllen < *used + CMSG_SPACE(dl)) {
        m->msg_flags |= MSG_CTRUNC;
        return -1;
    }
    struct cmsghdr *c = (struct cmsghdr *)((uint8_t *)m->msg_control + *used);
    c->cmsg_level = level;
    c->cmsg_type = type;
    c->cmsg_len = CMSG_LEN(dl);
    memcpy(CMSG_DATA(c), data, dl);
    *used += CMSG_SPACE(dl);
    return 0;
}

/* The ancillary data the kernel would give, in its order: the timestamp (SO_TIMESTAMP/NS), then IP_PKTINFO,
 * IP_TTL, IP_TOS (ip_cmsg_recv's), all from the frame. */
static void put_ancillary(struct msghdr *m, const struct kbp_sock *s, const struct kbp_dgram *g) {
    size_t used = 0;
    uint64_t ns = g->ts_ns;
    if (m->msg_control) {
        int ok = 0;
        if (s->ts_mode == 2) {
            struct timespec t = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
            ok = put_cmsg(m, &used, SOL_SOCKET, SCM_TIMESTAMPNS, &t, sizeof(t));
        } else if (s->ts_mode == 1) {
            struct timeval t = {(time_t)(ns / 1000000000ull), (suseconds_t)(ns % 1000000000ull / 1000)};
            ok = put_cmsg(m, &used, SOL_SOCKET, SCM_TIMESTAMP, &t, sizeof(t));
        }
        if (ok == 0 && s->want_pktinfo) {
            struct in_pktinfo pi = {.ipi_ifindex = s->ifc ? s->ifc->ifindex : 0};
            int unicast = memcmp(g->dst_ip, s->me.bcast, 4) && g->dst_ip[0] < 224; /* the kernel's spec_dst: */
            memcpy(&pi.ipi_spec_dst, unicast ? g->dst_ip : s->me.ip, 4); /* the local address it came to */
            memcpy(&pi.ipi_addr, g->dst_ip, 4);
            ok = put_cmsg(m, &used, IPPROTO_IP, IP_PKTINFO, &pi, sizeof(pi));
        }
        int ttl = g->ttl;
        if (ok == 0 && s->want_ttl) ok = put_cmsg(m, &used, IPPROTO_IP, IP_TTL, &ttl, sizeof(ttl));
        if (ok == 0 && s->want_tos) put_cmsg(m, &used, IPPROTO_IP, IP_TOS, &g->tos, 1);
    }
    m->msg_controllen = used;
}

ssize_t recvmsg(int fd, struct msghdr *m, int flags) {
    kbp_init_libc();
    kbp_flush_before(fd);
    struct kbp_sock *s = kbp_get(fd);
    if (!s || !s->accel) return kbp_real.recvmsg(fd, m, flags);
    uint8_t *tmp = kbp_thread_buf(KBP_BUF_DGRAM); /* a whole datagram (a jumbo one too), then spread over the iovecs */
    if (!tmp) return kbp_real.recvmsg(fd, m, flags);
    if (s->tcp) {
        ssize_t r = kbp_tcp_recvmsg(s, m, flags, tmp, KBP_MAX_DGRAM);
        return r == -2 ? kbp_real.recvmsg(fd, m, flags) : r;
    }
    struct kbp_dgram g;
    ssize_t r = rx_one(s, fd, tmp, KBP_MAX_DGRAM, flags, &g);
    if (r == -2) return kbp_real.recvmsg(fd, m, flags);
    if (r < 0) return r;
    size_t off = 0, have = g.len < KBP_MAX_DGRAM ? g.len : KBP_MAX_DGRAM;
    for (size_t i = 0; i < m->msg_iovlen && off < have; i++) {
        size_t k = have - off < m->msg_iov[i].iov_len ? have - off : m->msg_iov[i].iov_len;
        memcpy(m->msg_iov[i].iov_base, tmp + off, k);
        off += k;
    }
    m->msg_flags = off < g.len ? MSG_TRUNC : 0;
    fill_name(m->msg_name, &m->msg_namelen, &g);
    if (!g.ts_ns) { /* taken before the app asked for stamps */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        g.ts_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    }
    put_ancillary(m, s, &g);
    return (flags & MSG_TRUNC) ? (ssize_t)g.len : (ssize_t)off;
}

int recvmmsg(int fd, struct mmsghdr *v, unsigned n, int flags, struct timespec *timeout) {
    kbp_init_libc();
    kbp_flush_before(fd);
    struct kbp_sock *s = kbp_get(fd);
    if (!s || !s->accel) return kbp_real.recvmmsg(fd, v, n, flags, timeout);
    /* as the kernel's: each datagram waits as a recvmsg would (after the first, only with MSG_WAITFORONE does
     * it take just what is there), the timeout is looked at after each datagram, and what is left of it is
     * written back; an error after some datagrams returns those */
    uint64_t end = timeout ? kbp_now_ns() + (uint64_t)timeout->tv_sec * 1000000000ull + (uint64_t)timeout->tv_nsec : 0;
    unsigned got = 0;
    while (got < n) {
        int f = flags & ~MSG_WAITFORONE;
        if (got && (flags & MSG_WAITFORONE)) f |= MSG_DONTWAIT;
        ssize_t r = recvmsg(fd, &v[got].msg_hdr, f);
        if (r < 0) break;
        v[got++].msg_len = (unsigned)r;
        if (end && kbp_now_ns() >= end) break;
    }
    if (timeout) {
        uint64_t now = kbp_now_ns(), left = now < end ? end - now : 0;
        timeout->tv_sec = (time_t)(left / 1000000000ull), timeout->tv_nsec = (long)(left % 1000000000ull);
    }
    return got ? (int)got : -1;
}

/* ---- sending ------------------------------------------------------------------------------------------ */

/* 1: sent through the rings; 0: the kernel's to send. */
static int tx_one(struct kbp_sock *s, const struct sockaddr *to, socklen_t tolen, const void *buf, size_t len) {
    uint32_t ip;
    uint16_t port;
    if (to) {
        if (to->sa_family != AF_INET || tolen < sizeof(struct sockaddr_in)) return 0;
        ip = ((const struct sockaddr_in *)to)->sin_addr.s_addr;
        port = ntohs(((const struct sockaddr_in *)to)->sin_port);
    } else if (s->connected) {
        ip = s->peer_ip, port = s->peer_port;
    } else {
        return 0; /* the kernel says EDESTADDRREQ */
    }
    kbp_enter();
    int sent = s->accel && kbp_iface_send(s->ifc, s, ip, port, buf, (uint32_t)len) == 0;
    if (s->slot) {
        if (sent) s->slot->tx++;
        else s->slot->tx_kernel++;
    }
    kbp_leave();
    return sent;
}

/* A socket's first send: the kernel would autobind it to 0.0.0.0 and an ephemeral port; bind it so here, so
 * that it can be accelerated before its first datagram. */
static void before_first_send(struct kbp_sock *s) {
    if (s->tried) return;
    kbp_enter();
    struct sockaddr_in a;
    socklen_t al = sizeof(a);
    if (!s->tried && getsockname(s->fd, (struct sockaddr *)&a, &al) == 0 && a.sin_family == AF_INET) {
        if (!a.sin_port) {
            struct sockaddr_in any = {.sin_family = AF_INET};
            kbp_real.bind(s->fd, (struct sockaddr *)&any, sizeof(any));
        }
        try_accel(s);
    }
    kbp_leave();
}

/* A destination on loopback: the kernel's to send (and to autobind the socket for), not the control plane's. */
static int to_loopback(const struct sockaddr *to) {
    return to && to->sa_family == AF_INET && (ntohl(((const struct sockaddr_in *)to)->sin_addr.s_addr) >> 24) == 127;
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    if (s && s->tcp) {
        ssize_t r = s->accel ? kbp_tcp_send(s, buf, len, flags) : -2;
        return r == -2 ? kbp_real.sendto(fd, buf, len, flags, to, tolen) : r;
    }
    if (s && to_loopback(to)) return kbp_real.sendto(fd, buf, len, flags, to, tolen);
    if (s) before_first_send(s);
    if (s && s->accel && len <= 65507 && tx_one(s, to, tolen, buf, len)) return (ssize_t)len;
    return kbp_real.sendto(fd, buf, len, flags, to, tolen);
}

ssize_t send(int fd, const void *buf, size_t len, int flags) { return sendto(fd, buf, len, flags, NULL, 0); }

ssize_t write(int fd, const void *buf, size_t len) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    if (!s) return kbp_real.write(fd, buf, len);
    return sendto(fd, buf, len, 0, NULL, 0);
}

ssize_t sendmsg(int fd, const struct msghdr *m, int flags) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    if (s && s->tcp && s->accel) {
        ssize_t r = kbp_tcp_sendmsg(s, m, flags);
        if (r != -2) return r;
    }
    if (s && s->tcp) return kbp_real.sendmsg(fd, m, flags);
    if (s && to_loopback(m->msg_name)) return kbp_real.sendmsg(fd, m, flags);
    if (s) before_first_send(s);
    if (s && s->accel && !m->msg_controllen) {
        uint8_t tmp[KBP_FRAME_SIZE];
        size_t len = 0;
        int fits = 1;
        for (size_t i = 0; i < m->msg_iovlen && fits; i++) {
            if (len + m->msg_iov[i].iov_len > sizeof(tmp)) fits = 0;
            else memcpy(tmp + len, m->msg_iov[i].iov_base, m->msg_iov[i].iov_len), len += m->msg_iov[i].iov_len;
        }
        if (fits && tx_one(s, m->msg_name, m->msg_namelen, tmp, len)) return (ssize_t)len;
    }
    return kbp_real.sendmsg(fd, m, flags);
}

int sendmmsg(int fd, struct mmsghdr *v, unsigned n, int flags) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    if (!s) return kbp_real.sendmmsg(fd, v, n, flags);
    unsigned i = 0;
    kbp_batching = 1; /* one kick for the whole batch, as the kernel's sendmmsg is one syscall */
    for (; i < n; i++) {
        ssize_t r = sendmsg(fd, &v[i].msg_hdr, flags);
        if (r < 0) break;
        v[i].msg_len = (unsigned)r;
    }
    kbp_batching = 0;
    kbp_enter();
    kbp_iface_flush();
    kbp_leave();
    return i ? (int)i : -1;
}
