/* kbp_sendfile.c: sendfile to an accelerated TCP socket (nginx's `sendfile on`), over kbp_tcp_send (kbp_tcp.c).
 * Other sockets' go to libc's. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include "kbp.h"

/* sendfile to an accelerated socket: the file's bytes read (pread at *off, or read) and sent */
ssize_t sendfile(int out, int in, off_t *off, size_t count) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(out);
    if (!s || !s->tcp || !s->accel) return kbp_real.sendfile(out, in, off, count);
    static __thread char *tmp;
    if (!tmp && !(tmp = malloc(CHUNK))) return kbp_real.sendfile(out, in, off, count);
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
