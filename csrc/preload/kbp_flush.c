/* kbp_flush.c: the flusher thread, which bounds how long a deferred frame waits (kbp_iface_send: a burst's
 * frames wait on the TX ring for a batch's kick). An app that sends a burst and then sleeps in a call the
 * shim does not see (nanosleep, a computation) gets its datagrams out within TX_FLUSH_NS all the same.
 *
 * The thread starts at the first deferred frame and sleeps on a condition variable under kbp_lock: timed
 * while there are frames or were lately, untimed ("parked") after IDLE_LOOKS empty looks; a sender wakes a
 * parked flusher only (pthread_cond_signal without a waiter is no syscall), so a steady ping-pong never pays
 * for it. It blocks every signal (the app's handlers run in the app's threads). fork: the child has no
 * flusher and no rings (kbp_socket.c), a later one starts its own if it ever defers a frame.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "kbp.h"

#define IDLE_LOOKS 64 /* empty looks (TX_FLUSH_NS apart) before the flusher parks */

static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int started, parked;

static void *flusher(void *arg) {
    (void)arg;
    unsigned idle = 0;
    pthread_mutex_lock(&kbp_lock);
    for (;;) {
        uint64_t now = kbp_now_ns(), due = kbp_iface_flush_due(now), tcp = kbp_tcp_timers(now);
        if (tcp && (!due || tcp < due)) due = tcp; /* TCP's timers while the app is elsewhere */
        if (!due && ++idle >= IDLE_LOOKS) {
            parked = 1;
            pthread_cond_wait(&wake, &kbp_lock);
            parked = 0;
            idle = 0;
            continue;
        }
        if (due) idle = 0;
        else due = now + TX_FLUSH_NS;
        struct timespec ts = {(time_t)(due / 1000000000ull), (long)(due % 1000000000ull)};
        pthread_cond_timedwait(&wake, &kbp_lock, &ts);
    }
    return NULL;
}

void kbp_flusher_arm(void) {
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
    started = parked = 0;
}
