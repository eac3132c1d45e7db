/* kbp_tcp.c: the app's TCP sockets on the rings. The TCP is kbypass's one (kbypass.proto.tcp, sans-IO Python),
 * run in-process by kbypass.sockapi.shimtcp in an embedded CPython (kbp_py.c); this file is its I/O: frames
 * off the rings in (kbp_iface_pump hands every TCP frame here once a TCP socket is accelerated), packets
 * out through the TX ring behind the next hop's Ethernet header, its timers run from the app's calls and
 * from the flusher thread, and the socket calls (listen, accept, connect, recv, send, shutdown, close) as
 * the kernel answers them.
 *
 * The fds stay real. A listening socket is bound and listening in the kernel (the port is taken, getsockname
 * tells the truth); at listen() the control plane steers `tcp dst IP dport PORT` to our rings and the
 * kernel's listener sees nothing of that interface any more (it still takes connections from elsewhere,
 * loopback say: accept() hands those out as kernel sockets). An accepted connection gets a placeholder
 * kernel socket (never connected) for its fd: close, fcntl, setsockopt and the shim's poll/select/epoll
 * work on it, getsockname/getpeername/SO_ERROR are answered here. An active open binds the kernel socket to
 * the route's source address and an ephemeral port first (the kernel keeps the port), then steers that
 * port; when the app closes it before its connection finished (FIN_WAIT) the shim keeps the kernel socket
 * and the rule until the host says GONE, at TIME_WAIT with timestamps (else CLOSED): the kernel may give the port
 * out again, and a connect onto a 4-tuple the host holds in TIME_WAIT takes it over as Linux does for a bound
 * port (the ISS above the old snd_nxt: RFC 6191), rather than the shim holding an fd per closed connection for 60 s
 * (an app making short connections would run out of fds where the kernel holds none). A connect the host
 * refuses fails at once with its errno (the rule and sid go, the socket is the kernel's again).
 *
 * The established path in C (predicted segments queued for the app): kbp_tcpfast.c.
 *
 * Left on the kernel, said with --log: loopback, a second interface (TCP runs on the first one only), a
 * control plane that refuses, no Python (kbp_py.c), a Python app, KBYPASS_TCP=0. fork: the connections go to
 * the kernel's TCP first (kbp_tcprepair.c), the listeners back to the kernel (kbp_tcp_before_fork), for a child
 * to adopt (kbp_tcpadopt.c).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kbp.h"

#define SID_SLOTS 65536
#define NEWS 0x10000000u
#define GONE 0x20000000u
#define CHUNK KBP_TCP_CHUNK
#define FRAME_MSS (KBP_FRAME_SIZE - 256 - 14 - 20 - 40) /* a segment the peer sends us fits one RX frame */

int kbp_tcp_on;
static struct kbp_iface *tcp_ifc;
static struct kbp_sock *by_sid[SID_SLOTS];
static uint32_t next_sid = 1;
static uint64_t deadline_ns;

static double now_s(void) { return (double)kbp_now_ns() / 1e9; }

static uint32_t sid_take(struct kbp_sock *s) {
    for (int i = 0; i < SID_SLOTS; i++) {
        uint32_t sid = next_sid++;
        if (sid && !by_sid[sid % SID_SLOTS]) {
            by_sid[sid % SID_SLOTS] = s;
            return s->sid = sid;
        }
    }
    return 0;
}

static void sid_drop(struct kbp_sock *s) {
    if (s->sid && by_sid[s->sid % SID_SLOTS] == s) by_sid[s->sid % SID_SLOTS] = NULL;
    s->sid = 0;
}

static void describe(const struct kbp_sock *s, const char *what, char *out, size_t cap) {
    char ip[32];
    inet_ntop(AF_INET, &s->tcp_local.sin_addr, ip, sizeof(ip));
    snprintf(out, cap, "fd %d (tcp %s:%u, %s)", s->fd, ip, ntohs(s->tcp_local.sin_port), what);
}

/* ---- the host's side: frames in, packets out, readiness, timers --------------------------------------- */

/* TCP frames of one pump, their IPv4 packets back to back, handed to the host in one call */
#define BATCH_BYTES (64 * KBP_FRAME_SIZE)
static uint8_t *batch;
static size_t batched;

void kbp_tcp_frames_done(void) {
    kbp_tcpc_pump_done(batched != 0);
    if (!batched) return;
    size_t n = batched;
    batched = 0;
    kbp_py_call("frames", NULL, 0, "(y#d)", batch, (ssize_t)n, now_s());
}

