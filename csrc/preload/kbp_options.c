/* kbp_options.c: the shim's option and flag calls (setsockopt, fcntl, ioctl). Every option goes to the
 * kernel socket first, so getsockopt answers what was set; those the rings honour (timeouts, timestamps,
 * IP_TOS on what they send, the ancillary data asked for, O_NONBLOCK/FIONBIO, FIONREAD) are noted on the
 * socket too (kbp_socket.c reads them). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "kbp.h"

/* ---- options, flags --------------------------------------------------------------------------------- */

static long tv_us(const void *v, socklen_t len) {
    if (len < sizeof(struct timeval)) return 0;
    const struct timeval *t = v;
    return (long)t->tv_sec * 1000000 + t->tv_usec;
}

int setsockopt(int fd, int level, int name, const void *v, socklen_t len) {
    kbp_init_libc();
    int r = kbp_real.setsockopt(fd, level, name, v, len); /* the kernel keeps them all: getsockopt is its */
    struct kbp_sock *s = kbp_get(fd);
    if (r < 0 || !s) return r;
    int iv = len >= sizeof(int) ? *(const int *)v : 0;
    kbp_enter();
    if (level == SOL_SOCKET && name == SO_RCVTIMEO) s->rcvtimeo_us = tv_us(v, len);
    else if (level == SOL_SOCKET && name == SO_SNDTIMEO) s->sndtimeo_us = tv_us(v, len);
    else if (level == SOL_SOCKET && name == SO_TIMESTAMP) s->ts_mode = iv ? 1 : 0;
    else if (level == SOL_SOCKET && name == SO_TIMESTAMPNS) s->ts_mode = iv ? 2 : 0;
    else if (level == IPPROTO_IP && name == IP_TOS) s->tos = iv & 0xFC, s->tmpl_ok = 0;
    else if (level == IPPROTO_IP && name == IP_PKTINFO) s->want_pktinfo = iv != 0;
    else if (level == IPPROTO_IP && name == IP_RECVTOS) s->want_tos = iv != 0;
    else if (level == IPPROTO_IP && name == IP_RECVTTL) s->want_ttl = iv != 0;
    if (s->tcp && s->accel && s->sid &&
        ((level == SOL_SOCKET && name == SO_KEEPALIVE) ||
         (level == IPPROTO_TCP && (name == TCP_KEEPIDLE || name == TCP_KEEPINTVL || name == TCP_KEEPCNT))))
        kbp_tcp_keepalive(s);
    kbp_leave();
    return r;
}

int fcntl(int fd, int cmd, ...) {
    kbp_init_libc();
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    int r = kbp_real.fcntl(fd, cmd, arg);
    struct kbp_sock *s = kbp_get(fd);
    if (r >= 0 && s && cmd == F_SETFL) s->nonblock = ((long)arg & O_NONBLOCK) != 0;
    if (r >= 0 && cmd == F_DUPFD) return kbp_share_fd(fd, r);
    if (r >= 0 && cmd == F_DUPFD_CLOEXEC) return kbp_share_fd(fd, r);
    return r;
}

int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl(fd, cmd, arg);
}

int ioctl(int fd, unsigned long req, ...) {
    kbp_init_libc();
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    struct kbp_sock *s = kbp_get(fd);
    if (s && s->tcp && s->accel && s->sid && req == FIONREAD && arg) {
        kbp_enter();
        long n = kbp_py_call("unread", NULL, 0, "(Id)", s->sid, (double)kbp_now_ns() / 1e9);
        n = (n > 0 ? n : 0) + (long)s->cq_len; /* and what kbp_tcp.c queued itself */
        kbp_leave();
        *(int *)arg = (int)n;
        return 0;
    }
    if (s && s->accel && !s->tcp && req == FIONREAD && arg) {
        kbp_enter();
        int n = -1;
        if (s->accel && kbp_readable(s)) n = (int)s->backlog[s->bhead % KBP_BACKLOG].len;
        kbp_leave();
        if (n >= 0) {
            *(int *)arg = n;
            return 0;
        }
    }
    int r = kbp_real.ioctl(fd, req, arg);
    if (r == 0 && s && req == FIONBIO && arg) s->nonblock = *(int *)arg != 0;
    return r;
}
