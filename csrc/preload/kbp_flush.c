/* kbp_flush.c: the flusher thread, which bounds how long a deferred frame waits (kbp_iface_send: a burst's
 * frames wait on the TX ring for a batch's kick). An app that sends a burst and then sleeps in a call the
 * shim does not see (nanosleep, a computation) gets its datagrams out within TX_FLUSH_NS all the same.
 *
 * The thread starts at the first deferred frame and sleeps on a condition variable under kbp_lock: timed
 * while there are frames or were lately, untimed ("parked") after IDLE_LOOKS empty looks; a sender wakes a
 * parked flusher only (pthread_cond_signal without a waiter is no syscall), so a steady ping-pong never pays
 * for it. It blocks every signal (the app's handlers run in the app's threads). fork: the child has no
 * flusher and no rings (kbp_fork.c), it starts its own if it ever defers a frame or accelerates TCP (a
 * listener it adopts, kbp_tcpadopt.c).
 *
 * With TCP on it also keeps the connections going while the app is elsewhere (Onload's model: the stack is
 * driven by whoever is in it, and by the kernel's timer and interrupt when nobody is): TCP's timers, and
 * once the app has made no call of the shim for a while (asleep, computing, blocked in the kernel) it
 * waits on the rings itself (with an eventfd that kbp_flusher_arm writes) and pumps what arrives, so the
 * peer's data is ACKed, its window stays open and its keepalive probes are answered. An app that is in the
 * shim, or was lately, pumps for itself: the flusher then looks again after QUIET_NS, twice that, ... up to
 * QUIET_MAX_NS (16 looks a second while the app stays about), and never takes the rings (or kbp_lock) from a
 * busy app, whose fast path is unchanged. Nor from an app thread asleep on the rings in
 * the shim (recv, accept, poll, epoll_wait: kbp_sleep_begin), which pumps when they wake it: a frame the
 * flusher took first would wake nobody.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <time.h>

#include "kbp.h"

#define IDLE_LOOKS 64        /* empty looks (TX_FLUSH_NS apart) before the flusher parks */
#define QUIET_NS 2000000ull      /* no call of the shim this long: the app is elsewhere, the flusher drives TCP */
#define QUIET_MAX_NS 64000000ull /* ... looked for less often while the app stays about (2 ms, 4, ... 64) */

uint64_t kbp_calls;
int kbp_ring_sleepers;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int started, parked, watching, wake_fd = -1;

/* The app made no call of the shim since `seen`: wait on the TCP rings (and wake_fd) until `due` (0: no
 * deadline) and pump what came, unless the app came back meanwhile (it pumps then). Under kbp_lock, let go
 * while waiting. */
static void watch(uint64_t due, uint64_t *seen) {
    struct pollfd p[KBP_MAX_QUEUES + 1];
    int fds[KBP_MAX_QUEUES], n = kbp_tcp_ring_fds(fds, KBP_MAX_QUEUES);
    for (int i = 0; i < n; i++) p[i] = (struct pollfd){fds[i], POLLIN, 0};
    p[n] = (struct pollfd){wake_fd, POLLIN, 0};
    struct timespec rel, *timeout = NULL;
    if (due) {
        uint64_t now = kbp_now_ns(), left = due > now ? due - now : 0;
        rel = (struct timespec){(time_t)(left / 1000000000ull), (long)(left % 1000000000ull)};
        timeout = &rel;
    }
    watching = 1;
    pthread_mutex_unlock(&kbp_lock);
    int r = kbp_real.ppoll(p, (unsigned long)n + 1, timeout, NULL), frames = 0;
    for (int i = 0; r > 0 && i < n; i++) frames |= p[i].revents != 0;
    pthread_mutex_lock(&kbp_lock);
    watching = 0;
    if (r > 0 && p[n].revents) {
        uint64_t v;
        if (kbp_real.read(wake_fd, &v, sizeof(v)) < 0) { /* nothing to drain */
        }
    }
    if (frames && kbp_calls == *seen && !__atomic_load_n(&kbp_ring_sleepers, __ATOMIC_SEQ_CST)) {
        uint64_t before = kbp_calls;
        kbp_tcp_pump_idle();
        *seen += kbp_calls - before;
    }
}

