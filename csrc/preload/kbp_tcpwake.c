/* kbp_tcpwake.c: connections the host had completed for a listener when it went back to the kernel (a fork,
 * kbp_tcp_before_fork), not yet accepted by the app. They are handed to the kernel's TCP (kbp_tcprepair.c) like
 * the accepted ones, but the kernel cannot put a socket into a listener's accept queue: so the shim keeps them
 * (in arrival order) and accept() on that listener hands them out first, as the host would have.
 *
 * The app may wait for them in poll/select/epoll on the listener, which is a plain kernel socket now: while any
 * is kept, one wake-up connection is in the kernel's queue, the process's own connect() to the listener's
 * address (the kernel completes it at once, locally; one at a time, the app's backlog may be small), so the
 * kernel's listener is readable while connections wait. accept() takes the wake-up off the kernel's queue
 * (known by its source port) and gives the oldest kept connection in its place, then wakes for the next;
 * a child that accepts one sees a connection closed without a byte. The kept connections are the parent's: a
 * fork's child closes its copies (else the child's copy would hold the connection open after the parent's
 * child that serves it closed it).
 *
 * And the rules of a listener released with connections still ours (kbp_tcp_flows_only): one per 4-tuple.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "kbp.h"

#define PEND_MAX 64

struct kbp_pend {
    int n;
    int fd[PEND_MAX];
    uint16_t wake; /* the wake-up connection's source port (network order), in the kernel's queue; 0: none */
    struct in_addr wake_ip; /* ... and address */
};

