/* kbp_tcpconnect.c: an active open (connect) of an app's TCP socket through kbypass.sockapi.shimtcp: bound as the
 * kernel's connect would bind it, steered by its 4-tuple (kbp_tcp_try), the SYN sent once the next hop is known. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "kbp.h"

static double now_s(void) { return (double)kbp_now_ns() / 1e9; }

/* The source address the kernel would pick toward dst (a UDP socket connected there asks the routes). */
static int source_for(const struct sockaddr_in *dst, struct sockaddr_in *src) {
    int u = kbp_real.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    socklen_t sl = sizeof(*src);
    int ok = u >= 0 && kbp_real.connect(u, (const struct sockaddr *)dst, sizeof(*dst)) == 0 &&
             kbp_real.getsockname(u, (struct sockaddr *)src, &sl) == 0;
    if (u >= 0) kbp_real.close(u);
    return ok ? 0 : -1;
}

/* connect() of a TCP socket: 1 ours (r the result), 0 the kernel's. Under kbp_lock. */
int kbp_tcp_connect(struct kbp_sock *s, const struct sockaddr_in *to, int *r) {
    if (s->accel) {
        *r = -1;
        errno = s->connected ? EISCONN : EALREADY;
        return 1;
    }
    if (s->tried || (ntohl(to->sin_addr.s_addr) >> 24) == 127) return 0;
    struct sockaddr_in me;
    socklen_t ml = sizeof(me);
    if (kbp_real.getsockname(s->fd, (struct sockaddr *)&me, &ml) < 0) return 0;
    if (me.sin_port && kbp_tcp_port_finishing(me.sin_port, to)) {
        *r = -1;
        errno = EADDRNOTAVAIL;
        return 1;
    }
    if (!me.sin_port) { /* bind it as the kernel's connect would: the route's source, an ephemeral port */
        struct sockaddr_in src;
        if (source_for(to, &src) < 0) return 0;
        if (me.sin_addr.s_addr) src.sin_addr = me.sin_addr;
        src.sin_port = 0;
        if (kbp_real.bind(s->fd, (struct sockaddr *)&src, sizeof(src)) < 0) return 0;
    }
    s->tcp_peer = *to; /* the rule's 4-tuple (kbp_tcp_try); read only while the socket is accelerated */
    if (kbp_tcp_try(s, KBP_TCP_ACTIVE, 0) < 0) return 0;
    if (!s->tcp_local.sin_addr.s_addr) { /* bound to the wildcard with a port (iperf3 --cport): the route's source */
        struct sockaddr_in src;
        s->tcp_local.sin_addr = source_for(to, &src) == 0 ? src.sin_addr : s->tcp_steered;
        if (s->slot) memcpy(s->slot->ip, &s->tcp_local.sin_addr, 4);
    }
    /* the SYN waits for the next hop's MAC (the control plane asks the kernel), not a second-long RTO */
    for (int i = 0; i < 200 && !kbp_iface_hop_known(s->ifc, to->sin_addr.s_addr); i++) usleep(5000);
    long c = kbp_py_call("connect", NULL, 0, "(IIIIId)", s->sid, ntohl(s->tcp_local.sin_addr.s_addr),
                         ntohs(s->tcp_local.sin_port), ntohl(to->sin_addr.s_addr), ntohs(to->sin_port), now_s());
    if (c < 0) { /* no connection (the 4-tuple is in use, say): the kernel socket alone again, bound as it was */
        kbp_tcp_forget(s, NULL);
        s->accel = 0;
        s->slot = NULL;
        kbp_verbose("fd %d: connect: %s", s->fd, strerror((int)-c));
        *r = -1;
        errno = (int)-c;
        return 1;
    }
    kbp_tcpc_attach(s);
    if (s->nonblock) {
        kbp_iface_flush();
        *r = -1;
        errno = EINPROGRESS;
        return 1;
    }
    int w = kbp_tcp_wait(s, POLLOUT, 0, s->sndtimeo_us);
    if (w == -2 || (w == 0 && s->handed)) { /* reset meanwhile (the control plane died: kbp_tcp_cp_lost) */
        *r = -1;
        errno = ECONNRESET;
        return 1;
    }
    if (w < 0) {
        *r = -1;
        if (errno == EAGAIN) errno = EINPROGRESS; /* as the kernel's connect after SO_SNDTIMEO */
        return 1;
    }
    long e = kbp_py_call("so_error", NULL, 0, "(Id)", s->sid, now_s());
    *r = e ? -1 : 0;
    if (e) errno = (int)e;
    return 1;
}

