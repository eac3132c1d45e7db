/* kbp_poll.c: poll/ppoll/select/pselect/epoll with accelerated and kernel fds mixed.
 *
 * An accelerated socket is readable when a datagram for it is on the rings (pumped into its backlog) or in
 * its kernel socket, and always writable. The kernel fds are asked as they are; the kernel is asked about
 * the placeholder sockets for POLLIN only (its POLLOUT would say nothing about the rings). A call spins for
 * KBYPASS_SPIN_US looking at the rings (and at the kernel fds every 32nd look), then sleeps in the kernel on
 * everything plus the rings' fds, and looks again when it wakes.
 *
 * epoll: the app's epoll set keeps the placeholder sockets (for their POLLIN) and gets the rings' fds added
 * with a data word of ours (KBP_EP_MAGIC), which epoll_wait never shows the app; the shim keeps each set's
 * accelerated members (fd, events, data) and reports them itself. Events of one member are merged into one.
 * EPOLLET reads as level-triggered (apps that read until EAGAIN do not tell), EPOLLONESHOT is honoured.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>

#include "kbp.h"

#define KBP_EP_MAGIC 0x4b42595041535300ull /* "KBYPASS\0" + the queue fd's index */
#define EP_MAX 1024
#define KERNEL_EVERY 32

struct ep_member {
    int fd;
    uint32_t events;
    epoll_data_t data;
    int off; /* an EPOLLONESHOT member reported and not re-armed */
    unsigned gen; /* a TCP member's news last reported (EPOLLET: reported again when its tcp_gen moves) */
    int shim_only; /* an accelerated TCP connection: not in the kernel's set (its placeholder says nothing) */
};

struct ep_set {
    int n;
    struct ep_member m[EP_MAX];
    int nring;
    int ring_fds[KBP_MAX_QUEUES * KBP_MAX_IFACES];
};

static struct ep_set *eps[KBP_MAX_FD];

static int has_accel(const struct pollfd *fds, nfds_t n) {
    int any = 0;
    for (nfds_t i = 0; i < n; i++) {
        struct kbp_sock *s = kbp_get(fds[i].fd);
        if (s && s->adopt) kbp_tcp_adopt_fd(fds[i].fd); /* an inherited listener waited on (kbp_tcpadopt.c) */
        any |= s && s->accel;
    }
    return any;
}

static short ring_revents(struct kbp_sock *s, short events) {
    if (s->tcp) return kbp_tcp_revents(s, events);
    short r = 0;
    if ((events & POLLIN) && kbp_readable(s)) r |= POLLIN;
    if (events & POLLOUT) r |= POLLOUT;
    return r;
}

static uint64_t deadline_of(int timeout_ms) {
    return timeout_ms < 0 ? 0 : kbp_now_ns() + (uint64_t)timeout_ms * 1000000ull;
}

static int ms_left(uint64_t deadline) {
    if (!deadline) return -1;
    uint64_t now = kbp_now_ns();
    return now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
}

/* the rings' fds of the interfaces the accelerated fds of the list are on, without repeats */
static int ring_fds_of(const struct pollfd *fds, nfds_t n, int *out, int cap) {
    int k = 0;
    for (nfds_t i = 0; i < n; i++) {
        struct kbp_sock *s = kbp_get(fds[i].fd);
        if (!s || !s->accel) continue;
        int q[KBP_MAX_QUEUES], nq = kbp_iface_fds(s->ifc, q, KBP_MAX_QUEUES);
        for (int j = 0; j < nq && k < cap; j++) {
            int seen = 0;
            for (int t = 0; t < k; t++) seen |= out[t] == q[j];
            if (!seen) out[k++] = q[j];
        }
    }
    return k;
}

