/* kbp_tcpio.c: the app's calls that come down to kbp_tcp_recv/kbp_tcp_send (kbp_tcp.c) on an accelerated TCP
 * socket: recvmsg/readv, sendmsg/writev, sendfile; shutdown, SO_ERROR; and the addresses the shim keeps for it
 * (getsockname, getpeername). */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kbp.h"

static double now_s(void) { return (double)kbp_now_ns() / 1e9; }

#define CHUNK KBP_TCP_CHUNK

/* recvmsg/readv: the stream's next bytes (at most cap, into tmp) spread over the iovecs; -2 the kernel's */
ssize_t kbp_tcp_recvmsg(struct kbp_sock *s, struct msghdr *m, int flags, uint8_t *tmp, size_t cap) {
    size_t want = 0, off = 0;
    for (size_t i = 0; i < m->msg_iovlen; i++) want += m->msg_iov[i].iov_len;
    ssize_t r = kbp_tcp_recv(s, tmp, want < cap ? want : cap, flags);
    if (r < 0) return r;
    for (size_t i = 0; i < m->msg_iovlen && off < (size_t)r; i++) {
        size_t k = (size_t)r - off < m->msg_iov[i].iov_len ? (size_t)r - off : m->msg_iov[i].iov_len;
        memcpy(m->msg_iov[i].iov_base, tmp + off, k);
        off += k;
    }
    m->msg_namelen = 0, m->msg_controllen = 0, m->msg_flags = 0;
    return r;
}

/* sendmsg/writev: the iovecs gathered (nginx's headers and body: a few KiB) and sent, CHUNK bytes at a time at
 * most (the host takes no more in one send; an iov total of gigabytes must not be copied whole first); -2 the
 * kernel's. The buffer is the call's own (malloc), not the thread's: a signal handler may send on this thread
 * while this call gathers outside the shim's lock. */
ssize_t kbp_tcp_sendmsg(struct kbp_sock *s, const struct msghdr *m, int flags) {
    size_t len = 0, sent = 0, iv = 0, iv_off = 0;
    for (size_t i = 0; i < m->msg_iovlen; i++) len += m->msg_iov[i].iov_len;
    uint8_t *tmp = malloc(len < CHUNK ? (len ? len : 1) : CHUNK);
    if (!tmp) {
        errno = ENOBUFS;
        return -1;
    }
    ssize_t r;
    do {
        size_t k = 0;
        for (; iv < m->msg_iovlen && k < CHUNK; iv_off = 0, iv++) { /* the next CHUNK bytes of the iovecs */
            size_t n = m->msg_iov[iv].iov_len - iv_off < CHUNK - k ? m->msg_iov[iv].iov_len - iv_off : CHUNK - k;
            memcpy(tmp + k, (const uint8_t *)m->msg_iov[iv].iov_base + iv_off, n);
            k += n;
            if (iv_off + n < m->msg_iov[iv].iov_len) {
                iv_off += n;
                break;
            }
        }
        r = kbp_tcp_send(s, tmp, k, flags);
        if (r > 0) sent += (size_t)r;
        if (r < (ssize_t)k) break; /* an error, EAGAIN or a short send: what went is the answer */
    } while (sent < len);
    free(tmp);
    if (sent) return (ssize_t)sent;
    return r;
}

/* sendfile to an accelerated socket: the file's bytes read (pread at *off, or read) and sent */
ssize_t sendfile(int out, int in, off_t *off, size_t count) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(out);
    if (!s || !s->tcp || !s->accel) return kbp_real.sendfile(out, in, off, count);
    char *tmp = kbp_thread_buf(KBP_BUF_CHUNK);
    if (!tmp) return kbp_real.sendfile(out, in, off, count);
    size_t k = count < CHUNK ? count : CHUNK;
    ssize_t n = off ? pread(in, tmp, k, *off) : kbp_real.read(in, tmp, k);
    if (n <= 0) return n;
    ssize_t r = kbp_tcp_send(s, tmp, (size_t)n, 0);
    if (r == -2) { /* no longer accelerated */
        if (!off) lseek(in, -n, SEEK_CUR);
        return kbp_real.sendfile(out, in, off, count);
    }
    ssize_t took = r < 0 ? 0 : r;
    if (off) *off += took;
    else if (took < n) lseek(in, took - n, SEEK_CUR); /* what was not sent is read again next time */
    return r;
}

