/* kbp_fortify.c: the other doors to the same calls. A program built with -D_FORTIFY_SOURCE calls
 * __recv_chk/__recvfrom_chk/__read_chk/__poll_chk/__ppoll_chk instead of recv/recvfrom/read/poll/ppoll (when
 * the buffer's size is known), and readv/writev are read/write with a vector: without these the datagrams
 * would be read from the placeholder kernel socket, where they never arrive. Each checks what glibc's checks
 * (and fails as it does, __chk_fail), then takes the interposed call's path. */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "kbp.h"

extern void __chk_fail(void) __attribute__((noreturn));

ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags) {
    if (len > buflen) __chk_fail();
    return recvfrom(fd, buf, len, flags, NULL, NULL);
}

ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen, int flags, struct sockaddr *from,
                       socklen_t *fromlen) {
    if (len > buflen) __chk_fail();
    return recvfrom(fd, buf, len, flags, from, fromlen);
}

ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen) {
    if (len > buflen) __chk_fail();
    return read(fd, buf, len);
}

int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t fdslen) {
    if (fdslen / sizeof(*fds) < n) __chk_fail();
    return poll(fds, n, timeout);
}

int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *t, const sigset_t *mask, size_t fdslen) {
    if (fdslen / sizeof(*fds) < n) __chk_fail();
    return ppoll(fds, n, t, mask);
}

ssize_t readv(int fd, const struct iovec *iov, int n) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    if (!s || !s->accel) return kbp_real.readv(fd, iov, n);
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
    return recvmsg(fd, &m, 0);
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    kbp_init_libc();
    if (!kbp_get(fd)) return kbp_real.writev(fd, iov, n);
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
    return sendmsg(fd, &m, 0);
}