static int poll_engine(struct pollfd *fds, nfds_t n, int timeout_ms, const sigset_t *mask) {
    uint64_t start = kbp_now_ns(), spin_end = start + (uint64_t)kbp_spin_us * 1000, deadline = deadline_of(timeout_ms);
    size_t cap = n + KBP_MAX_QUEUES * KBP_MAX_IFACES + 1;
    struct pollfd stack_k[256], *k = cap <= 256 ? stack_k : malloc(cap * sizeof(*k));
    if (!k) {
        errno = ENOMEM;
        return -1;
    }
    int result;
    unsigned sig0 = kbp_sig_count; /* poll/select end with EINTR after a handler, SA_RESTART or not */
    for (unsigned it = 0;; it++) {
        int ready = 0;
        if (kbp_sig_count != sig0) {
            errno = EINTR;
            result = -1;
            break;
        }
        kbp_enter();
        for (nfds_t i = 0; i < n; i++) {
            struct kbp_sock *s = kbp_get(fds[i].fd);
            fds[i].revents = s && s->accel ? ring_revents(s, fds[i].events) : 0;
            k[i] = fds[i];
            if (s && s->accel) k[i].events &= POLLIN | POLLPRI;
            if (s && s->accel && s->tcp && s->tcp_role != KBP_TCP_LISTENER) k[i].fd = -1; /* only ours to say */
            k[i].revents = 0;
        }
        int now_kernel = it % KERNEL_EVERY == 0;
        uint64_t now = kbp_now_ns();
        int sleeping = !(now < spin_end) && timeout_ms != 0;
        int extra = 0, cp = kbp_cp_fd();
        if (sleeping) {
            int rf[KBP_MAX_QUEUES * KBP_MAX_IFACES];
            extra = ring_fds_of(fds, n, rf, KBP_MAX_QUEUES * KBP_MAX_IFACES);
            for (int j = 0; j < extra; j++) k[n + (size_t)j] = (struct pollfd){rf[j], POLLIN, 0};
            if (cp >= 0) k[n + (size_t)extra++] = (struct pollfd){cp, POLLIN, 0};
            for (nfds_t i = 0; i < n; i++) {
                struct kbp_sock *s = kbp_get(fds[i].fd);
                if (s && s->accel) kbp_iface_wake(s->ifc);
            }
            kbp_sleep_begin();
        }
        kbp_leave();
        for (nfds_t i = 0; i < n; i++) ready += fds[i].revents != 0;
        if (ready || now_kernel || sleeping) {
            int wait = ready || !sleeping ? 0 : kbp_tcp_cap_ms(ms_left(deadline));
            struct timespec ts = {wait / 1000, (wait % 1000) * 1000000L};
            int r = mask ? kbp_real.ppoll(k, n + (size_t)extra, wait < 0 ? NULL : &ts, mask)
                         : kbp_real.poll(k, n + (size_t)extra, wait);
            if (sleeping) kbp_sleep_end();
            if (r < 0) {
                result = -1;
                break;
            }
            if (extra && cp >= 0 && k[n + (size_t)extra - 1].revents) {
                kbp_enter();
                if (cp == kbp_cp_fd()) kbp_cp_lost();
                kbp_leave();
            }
            ready = 0;
            for (nfds_t i = 0; i < n; i++) {
                fds[i].revents |= k[i].revents;
                ready += fds[i].revents != 0;
            }
            if (ready) {
                result = ready;
                break;
            }
        }
        if (timeout_ms == 0 || (deadline && kbp_now_ns() >= deadline)) {
            result = 0;
            break;
        }
    }
    if (k != stack_k) free(k);
    return result;
}

int poll(struct pollfd *fds, nfds_t n, int timeout) {
    kbp_init_libc();
    kbp_flush_now(); /* the app may wait: deferred frames go first */
    if (!has_accel(fds, n)) return kbp_real.poll(fds, n, timeout);
    return poll_engine(fds, n, timeout, NULL);
}

int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *t, const sigset_t *mask) {
    kbp_init_libc();
    kbp_flush_now(); /* the app may wait: deferred frames go first */
    if (!has_accel(fds, n)) return kbp_real.ppoll(fds, n, t, mask);
    int ms = t ? (int)(t->tv_sec * 1000 + (t->tv_nsec + 999999) / 1000000) : -1;
    return poll_engine(fds, n, ms, mask);
}