void kbp_tcp_frame(struct kbp_iface *ifc, const uint8_t *f, uint32_t n) {
    uint32_t src;
    memcpy(&src, f + 26, 4);
    kbp_iface_learn(ifc, src, f + 6);
    if (kbp_tcpc_frame(f, n)) return; /* predicted: queued for the app in C (kbp_tcpfast.c) */
    uint32_t ip_len = (uint32_t)(f[16] << 8 | f[17]); /* the IPv4 total length: Ethernet padding cut */
    if (ip_len < 40 || ip_len > n - 14) return;
    if (!batch && !(batch = malloc(BATCH_BYTES))) return;
    if (batched + ip_len > BATCH_BYTES) kbp_tcp_frames_done();
    memcpy(batch + batched, f + 14, ip_len);
    batched += ip_len;
}

void kbp_tcp_transmit(const uint8_t *pkt, uint32_t len) {
    if (tcp_ifc) kbp_iface_send_ip(tcp_ifc, pkt, len);
}

static void let_go(struct kbp_sock *s);
static int drain_port(struct kbp_sock *s);
static int accept_ours(struct kbp_sock *ls, struct sockaddr *addr, socklen_t *alen, int flags);

void kbp_tcp_changed(uint32_t sid, uint32_t mask) {
    struct kbp_sock *s = by_sid[sid % SID_SLOTS];
    if (!s || s->sid != sid) return;
    if (mask & GONE) {
        if (s->zombie) let_go(s);
        return;
    }
    uint32_t m = mask & 0xFFFFu;
    s->py_rx = (mask & KBP_PYRX) != 0;
    s->py_tx = (mask & KBP_PYTX) != 0;
    if (m != s->tcp_mask || (mask & NEWS)) s->tcp_gen++;
    if ((m & POLLOUT) && !(m & (POLLERR | POLLHUP))) s->connected = 1; /* a refused one never was */
    s->tcp_mask = m;
    s->tcp_state = (uint8_t)(mask >> 16 & 0xF); /* shimtcp.STATE_SHIFT */
    kbp_page_show_tcp(s); /* for `kbypass run --status`: its state and peer */
}

/* a timer of C's own (kbp_tcpfast.c): the flusher runs kbp_tcp_timers by then */
void kbp_tcp_wake_by(uint64_t at) {
    if (!deadline_ns || deadline_ns > at) {
        deadline_ns = at;
        kbp_flusher_arm();
    }
}

void kbp_tcp_deadline(double when) {
    deadline_ns = when > 0 ? (uint64_t)(when * 1e9) : 0;
    if (deadline_ns) kbp_flusher_arm();
}

uint64_t kbp_tcp_timers(uint64_t now) {
    kbp_tcpc_timers(now); /* a catch-up sets deadline_ns: the host's */
    if (!deadline_ns || now < deadline_ns) return deadline_ns;
    /* what came first (the app may be in no call of ours: an ACK that ends a closing connection, GONE, and
     * with it a closed listener's rule and port, must not wait for its next one); the pump may run them */
    if (tcp_ifc) kbp_iface_pump(tcp_ifc, NULL, NULL, 0, NULL);
    if (!deadline_ns || now < deadline_ns) return deadline_ns;
    kbp_py_call("timer", NULL, 0, "(d)", (double)now / 1e9);
    if (deadline_ns && deadline_ns <= now) deadline_ns = now + 1000000; /* nothing was due after all */
    return deadline_ns;
}

int kbp_tcp_ring_fds(int *fds, int cap) { return kbp_tcp_on && tcp_ifc ? kbp_iface_fds(tcp_ifc, fds, cap) : 0; }

/* Frames came while the app is elsewhere (kbp_flush.c): taken now, ACKs and answers out at once */
void kbp_tcp_pump_idle(void) {
    if (!kbp_tcp_on || !tcp_ifc) return;
    kbp_iface_pump(tcp_ifc, NULL, NULL, 0, NULL);
    kbp_iface_flush();
}

int kbp_tcp_cap_ms(int ms) {
    if (!deadline_ns) return ms;
    uint64_t now = kbp_now_ns();
    int left = now >= deadline_ns ? 0 : (int)((deadline_ns - now + 999999) / 1000000);
    return ms < 0 || left < ms ? left : ms;
}

short kbp_tcp_revents(struct kbp_sock *s, short events) {
    if (!s->accel) return 0;
    kbp_iface_pump(s->ifc, NULL, NULL, 0, NULL);
    kbp_tcp_timers(kbp_now_ns());
    return (short)((s->tcp_mask | (s->cq_len ? POLLIN : 0)) & ((uint32_t)(uint16_t)events | POLLERR | POLLHUP));
}

