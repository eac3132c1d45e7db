/* kbp.h: libkbypass-preload.so, the preload shim of `kbypass run` (see kbp_socket.c for the whole story).
 *
 * Pieces: kbp_cp.c talks to the control plane (one SOCK_SEQPACKET connection per process, JSON + fds),
 * kbp_iface.c owns one interface's AF_XDP sockets (one per receive queue, made by the control plane) and
 * moves datagrams through the C core's lane (csrc/core/kb_lane, kb_udp), kbp_socket.c interposes the socket
 * calls, kbp_poll.c poll/select/epoll, kbp_flush.c the flusher thread that bounds how long a burst's sends
 * wait for their kick, kbp_exec.c the exec family (which sends them first). All shim state is under one
 * lock (kbp_lock): apps with threads stay correct, an uncontended mutex costs tens of nanoseconds.
 */
#ifndef KBP_H
#define KBP_H

#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "../core/kb_lane.h"
#include "../core/kb_tcp.h"
#include "../core/kb_port.h"

#define KBP_MAX_FD 65536
#define KBP_MAX_QUEUES 8
#define KBP_MAX_IFACES 4
#define KBP_MAX_HOPS 64
#define KBP_BACKLOG 512 /* datagrams a socket keeps when another socket's call took them off the ring */
#define KBP_FRAMES 4096 /* per queue: half lent to the fill ring (a 2048-datagram receive buffer), KB_LANE_STASH_MAX for sending */
#define KBP_FRAME_SIZE 2048
#define KBP_RING 2048
#define KBP_CHAIN_FRAMES 64    /* a multi-buffer packet's frames looked at in one go (65,535 bytes take 37) */
#define KBP_CHAIN_BYTES 65600 /* the largest Ethernet frame of a 65,535-byte MTU, and then some */
#define KBP_MAX_DGRAM 65536

/* the counters page the control plane reads for `kbypass run --status` (kbypass/cp/shimpage.py) */
#define KBP_PAGE_MAGIC 0x5042534Bu
#define KBP_PAGE_SLOTS 64
#define KBP_PAGE_BYTES 8192
#define KBP_PAGE_VERSION 2
#define KBP_PAGE_TCP 6 /* the header's host counters (shimtcp.ShimTcp.tally), after magic, version, slots, pad */
struct kbp_slot {
    uint32_t used, fd;
    uint8_t ip[4];
    uint16_t port, proto; /* IPPROTO_UDP or IPPROTO_TCP */
    uint64_t rx, tx;      /* UDP: datagrams; TCP: bytes the app read and sent */
    union {
        struct { uint64_t rx_kernel, tx_kernel, rx_dropped, tx_failed; }; /* UDP */
        struct {                                                           /* TCP */
            uint8_t peer_ip[4];
            uint16_t peer_port;
            uint8_t state, role; /* shimtcp's state code (its changes' bits 16-19), KBP_TCP_LISTENER... */
            uint64_t accepted;   /* a listener's connections accepted */
        };
    };
};
_Static_assert(sizeof(struct kbp_slot) == 64, "kbp_slot is shimpage.SLOT");

struct kbp_queue {
    int fd;
    uint8_t *umem;
    uint64_t umem_size;
    void *map[4];
    size_t maplen[4];
    struct kb_ring rx, fill, tx, comp;
    uint8_t state[KBP_FRAMES];
    uint64_t stats[KB_PORT_NSTATS];
    struct kb_lane lane;
};

struct kbp_hop {
    uint32_t ip; /* network order; 0: a free entry */
    uint8_t mac[6];
    int known;
    uint64_t asked_ns; /* when the control plane was last asked */
};

struct kbp_sock;

struct kbp_iface {
    char name[32];
    uint8_t mac[6];
    uint8_t ip[4];
    uint32_t netmask; /* network order */
    int mtu, nq, ifindex;
    uint8_t *chain; /* a chained packet gathered (KBP_CHAIN_BYTES), when the MTU needs multi-buffer sockets */
    struct kbp_queue q[KBP_MAX_QUEUES];
    struct kbp_hop hops[KBP_MAX_HOPS];
    int nsocks;
    unsigned unkicked; /* frames put on queue 0's TX ring without a kick yet (kbp_iface_send) */
    uint64_t first_unkicked_ns, last_send_ns;
    struct kbp_sock *socks[KBP_PAGE_SLOTS]; /* the accelerated sockets on it, to hand frames to */
};

