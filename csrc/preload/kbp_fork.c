/* kbp_fork.c: fork (pthread_atfork's handlers, registered by kbp_socket.c's constructor).
 *
 * Before it (prepare), under kbp_lock held across the fork: deferred frames go, every accelerated connection to
 * the kernel's TCP and every accelerated listener back to the kernel (kbp_tcp_before_fork); a process with
 * nothing left on the rings gives its AF_XDP sockets back (nginx's master: the control plane takes one per queue,
 * and its worker needs them); the embedded CPython's fork protocol (kbp_py.c). After it, the parent never adopts
 * a listener again (kbp_tcpadopt.c), and the child starts as a process of its own for the shim.
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "kbp.h"

void kbp_cp_forget(void);

/* A fork's child: its copies of the sockets are kernel sockets from now on (the module doc). The counters
 * page and the rings are shared with the parent: dropped here without writing to them. kbp_lock was held across
 * the fork by this thread (before_fork) and is made anew. The child is a process of its own for the control
 * plane: a new connection (and "hello", counters page, rings, ShimTcp, flusher) at its first socket worth
 * accelerating, and an inherited listener that was ours is adopted when it waits on it
 * (kbp_tcpadopt.c: nginx's worker). */
static void child_after_fork(void) {
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&kbp_lock, &ma);
    pthread_mutexattr_destroy(&ma);
    kbp_depth--; /* before_fork's kbp_enter: the lock is a new one, held by nobody */
    kbp_py_after_fork(1); /* after: Python's at-fork hooks may close a file, through the shim's close */
    kbp_flusher_after_fork_child();
    kbp_tcp_after_fork_child();
    kbp_cp_forget();
    int kept = 0;
    for (int fd = 0; fd < KBP_MAX_FD; fd++) {
        struct kbp_sock *s = kbp_fds[fd];
        if (!s) continue;
        kept += s->accel;
        s->slot = NULL;
        s->accel = 0;
        s->ifc = NULL;
        s->sid = 0;
        s->rule_id = -1;
        kbp_backlog_clear(s);
    }
    kbp_iface_forget_all(1);
    kbp_tcp_fork_child();
    if (kept) kbp_verbose("fork: this child's copies of %d accelerated socket(s) are kernel sockets", kept);
}

/* deferred frames go first, then the TCP connections to the kernel's TCP (kbp_tcp_before_fork); kbp_lock and
 * then the embedded CPython's GIL stay held across the fork (the order every call of the shim takes them in), so
 * no other thread (the flusher, an app's) is inside the shim or Python when the child's copy is made */
static void before_fork(void) {
    kbp_enter();
    kbp_flush_now();
    kbp_tcp_before_fork();
    int ours = kbp_tcp_sids();
    for (int fd = 0; fd < KBP_MAX_FD && !ours; fd++) ours = kbp_fds[fd] && kbp_fds[fd]->accel;
    if (!ours) { /* nothing left on the rings (nginx's master): they go, for the child to open its own */
        kbp_flusher_kick();
        kbp_tcp_off();
        kbp_iface_release_all();
    }
    kbp_py_before_fork();
}

static void parent_after_fork(void) {
    kbp_py_after_fork(0);
    kbp_tcp_fork_parent();
    kbp_leave();
}

void kbp_fork_register(void) { pthread_atfork(before_fork, parent_after_fork, child_after_fork); }