/* A fork (nginx's master making its worker, a fork-per-connection server: socat fork, inetd, sshd), before it
 * happens (pthread_atfork's prepare): the child will hold copies of every fd, and rings cannot be shared by two
 * processes. So every accelerated connection goes to the kernel's TCP (kbp_tcprepair.c), which parent and child
 * then share as without kbypass, and an accelerated listener goes back to the kernel: its rule goes, the
 * kernel's listener (shared with the children) takes the connections, the app works as without kbypass. With
 * the connections handed over nothing of ours uses the port any more, so the rule goes at once (no SYN taken by
 * a listener nobody accepts from, a new listen() on the port works); a connection that could not be handed
 * (no CAP_NET_ADMIN, or our FIN sent) keeps a rule of its 4-tuple until the port's last is done (drain_port,
 * kbp_tcp_flows_only). Those done and not accepted yet
 * are handed over too and kept for the app's accept (kbp_tcpwake.c). */
void kbp_tcp_before_fork(void) {
    if (!kbp_tcp_on) return;
    kbp_enter();
    if (tcp_ifc) kbp_iface_pump(tcp_ifc, NULL, NULL, 0, NULL); /* what came first: a handshake finished, data */
    kbp_tcp_handoff_all();
    for (int fd = 0; fd < KBP_MAX_FD; fd++) {
        struct kbp_sock *s = kbp_fds[fd];
        if (!s || !s->tcp || !s->accel || s->tcp_role != KBP_TCP_LISTENER || s->fd != fd) continue;
        int c;
        for (int i = 0; i < 50 && kbp_py_call("half_open", NULL, 0, "(Id)", s->sid, now_s()) > 0; i++)
            kbp_iface_flush(), usleep(100), kbp_iface_pump(s->ifc, NULL, NULL, 0, NULL); /* SYN-ACKs out, ACKs in */
        while ((c = accept_ours(s, NULL, NULL, SOCK_CLOEXEC)) >= 0) /* done here, not accepted yet: kept for it */
            if (kbp_tcp_handoff(kbp_fds[c]) < 0 || kbp_tcp_pend(s, c) < 0) close(c);
        long users = kbp_py_call("release", NULL, 0, "(Id)", s->sid, now_s());
        uint32_t sid = s->sid;
        if (users <= 0 || !drain_port(s)) kbp_tcp_rule_gone(s->ifc->name, &s->rule_id);
        else kbp_tcp_flows_only(by_sid[sid % SID_SLOTS]); /* its zombie's */
        sid_drop(s);
        s->accel = 0;
        if (s->slot) s->slot->used = 0;
        s->slot = NULL;
        kbp_verbose("fd %d: fork: the listening socket is the kernel's again, for the child to adopt when it accepts "
                    "(kbp_tcpadopt.c)", fd);
    }
    kbp_iface_flush();
    kbp_leave();
}

/* A connection that is no longer ours (kbp_tcprepair.c): the host's `call` ("handed": the kernel has it, forgotten
 * without a segment; "abort": reset), an active open's rule goes (after the kernel socket exists: its segments
 * never meet a kernel without it), the shim's records go; s itself is the caller's to free. Under kbp_lock. */
void kbp_tcp_forget(struct kbp_sock *s, const char *call) {
    kbp_tcpc_detach(s);
    if (call) kbp_py_call(call, NULL, 0, "(Id)", s->sid, now_s());
    if (s->tcp_role == KBP_TCP_ACTIVE && s->ifc) kbp_tcp_rule_gone(s->ifc->name, &s->rule_id);
    if (s->ifc) kbp_iface_drop_sock(s->ifc, s);
    if (s->slot) s->slot->used = 0;
    sid_drop(s);
}

/* the rings are going (the control plane is lost) or are not ours (a fork's child): no pump, no timer on them */
void kbp_tcp_off(void) {
    kbp_tcp_on = 0;
    tcp_ifc = NULL;
    deadline_ns = 0;
}

int kbp_tcp_sids(void) {
    int n = 0;
    for (int i = 0; i < SID_SLOTS; i++) n += by_sid[i] != NULL;
    return n;
}

void kbp_tcp_after_fork_child(void) {
    for (int fd = 0; fd < KBP_MAX_FD; fd++)
        if (kbp_fds[fd] && kbp_fds[fd]->pend) kbp_tcp_pend_drop(kbp_fds[fd], 0); /* the parent's to hand out */
    kbp_tcp_off();
    memset(by_sid, 0, sizeof(by_sid));
    kbp_tcpc_after_fork_child();
}