static void *flusher(void *arg) {
    (void)arg;
    unsigned idle = 0;
    uint64_t seen = 0, quiet = QUIET_NS;
    pthread_mutex_lock(&kbp_lock);
    for (;;) {
        uint64_t before = kbp_calls;
        uint64_t now = kbp_now_ns(), due = kbp_iface_flush_due(now), tcp = kbp_tcp_timers(now);
        if (tcp && (!due || tcp < due)) due = tcp; /* TCP's timers while the app is elsewhere */
        seen += kbp_calls - before;                /* entries of our own are not the app's */
        int tcp_on = kbp_tcp_on && wake_fd >= 0;
        if (tcp_on && kbp_calls == seen && !__atomic_load_n(&kbp_ring_sleepers, __ATOMIC_SEQ_CST)) {
            /* no call of the app's for QUIET_NS at least, and no app thread asleep on the rings */
            watch(due, &seen);
            quiet = QUIET_NS;
            continue;
        }
        seen = kbp_calls;
        if (!due && ++idle >= IDLE_LOOKS) {
            parked = 1; /* with TCP on, `quiet` at most: then the app is elsewhere, or about again */
            if (tcp_on) {
                uint64_t at = now + quiet;
                struct timespec ts = {(time_t)(at / 1000000000ull), (long)(at % 1000000000ull)};
                if (quiet < QUIET_MAX_NS) quiet *= 2; /* a busy app is not woken for 500 times a second */
                pthread_cond_timedwait(&wake, &kbp_lock, &ts);
            } else {
                pthread_cond_wait(&wake, &kbp_lock);
            }
            if (!parked) idle = 0; /* a sender's wake-up: look every TX_FLUSH_NS again for a while */
            parked = 0;
            continue;
        }
        if (due) idle = 0;
        else due = now + TX_FLUSH_NS;
        struct timespec ts = {(time_t)(due / 1000000000ull), (long)(due % 1000000000ull)};
        pthread_cond_timedwait(&wake, &kbp_lock, &ts);
    }
    return NULL;
}

int kbp_flusher_owns(int fd) { return fd >= 0 && fd == wake_fd; }

void kbp_flusher_kick(void) {
    if (!watching) return; /* the common case: a plain load, nothing more on the app's path */
    uint64_t one = 1;
    watching = 0;
    if (kbp_real.write(wake_fd, &one, sizeof(one)) < 0) { /* full: it is awake already */
    }
}

void kbp_flusher_arm(void) {
    if (watching) { /* waiting on the rings, outside kbp_lock: its eventfd */
        kbp_flusher_kick();
        return;
    }
    if (parked) {
        parked = 0; /* one wake-up is enough (both run under kbp_lock) */
        pthread_cond_signal(&wake);
        return;
    }
    if (started) return;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* kbp_now_ns's clock */
    pthread_cond_init(&wake, &ca);
    pthread_condattr_destroy(&ca);
    if (wake_fd < 0) wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 64 * 1024);
    pthread_t t;
    started = pthread_create(&t, &at, flusher, NULL) == 0;
    pthread_attr_destroy(&at);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started) pthread_setname_np(t, "kbypass-flush");
    else kbp_verbose("no flusher thread: deferred frames wait for the app's next call");
}

void kbp_flusher_after_fork_child(void) {
    started = parked = watching = kbp_ring_sleepers = 0;
    /* The inherited eventfd is the parent's own object, not a copy: a kick written by one process would be
     * drained by the other's flusher, leaving the intended one in an untimed ppoll (its TCP timers late).
     * The child's flusher, if it starts, makes its own (kbp_flusher_arm). */
    if (wake_fd >= 0) kbp_real.close(wake_fd);
    wake_fd = -1;
}