ssize_t sendfile64(int out, int in, off_t *off, size_t count) __attribute__((alias("sendfile")));

void kbp_tcp_fill_addr(struct sockaddr *to, socklen_t *tolen, const struct sockaddr_in *a) {
    if (!to || !tolen) return;
    memcpy(to, a, *tolen < sizeof(*a) ? *tolen : sizeof(*a));
    *tolen = sizeof(*a);
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    /* an accepted one's kernel socket is a placeholder; an active open's may be bound to the wildcard (the
     * route's source is in tcp_local, as the kernel's connect would have filled in) */
    if (!s || !s->tcp || !s->accel || s->tcp_role == KBP_TCP_LISTENER) return kbp_real.getsockname(fd, addr, len);
    kbp_tcp_fill_addr(addr, len, &s->tcp_local);
    return 0;
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    if (!s || !s->tcp || !s->accel || s->tcp_role == KBP_TCP_LISTENER) return kbp_real.getpeername(fd, addr, len);
    if (!s->connected) {
        errno = ENOTCONN;
        return -1;
    }
    kbp_tcp_fill_addr(addr, len, &s->tcp_peer);
    return 0;
}

/* SO_KEEPALIVE and TCP_KEEPIDLE/KEEPINTVL/KEEPCNT as the kernel socket holds them (setsockopt sets them there
 * first) to the host: called at acceleration and at each such setsockopt. Under kbp_lock. */
void kbp_tcp_keepalive(struct kbp_sock *s) {
    int on = 0, idle = 7200, intvl = 75, cnt = 9;
    socklen_t l = sizeof(int);
    kbp_real.getsockopt(s->fd, SOL_SOCKET, SO_KEEPALIVE, &on, &l);
    l = sizeof(int), kbp_real.getsockopt(s->fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, &l);
    l = sizeof(int), kbp_real.getsockopt(s->fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, &l);
    l = sizeof(int), kbp_real.getsockopt(s->fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, &l);
    kbp_py_call("keepalive", NULL, 0, "(Iiddid)", s->sid, on, (double)idle, (double)intvl, cnt, now_s());
}

int shutdown(int fd, int how) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    if (!s || !s->tcp || !s->accel || s->tcp_role == KBP_TCP_LISTENER) return kbp_real.shutdown(fd, how);
    kbp_enter();
    long r = kbp_py_call("shutdown", NULL, 0, "(Iid)", s->sid, how, now_s());
    kbp_iface_flush();
    kbp_leave();
    if (r < 0) {
        errno = (int)-r;
        return -1;
    }
    return 0;
}

int getsockopt(int fd, int level, int name, void *v, socklen_t *len) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    if (s && s->tcp && s->accel && s->tcp_role != KBP_TCP_LISTENER && level == SOL_SOCKET && name == SO_ERROR && v &&
        len && *len >= sizeof(int)) {
        kbp_enter();
        *(int *)v = (int)kbp_py_call("so_error", NULL, 0, "(Id)", s->sid, now_s());
        kbp_leave();
        *len = sizeof(int);
        return 0;
    }
    if (s && s->tcp && s->tcp_role != KBP_TCP_LISTENER && level == IPPROTO_TCP && name == TCP_INFO && v && len) {
        kbp_enter();
        int r = s->accel && s->sid ? kbp_tcp_info(s, v, len) : -1;
        kbp_leave();
        if (r == 0) return 0;
    }
    return kbp_real.getsockopt(fd, level, name, v, len);
}