/* ---- acceleration ----------------------------------------------------------------------------------------- */

void kbp_tcp_rule_gone(const char *iface, int *rule_id) {
    if (kbp_cp_fd() < 0 || *rule_id < 0) return;
    char req[160], buf[512];
    snprintf(req, sizeof(req), "{\"op\":\"remove\",\"iface\":\"%s\",\"rule_id\":%d}", iface, *rule_id);
    kbp_cp_call(req, -1, buf, sizeof(buf), NULL, 0, NULL);
    *rule_id = -1;
}

static void take_slot(struct kbp_sock *s) {
    s->slot = kbp_page_slot();
    kbp_page_show_tcp(s);
    if (s->slot) s->slot->used = 1;
}

/* A TCP socket the app meant for the network stays the kernel's for a reason the user did not choose (a Python
 * app, no libpython, a second interface, the control plane's refusal): said with --log, and once without it,
 * so a run that accelerates nothing does not look like one that does */
static void stays(const char *who, const char *why) {
    static int said;
    if (kbp_tcp_quiet) return kbp_cp_refused(why); /* kbp_tcpadopt.c's look: it says why itself */
    if (kbp_log) kbp_verbose("%s not accelerated: %s", who, why);
    else if (!said++) kbp_say("%s stays on the kernel: %s (said once; --log says each)", who, why);
}

/* Hand a bound socket to the control plane and the host: 0, or -1 (it stays the kernel's; --log says why). */
int kbp_tcp_try(struct kbp_sock *s, int role, int backlog) {
    socklen_t al = sizeof(s->tcp_local);
    if (s->tried || getsockname(s->fd, (struct sockaddr *)&s->tcp_local, &al) < 0 ||
        s->tcp_local.sin_family != AF_INET || !s->tcp_local.sin_port)
        return -1;
    s->tried = 1;
    char who[96], buf[1024], why[256], iface[32] = "?";
    describe(s, role == KBP_TCP_LISTENER ? "listening" : "connecting", who, sizeof(who));
    const char *off = kbp_env("KBYPASS_TCP");
    if (off && !strcmp(off, "0")) {
        kbp_verbose("%s not accelerated: KBYPASS_TCP=0", who);
        return -1;
    }
    if ((ntohl(s->tcp_local.sin_addr.s_addr) >> 24) == 127) {
        kbp_verbose("%s not accelerated: loopback stays the kernel's", who);
        return -1;
    }
    if (kbp_py_app(why, sizeof(why))) {
        stays(who, why);
        return -1;
    }
    if (kbp_cp_connect() < 0) return -1;
    char req[128]; /* an active open's rule is its 4-tuple (s->tcp_peer, set by kbp_tcp_connect) */
    kbp_cp_accelerate_req(req, sizeof(req), role == KBP_TCP_ACTIVE ? &s->tcp_peer : NULL);
    if (kbp_cp_call(req, s->fd, buf, sizeof(buf), NULL, 0, NULL) < 0) {
        stays(who, buf);
        return -1;
    }
    long long rule_id;
    kbp_json_str(buf, "iface", iface, sizeof(iface));
    if (kbp_json_int(buf, "rule_id", &rule_id)) {
        kbp_verbose("%s not accelerated: a malformed accelerate reply", who);
        return -1;
    }
    s->rule_id = (int)rule_id;
    char ip[32] = "";
    kbp_json_str(buf, "ip", ip, sizeof(ip)); /* the interface's address (a wildcard bind's too): the steered one */
    inet_pton(AF_INET, ip, &s->tcp_steered);
    why[0] = 0;
    struct kbp_iface *ifc = kbp_iface_get(buf, why, sizeof(why));
    if (ifc && tcp_ifc && ifc != tcp_ifc) {
        snprintf(why, sizeof(why), "TCP runs on one interface, %s (this socket is on %s)", tcp_ifc->name, ifc->name);
        ifc = NULL;
    }
    int mss = ifc ? (ifc->mtu - 40 < FRAME_MSS ? ifc->mtu - 40 : FRAME_MSS) : 0;
    uint32_t sid = ifc && kbp_py_ready(mss, why, sizeof(why)) == 0 ? sid_take(s) : 0;
    if (!sid) {
        kbp_tcp_rule_gone(iface, &s->rule_id);
        stays(who, why[0] ? why : "too many TCP sockets");
        return -1;
    }
    s->ifc = ifc;
    tcp_ifc = ifc;
    kbp_tcp_on = 1;
    kbp_flusher_arm(); /* it drives TCP while the app is elsewhere (kbp_flush.c) */
    s->tcp_role = role;
    s->accel = 1;
    s->heir |= role == KBP_TCP_LISTENER; /* a fork's child may adopt it (kbp_tcpadopt.c) */
    if (role == KBP_TCP_LISTENER)
        kbp_py_call("listen", NULL, 0, "(IIiid)", sid, ntohl(s->tcp_steered.s_addr), ntohs(s->tcp_local.sin_port),
                    backlog, now_s());
    take_slot(s);
    kbp_tcp_keepalive(s);
    kbp_verbose("%s accelerated on %s (%d queues, rule %d): kbypass's TCP", who, ifc->name, ifc->nq, s->rule_id);
    return 0;
}

