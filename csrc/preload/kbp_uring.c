/* kbp_uring.c: libuv (uvloop, Node.js) registers its fds with epoll through an io_uring (IORING_OP_EPOLL_CTL)
 * when the kernel has one, so the shim never sees the epoll_ctl of an accelerated socket and the app's event
 * loop never hears of its datagrams. libuv sets its rings up with syscall(SYS_io_uring_setup): the shim
 * answers that call ENOSYS, as a kernel without io_uring would, and libuv falls back to epoll_ctl (and to
 * its thread pool for file I/O). Said once with --log. Programs that make the syscall themselves (liburing)
 * are not seen: their io_uring socket I/O goes to the kernel sockets. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kbp.h"

long syscall(long n, ...) {
    va_list ap;
    va_start(ap, n);
    long a[6];
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    kbp_init_libc();
    if (n == SYS_io_uring_setup) {
        static int said;
        if (!said++)
            kbp_verbose("io_uring_setup answered ENOSYS: an event loop registering fds through io_uring (libuv) "
                        "would not see accelerated sockets; it falls back to epoll");
        errno = ENOSYS;
        return -1;
    }
    return kbp_real.syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}
