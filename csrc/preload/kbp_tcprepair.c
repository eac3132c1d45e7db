/* kbp_tcprepair.c: an accelerated TCP connection handed to the kernel's TCP (TCP_REPAIR, as CRIU moves a live
 * socket), at the app's fd, when the shim can no longer keep it on its rings while the app still uses it:
 *
 *   fork      the child's copy of the fd must be the connection too, and rings cannot be shared by two processes:
 *             so before the fork (pthread_atfork's prepare) every accelerated connection becomes a kernel socket,
 *             and parent and child share it as without kbypass (a fork-per-connection server: socat fork, inetd,
 *             sshd). The listener goes back to the kernel (kbp_tcp.c), and with no connection of ours left on its
 *             port the port's rule goes at once: the kernel takes the next SYNs, a new listen() on the port works.
 *   exec      the connections the new image inherits (no FD_CLOEXEC: inetd's handler on stdin/stdout, kbp_exec.c)
 *   control plane gone   the steering program went with it, the peer's segments come to the kernel now: the
 *             connection goes on there (the app sees nothing); where it cannot be handed (below) it is reset:
 *             RST to the peer, ECONNRESET to the app (kbp_tcp.c), never a hang.
 *
 * The host says the state (kbypass.proto.tcp.handoff: sequence numbers, windows, MSS, window shifts, SACK,
 * timestamps, the unacknowledged, unsent and unread bytes); the kernel socket is bound to the connection's
 * address (repair mode forces the reuse of the listener's port), given the queue sequence numbers, "connected"
 * without a SYN, given the options, timestamp clock and windows, the unread bytes in its receive queue and the
 * unacknowledged ones in its send queue (repair mode counts them as sent: retransmitted if not acknowledged),
 * then taken out of repair; the unsent bytes are sent as an app's. The app's socket options and O_NONBLOCK
 * are copied from the placeholder, dup3 puts the socket at each of the app's fds, epoll sets get it in place
 * of the shim's record (kbp_epoll_rebind).
 *
 * Not handed: TCP_REPAIR needs CAP_NET_ADMIN (an unprivileged app's connections stay where they are: the
 * child's copy is then an unconnected placeholder, ENOTCONN, as before), and a connection that has sent its FIN
 * or is dead (the kernel could not send that FIN with its sequence number).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kbp.h"

/* kbypass.proto.tcp.handoff.HEADER */
struct handoff {
    uint32_t snd_una, snd_nxt, rcv_seq, rcv_nxt, snd_wnd, max_snd_wnd, rcv_wnd, tsval;
    uint16_t mss;
    uint8_t snd_wscale, rcv_wscale, flags, pad;
    uint32_t unacked, unsent, unread;
} __attribute__((packed));
_Static_assert(sizeof(struct handoff) == 50, "handoff.HEADER");
#define H_SACK 1
#define H_TS 2
#define H_WSCALE 4
#define H_EOF 8
#define CAP ((size_t)24 << 20) /* the host's send buffer, MAX_UNREAD and a window's worth held out of order */
#define PIECE (64 * 1024)      /* a repair write at a time (the receive queue takes one skb per write) */

static int opt(int fd, int level, int name, int v) { return kbp_real.setsockopt(fd, level, name, &v, sizeof(v)); }