/* ---- waiting ------------------------------------------------------------------------------------------- */

/* Until s has one of `want` (or an error/hangup): 0; -1 with errno (EAGAIN non-blocking or after timeout_us,
 * SO_RCVTIMEO/SO_SNDTIMEO's, 0: none; EINTR); -2: s is gone (handed to the kernel meanwhile, its fds the kernel's). Under kbp_lock, let go while sleeping; spins KBYPASS_SPIN_US
 * first, then sleeps on the rings (and the kernel socket for a listener: loopback connections), no longer
 * than the next TCP timer. */
int kbp_tcp_wait(struct kbp_sock *s, short want, int nonblock, long timeout_us) {
    uint64_t start = kbp_now_ns(), spin_end = start + (uint64_t)kbp_spin_us * 1000;
    uint64_t deadline = timeout_us > 0 ? start + (uint64_t)timeout_us * 1000 : 0;
    unsigned sig0 = kbp_sig_count;
    for (unsigned it = 0;; it++) {
        if (!s->accel || !s->refs) return 0; /* gone (closed by another thread before this call took the lock) */
        if (kbp_tcp_revents(s, want)) return 0;
        if (nonblock) {
            errno = EAGAIN;
            return -1;
        }
        if (kbp_sig_count != sig0) {
            if (kbp_sig_interrupted(sig0, 1)) {
                errno = EINTR;
                return -1;
            }
            sig0 = kbp_sig_count;
        }
        uint64_t now = kbp_now_ns();
        if (deadline && now >= deadline) {
            errno = EAGAIN;
            return -1;
        }
        if (now < spin_end) {
            if (!(it & 15)) kbp_iface_wake(s->ifc);
            continue;
        }
        kbp_iface_flush();
        struct pollfd p[KBP_MAX_QUEUES + 2];
        int qfds[KBP_MAX_QUEUES], cp = kbp_cp_fd();
        int n = kbp_iface_fds(s->ifc, qfds, KBP_MAX_QUEUES);
        for (int i = 0; i < n; i++) p[i] = (struct pollfd){qfds[i], POLLIN, 0};
        if (s->tcp_role == KBP_TCP_LISTENER) p[n++] = (struct pollfd){s->fd, POLLIN, 0};
        if (cp >= 0) p[n++] = (struct pollfd){cp, POLLIN, 0};
        kbp_iface_wake(s->ifc);
        s->refs++; /* another thread may close the fd while we sleep */
        kbp_sleep_begin();
        kbp_leave();
        int ms = deadline ? (int)((deadline - now + 999999) / 1000000) : 1000;
        int r = kbp_real.poll(p, (unsigned long)n, kbp_tcp_cap_ms(ms < 1000 ? ms : 1000));
        int e = errno;
        kbp_sleep_end();
        kbp_enter();
        if (cp >= 0 && cp == kbp_cp_fd() && p[n - 1].revents) kbp_cp_lost(); /* s may be handed: our ref holds it */
        if (--s->refs == 0) { /* closed by another thread meanwhile, or handed (kbp_tcprepair.c): ours to let go */
            int handed = s->handed;
            kbp_release(s);
            errno = EBADF;
            return handed ? -2 : -1;
        }
        if (r < 0 && e == EINTR && (kbp_sig_count == sig0 || kbp_sig_interrupted(sig0, 1))) {
            errno = EINTR;
            return -1;
        }
        if (s->tcp_role == KBP_TCP_LISTENER && p[n - 1 - (cp >= 0)].revents) return 0; /* the kernel's listener */
    }
}

/* ---- the calls -------------------------------------------------------------------------------------------- */