struct kbp_dgram {
    uint32_t len;
    uint8_t src_ip[4];
    uint16_t src_port;
    uint8_t dst_ip[4], tos, ttl;
    uint64_t ts_ns; /* CLOCK_REALTIME when taken off the ring (SO_TIMESTAMP*) */
    uint8_t *data;  /* a frame's worth of the socket's backlog slab */
    uint8_t *big;   /* a jumbo datagram's own buffer (malloc), when larger than a frame; its bytes, not data's */
};

/* One UDP socket of the app (shared by its dup()s: refs). */
struct kbp_sock {
    int refs;
    int fd;         /* the placeholder kernel socket (the app's fd, or the first of its dups) */
    int accel;      /* its datagrams go through the AF_XDP rings */
    int nonblock;   /* O_NONBLOCK as the app set it */
    int tried;      /* acceleration was tried (once per socket) */
    int said_big;   /* --log said that datagrams larger than a frame go through the kernel socket */
    long rcvtimeo_us, sndtimeo_us;
    int tos, ts_mode; /* IP_TOS; SO_TIMESTAMP (1) or SO_TIMESTAMPNS (2) */
    int want_pktinfo, want_tos, want_ttl; /* IP_PKTINFO, IP_RECVTOS, IP_RECVTTL: synthesised from the frame */
    int rcvbuf;
    struct kbp_iface *ifc;
    struct kb_udp_local me;
    int rule_id;
    int connected;
    uint32_t peer_ip; /* network order */
    uint16_t peer_port;
    uint8_t tmpl[KB_UDP_HLEN]; /* the last destination's header */
    uint32_t tmpl_ip;
    uint16_t tmpl_port;
    int tmpl_ok;
    uint16_t ident;
    unsigned empty_calls;
    struct kbp_dgram backlog[KBP_BACKLOG];
    unsigned bhead, btail;
    struct kbp_slot *slot;
    /* TCP (kbp_tcp.c): the connection or listener lives in kbypass.sockapi.shimtcp, known there by sid */
    int tcp;              /* a SOCK_STREAM socket of AF_INET */
    int tcp_role;         /* KBP_TCP_LISTENER, KBP_TCP_ACCEPTED, KBP_TCP_ACTIVE once accelerated */
    uint32_t sid;
    uint32_t tcp_mask;    /* its readiness as the host last said (poll bits) */
    unsigned tcp_gen;     /* bumped at each news (EPOLLET reports a member whose gen moved) */
    uint8_t tcp_state;    /* the host's state code for it (its changes' bits 16-19), for the status page */
    int zombie;           /* closed by the app, its connection still finishing (an active open's port held) */
    struct sockaddr_in tcp_local, tcp_peer;
    struct in_addr tcp_steered; /* the address the rule steers (a wildcard listener's: its interface's) */
    /* the established path in C (kbp_tcp.c): a segment its Prediction says HIT is queued here for the app and
     * logged for the host to catch up with (shimtcp.ShimTcp.hits) at its next call */
    struct kb_tcp_pred *pred; /* its Prediction's struct in the host, while the app has the connection */
    struct kbp_sock *pnext;   /* the next of its 4-tuple bucket */
    uint8_t *cq;              /* predicted payload for the app: older than any the host holds */
    size_t cq_off, cq_len, cq_cap;
    size_t cq_read;           /* bytes the app read from cq that the host has not been told of (its window counts them) */
    int py_rx;                /* the host holds bytes for the app (PYRX): no queueing here until they are read */
    int py_tx;                /* the host waits for ACKs to send more (PYTX): a predicted pure ACK is its at once */
    unsigned slow_gen;        /* the pump that gave the host a frame of it: no prediction here after it */
    struct kbp_pend *pend;    /* a listener back on the kernel: connections it still hands out (kbp_tcpwake.c) */
    int handed;               /* the kernel's now (kbp_tcprepair.c): its fds are not; a waiting call holds it */
    int *flow_rules, n_flow_rules; /* a draining listener's: its connections' 4-tuple rules (kbp_tcpwake.c kbp_tcp_flows_only) */
    struct kbp_sock *spare_next; /* released: the next spare record (kbp_sock_free) */
    /* an accelerated listener's lineage across fork (kbp_tcpadopt.c) */
    int heir;                 /* a listener that was ours here or in a parent: a fork's child may adopt it */
    int adopt;                /* this process is such a child and has not forked since: adopt at accept/poll/epoll */
    int adopted;              /* it was adopted (shared with the parent's copy: closing it leaves the port at once) */
    int tcp_backlog;          /* listen()'s backlog, for the host's listener of an adopter */
    uint64_t adopt_at, adopt_gap; /* refused (another process has the port): the next look, and the gap after */
};
#define KBP_TCP_LISTENER 1
#define KBP_TCP_ACCEPTED 2
#define KBP_TCP_ACTIVE 3