static int select_engine(int nfds, fd_set *r, fd_set *w, fd_set *e, int timeout_ms, const sigset_t *mask,
                         int *handled) {
    *handled = 0;
    int any = 0;
    for (int fd = 0; fd < nfds && fd < FD_SETSIZE && !any; fd++) {
        struct kbp_sock *s = kbp_get(fd);
        if (s && s->adopt && r && FD_ISSET(fd, r)) kbp_tcp_adopt_fd(fd); /* an inherited listener (kbp_tcpadopt.c) */
        any = s && s->accel && ((r && FD_ISSET(fd, r)) || (w && FD_ISSET(fd, w)));
    }
    if (!any) return 0;
    *handled = 1;
    struct pollfd p[FD_SETSIZE];
    nfds_t n = 0;
    for (int fd = 0; fd < nfds && fd < FD_SETSIZE; fd++) {
        short ev = (short)(((r && FD_ISSET(fd, r)) ? POLLIN : 0) | ((w && FD_ISSET(fd, w)) ? POLLOUT : 0) |
                           ((e && FD_ISSET(fd, e)) ? POLLPRI : 0));
        if (ev) p[n++] = (struct pollfd){fd, ev, 0};
    }
    int got = poll_engine(p, n, timeout_ms, mask);
    if (got < 0) return -1;
    if (r) FD_ZERO(r);
    if (w) FD_ZERO(w);
    if (e) FD_ZERO(e);
    int count = 0;
    for (nfds_t i = 0; i < n; i++) {
        short v = p[i].revents;
        if (r && (v & (POLLIN | POLLHUP | POLLERR))) FD_SET(p[i].fd, r), count++;
        if (w && (v & (POLLOUT | POLLERR))) FD_SET(p[i].fd, w), count++;
        if (e && (v & POLLPRI)) FD_SET(p[i].fd, e), count++;
        if (v & POLLNVAL) {
            errno = EBADF;
            return -1;
        }
    }
    return count;
}

int select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv) {
    kbp_init_libc();
    kbp_flush_now(); /* the app may wait: deferred frames go first */
    int handled, ms = tv ? (int)(tv->tv_sec * 1000 + (tv->tv_usec + 999) / 1000) : -1;
    int got = select_engine(nfds, r, w, e, ms, NULL, &handled);
    if (!handled) return kbp_real.select(nfds, r, w, e, tv);
    return got;
}

int pselect(int nfds, fd_set *r, fd_set *w, fd_set *e, const struct timespec *t, const sigset_t *mask) {
    kbp_init_libc();
    kbp_flush_now(); /* the app may wait: deferred frames go first */
    int handled, ms = t ? (int)(t->tv_sec * 1000 + (t->tv_nsec + 999999) / 1000000) : -1;
    int got = select_engine(nfds, r, w, e, ms, mask, &handled);
    if (!handled) return kbp_real.pselect(nfds, r, w, e, t, mask);
    return got;
}

/* ---- epoll ---------------------------------------------------------------------------------------- */

static void add_ring_fds(int epfd, struct ep_set *set, struct kbp_sock *s) {
    int q[KBP_MAX_QUEUES], nq = kbp_iface_fds(s->ifc, q, KBP_MAX_QUEUES);
    for (int j = 0; j < nq; j++) {
        int seen = 0;
        for (int t = 0; t < set->nring; t++) seen |= set->ring_fds[t] == q[j];
        if (seen || set->nring >= KBP_MAX_QUEUES * KBP_MAX_IFACES) continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = KBP_EP_MAGIC | (uint64_t)set->nring};
        if (kbp_real.epoll_ctl(epfd, EPOLL_CTL_ADD, q[j], &ev) == 0 || errno == EEXIST)
            set->ring_fds[set->nring++] = q[j];
    }
}

/* An accelerated TCP connection's membership, kept here only (the kernel is not told: its placeholder
 * socket would say POLLHUP), with the kernel's answers to a wrong ADD, MOD or DEL. */
