/* kbp_tcpadopt.c: a fork's child takes an inherited listener to the rings (nginx's worker, a prefork server).
 *
 * At a fork the parent's accelerated listeners go back to the kernel (kbp_tcp_before_fork): rings cannot be
 * shared by two processes, and the parent may never accept again (nginx's master). The child's copy is the same
 * kernel listener. The child adopts it, as a process of its own (its own control-plane connection, rings,
 * ShimTcp, flusher), when it waits on it: poll/select naming it, or its epoll_ctl ADD/MOD (nginx adds its
 * listeners to each worker's epoll set, with EPOLLEXCLUSIVE when it runs more than one worker: the flag goes to
 * the kernel with the placeholder as the app asked, and the shim reports the listener's news itself, once per
 * set). Never from accept/accept4, blocking or not: a server whose children each block in accept() (a blocking
 * prefork server) has the kernel spread its connections over the children, N at once; the one child that adopted
 * would take the port, its siblings' accept would never see a SYN again, and N requests would be served one
 * after another by one child. An event-driven server waits before it accepts (and so adopts there); a
 * non-blocking accept without a wait before it (a spinning loop) is rare, and left on the kernel with the rest.
 *
 * Who adopts: a listener that was ours here or in a parent (heir) may be adopted by a process that is a fork's
 * child and has not forked since (adopt). A process that forks never adopts again, so a fork-per-connection
 * server (`socat ...,fork`, inetd-style: the parent accepts again after each fork) keeps the kernel's listener
 * with no rule made and removed per connection, as before; nginx's master never accepts, its workers do.
 *
 * One port, one rule: with two workers the first to adopt takes the port (every new connection on the
 * interface is its), the control plane refuses the others (the rule would overlap the first's). Such a worker
 * goes on with the kernel's listener, which then gets no SYN of the interface (loopback's still), says so once
 * (and `kbypass run --status` shows its listener as LISTEN (kernel)), and looks again now and then (ADOPT_GAP_NS,
 * doubling to ADOPT_GAP_MAX_NS): when the adopter exits (nginx -s reload, quit, a worker killed) the control plane
 * removes its rules with its connection, the master's kernel listener serves meanwhile, and the next worker that
 * looks adopts. The look is a request to the control plane and nothing is held across it: no worker waits on
 * another. An accept-mutex server (nginx's accept_mutex on, Apache's prefork) hands its accepts to whichever
 * worker holds the mutex, who may be one left on the kernel: its connections then wait for the adopter's turn.
 * Only a refusal the control plane says may pass ("retry": true: another client's rule has the port, or live
 * kernel connections use it) is looked at again; any other (the port shared with another user's socket, no
 * rings) ends the looking, said once with the control plane's reason.
 */
#define _GNU_SOURCE
#include <sys/socket.h>

#include "kbp.h"

#define ADOPT_GAP_NS 50000000ull       /* a refused adopter looks again after 50 ms, ... */
#define ADOPT_GAP_MAX_NS 5000000000ull /* ... doubling up to 5 s (each look is a request the control plane logs) */
#define SLOT_KERNEL_ROLE 4             /* shimpage.ROLES: a listener left on the kernel (another has the port) */

int kbp_tcp_quiet;

void kbp_tcp_fork_parent(void) {
    for (int fd = 0; fd < KBP_MAX_FD; fd++) {
        struct kbp_sock *s = kbp_fds[fd];
        if (!s || !s->adopt) continue;
        s->adopt = 0;
        if (s->slot) s->slot->used = 0; /* its LISTEN (kernel) line: it no longer waits for the port */
        s->slot = NULL;
    }
}

void kbp_tcp_fork_child(void) {
    for (int fd = 0; fd < KBP_MAX_FD; fd++) {
        struct kbp_sock *s = kbp_fds[fd];
        if (s && s->tcp && s->heir && s->tcp_role == KBP_TCP_LISTENER)
            s->adopt = 1, s->adopted = 0, s->adopt_at = 0, s->adopt_gap = ADOPT_GAP_NS;
    }
}

int kbp_tcp_adopt_ms(struct kbp_sock *s) {
    if (!s->adopt || s->accel) return -1;
    uint64_t now = kbp_now_ns();
    return s->adopt_at <= now ? 0 : (int)((s->adopt_at - now + 999999) / 1000000);
}

int kbp_tcp_adopt(struct kbp_sock *s) {
    if (!s->adopt || s->accel || kbp_now_ns() < s->adopt_at) return s->accel;
    int listening = 0;
    socklen_t ll = sizeof(listening);
    if (kbp_real.getsockopt(s->fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) < 0 || !listening) {
        s->adopt = 0; /* not a listener any more (shutdown): nothing to adopt */
        return 0;
    }
    int again = s->adopt_at != 0;
    if (s->slot) s->slot->used = 0;
    s->slot = NULL;
    s->tried = 0;
    kbp_tcp_quiet = 1, kbp_cp_retry = 0, kbp_cp_refusal[0] = 0; /* this says why, once (below) */
    int r = kbp_tcp_try(s, KBP_TCP_LISTENER, s->tcp_backlog > 0 ? s->tcp_backlog : SOMAXCONN);
    kbp_tcp_quiet = 0;
    if (r == 0) {
        s->adopt = 0, s->adopted = 1;
        kbp_verbose("fd %d: the listening socket inherited at the fork is this process's on the rings now", s->fd);
        return 1;
    }
    s->tried = 1;
    if (kbp_cp_fd() < 0 || !kbp_cp_retry) { /* no control plane, or a refusal for good (not a sibling's rule, nor
                                             * live kernel connections on the port): no use looking again */
        s->adopt = 0;
        if (kbp_cp_refusal[0])
            kbp_say("fd %d: the listening socket inherited at the fork stays on the kernel: %s", s->fd, kbp_cp_refusal);
        return 0;
    }
    if (!again)
        kbp_say("fd %d: the listening socket inherited at the fork stays on the kernel for now: another process "
                "has its port (its sibling worker, or the last one still finishing); looked at again while this "
                "one waits on it", s->fd);
    s->adopt_at = kbp_now_ns() + s->adopt_gap;
    s->adopt_gap = s->adopt_gap * 2 < ADOPT_GAP_MAX_NS ? s->adopt_gap * 2 : ADOPT_GAP_MAX_NS;
    if ((s->slot = kbp_page_slot())) { /* `kbypass run --status`: LISTEN (kernel) */
        kbp_page_show_tcp(s);
        s->slot->role = SLOT_KERNEL_ROLE;
        s->slot->used = 1;
    }
    return 0;
}

int kbp_tcp_adopt_fd(int fd) {
    struct kbp_sock *s = kbp_get(fd);
    if (!s || !s->adopt) return 0;
    kbp_enter();
    int r = kbp_tcp_adopt(s);
    kbp_leave();
    return r;
}