static int write_all(int fd, const uint8_t *p, size_t n, int flags) {
    while (n) {
        ssize_t w = kbp_real.send(fd, p, n < PIECE ? n : PIECE, flags | MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue; /* an app's handler without SA_RESTART: not a failed handoff */
        if (w <= 0) return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

/* the options an app sets on a connection, from its placeholder to the kernel socket */
static const int COPIED[][2] = {
    {SOL_SOCKET, SO_KEEPALIVE}, {SOL_SOCKET, SO_LINGER},     {SOL_SOCKET, SO_RCVTIMEO},  {SOL_SOCKET, SO_SNDTIMEO},
    {SOL_SOCKET, SO_PRIORITY},  {SOL_SOCKET, SO_OOBINLINE},  {IPPROTO_TCP, TCP_NODELAY}, {IPPROTO_TCP, TCP_KEEPIDLE},
    {IPPROTO_TCP, TCP_KEEPINTVL}, {IPPROTO_TCP, TCP_KEEPCNT}, {IPPROTO_TCP, TCP_USER_TIMEOUT}, {IPPROTO_IP, IP_TOS},
};

static void copy_options(int from, int to) {
    for (size_t i = 0; i < sizeof(COPIED) / sizeof(COPIED[0]); i++) {
        uint8_t v[32];
        socklen_t l = sizeof(v);
        if (kbp_real.getsockopt(from, COPIED[i][0], COPIED[i][1], v, &l) == 0)
            kbp_real.setsockopt(to, COPIED[i][0], COPIED[i][1], v, l);
    }
    int fl = kbp_real.fcntl(from, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK)) kbp_real.fcntl(to, F_SETFL, kbp_real.fcntl(to, F_GETFL) | O_NONBLOCK);
}

/* The kernel socket for state h (its bytes after it, the C queue's unread bytes `cq` first): the fd, or -1. */
static int build(const struct kbp_sock *s, const struct handoff *h, const uint8_t *bytes, const uint8_t *cq,
                 size_t cqn) {
    int fd = kbp_real.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    uint32_t unacked = ntohl(h->unacked), unsent = ntohl(h->unsent), unread = ntohl(h->unread);
    const uint8_t *sent = bytes, *rest = bytes + unacked, *rx = rest + unsent;
    size_t inq = cqn + unread, outq = (size_t)unacked + unsent;
    struct tcp_repair_opt o[4];
    int no = 0;
    o[no++] = (struct tcp_repair_opt){TCPOPT_MAXSEG, ntohs(h->mss)};
    if (h->flags & H_WSCALE) o[no++] = (struct tcp_repair_opt){TCPOPT_WINDOW, h->snd_wscale | (uint32_t)h->rcv_wscale << 16};
    if (h->flags & H_SACK) o[no++] = (struct tcp_repair_opt){TCPOPT_SACK_PERMITTED, 0};
    if (h->flags & H_TS) o[no++] = (struct tcp_repair_opt){TCPOPT_TIMESTAMP, 0};
    uint32_t rcv_nxt = ntohl(h->rcv_nxt);
    struct tcp_repair_window w = {.snd_wl1 = rcv_nxt, .snd_wnd = ntohl(h->snd_wnd), .max_window = ntohl(h->max_snd_wnd),
                                  .rcv_wnd = ntohl(h->rcv_wnd), .rcv_wup = rcv_nxt};
    /* SO_REUSEADDR would undo the forced reuse of repair mode (the listener's port): not here, after */
    int ok = opt(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON) == 0 &&
             kbp_real.bind(fd, (const struct sockaddr *)&s->tcp_local, sizeof(s->tcp_local)) == 0 &&
             opt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE) == 0 &&
             opt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, (int)ntohl(h->snd_una)) == 0 &&
             opt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE) == 0 &&
             opt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, (int)(ntohl(h->rcv_seq) - (uint32_t)cqn)) == 0 &&
             opt(fd, IPPROTO_TCP, TCP_MAXSEG, ntohs(h->mss)) == 0 && /* else the MSS the connect computes is 536's */
             kbp_real.connect(fd, (const struct sockaddr *)&s->tcp_peer, sizeof(s->tcp_peer)) == 0 &&
             kbp_real.setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_OPTIONS, o, (socklen_t)(no * sizeof(o[0]))) == 0 &&
             (!(h->flags & H_TS) || opt(fd, IPPROTO_TCP, TCP_TIMESTAMP, (int)ntohl(h->tsval)) == 0);
    /* room for what is queued (the app's own SO_*BUF come back with copy_options only if it set them: the
     * kernel's defaults otherwise, which these only raise) */
    if (ok && inq) opt(fd, SOL_SOCKET, SO_RCVBUFFORCE, (int)(2 * inq + 65536));
    if (ok && outq) opt(fd, SOL_SOCKET, SO_SNDBUFFORCE, (int)(2 * outq + 65536));
    ok = ok && (!cqn || write_all(fd, cq, cqn, 0) == 0) && (!unread || write_all(fd, rx, unread, 0) == 0) &&
         opt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE) == 0 && (!unacked || write_all(fd, sent, unacked, 0) == 0) &&
         kbp_real.setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, sizeof(w)) == 0 &&
         opt(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF) == 0;
    if (ok) {
        opt(fd, SOL_SOCKET, SO_REUSEADDR, 1); /* repair's forced reuse ends with it: a new listen on the port may */
        /* still blocking and without the app's SO_SNDTIMEO (copy_options comes after): the socket's buffer was
         * made to take them */
        ok = !unsent || write_all(fd, rest, unsent, 0) == 0;
        if (ok) copy_options(s->fd, fd);
        if (ok && (h->flags & H_EOF)) kbp_real.shutdown(fd, SHUT_RD); /* the peer's FIN, taken: reads end after the bytes */
    }
    if (!ok) {
        int e = errno;
        /* the host keeps the connection: a close out of repair mode would send the peer a RST or FIN, one in
         * repair mode is silent (tcp_disconnect) */
        opt(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON);
        kbp_real.close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* fd (closed here) in place of s at each of the app's fds of it (dups share s), FD_CLOEXEC kept per fd; s no
 * longer ours: freed, unless a call waiting on it holds a reference (kbp_tcp_wait frees it when it wakes) */
static void replace_fds(struct kbp_sock *s, int fd) {
    for (int i = 0; i < KBP_MAX_FD; i++) {
        if (kbp_fds[i] != s) continue;
        int cloexec = kbp_real.fcntl(i, F_GETFD);
        kbp_epoll_rebind(i, 0);
        kbp_real.dup3(fd, i, cloexec > 0 && (cloexec & FD_CLOEXEC) ? O_CLOEXEC : 0);
        kbp_epoll_rebind(i, 1);
        kbp_fds[i] = NULL;
        s->refs--;
    }
    kbp_real.close(fd);
}

static void let_go(struct kbp_sock *s) {
    s->accel = 0, s->handed = 1;
    if (s->refs <= 0) kbp_sock_free(s); /* type-stable (kbp_mem.c) */
}

int kbp_tcp_handoff(struct kbp_sock *s) {
    if (!s->accel || !s->sid || s->zombie || s->tcp_role == KBP_TCP_LISTENER) {
        errno = EINVAL;
        return -1;
    }
    uint64_t t0 = kbp_now_ns();
    uint8_t *buf = malloc(CAP);
    if (!buf) return -1;
    long n = kbp_py_call("handoff", buf, CAP, "(Id)", s->sid, (double)kbp_now_ns() / 1e9);
    struct handoff h;
    if (n >= (long)sizeof(h)) memcpy(&h, buf, sizeof(h));
    if (n < (long)sizeof(h) || (size_t)n != sizeof(h) + ntohl(h.unacked) + ntohl(h.unsent) + ntohl(h.unread)) {
        free(buf);
        errno = n < 0 ? (int)-n : EMSGSIZE;
        return -1;
    }
    size_t cqn = s->cq_len;
    int fd = build(s, &h, buf + sizeof(h), s->cq ? s->cq + s->cq_off : NULL, cqn);
    free(buf);
    if (fd < 0) return -1;
    replace_fds(s, fd);
    kbp_tcp_forget(s, "handed"); /* the host forgets it without a segment, its rule (an active open's) goes */
    kbp_verbose("tcp %s:%u: handed to the kernel's TCP in %llu us (%u bytes unacknowledged, %u unsent, %zu unread%s)",
                inet_ntoa(s->tcp_peer.sin_addr), ntohs(s->tcp_peer.sin_port),
                (unsigned long long)(kbp_now_ns() - t0) / 1000, ntohl(h.unacked), ntohl(h.unsent),
                ntohl(h.unread) + cqn, h.flags & H_EOF ? ", the peer's FIN" : "");
    let_go(s);
    return 0;
}

/* Every accelerated connection to the kernel (fork, a lost control plane): how many could not be. */
int kbp_tcp_handoff_all(void) {
    int left = 0;
    for (int fd = 0; fd < KBP_MAX_FD; fd++) {
        struct kbp_sock *s = kbp_fds[fd];
        if (!s || !s->tcp || !s->accel || s->tcp_role == KBP_TCP_LISTENER || s->zombie) continue;
        if (kbp_tcp_handoff(s) < 0) {
            kbp_verbose("fd %d: not handed to the kernel's TCP: %s", fd, strerror(errno));
            left++;
        }
    }
    return left;
}

/* exec: the connections the new image inherits (an fd without FD_CLOEXEC, or one of `also`) to the kernel's TCP
 * (kbp_exec.c, kbp_spawn.c). `going_on`: the process may go on with its listeners on the rings (posix_spawn, an
 * exec that fails; after an exec that works, its rules go with its control-plane connection), whose
 * port rules would steer a handed connection's segments away from its kernel socket: each accepted one gets a
 * pass rule of its 4-tuple ahead of the port's (the control plane's `handed`, removed when the kernel is done with
 * it). 0, or -1 when such a rule was refused: the caller then gives the listeners back to the kernel. */
int kbp_tcp_before_exec(const int *also, int n_also, int going_on) {
    if (!kbp_tcp_on) return 0;
    int refused = 0;
    kbp_enter();
    for (int fd = 0; fd < KBP_MAX_FD; fd++) {
        struct kbp_sock *s = kbp_fds[fd];
        int given = 0; /* posix_spawn's file actions dup2 it into the child, FD_CLOEXEC or not */
        for (int i = 0; i < n_also && !given; i++) given = also[i] == fd;
        if (!s || !s->tcp || !s->accel || s->tcp_role == KBP_TCP_LISTENER || s->zombie ||
            !(given || !(kbp_real.fcntl(fd, F_GETFD) & FD_CLOEXEC)))
            continue;
        int accepted = s->tcp_role == KBP_TCP_ACCEPTED;
        char buf[512];
        if (kbp_tcp_handoff(s) < 0)
            kbp_verbose("fd %d: not handed to the kernel's TCP before exec: %s", fd, strerror(errno));
        else if (going_on && accepted && kbp_cp_call("{\"op\":\"handed\"}", fd, buf, sizeof(buf), NULL, 0, NULL) < 0)
            refused = 1, kbp_verbose("fd %d: no pass rule for its kernel connection (%s)", fd, buf);
    }
    kbp_leave();
    return refused ? -1 : 0;
}

/* The control plane is gone (kbp_cp_lost, before the rings go): its steering program went with it, so the peers'
 * segments come to the kernel now. Each connection goes on there; one that cannot is reset: RST to the peer
 * through the rings (they still send), and its fds become a stream that reads ECONNRESET once, then the end, and
 * fails writes with EPIPE (a unix socket pair whose other end closed with a byte unread: the kernel's own reset,
 * no capability needed), not a placeholder that says ENOTCONN. Under kbp_lock. */
void kbp_tcp_cp_lost(void) {
    if (!kbp_tcp_on) return;
    kbp_tcp_handoff_all();
    for (int fd = 0; fd < KBP_MAX_FD; fd++) {
        struct kbp_sock *s = kbp_fds[fd];
        int sp[2];
        if (!s || !s->tcp || !s->accel || s->tcp_role == KBP_TCP_LISTENER || !s->sid || /* and connects under way */
            kbp_real.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0)
            continue;
        kbp_real.send(sp[0], "x", 1, MSG_NOSIGNAL);
        kbp_real.close(sp[1]); /* a byte unread: sp[0] is reset */
        replace_fds(s, sp[0]);
        kbp_tcp_forget(s, "abort"); /* the RST out now */
        kbp_verbose("fd %d: reset (no control plane any more, and the kernel's TCP could not take it)", fd);
        let_go(s);
    }
    kbp_iface_flush();
    kbp_tcp_off(); /* kbp_fall_back_all frees the interface next: a timer armed before must not pump it */
}