extern pthread_mutex_t kbp_lock;
/* kbp_enter/kbp_leave take and give kbp_lock and count this thread's depth in it: while the thread is inside
 * the shim (its state half changed, CPython mid-call) an app's signal handler that calls the shim (send, close)
 * would re-enter it through the recursive lock, so the trampoline defers the handler to the shim's exit
 * (kbp_signal.c). */
extern __thread int kbp_depth __attribute__((tls_model("initial-exec")));
extern __thread volatile uint64_t kbp_sig_deferred __attribute__((tls_model("initial-exec")));
void kbp_sig_run_deferred(void);
extern uint64_t kbp_calls; /* entries into the shim (kbp_flush.c: the app is about, or elsewhere) */
static inline void kbp_enter(void) {
    kbp_depth++; /* before the lock: a handler run while pthread_mutex_lock is half done (the futex word taken,
                  * the owner not yet written) would wait for the lock its own thread holds, forever */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    pthread_mutex_lock(&kbp_lock);
    __atomic_store_n(&kbp_calls, kbp_calls + 1, __ATOMIC_RELAXED);
}
static inline void kbp_leave(void) {
    pthread_mutex_unlock(&kbp_lock);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    kbp_depth--; /* after the unlock, for the same reason; a signal from here on runs its handler at once */
    if (!kbp_depth && kbp_sig_deferred) kbp_sig_run_deferred();
}
extern struct kbp_sock *kbp_fds[KBP_MAX_FD];
extern long kbp_spin_us;
extern uint64_t kbp_tx_burst_ns; /* KBYPASS_TX_BURST_US: a send this soon after the previous one defers its kick */
extern int kbp_log;