/* MSG_OOB: kbypass's TCP has no urgent data (it neither sends nor marks it): a recv finds none, EINVAL as the
 * kernel's when none is pending; a send fails with EOPNOTSUPP rather than put the byte in the stream as an
 * ordinary one (the peer would read it in-band, where the app meant it to be out of band). The kernel socket
 * cannot take it either: an accelerated connection's is not connected. */
ssize_t kbp_tcp_recv(struct kbp_sock *s, void *buf, size_t len, int flags) {
    if (flags & MSG_OOB) {
        errno = EINVAL;
        return -1;
    }
    kbp_enter();
    size_t got = 0;
    ssize_t r = 0;
    for (;;) {
        if (!s->accel) {
            kbp_leave();
            return got ? (ssize_t)got : -2;
        }
        int w = kbp_tcp_wait(s, POLLIN, s->nonblock || (flags & MSG_DONTWAIT), s->rcvtimeo_us);
        if (w == -2) {
            kbp_leave();
            return got ? (ssize_t)got : -2;
        }
        if (w < 0) { /* got: WAITALL's rest */
            /* len 0 waits for data as Linux's does (tcp_recvmsg's target is 1 byte); its SO_RCVTIMEO ends in 0 */
            r = !len && errno == EAGAIN && !s->nonblock && !(flags & MSG_DONTWAIT) ? 0 : -1;
            break;
        }
        if (s->cq_len) { /* predicted here: the oldest bytes, no Python */
            size_t k = kbp_tcpc_read(s, (char *)buf + got, len - got, (flags & MSG_PEEK) != 0);
            if (s->slot) s->slot->rx += k;
            got += k;
            r = (ssize_t)k;
            if (got == len || !(flags & MSG_WAITALL) || (flags & MSG_PEEK)) break;
            continue;
        }
        size_t want = len - got > (size_t)1 << 30 ? (size_t)1 << 30 : len - got;
        r = kbp_py_call("recv", (char *)buf + got, want, "(Inid)", s->sid, (ssize_t)want, (flags & MSG_PEEK) != 0,
                        now_s());
        if (r == -EAGAIN) continue;
        if (r < 0) {
            errno = (int)-r;
            r = -1;
            break;
        }
        if (s->slot) s->slot->rx += (uint64_t)r;
        got += (size_t)r;
        if (!r || got == len || !(flags & MSG_WAITALL) || (flags & MSG_PEEK)) break;
    }
    kbp_leave();
    if (got && (r >= 0 || errno == EAGAIN)) return (ssize_t)got;
    return r < 0 ? -1 : (ssize_t)got;
}

ssize_t kbp_tcp_send(struct kbp_sock *s, const void *buf, size_t len, int flags) {
    if (flags & MSG_OOB) {
        errno = EOPNOTSUPP;
        return -1;
    }
    kbp_enter();
    size_t sent = 0;
    int err = 0;
    while (sent < len || !len) {
        if (!s->accel) {
            kbp_leave();
            return sent ? (ssize_t)sent : -2;
        }
        int w = kbp_tcp_wait(s, POLLOUT, s->nonblock || (flags & MSG_DONTWAIT), s->sndtimeo_us);
        if (w == -2) {
            kbp_leave();
            return sent ? (ssize_t)sent : -2;
        }
        if (w < 0) {
            err = errno;
            break;
        }
        size_t k = len - sent < CHUNK ? len - sent : CHUNK;
        long r;
        size_t n;
        const uint8_t *hitlog = kbp_tcpc_take_log(&n);
        if (n) /* the host catches up with what C predicted and sends, in one call */
            r = kbp_py_call("hits_send", NULL, 0, "(y#Iy#d)", hitlog, (ssize_t)n, s->sid, (const char *)buf + sent,
                            (ssize_t)k, now_s());
        else
            r = kbp_py_call("send", NULL, 0, "(Iy#d)", s->sid, (const char *)buf + sent, (ssize_t)k, now_s());
        if (r == -EAGAIN) {
            if (s->nonblock || (flags & MSG_DONTWAIT)) {
                err = EAGAIN;
                break;
            }
            continue; /* full: the host said so (no POLLOUT) and says when there is room */
        }
        if (r < 0) {
            err = (int)-r;
            break;
        }
        if (s->slot) s->slot->tx += (uint64_t)r;
        sent += (size_t)r;
        if (!len) break;
    }
    kbp_leave();
    if (sent) return (ssize_t)sent;
    if (!err) return 0;
    if (err == EPIPE && !(flags & MSG_NOSIGNAL)) pthread_kill(pthread_self(), SIGPIPE); /* as the kernel does */
    errno = err;
    return -1;
}