static int shim_only_ctl(int epfd, int op, int fd, struct epoll_event *ev, struct kbp_sock *s) {
    if (kbp_real.fcntl(epfd, F_GETFD) < 0) return -1; /* EBADF, as the kernel's */
    kbp_enter();
    struct ep_set *set = eps[epfd];
    if (!set && op == EPOLL_CTL_ADD) set = eps[epfd] = calloc(1, sizeof(*set));
    int i = 0, err = 0;
    if (set)
        while (i < set->n && set->m[i].fd != fd) i++;
    if (!set) err = op == EPOLL_CTL_ADD ? ENOMEM : ENOENT;
    else if (op == EPOLL_CTL_ADD && i < set->n) err = EEXIST;
    else if (op != EPOLL_CTL_ADD && i == set->n) err = ENOENT;
    else if ((op == EPOLL_CTL_ADD || op == EPOLL_CTL_MOD) && !ev) err = EFAULT;
    else if (op == EPOLL_CTL_ADD && set->n >= EP_MAX) err = ENOSPC;
    else if (op == EPOLL_CTL_DEL) set->m[i] = set->m[--set->n];
    else if (op == EPOLL_CTL_ADD || op == EPOLL_CTL_MOD) {
        if (i == set->n) set->n++;
        set->m[i] = (struct ep_member){fd, ev->events, ev->data, 0, s->tcp_gen - 1, 1};
        add_ring_fds(epfd, set, s);
    } else err = EINVAL;
    kbp_leave();
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
    kbp_init_libc();
    struct kbp_sock *s = kbp_get(fd);
    if (!s || epfd < 0 || epfd >= KBP_MAX_FD) return kbp_real.epoll_ctl(epfd, op, fd, ev);
    if (s->adopt && op != EPOLL_CTL_DEL) kbp_tcp_adopt_fd(fd); /* an inherited listener (kbp_tcpadopt.c) */
    if (s->tcp && s->accel && s->tcp_role != KBP_TCP_LISTENER) return shim_only_ctl(epfd, op, fd, ev, s);
    struct epoll_event kev;
    if (ev) {
        kev = *ev;
        kev.events &= ~(uint32_t)EPOLLOUT; /* the kernel socket's writability says nothing about the rings */
    }
    int r = kbp_real.epoll_ctl(epfd, op, fd, ev ? &kev : NULL);
    if (r < 0) return r;
    kbp_enter();
    struct ep_set *set = eps[epfd];
    if (!set && op == EPOLL_CTL_ADD) set = eps[epfd] = calloc(1, sizeof(*set));
    int i = 0;
    if (set)
        while (i < set->n && set->m[i].fd != fd) i++;
    if (set && op == EPOLL_CTL_DEL && i < set->n) set->m[i] = set->m[--set->n];
    if (set && (op == EPOLL_CTL_ADD || op == EPOLL_CTL_MOD) && ev && (i < set->n || set->n < EP_MAX)) {
        if (i == set->n) set->n++;
        set->m[i] = (struct ep_member){fd, ev->events, ev->data, 0, s->tcp_gen - 1, 0};
        if (s->accel) add_ring_fds(epfd, set, s);
    }
    kbp_leave();
    return r;
}

/* A member closed without EPOLL_CTL_DEL: the kernel dropped it from the set, so do we (its number may
 * come back as another socket). Only UDP sockets of ours are members: a scan per such close. */
void kbp_epoll_drop_member(int fd) {
    for (int e = 0; e < KBP_MAX_FD; e++) {
        struct ep_set *set = eps[e];
        for (int i = 0; set && i < set->n; i++)
            if (set->m[i].fd == fd) set->m[i--] = set->m[--set->n];
    }
}

void kbp_epoll_forget(int fd) {
    if (fd >= 0 && fd < KBP_MAX_FD && eps[fd]) {
        free(eps[fd]);
        eps[fd] = NULL;
    }
}

