/* kbp_mem.c: memory of the shim that outlives a call.
 *
 * Socket records (struct kbp_sock). kbp_get takes no lock: a socket's record may be closed by another thread
 * right after (an app's race: it closes an fd another thread uses). So records are type-stable: a released one
 * goes to `spare` for the next socket, never back to malloc, and a late reader reads a record, never freed
 * memory; under kbp_lock it then finds it fallen back (accel 0, refs 0: the call goes to the kernel's fd, EBADF
 * there) or, recycled, the new socket on that fd, as the kernel's fd table would give it. The cheapest correct
 * scheme: nothing on the call path (a reference per call, or the lock around kbp_get, would cost every call for
 * a race only a buggy app runs); its price is memory: as many records as sockets were open at once.
 *
 * Per-thread scratch buffers, freed when their thread exits.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kbp.h"

static struct kbp_sock *spare; /* released records (under kbp_lock), linked by spare_next */

/* no lock: the record it returns may be released by another thread's close right after (type-stable: above) */
struct kbp_sock *kbp_get(int fd) {
    return fd >= 0 && fd < KBP_MAX_FD ? __atomic_load_n(&kbp_fds[fd], __ATOMIC_ACQUIRE) : NULL;
}

struct kbp_sock *kbp_sock_new(void) {
    struct kbp_sock *s = spare;
    if (!s) return calloc(1, sizeof(*s));
    spare = s->spare_next;
    memset(s, 0, sizeof(*s));
    return s;
}

void kbp_sock_free(struct kbp_sock *s) {
    s->accel = 0, s->refs = 0, s->sid = 0, s->slot = NULL;
    s->spare_next = spare;
    spare = s;
}

/* Scratch buffers of a thread (recvmsg's datagram, sendfile's chunk), freed when it exits: a thread-per-connection
 * server makes thousands of threads, each would leave its buffers behind (320 KiB) */
static pthread_key_t buf_key[KBP_BUF_KINDS];
static int buf_keys_ok;
static pthread_once_t buf_once = PTHREAD_ONCE_INIT;
static void make_buf_keys(void) {
    buf_keys_ok = 1;
    for (int i = 0; i < KBP_BUF_KINDS; i++) buf_keys_ok &= pthread_key_create(&buf_key[i], free) == 0;
}

void *kbp_thread_buf(int kind) {
    static const size_t size[KBP_BUF_KINDS] = {[KBP_BUF_DGRAM] = KBP_MAX_DGRAM, [KBP_BUF_CHUNK] = KBP_TCP_CHUNK};
    pthread_once(&buf_once, make_buf_keys);
    if (!buf_keys_ok) return NULL;
    void *b = pthread_getspecific(buf_key[kind]);
    if (!b && (b = malloc(size[kind])) && pthread_setspecific(buf_key[kind], b)) {
        free(b);
        b = NULL;
    }
    return b;
}