/* libc's own functions (dlsym RTLD_NEXT) */
struct kbp_libc {
    int (*socket)(int, int, int);
    int (*bind)(int, const struct sockaddr *, socklen_t);
    int (*connect)(int, const struct sockaddr *, socklen_t);
    int (*close)(int);
    ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    ssize_t (*recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
    ssize_t (*sendmsg)(int, const struct msghdr *, int);
    ssize_t (*recvmsg)(int, struct msghdr *, int);
    int (*sendmmsg)(int, struct mmsghdr *, unsigned, int);
    int (*recvmmsg)(int, struct mmsghdr *, unsigned, int, struct timespec *);
    ssize_t (*send)(int, const void *, size_t, int);
    ssize_t (*recv)(int, void *, size_t, int);
    ssize_t (*read)(int, void *, size_t);
    ssize_t (*write)(int, const void *, size_t);
    int (*setsockopt)(int, int, int, const void *, socklen_t);
    int (*getsockopt)(int, int, int, void *, socklen_t *);
    int (*fcntl)(int, int, ...);
    int (*ioctl)(int, unsigned long, ...);
    int (*dup)(int);
    int (*dup2)(int, int);
    int (*dup3)(int, int, int);
    int (*poll)(void *, unsigned long, int);
    int (*ppoll)(void *, unsigned long, const struct timespec *, const void *);
    int (*select)(int, void *, void *, void *, void *);
    int (*pselect)(int, void *, void *, void *, const struct timespec *, const void *);
    int (*epoll_ctl)(int, int, int, void *);
    int (*epoll_wait)(int, void *, int, int);
    int (*epoll_pwait)(int, void *, int, int, const void *);
    int (*sigaction)(int, const struct sigaction *, struct sigaction *);
    ssize_t (*readv)(int, const struct iovec *, int);
    ssize_t (*writev)(int, const struct iovec *, int);
    int (*epoll_pwait2)(int, void *, int, const struct timespec *, const void *);
    long (*syscall)(long, ...);
    int (*listen)(int, int);
    int (*accept4)(int, struct sockaddr *, socklen_t *, int);
    int (*getsockname)(int, struct sockaddr *, socklen_t *);
    int (*getpeername)(int, struct sockaddr *, socklen_t *);
    int (*shutdown)(int, int);
    ssize_t (*sendfile)(int, int, off_t *, size_t);
    int (*socketpair)(int, int, int, int *);
};
extern struct kbp_libc kbp_real;
void kbp_init_libc(void);

/* kbp_log.c */
void kbp_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));      /* always */
void kbp_env_snapshot(void);         /* kbp_init: KBYPASS_* as the process started with them */
const char *kbp_env(const char *name); /* ... read here (a fork's child of an app that cleared its environment) */
void kbp_verbose(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* KBYPASS_LOG=1 */
uint64_t kbp_now_ns(void);

/* kbp_cp.c: the control plane connection. kbp_cp_call sends one request (with fd_out when >= 0) and waits
 * for the reply: 0 and the reply in buf (fds in fds_in), or -1 with the error in buf. */
int kbp_cp_fd(void);
int kbp_cp_connect(void);
int kbp_cp_call(const char *req, int fd_out, char *buf, size_t cap, int *fds_in, int max_fds, int *nfds);
extern int kbp_cp_retry;           /* the last call's refusal may not be for good (its reply said "retry": true) */
extern char kbp_cp_refusal[256];   /* the last call's refusal, "" when it was not refused */
void kbp_cp_refused(const char *why); /* kbp_cp_refusal = why (cut to its size) */
extern int kbp_tcp_quiet;          /* kbp_tcp_try says nothing of a refusal (an adopter's repeated look) */
/* the `accelerate` request: with a TCP active open's peer its rule is that connection's 4-tuple, not the whole
 * port (its kernel socket is bound-only for life: it keeps the port to itself only while no option says
 * otherwise); peer NULL: the socket's port */
void kbp_cp_accelerate_req(char *req, size_t cap, const struct sockaddr_in *peer);
void kbp_cp_lost(void);
int kbp_json_int(const char *json, const char *key, long long *out);
int kbp_json_str(const char *json, const char *key, char *out, size_t cap);
struct kbp_slot *kbp_page_slot(void);
uint64_t *kbp_page_tcp(void); /* the page's KBP_PAGE_TCP host counters (NULL: no page) */
void kbp_page_show_tcp(const struct kbp_sock *s); /* its slot (s->slot, if any) as s is now */

/* kbp_iface.c */
struct kbp_iface *kbp_iface_get(const char *reply, char *why, size_t cap);
int kbp_iface_pump(struct kbp_iface *ifc, struct kbp_sock *want, void *buf, size_t len, struct kbp_dgram *got);
int kbp_iface_send(struct kbp_iface *ifc, struct kbp_sock *s, uint32_t dst_ip, uint16_t dst_port,
                   const uint8_t *payload, uint32_t len);
void kbp_iface_drop_sock(struct kbp_iface *ifc, struct kbp_sock *s);
void kbp_backlog_clear(struct kbp_sock *s); /* drops what it holds (frees jumbo buffers) */
int kbp_iface_fds(struct kbp_iface *ifc, int *fds, int cap);
void kbp_iface_wake(struct kbp_iface *ifc);
void kbp_iface_forget_all(int close_fds);
int kbp_iface_owns(int fd); /* one of the rings' sockets */
extern __thread int kbp_batching; /* inside sendmmsg: kbp_iface_send defers the kick to kbp_iface_flush */
extern unsigned kbp_tx_pending;    /* interfaces with frames on the TX ring and no kick yet */
void kbp_iface_flush(void);
uint64_t kbp_iface_flush_due(uint64_t now);
#define TX_FLUSH_NS 200000ull /* a deferred frame goes out within this long (the flusher thread) */

/* kbp_flush.c: the flusher thread; kbp_flush_now: the app may wait next, so the deferred frames go now.
 * kbp_flush_before(fd): the same for a call on fd, unless fd is a ring's socket (the C core's own recv and
 * sendto on it come back through the shim's, with kbp_lock held). */
void kbp_flusher_arm(void); /* under kbp_lock: frames were deferred */
void kbp_flusher_after_fork_child(void);
int kbp_flusher_owns(int fd); /* the flusher's eventfd: not the app's to close */
void kbp_flusher_kick(void);  /* under kbp_lock: a flusher waiting on the rings lets go of them */
extern int kbp_ring_sleepers;
/* An app thread sleeps on the rings (it pumps when they wake it): the flusher keeps off them meanwhile, or a
 * frame it took would wake nobody (kbp_flush.c). begin under kbp_lock, end anywhere. */
static inline void kbp_sleep_begin(void) {
    __atomic_add_fetch(&kbp_ring_sleepers, 1, __ATOMIC_SEQ_CST);
    kbp_flusher_kick();
}
static inline void kbp_sleep_end(void) { __atomic_sub_fetch(&kbp_ring_sleepers, 1, __ATOMIC_SEQ_CST); }
static inline void kbp_flush_now(void) {
    if (__atomic_load_n(&kbp_tx_pending, __ATOMIC_RELAXED)) {
        kbp_enter();
        kbp_iface_flush();
        kbp_leave();
    }
}
static inline void kbp_flush_before(int fd) {
    if (__atomic_load_n(&kbp_tx_pending, __ATOMIC_RELAXED) && !kbp_iface_owns(fd)) kbp_flush_now();
}

/* kbp_socket.c */
struct kbp_sock *kbp_get(int fd);      /* no lock: a record, maybe released since (kbp_mem.c says why that is safe) */
struct kbp_sock *kbp_sock_new(void);    /* a zeroed record (a released one again, or new); under kbp_lock */
void kbp_sock_free(struct kbp_sock *s); /* released: kept for the next socket, never freed; under kbp_lock */
#define KBP_BUF_DGRAM 0 /* kbp_thread_buf: recvmsg's datagram, KBP_MAX_DGRAM */
#define KBP_BUF_CHUNK 1 /* sendfile's chunk, KBP_TCP_CHUNK */
#define KBP_BUF_KINDS 2
void *kbp_thread_buf(int kind); /* this thread's scratch buffer of that kind (NULL: no memory), freed at its exit */
int kbp_readable(struct kbp_sock *s); /* datagrams waiting (after a pump); under kbp_lock */
int kbp_share_fd(int oldfd, int newfd); /* newfd a dup of oldfd: the same accelerated socket (refs); returns newfd */
void kbp_fall_back_all(void);
void kbp_release(struct kbp_sock *s); /* the last reference went: rule, rings and record let go */

/* kbp_iface.c for TCP */
int kbp_iface_send_ip(struct kbp_iface *ifc, const uint8_t *pkt, uint32_t len);
void kbp_iface_learn(struct kbp_iface *ifc, uint32_t ip, const uint8_t mac[6]);
int kbp_iface_hop_known(struct kbp_iface *ifc, uint32_t dst);

/* kbp_tcp.c: TCP sockets through kbypass.sockapi.shimtcp (in CPython, kbp_py.c) */
extern int kbp_tcp_on; /* a TCP socket was accelerated: the pump hands TCP frames to kbp_tcp_frame */
void kbp_tcp_frame(struct kbp_iface *ifc, const uint8_t *f, uint32_t n); /* batched ... */
void kbp_tcp_frames_done(void);                                          /* ... to the host here */
void kbp_tcp_transmit(const uint8_t *pkt, uint32_t len);
void kbp_tcp_changed(uint32_t sid, uint32_t mask);
void kbp_tcp_deadline(double when);
uint64_t kbp_tcp_timers(uint64_t now); /* due timers run (under kbp_lock); the next deadline (0: none) */
int kbp_tcp_cap_ms(int ms);            /* a wait of ms bounded by the next TCP timer */
int kbp_tcp_try(struct kbp_sock *s, int role, int backlog); /* accelerate a bound TCP socket (under kbp_lock) */
int kbp_tcp_connect(struct kbp_sock *s, const struct sockaddr_in *to, int *r); /* 1: ours, r its result
                                                                                (kbp_tcpconnect.c) */
int kbp_tcp_port_finishing(in_port_t port, const struct sockaddr_in *peer); /* a closed connection of ours on it */
int kbp_tcp_wait(struct kbp_sock *s, short want, int nonblock, long timeout_us); /* until s has `want` */
ssize_t kbp_tcp_recv(struct kbp_sock *s, void *buf, size_t len, int flags);
ssize_t kbp_tcp_send(struct kbp_sock *s, const void *buf, size_t len, int flags);
ssize_t kbp_tcp_recvmsg(struct kbp_sock *s, struct msghdr *m, int flags, uint8_t *tmp, size_t cap);
ssize_t kbp_tcp_sendmsg(struct kbp_sock *s, const struct msghdr *m, int flags);
void kbp_tcp_fill_addr(struct sockaddr *to, socklen_t *tolen, const struct sockaddr_in *a); /* accept, getpeername */
short kbp_tcp_revents(struct kbp_sock *s, short events); /* under kbp_lock, after a pump */
int kbp_tcp_release(struct kbp_sock *s); /* the app's last fd of it closed (under kbp_lock); 1: keep s */
void kbp_tcp_off(void);
void kbp_tcp_after_fork_child(void);
/* The connection's receive window bounds its C queue (kbp_tcpfast.c): the window counts the queue's bytes (and the
 * host's own unread ones) until CONSUMED records say the app read them (shimtcp: TcpConnection.app_reads), so the
 * prediction's window, which every queued segment must fit, closes behind them. KBP_TCP_CQ_MAX is that invariant
 * checked (the host's recv_buffer, 1 MiB, is below it): a segment that would break it goes to the host instead,
 * and is said once as a bug (tests/netns/test_run_tcp.py: an app that never reads holds at most a window in C,
 * FIONREAD says so; test_run_tcp_memory.py: peers flooding such apps push at most the window each). */
#define KBP_TCP_CQ_MAX (4u << 20)
/* the app's reads of a C queue are told to the host (a CONSUMED record in the hit log, shimtcp.READ_REPORT) in
 * steps of this many bytes, and when the queue empties with less window left than that: its window reopens */
#define KBP_TCP_READ_REPORT (64u << 10)
#define KBP_TCP_CHUNK (256 * 1024) /* bytes one send hands the host at most (its send buffer is 1 MiB) */
void kbp_tcp_wake_by(uint64_t at); /* kbp_tcp_timers runs by then (under kbp_lock) */
int kbp_tcp_ring_fds(int *fds, int cap); /* the TCP interface's ring fds (0: none); under kbp_lock */
void kbp_tcp_pump_idle(void);           /* the flusher's pump while the app is elsewhere; under kbp_lock */

/* kbp_tcpfast.c: the established path in C (under kbp_lock) */
#define KBP_PYRX 0x40000000u /* shimtcp.PYRX in a change's mask: the host holds bytes for the app */
#define KBP_PYTX 0x08000000u /* shimtcp.PYTX: the host has bytes to send when ACKs come */
void kbp_tcp_catch_up(void); /* the host takes the segments predicted here first (kbp_py_call calls it) */
int kbp_tcpc_frame(const uint8_t *f, uint32_t n); /* 1: taken (queued for the app), 0: the host's */
void kbp_tcpc_pump_done(int batched);
void kbp_tcpc_timers(uint64_t now);
const uint8_t *kbp_tcpc_take_log(size_t *n);
size_t kbp_tcpc_read(struct kbp_sock *s, void *buf, size_t len, int peek);
void kbp_tcpc_attach(struct kbp_sock *s); /* accepted or connecting: predict with its Prediction */
void kbp_tcpc_detach(struct kbp_sock *s); /* closed by the app */
void kbp_tcpc_after_fork_child(void);
int kbp_tcp_info(struct kbp_sock *s, void *out, socklen_t *len); /* getsockopt(TCP_INFO) (kbp_tcpinfo.c) */
void kbp_tcp_keepalive(struct kbp_sock *s); /* SO_KEEPALIVE, TCP_KEEP* from the kernel socket to the host */
void kbp_tcp_before_fork(void); /* connections to the kernel's TCP, listeners back to the kernel (pthread_atfork) */
void kbp_tcp_forget(struct kbp_sock *s, const char *call); /* no longer ours: the host's call, then records go */
void kbp_tcp_cp_lost(void);              /* the control plane is gone: connections to the kernel, or reset */

/* kbp_tcprepair.c: an accelerated connection handed to the kernel's TCP (TCP_REPAIR) at the app's fds */
int kbp_tcp_handoff(struct kbp_sock *s); /* 0: s is freed, its fds are the kernel socket; -1 errno: unchanged */
int kbp_tcp_handoff_all(void);           /* every accelerated connection: how many stay ours */
int kbp_tcp_before_exec(const int *also, int n_also, int going_on); /* those a new image inherits (kbp_tcprepair.c) */
void kbp_tcp_exit(void); /* kbp_tcpexit.c: the app's exit: connections handed, or finished before it goes */

/* kbp_tcpwake.c: a listener's connections completed here but not accepted when it went back to the kernel */
int kbp_tcp_pend(struct kbp_sock *ls, int fd); /* fd kept for ls's accept (0), or -1 */
int kbp_tcp_take_pend(struct kbp_sock *ls, struct sockaddr *addr, socklen_t *alen, int flags);
void kbp_tcp_pend_drop(struct kbp_sock *ls, int reset);
void kbp_tcp_flows_only(struct kbp_sock *z); /* a draining listener's port rule -> its connections' 4-tuples */
void kbp_tcp_flow_rules_gone(struct kbp_sock *z);
void kbp_tcp_rule_gone(const char *iface, int *rule_id); /* kbp_tcp.c: remove a rule (*rule_id -1 after) */

/* kbp_py.c */
int kbp_py_ready(int mss, char *why, size_t cap);
int kbp_py_app(char *why, size_t cap); /* a Python app: TCP stays the kernel's (why) */
void kbp_py_before_fork(void);     /* pthread_atfork prepare, under kbp_lock: the GIL held across the fork */
void kbp_py_after_fork(int child); /* ... child (1) or parent (0): CPython's own fork protocol, the GIL let go */
long kbp_py_call(const char *method, void *buf, size_t cap, const char *fmt, ...);

/* fork (kbp_fork.c), and a fork's child adopting an inherited listener (kbp_tcpadopt.c: nginx's worker) */
void kbp_fork_register(void);     /* kbp_fork.c: the pthread_atfork handlers */
void kbp_iface_release_all(void); /* kbp_iface.c: the rings back to the control plane (a fork's idle parent) */
int kbp_tcp_sids(void);           /* kbp_tcp.c: TCP sockets of ours (connections finishing included) */
void kbp_tcp_fork_parent(void); /* the parent never adopts again (a fork-per-connection server keeps the kernel's) */
void kbp_tcp_fork_child(void);  /* the child may adopt its heir listeners */
int kbp_tcp_adopt(struct kbp_sock *s); /* under kbp_lock: 1 it is ours now; 0 not (yet: looked at again later) */
int kbp_tcp_adopt_fd(int fd);          /* the same for an fd the app waits on or accepts from (takes kbp_lock) */
int kbp_tcp_adopt_ms(struct kbp_sock *s); /* ms until s's next look (-1: none due), under kbp_lock */

/* kbp_signal.c: kbp_sig_count changes when a handler of the app ran on this thread; kbp_sig_interrupted
 * says whether the wait begun at count `since` ends with EINTR (restartable: a recv the kernel restarts under
 * SA_RESTART) */
extern __thread unsigned kbp_sig_count __attribute__((tls_model("initial-exec")));
int kbp_sig_interrupted(unsigned since, int restartable);

/* kbp_poll.c */
void kbp_epoll_forget(int epfd);
void kbp_epoll_drop_member(int fd);
void kbp_epoll_rebind(int fd, int after); /* fd's socket replaced at its number: the kernel's sets get the new one */

#endif