/* the set's members ready on the rings, as events; under kbp_lock */
static int ring_events(int epfd, struct ep_set *set, struct epoll_event *out, int max) {
    int n = 0;
    for (int i = 0; i < set->n && n < max; i++) {
        struct ep_member *m = &set->m[i];
        struct kbp_sock *s = kbp_get(m->fd);
        if (m->off || !s || !s->accel) continue;
        add_ring_fds(epfd, set, s); /* a member accelerated after it was added */
        uint32_t ev = 0;
        if (s->tcp) {
            ev = (uint32_t)(uint16_t)kbp_tcp_revents(s, (short)m->events);
            if (ev && (m->events & EPOLLET)) { /* an edge: news since the member's last report */
                if (m->gen == s->tcp_gen) ev = 0;
                else m->gen = s->tcp_gen;
            }
        } else {
            if ((m->events & EPOLLIN) && kbp_readable(s)) ev |= EPOLLIN;
            if (m->events & EPOLLOUT) ev |= EPOLLOUT;
        }
        if (!ev) continue;
        out[n++] = (struct epoll_event){.events = ev, .data = m->data};
        if (m->events & EPOLLONESHOT) m->off = 1;
    }
    return n;
}

/* a member on the rings (or, adopting: an inherited listener waiting to be, kbp_tcpadopt.c) */
static int has_member(struct ep_set *set, int adopting) {
    for (int i = 0; set && i < set->n; i++) {
        struct kbp_sock *s = kbp_get(set->m[i].fd);
        if (s && (adopting ? s->adopt : s->accel)) return 1;
    }
    return 0;
}

static int has_accel_member(struct ep_set *set) { return has_member(set, 0); }

/* An inherited listener of the set refused its port (kbp_tcpadopt.c: a sibling has it): looked at again when due,
 * while the app waits. The ms until the next look (-1: none), under kbp_lock. */
static int adopt_members(struct ep_set *set) {
    int next = -1;
    for (int i = 0; set && i < set->n; i++) {
        struct kbp_sock *s = kbp_get(set->m[i].fd);
        if (!s || !s->adopt) continue;
        if (kbp_tcp_adopt_ms(s) == 0) kbp_tcp_adopt(s);
        int ms = kbp_tcp_adopt_ms(s);
        if (ms >= 0 && (next < 0 || ms < next)) next = ms;
    }
    return next;
}

/* the kernel's events after ours: ring fds dropped, a member's merged into its one event */
static int merge(struct epoll_event *ev, int ours, int theirs) {
    int n = ours;
    for (int i = ours; i < ours + theirs; i++) {
        if ((ev[i].data.u64 & ~0xFFull) == KBP_EP_MAGIC) continue;
        int dup = 0;
        for (int j = 0; j < ours && !dup; j++)
            if (ev[j].data.u64 == ev[i].data.u64) ev[j].events |= ev[i].events, dup = 1;
        if (!dup) ev[n++] = ev[i];
    }
    return n;
}

static int epoll_engine(int epfd, struct epoll_event *ev, int max, int timeout_ms, const sigset_t *mask) {
    uint64_t start = kbp_now_ns(), spin_end = start + (uint64_t)kbp_spin_us * 1000, deadline = deadline_of(timeout_ms);
    unsigned sig0 = kbp_sig_count; /* epoll_wait ends with EINTR after a handler, SA_RESTART or not */
    for (unsigned it = 0;; it++) {
        if (kbp_sig_count != sig0) {
            errno = EINTR;
            return -1;
        }
        kbp_enter();
        struct ep_set *set = eps[epfd];
        int adopt_ms = adopt_members(set);
        int ours = set ? ring_events(epfd, set, ev, max) : 0;
        int sleeping = !ours && timeout_ms != 0 && !(kbp_now_ns() < spin_end);
        if (sleeping) {
            for (int i = 0; set && i < set->n; i++) {
                struct kbp_sock *s = kbp_get(set->m[i].fd);
                if (s && s->accel) kbp_iface_wake(s->ifc);
            }
            kbp_sleep_begin();
        }
        kbp_leave();
        if (ours || sleeping || it % KERNEL_EVERY == 0) {
            int wait = ours || !sleeping ? 0 : kbp_tcp_cap_ms(ms_left(deadline));
            if (adopt_ms >= 0 && (wait < 0 || adopt_ms < wait)) wait = adopt_ms;
            int r = mask ? kbp_real.epoll_pwait(epfd, ev + ours, max - ours, wait, mask)
                         : kbp_real.epoll_wait(epfd, ev + ours, max - ours, wait);
            if (sleeping) kbp_sleep_end();
            if (r < 0) {
                if (ours) return ours;
                return -1;
            }
            int n = merge(ev, ours, r);
            if (n) return n;
        }
        if (timeout_ms == 0 || (deadline && kbp_now_ns() >= deadline)) return 0;
    }
}