int listen(int fd, int backlog) {
    kbp_init_libc();
    int r = kbp_real.listen(fd, backlog);
    struct kbp_sock *s = kbp_get(fd);
    if (r == 0 && s && s->tcp) {
        kbp_enter();
        s->tcp_backlog = backlog;
        if (s->accel && s->tcp_role == KBP_TCP_LISTENER)
            kbp_py_call("listen", NULL, 0, "(IIiid)", s->sid, ntohl(s->tcp_steered.s_addr),
                        ntohs(s->tcp_local.sin_port), backlog, now_s());
        else
            kbp_tcp_try(s, KBP_TCP_LISTENER, backlog);
        kbp_leave();
    }
    return r;
}

/* The next connection the host completed on listener s: its new fd, -1 with errno (EAGAIN: none). */
static int accept_ours(struct kbp_sock *ls, struct sockaddr *addr, socklen_t *alen, int flags) {
    struct kbp_sock *c = kbp_sock_new();
    int fd = c ? kbp_real.socket(AF_INET, SOCK_STREAM | (flags & (SOCK_NONBLOCK | SOCK_CLOEXEC)), 0) : -1;
    if (fd < 0 || fd >= KBP_MAX_FD || !sid_take(c)) {
        if (fd >= 0) kbp_real.close(fd);
        if (c) kbp_sock_free(c);
        errno = ENFILE;
        return -1;
    }
    uint8_t got[12];
    long r = kbp_py_call("accept", got, sizeof(got), "(IId)", ls->sid, c->sid, now_s());
    if (r != 12) {
        sid_drop(c);
        kbp_real.close(fd);
        kbp_sock_free(c);
        errno = r < 0 ? (int)-r : EAGAIN;
        return -1;
    }
    c->refs = 1, c->fd = fd, c->tcp = 1, c->tried = 1, c->accel = 1, c->connected = 1;
    c->tcp_role = KBP_TCP_ACCEPTED, c->rule_id = -1, c->ifc = ls->ifc;
    c->nonblock = (flags & SOCK_NONBLOCK) != 0;
    c->tcp_peer = (struct sockaddr_in){.sin_family = AF_INET};
    memcpy(&c->tcp_peer.sin_addr, got, 4);
    memcpy(&c->tcp_peer.sin_port, got + 4, 2);
    c->tcp_local = (struct sockaddr_in){.sin_family = AF_INET};
    memcpy(&c->tcp_local.sin_addr, got + 6, 4);
    memcpy(&c->tcp_local.sin_port, got + 10, 2);
    if (kbp_fds[fd]) kbp_release(kbp_fds[fd]); /* its fd closed behind our back (close_range, say) */
    kbp_fds[fd] = c;
    take_slot(c);
    if (ls->slot) ls->slot->accepted++;
    kbp_tcpc_attach(c);
    kbp_tcp_fill_addr(addr, alen, &c->tcp_peer);
    return fd;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *alen, int flags) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    int r;
    if (s && s->pend && (r = kbp_tcp_take_pend(s, addr, alen, flags)) >= 0) return r; /* kept (kbp_tcpwake.c) */
    /* no adoption here: an inherited listener is adopted when waited on (kbp_tcpadopt.c, prefork servers) */
    if (!s || !s->tcp || !s->accel || s->tcp_role != KBP_TCP_LISTENER) return kbp_real.accept4(fd, addr, alen, flags);
    kbp_flush_now();
    kbp_enter();
    for (;;) {
        if (!s->accel) {
            kbp_leave();
            return kbp_real.accept4(fd, addr, alen, flags);
        }
        if ((s->tcp_mask & POLLIN) && ((r = accept_ours(s, addr, alen, flags)) >= 0 || errno != EAGAIN)) break;
        struct pollfd kp = {fd, POLLIN, 0}; /* the kernel's own queue: loopback and other interfaces */
        if (kbp_real.poll(&kp, 1, 0) == 1 && (r = kbp_real.accept4(fd, addr, alen, flags)) >= 0) break;
        if (kbp_tcp_wait(s, POLLIN, s->nonblock, s->rcvtimeo_us) < 0) {
            r = -1;
            break;
        }
    }
    int e = errno;
    kbp_leave();
    errno = e;
    return r;
}

int accept(int fd, struct sockaddr *addr, socklen_t *alen) { return accept4(fd, addr, alen, 0); }

