/* kbp_tcpexit.c: the app exits (exit(), main returning: the shim's destructor, kbp_fini) with TCP connections of
 * ours. On Linux the kernel finishes an exited process's connections (orphan sockets: what the app wrote, then the
 * FIN, retransmitted as needed, tcp_fin_timeout); here their TCP runs in the process and would die with it (the
 * bytes not yet acknowledged lost, no FIN, the kernel's RST later). So before the process goes:
 *
 *   handed    an open connection that can be (CAP_NET_ADMIN, our FIN not queued: kbp_tcprepair.c) becomes a
 *             kernel socket at its fds; the exit closes those, and the kernel finishes them as its own (data,
 *             FIN, retransmissions) while the process is gone: the exit does not wait for them.
 *   closed    every other open connection is closed as the exit would (FIN after the data; RST with unread data
 *             or SO_LINGER {1, 0}), and while connections closed by the app (now or before: a zombie, an accepted
 *             one) still owe their peer bytes or the FIN, the exit pumps the rings until they are done (all
 *             acknowledged, or reset), KBYPASS_EXIT_LINGER_S at most (default 60, tcp_fin_timeout's; 0: no wait,
 *             they die with the process as before), then resets what is left, said on stderr. --log says what it
 *             waited for and how long (from 0.1 s).
 *             A connection an app thread waits on (blocked in recv; maybe the exiting thread itself, exit()
 *             from a signal handler) is closed the same way.
 *
 * The control plane keeps the rules meanwhile: they go when its connection to the process closes, with the
 * process. The wait lets go of kbp_lock (and the GIL, taken per call) while it sleeps on the rings, as
 * kbp_tcp_wait does, so the flusher and the app's other threads go on; the flusher keeps off the rings meanwhile
 * (kbp_sleep_begin). Not covered: _exit() and a fatal signal (SIGKILL, SIGSEGV, SIGTERM or SIGINT without a
 * handler) run no destructor; those connections die with the process as before (the peer gets a RST at its next
 * segment), and an exit() called inside a call of the shim (a signal handler's) does not wait either.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>

#include "kbp.h"

#define LINGER_S 60.0 /* KBYPASS_EXIT_LINGER_S's default */

static int open_conn(const struct kbp_sock *s) {
    return s && s->tcp && s->accel && s->sid && !s->zombie && s->tcp_role != KBP_TCP_LISTENER;
}

/* Each open connection to the kernel's TCP where it can be (until one fails for want of CAP_NET_ADMIN), else
 * closed as the exit would (the app's fd stays, an unconnected kernel socket). */
static void hand_or_close(void) {
    int can_hand = 1;
    for (int fd = 0; fd < KBP_MAX_FD; fd++) {
        struct kbp_sock *s = kbp_fds[fd];
        if (!open_conn(s)) continue;
        if (can_hand && kbp_tcp_handoff(s) == 0) continue;
        if (errno == EPERM) can_hand = 0;
        for (int i = fd; i < KBP_MAX_FD; i++) { /* every fd of it: the last one lets it go (kbp_tcp_release) */
            if (kbp_fds[i] != s) continue;
            kbp_fds[i] = NULL;
            kbp_epoll_drop_member(i);
            s->fd = i;
            if (--s->refs == 0) kbp_release(s);
        }
        /* an app thread waits on it (blocked in recv: its reference holds the record), maybe this very one (exit()
         * from a signal handler that interrupted that recv): closed now all the same; the waiter, if it ever
         * wakes, lets the record go (kbp_tcp_release knows it closed) */
        if (s->refs > 0) kbp_tcp_release(s);
    }
}

static double linger_s(void) {
    const char *e = getenv("KBYPASS_EXIT_LINGER_S");
    char *end;
    double v = e && *e ? strtod(e, &end) : LINGER_S;
    if (e && *e && (*end || v < 0)) {
        kbp_say("KBYPASS_EXIT_LINGER_S=%s is not a number of seconds >= 0: %g s", e, LINGER_S);
        v = LINGER_S;
    }
    return v;
}

/* Under kbp_lock: until the closed connections owe nothing or `limit_ns` passed; how many still owe (*first: how
 * many did at first). */
static long linger(uint64_t start, uint64_t limit_ns, long *first) {
    long left;
    *first = -1;
    while ((left = kbp_py_call("exit_pending", NULL, 0, "(id)", 0, (double)kbp_now_ns() / 1e9)) > 0 && kbp_tcp_on) {
        uint64_t now = kbp_now_ns();
        if (*first < 0) *first = left;
        if (now - start >= limit_ns) break;
        struct pollfd p[KBP_MAX_QUEUES + 1];
        int fds[KBP_MAX_QUEUES], n = kbp_tcp_ring_fds(fds, KBP_MAX_QUEUES), cp = kbp_cp_fd();
        for (int i = 0; i < n; i++) p[i] = (struct pollfd){fds[i], POLLIN, 0};
        if (cp >= 0) p[n++] = (struct pollfd){cp, POLLIN, 0};
        uint64_t rest_ms = (limit_ns - (now - start) + 999999) / 1000000;
        kbp_iface_flush();
        kbp_sleep_begin();
        kbp_leave(); /* the app's signal handlers run meanwhile, not after the wait */
        kbp_real.poll(p, (unsigned long)n, kbp_tcp_cap_ms(rest_ms < 100 ? (int)rest_ms : 100));
        kbp_sleep_end();
        kbp_enter();
        if (cp >= 0 && cp == kbp_cp_fd() && p[n - 1].revents) kbp_cp_lost(); /* they are reset: nothing to wait for */
        kbp_tcp_pump_idle();
        kbp_tcp_timers(kbp_now_ns());
    }
    return left > 0 && kbp_tcp_on ? left : 0;
}

void kbp_tcp_exit(void) {
    if (!kbp_tcp_on || kbp_depth) return; /* no TCP of ours; or inside a call of the shim (kbp_lock may be ours) */
    kbp_enter();
    uint64_t t0 = kbp_now_ns();
    if (kbp_tcp_on) kbp_tcp_pump_idle(); /* what came first: ACKs open the window */
    if (kbp_tcp_on) hand_or_close();     /* each handed one says so with --log (kbp_tcprepair.c) */
    kbp_iface_flush();
    double limit = linger_s();
    long first = 0, left = kbp_tcp_on && limit > 0 ? linger(t0, (uint64_t)(limit * 1e9), &first) : 0; /* 0: as before */
    double took = (double)(kbp_now_ns() - t0) / 1e9;
    if (left) {
        kbp_py_call("exit_pending", NULL, 0, "(id)", 1, (double)kbp_now_ns() / 1e9);
        kbp_iface_flush();
        kbp_say("exit: %ld closed connection(s) still had bytes or the FIN unacknowledged after %g s "
                "(KBYPASS_EXIT_LINGER_S): reset", left, limit);
    } else if (took >= 0.1 && first > 0) { /* a FIN's ACK is a round trip: not worth a line */
        kbp_verbose("exit: waited %.3f s for %ld closed connection(s) to deliver their bytes and FIN "
                    "(KBYPASS_EXIT_LINGER_S=%g at most)", took, first, limit);
    }
    kbp_leave();
}