/* a local connection to listener ls: its source port (network order; 0 if none could be made) and address */
static uint16_t wake_up(const struct kbp_sock *ls, struct in_addr *ip) {
    struct sockaddr_in to = ls->tcp_local, me;
    if (!to.sin_addr.s_addr) to.sin_addr = ls->tcp_steered;
    int w = kbp_real.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (w < 0) return 0;
    struct timeval tv = {0, 200000}; /* a full backlog: no wait past this */
    kbp_real.setsockopt(w, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    socklen_t ml = sizeof(me);
    uint16_t port = 0;
    if (kbp_real.connect(w, (struct sockaddr *)&to, sizeof(to)) == 0 &&
        kbp_real.getsockname(w, (struct sockaddr *)&me, &ml) == 0)
        port = me.sin_port, *ip = me.sin_addr;
    else
        kbp_verbose("fd %d: no wake-up connection for a connection kept for accept (%s): poll may not see it", ls->fd,
                    strerror(errno));
    kbp_real.close(w); /* accepted, it reads the end at once */
    return port;
}

/* fd (a connection of listener ls, the kernel's now) kept for ls's next accept; 0, or -1 (the caller closes it) */
int kbp_tcp_pend(struct kbp_sock *ls, int fd) {
    if (!ls->pend && !(ls->pend = calloc(1, sizeof(*ls->pend)))) return -1;
    struct kbp_pend *p = ls->pend;
    if (p->n >= PEND_MAX) return -1;
    p->fd[p->n++] = fd;
    if (!p->wake) p->wake = wake_up(ls, &p->wake_ip);
    return 0;
}

static int is_wake(struct kbp_pend *p, const struct sockaddr_in *peer) {
    if (!p->wake || p->wake != peer->sin_port || p->wake_ip.s_addr != peer->sin_addr.s_addr) return 0;
    p->wake = 0;
    return 1;
}

/* accept() on listener ls while it keeps connections: the kernel's own first (wake-ups dropped), then the
 * oldest kept one; -1 (errno EAGAIN) when neither. */
static int take(struct kbp_sock *ls, struct sockaddr *addr, socklen_t *alen, int flags) {
    struct kbp_pend *p = ls->pend;
    if (!p) {
        errno = EAGAIN;
        return -1;
    }
    struct pollfd kp = {ls->fd, POLLIN, 0};
    struct sockaddr_in peer;
    socklen_t pl = sizeof(peer);
    /* non-blocking whatever the app asked: the listener is shared with a fork's children, one may take the
     * connection between the poll and the accept, and a blocking accept here would hold kbp_lock */
    int k = kbp_real.poll(&kp, 1, 0) == 1
                ? kbp_real.accept4(ls->fd, (struct sockaddr *)&peer, &pl, flags | SOCK_NONBLOCK)
                : -1;
    if (k >= 0 && !(flags & SOCK_NONBLOCK)) kbp_real.fcntl(k, F_SETFL, kbp_real.fcntl(k, F_GETFL) & ~O_NONBLOCK);
    if (k >= 0 && !is_wake(p, &peer)) { /* the kernel's own (loopback, another interface) */
        kbp_tcp_fill_addr(addr, alen, &peer);
        return k;
    }
    if (k >= 0) kbp_real.close(k); /* one wake-up for the kept connection handed out now */
    if (!p->n) {
        errno = EAGAIN;
        return -1;
    }
    int fd = p->fd[0];
    memmove(p->fd, p->fd + 1, (size_t)--p->n * sizeof(int));
    if (p->n && !p->wake) p->wake = wake_up(ls, &p->wake_ip); /* the listener readable for the next */
    int fl = kbp_real.fcntl(fd, F_GETFL);
    kbp_real.fcntl(fd, F_SETFL, (flags & SOCK_NONBLOCK) ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
    kbp_real.fcntl(fd, F_SETFD, (flags & SOCK_CLOEXEC) ? FD_CLOEXEC : 0);
    pl = sizeof(peer);
    kbp_real.getpeername(fd, (struct sockaddr *)&peer, &pl);
    kbp_tcp_fill_addr(addr, alen, &peer);
    return fd;
}

int kbp_tcp_take_pend(struct kbp_sock *ls, struct sockaddr *addr, socklen_t *alen, int flags) {
    kbp_enter();
    int r = take(ls, addr, alen, flags), e = errno;
    kbp_leave();
    errno = e;
    return r;
}

/* the listener closed (reset, as the kernel resets a closed listener's queue), or a fork's child's copies */
void kbp_tcp_pend_drop(struct kbp_sock *ls, int reset) {
    struct kbp_pend *p = ls->pend;
    if (!p) return;
    struct linger lg = {1, 0};
    for (int i = 0; i < p->n; i++) {
        if (reset) kbp_real.setsockopt(p->fd[i], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        kbp_real.close(p->fd[i]);
    }
    free(p);
    ls->pend = NULL;
}

#define PEERS_MAX 256 /* shimquery.PEERS_MAX */

void kbp_tcp_flow_rules_gone(struct kbp_sock *z) {
    for (int i = 0; i < z->n_flow_rules; i++) kbp_tcp_rule_gone(z->ifc->name, &z->flow_rules[i]);
    free(z->flow_rules);
    z->flow_rules = NULL, z->n_flow_rules = 0;
}

/* A listener released at a fork while connections of its port are still ours (z: its zombie, drain_port): its
 * port's rule would take every new SYN (which nobody here accepts: the kernel's listener the children share
 * must see them) and the segments of the connections handed to the kernel. So each connection still ours gets
 * its 4-tuple's rule (proved by the listener's fd, as an active open's by its socket) and the port's rule goes;
 * the zombie holds them until the port's last connection is done. Any refused: the port's rule stays. */
void kbp_tcp_flows_only(struct kbp_sock *z) {
    uint8_t peers[PEERS_MAX * 6];
    long n = kbp_py_call("port_peers", peers, sizeof(peers), "(Id)", (unsigned)ntohs(z->tcp_local.sin_port), (double)kbp_now_ns() / 1e9);
    int *ids = n >= 0 && n % 6 == 0 ? calloc((size_t)n / 6 + 1, sizeof(int)) : NULL;
    if (!ids) {
        kbp_verbose("fd %d: fork: the port's rule stays while its connections finish (no peers: %ld)", z->fd, n);
        return;
    }
    z->flow_rules = ids;
    for (long i = 0; i < n; i += 6) {
        struct sockaddr_in peer = {.sin_family = AF_INET};
        memcpy(&peer.sin_addr, peers + i, 4);
        memcpy(&peer.sin_port, peers + i + 4, 2);
        char req[128], buf[1024];
        long long id;
        kbp_cp_accelerate_req(req, sizeof(req), &peer);
        if (kbp_cp_call(req, z->fd, buf, sizeof(buf), NULL, 0, NULL) < 0 || kbp_json_int(buf, "rule_id", &id)) {
            kbp_verbose("fd %d: fork: the port's rule stays while its connections finish (%s)", z->fd, buf);
            kbp_tcp_flow_rules_gone(z);
            return;
        }
        ids[z->n_flow_rules++] = (int)id;
    }
    kbp_tcp_rule_gone(z->ifc->name, &z->rule_id);
    kbp_verbose("fd %d: fork: %d connection(s) still ours keep their 4-tuples' rules, the port is the kernel's", z->fd,
                z->n_flow_rules);
}