/* An earlier connection of ours on this 4-tuple still finishes (the app closed it: FIN_WAIT, or TIME_WAIT
 * without timestamps): its rule (steered by the 4-tuple) holds the rings' side of it, so neither the host nor the
 * kernel can connect on it yet (Linux: EADDRNOTAVAIL). The same port toward another peer is another rule: free.
 * Only for a port the app bound itself: an ephemeral one the kernel gives out is free. Under kbp_lock. */
int kbp_tcp_port_finishing(in_port_t port, const struct sockaddr_in *peer) {
    for (int i = 0; i < SID_SLOTS; i++) {
        struct kbp_sock *z = by_sid[i];
        if (z && z->zombie && z->tcp_role == KBP_TCP_ACTIVE && z->tcp_local.sin_port == port &&
            z->tcp_peer.sin_addr.s_addr == peer->sin_addr.s_addr && z->tcp_peer.sin_port == peer->sin_port)
            return 1;
    }
    return 0;
}

/* The app's last fd of s is closed: 1 keep s (an active open whose connection still finishes holds the
 * port and the rule until GONE), 0 the caller frees it. Under kbp_lock. */
int kbp_tcp_release(struct kbp_sock *s) {
    if (!s->sid || s->zombie) return s->zombie; /* closed already (at the exit, while a thread waited: kbp_tcpexit.c) */
    struct linger lg = {0, 0};
    socklen_t ll = sizeof(lg);
    int rst = s->tcp_role != KBP_TCP_LISTENER && kbp_real.getsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, &ll) == 0 &&
              lg.l_onoff && !lg.l_linger; /* SO_LINGER {1, 0} (kept by the kernel socket): close resets */
    rst |= s->cq_len > 0;             /* unread bytes (queued here): a RST, as the host's own (RFC 2525 2.17) */
    kbp_tcp_catch_up();
    kbp_tcpc_detach(s);
    long users = kbp_py_call(rst ? "abort" : "close", NULL, 0, "(Id)", s->sid, now_s());
    kbp_iface_flush();
    if (s->tcp_role == KBP_TCP_LISTENER) {
        uint32_t sid = s->sid; /* an adopted one: the parent's copy still listens (nginx -s reload: the new worker */
        if (users > 0 && drain_port(s) && s->adopted) /* adopts), so its connections keep only their 4-tuples */
            kbp_tcp_flows_only(by_sid[sid % SID_SLOTS]);
        else if (users > 0 && !s->sid)
            kbp_verbose("fd %d: its port's rule stays while its %ld connection(s) finish", s->fd, users);
        sid_drop(s);
        return 0;
    }
    if (s->tcp_role == KBP_TCP_ACCEPTED || !s->sid || by_sid[s->sid % SID_SLOTS] != s) {
        sid_drop(s);
        return 0;
    }
    int held = kbp_real.dup(s->fd); /* the kernel keeps the port while the connection finishes */
    if (held < 0) {
        sid_drop(s);
        return 0;
    }
    s->fd = held;
    s->zombie = 1;
    return 1;
}

/* Listener s goes (closed, or the kernel's at a fork) while connections it accepted still use its port: a zombie
 * takes its sid, rule and a dup of its socket (the port stays taken) until the host says GONE for that sid (the
 * port's last connection is done: ShimTcp.close), then let_go removes the rule. s keeps neither. 1, or 0 (no
 * memory or fd: the rule then goes with s, and those connections with it). */
static int drain_port(struct kbp_sock *s) {
    struct kbp_sock *z = kbp_sock_new();
    int held = z ? kbp_real.dup(s->fd) : -1;
    if (held < 0) {
        if (z) kbp_sock_free(z);
        return 0;
    }
    z->fd = held, z->tcp = 1, z->accel = 1, z->zombie = 1, z->tcp_role = KBP_TCP_LISTENER;
    z->ifc = s->ifc, z->sid = s->sid, z->rule_id = s->rule_id, z->tcp_local = s->tcp_local;
    by_sid[s->sid % SID_SLOTS] = z;
    s->sid = 0, s->rule_id = -1;
    return 1;
}

/* A zombie's connection is done: its rule, port and record go. */
static void let_go(struct kbp_sock *s) {
    kbp_tcp_flow_rules_gone(s);
    kbp_tcp_rule_gone(s->ifc->name, &s->rule_id);
    kbp_real.close(s->fd);
    if (s->slot) s->slot->used = 0;
    sid_drop(s);
    s->accel = 0;
    if (s->refs <= 0) kbp_sock_free(s); /* else a thread waiting on it frees it as it wakes (kbp_tcpexit.c) */
}
