/* kbp_signal.c: a signal that arrives while a blocking call spins on the rings must end the call as the
 * kernel would end the syscall (EINTR), or the app never runs the code its handler asked for (Python's
 * Ctrl-C and SIGALRM set a flag and wait for the interrupted call to return; sockperf's SIGTERM likewise).
 * A spin loop makes no syscall the signal could interrupt, so, as Onload does, the shim interposes
 * sigaction/signal: an app's handler is installed behind a trampoline that counts the handlers run on its
 * thread (kbp_sig_count) and remembers whether that handler asked for SA_RESTART. Spinning waits compare the
 * count (kbp_sig_interrupted). sigaction's old action and signal's return value are the app's own.
 *
 * A handler that arrives while its thread is inside the shim (kbp_depth > 0: kbp_lock held, the TCP host's
 * CPython mid-call) is deferred to the shim's exit (kbp_leave): a handler calling send or close would re-enter
 * the shim half way through a change (and CPython through the same thread), and hang or corrupt it. The count
 * still moves at once, so a spinning wait ends (EINTR) and the handler runs before that call returns, as the
 * kernel's would. Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS) are never deferred. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include "kbp.h"

__thread unsigned kbp_sig_count __attribute__((tls_model("initial-exec")));
static __thread int sig_restart __attribute__((tls_model("initial-exec")));
__thread int kbp_depth __attribute__((tls_model("initial-exec")));
__thread volatile uint64_t kbp_sig_deferred __attribute__((tls_model("initial-exec"))); /* bit sig - 1 */
static __thread siginfo_t deferred_info[64] __attribute__((tls_model("initial-exec")));

static struct sigaction app_act[_NSIG]; /* the app's actions of the signals behind our trampoline */
static volatile sig_atomic_t wrapped[_NSIG];

static int is_fault(int sig) {
    return sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL || sig == SIGTRAP || sig == SIGSYS;
}

static void run(int sig, siginfo_t *info, void *uc) {
    struct sigaction *a = &app_act[sig];
    if (a->sa_flags & SA_SIGINFO) a->sa_sigaction(sig, info, uc);
    else if (a->sa_handler != SIG_DFL && a->sa_handler != SIG_IGN) a->sa_handler(sig);
}

static void trampoline(int sig, siginfo_t *info, void *uc) {
    kbp_sig_count++;
    sig_restart = (app_act[sig].sa_flags & SA_RESTART) != 0;
    if (kbp_depth > 0 && sig <= 64 && !is_fault(sig)) {
        deferred_info[sig - 1] = *info;
        kbp_sig_deferred |= 1ull << (sig - 1);
        return;
    }
    run(sig, info, uc);
}

/* The handlers deferred on this thread, each with its action's mask (and its own signal unless SA_NODEFER)
 * blocked as the kernel would have (called by kbp_leave once the thread is out of the shim). */
void kbp_sig_run_deferred(void) {
    sigset_t all, old;
    sigfillset(&all);
    for (;;) {
        pthread_sigmask(SIG_BLOCK, &all, &old); /* take one without a trampoline racing for the bits */
        uint64_t bits = kbp_sig_deferred;
        if (!bits) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            return;
        }
        int sig = __builtin_ctzll(bits) + 1;
        kbp_sig_deferred = bits & ~(1ull << (sig - 1));
        siginfo_t info = deferred_info[sig - 1];
        sigset_t during = old;
        for (int i = 1; i < _NSIG; i++)
            if (sigismember(&app_act[sig].sa_mask, i) == 1) sigaddset(&during, i);
        if (!(app_act[sig].sa_flags & SA_NODEFER)) sigaddset(&during, sig);
        pthread_sigmask(SIG_SETMASK, &during, NULL);
        if (wrapped[sig]) run(sig, &info, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
}

int kbp_sig_interrupted(unsigned since, int restartable) {
    if (kbp_sig_count == since) return 0;
    return !(restartable && sig_restart);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    kbp_init_libc();
    if (sig <= 0 || sig >= _NSIG) return kbp_real.sigaction(sig, act, old);
    struct sigaction mine, prev;
    const struct sigaction *give = act;
    int catching = act && act->sa_handler != SIG_DFL && act->sa_handler != SIG_IGN;
    if (catching) {
        mine = *act;
        mine.sa_sigaction = trampoline;
        mine.sa_flags |= SA_SIGINFO;
        give = &mine;
    }
    struct sigaction saved = app_act[sig];
    int was_wrapped = wrapped[sig];
    if (catching) { /* set before the kernel may deliver through the trampoline */
        app_act[sig] = *act;
        wrapped[sig] = 1;
    }
    int r = kbp_real.sigaction(sig, give, &prev);
    if (r < 0) {
        app_act[sig] = saved;
        wrapped[sig] = was_wrapped;
        return r;
    }
    if (act && !catching) wrapped[sig] = 0;
    if (old) *old = was_wrapped && prev.sa_sigaction == trampoline ? saved : prev;
    return r;
}

/* glibc's signal() calls its own internal sigaction: interposed too, with its BSD semantics (SA_RESTART) */
sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act = {.sa_handler = handler, .sa_flags = SA_RESTART}, old;
    sigemptyset(&act.sa_mask);
    sigaddset(&act.sa_mask, sig);
    if (sigaction(sig, &act, &old) < 0) return SIG_ERR;
    return old.sa_handler;
}

/* glibc's siginterrupt() changes SA_RESTART through its internal sigaction too: through ours, so that the
 * trampoline knows the flag */
int siginterrupt(int sig, int flag) {
    struct sigaction a;
    if (sigaction(sig, NULL, &a) < 0) return -1;
    if (flag) a.sa_flags &= ~SA_RESTART;
    else a.sa_flags |= SA_RESTART;
    return sigaction(sig, &a, NULL);
}