/* a set with an accelerated member waits in epoll_engine; the others in the kernel, their ring fds' events
 * (a member no longer accelerated) taken out */
static int engine_set(int epfd, int max) {
    return epfd >= 0 && epfd < KBP_MAX_FD && (has_accel_member(eps[epfd]) || has_member(eps[epfd], 1)) && max > 0;
}

static int kernel_events(int epfd, struct epoll_event *ev, int r) {
    return r > 0 && epfd >= 0 && epfd < KBP_MAX_FD && eps[epfd] ? merge(ev, 0, r) : r;
}

int epoll_wait(int epfd, struct epoll_event *ev, int max, int timeout) {
    kbp_init_libc();
    kbp_flush_now(); /* the app may wait: deferred frames go first */
    if (!engine_set(epfd, max)) return kernel_events(epfd, ev, kbp_real.epoll_wait(epfd, ev, max, timeout));
    return epoll_engine(epfd, ev, max, timeout, NULL);
}

int epoll_pwait(int epfd, struct epoll_event *ev, int max, int timeout, const sigset_t *mask) {
    kbp_init_libc();
    kbp_flush_now(); /* the app may wait: deferred frames go first */
    if (!engine_set(epfd, max)) return kernel_events(epfd, ev, kbp_real.epoll_pwait(epfd, ev, max, timeout, mask));
    return epoll_engine(epfd, ev, max, timeout, mask);
}

int epoll_pwait2(int epfd, struct epoll_event *ev, int max, const struct timespec *t, const sigset_t *mask) {
    kbp_init_libc();
    kbp_flush_now(); /* the app may wait: deferred frames go first */
    if (!engine_set(epfd, max)) {
        if (!kbp_real.epoll_pwait2) {
            errno = ENOSYS;
            return -1;
        }
        return kernel_events(epfd, ev, kbp_real.epoll_pwait2(epfd, ev, max, t, mask));
    }
    int ms = t ? (int)(t->tv_sec * 1000 + (t->tv_nsec + 999999) / 1000000) : -1;
    return epoll_engine(epfd, ev, max, ms, mask);
}

/* fd's socket is being replaced by a kernel socket at the same number (kbp_tcprepair.c: a connection handed
 * to the kernel). before: the old file leaves the kernel's sets it is in (DEL must name it while the number
 * still does); after: the new one joins every set fd was a member of, with the app's events and data, and
 * the shim keeps no record of it (the kernel reports it from now on). Under kbp_lock. */
void kbp_epoll_rebind(int fd, int after) {
    for (int e = 0; e < KBP_MAX_FD; e++) {
        struct ep_set *set = eps[e];
        if (!set) continue;
        for (int i = 0; i < set->n; i++) {
            struct ep_member *m = &set->m[i];
            if (m->fd != fd) continue;
            if (!after) {
                if (!m->shim_only) kbp_real.epoll_ctl(e, EPOLL_CTL_DEL, fd, NULL);
                continue;
            }
            struct epoll_event ev = {.events = m->off ? m->events & ~(uint32_t)(EPOLLIN | EPOLLOUT) : m->events,
                                     .data = m->data};
            kbp_real.epoll_ctl(e, EPOLL_CTL_ADD, fd, &ev);
            set->m[i--] = set->m[--set->n];
            if (!has_accel_member(set)) { /* the rings' fds would wake a kernel-only wait for nothing */
                for (int t = 0; t < set->nring; t++) kbp_real.epoll_ctl(e, EPOLL_CTL_DEL, set->ring_fds[t], NULL);
                set->nring = 0;
            }
        }
    }
}
