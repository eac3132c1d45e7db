/* xdp_rxdrop: the minimal AF_XDP receiver in C on libxdp's xsk API, the limit row of `kbypass bench rx`.
 *
 * What a C programmer writes first (libxdp's xdpsock "rxdrop", cut to its bones): one socket on one
 * queue, copy mode, need_wakeup, peek up to --batch descriptors, count them, put the same frames straight
 * back on the fill ring, repeat. When the RX ring is empty it makes the syscall the kernel asks for
 * (need_wakeup) and sleeps in poll(), as `kbypass sink` does, so a receiver that shares its core with the
 * NAPI thread gives that core back.
 *
 * The XDP program that redirects to it (--program):
 *   libxdp     libxdp's own default program (xsk_socket__create loads it: bpf_redirect_map on the queue
 *              index, nothing else), attached alone (LIBXDP_SKIP_DISPATCHER): the cheapest redirect there is.
 *              It takes every frame of the queue, the kernel's own ARP/IPv6 chatter included.
 *   attached   the XDP program already attached to the interface (kbypass's steering program, with its
 *              parse and rule scan): the socket goes into that program's XSKMAP at index --queue (group 0,
 *              in-process steering's row). The same program `kbypass sink` is steered by, so the two rows
 *              differ only in user space. An occupied entry (another program's socket receives there) is
 *              refused, not overwritten (BPF_NOEXIST: no user-space lookup exists for an XSKMAP); the entry
 *              goes when the socket closes (the kernel removes a closing socket from the maps it is in,
 *              and only where the entry is still that socket), so a socket put there later is left alone.
 *
 * Output for scripts (kbypass.bench.kit): "receiving on IFACE queue Q" on stderr once the socket is bound,
 * then, on SIGINT/SIGTERM/SIGHUP, one JSON line on stdout: {"packets": N, "bytes": B, "seconds": S, "pps": P,
 * "wakeups": W, "program": ...}; seconds run from the first frame to the last.
 *
 * The parent's death is a SIGTERM (PR_SET_PDEATHSIG): a bench killed mid-run leaves no receiver behind.
 * (The signal follows the thread that started it: start it from a thread that outlives the run.)
 *
 * Usage: xdp_rxdrop --iface IF [--netns NAME] [--queue Q] [--program libxdp|attached] [--batch N]
 *                   [--frames N] [--ring-size N] [--cpu N]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <stdarg.h>
#include <xdp/libxdp.h>
#include <xdp/xsk.h>

#define FRAME_SIZE 2048u
#define MAX_BATCH 4096u
#define MAX_RING (1ul << 30) /* the rings' sizes are __u32 */

static volatile sig_atomic_t stop;
/* what die() takes down: libxdp detaches the program it loaded when the socket goes, and a program left on
 * the interface would be in the way of the next user */
static struct xsk_socket *xsk;
static struct xsk_umem *umem;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static void die(const char *what, int err) {
    fprintf(stderr, "xdp_rxdrop: error: %s: %s\n", what, strerror(err < 0 ? -err : err));
    if (xsk) xsk_socket__delete(xsk);
    if (umem) xsk_umem__delete(umem);
    exit(1);
}

static void usage(const char *msg) {
    fprintf(stderr, "xdp_rxdrop: error: %s\nusage: xdp_rxdrop --iface IF [--netns NAME] [--queue Q] "
                    "[--program libxdp|attached] [--batch N] [--frames N] [--ring-size N] [--cpu N]\n", msg);
    exit(2);
}

static unsigned long number(const char *opt, const char *s) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || !*s || *end) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s wants a number, not '%s'", opt, s);
        usage(msg);
    }
    return v;
}

/* libxdp and libbpf narrate at INFO/DEBUG (no bpffs for the dispatcher, the single-program fallback): keep
 * their warnings only, so the bench's output stays readable */
static int quiet_libxdp(enum libxdp_print_level level, const char *fmt, va_list ap) {
    return level == LIBXDP_WARN ? vfprintf(stderr, fmt, ap) : 0;
}

static int quiet_libbpf(enum libbpf_print_level level, const char *fmt, va_list ap) {
    return level == LIBBPF_WARN ? vfprintf(stderr, fmt, ap) : 0;
}

static int power_of_two(unsigned long v) { return v && !(v & (v - 1)); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Enter the named network namespace (as `ip netns exec` does, without its remount of /sys). */
static void enter_netns(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "/run/netns/%s", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(path, errno);
    if (setns(fd, CLONE_NEWNET)) die("setns", errno);
    close(fd);
}

/* The XSKMAP of the XDP program attached to ifindex (kbypass's steering program: "xsks_map"). */
static int attached_xskmap(int ifindex) {
    __u32 prog_id = 0;
    int err = bpf_xdp_query_id(ifindex, 0, &prog_id);
    if (err) die("looking up the attached XDP program", err);
    if (!prog_id) usage("--program attached: no XDP program is attached to the interface");
    int prog_fd = bpf_prog_get_fd_by_id(prog_id);
    if (prog_fd < 0) die("opening the attached XDP program", errno);
    __u32 map_ids[64];
    struct bpf_prog_info info = {0};
    __u32 len = sizeof info;
    info.nr_map_ids = 64;
    info.map_ids = (__u64)(unsigned long)map_ids;
    if (bpf_obj_get_info_by_fd(prog_fd, &info, &len)) die("reading the program's maps", errno);
    close(prog_fd);
    for (__u32 i = 0; i < info.nr_map_ids && i < 64; i++) {
        int map_fd = bpf_map_get_fd_by_id(map_ids[i]);
        if (map_fd < 0) continue;
        struct bpf_map_info minfo = {0};
        __u32 mlen = sizeof minfo;
        if (!bpf_obj_get_info_by_fd(map_fd, &minfo, &mlen) && minfo.type == BPF_MAP_TYPE_XSKMAP) return map_fd;
        close(map_fd);
    }
    usage("--program attached: the attached XDP program has no XSKMAP");
    return -1;
}

int main(int argc, char **argv) {
    const char *iface = NULL, *netns = NULL, *program = "libxdp";
    unsigned long queue = 0, batch = 64, frames = 16384, ring = 8192;
    long cpu = -1;
    static const struct option opts[] = {
        {"iface", required_argument, 0, 'i'}, {"netns", required_argument, 0, 'n'},
        {"queue", required_argument, 0, 'q'}, {"program", required_argument, 0, 'p'},
        {"batch", required_argument, 0, 'b'}, {"frames", required_argument, 0, 'f'},
        {"ring-size", required_argument, 0, 'r'}, {"cpu", required_argument, 0, 'c'},
        {0, 0, 0, 0},
    };
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (o) {
        case 'i': iface = optarg; break;
        case 'n': netns = optarg; break;
        case 'q': queue = number("--queue", optarg); break;
        case 'p': program = optarg; break;
        case 'b': batch = number("--batch", optarg); break;
        case 'f': frames = number("--frames", optarg); break;
        case 'r': ring = number("--ring-size", optarg); break;
        case 'c': cpu = (long)number("--cpu", optarg); break;
        default: usage("unknown option");
        }
    }
    /* before anything is set up: a parent gone before the prctl is caught by the getppid() check */
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGTERM)) die("PR_SET_PDEATHSIG", errno);
    if (getppid() != parent) die("the parent is gone", ESRCH);
    if (!iface) usage("--iface is required");
    if (strcmp(program, "libxdp") && strcmp(program, "attached")) usage("--program is libxdp or attached");
    if (!batch || batch > MAX_BATCH) usage("--batch is 1 to 4096");
    if (!power_of_two(ring) || ring > MAX_RING) usage("--ring-size must be a power of two up to 2^30");
    if (frames < ring) usage("--frames must be at least --ring-size (every fill slot holds a frame)");
    if (frames > SIZE_MAX / FRAME_SIZE || frames > UINT32_MAX)
        usage("--frames is too large: the UMEM is frames x 2048 bytes");
    if (queue > UINT32_MAX) usage("--queue is too large");
    if (cpu >= CPU_SETSIZE) usage("--cpu is too large");
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set)) die("--cpu", errno);
    }
    if (netns) enter_netns(netns);
    int ifindex = (int)if_nametoindex(iface);
    if (!ifindex) usage("no such interface (in this namespace): check --iface and --netns");
    /* a bare redirect program, no dispatcher in front of it (libxdp's multi-program dispatcher would add a
     * call per frame, and a pin in bpffs that a killed process leaves behind) */
    setenv("LIBXDP_SKIP_DISPATCHER", "1", 1);
    libxdp_set_print(quiet_libxdp);  /* its notes on the dispatcher fallback, not errors of ours */
    libbpf_set_print(quiet_libbpf);

    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL); /* the terminal or the session gone: stop and report, as for SIGTERM */

    size_t size = frames * FRAME_SIZE;
    void *area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (area == MAP_FAILED) die("mmap of the UMEM", errno);
    /* zeroed: libxdp sets every member of a ring but cached_prod, which starts at whatever was there */
    struct xsk_ring_prod fill = {0};
    struct xsk_ring_cons comp = {0}, rx = {0};
    struct xsk_umem_config ucfg = {.fill_size = (__u32)ring, .comp_size = (__u32)ring, .frame_size = FRAME_SIZE};
    int err = xsk_umem__create(&umem, area, size, &fill, &comp, &ucfg);
    if (err) die("xsk_umem__create", err);
    int attached = !strcmp(program, "attached");
    struct xsk_socket_config scfg = {
        .rx_size = (__u32)ring,
        .libxdp_flags = attached ? XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD : 0,
        .bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP,
    };
    err = xsk_socket__create(&xsk, iface, (__u32)queue, umem, &rx, NULL, &scfg);
    if (err) die("xsk_socket__create", err);
    int fd = xsk_socket__fd(xsk);
    if (attached) {
        int map_fd = attached_xskmap(ifindex);
        __u32 key = (__u32)queue;
        if (bpf_map_update_elem(map_fd, &key, &fd, BPF_NOEXIST)) {
            int e = errno;
            close(map_fd);
            if (e != EEXIST) die("registering the socket in the XSKMAP", e);
            xsk_socket__delete(xsk);
            xsk_umem__delete(umem);
            char msg[200];
            snprintf(msg, sizeof msg, "--program attached: queue %lu's XSKMAP entry is taken (another program's "
                     "socket receives there): stop it, or use another --queue", queue);
            usage(msg);
        }
        close(map_fd); /* the entry is the socket's: it goes when the socket closes, ours or not by then */
    }

    /* Lend every ring slot a frame; frames past the ring stay unused (the sink lends half its UMEM). */
    __u32 idx;
    if (xsk_ring_prod__reserve(&fill, (__u32)ring, &idx) != ring) die("filling the fill ring", EIO);
    for (__u32 i = 0; i < ring; i++) *xsk_ring_prod__fill_addr(&fill, idx + i) = (__u64)i * FRAME_SIZE;
    xsk_ring_prod__submit(&fill, (__u32)ring);

    fprintf(stderr, "receiving on %s queue %lu (program %s, copy mode, need_wakeup, batch %lu)\n", iface, queue,
            program, batch);
    unsigned long long packets = 0, bytes = 0, wakeups = 0;
    double first = 0, last = 0;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    while (!stop) {
        __u32 idx_rx;
        __u32 n = xsk_ring_cons__peek(&rx, (__u32)batch, &idx_rx);
        if (!n) {
            if (xsk_ring_prod__needs_wakeup(&fill)) {
                wakeups++;
                recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
            }
            if (!xsk_ring_cons__peek(&rx, 1, &idx_rx)) {
                poll(&pfd, 1, 50);
                continue;
            }
            xsk_ring_cons__cancel(&rx, 1);
            continue;
        }
        __u32 idx_fq = 0;
        /* the fill ring has room: every frame we got is one the kernel took off it */
        while (xsk_ring_prod__reserve(&fill, n, &idx_fq) != n) {
            if (stop) break;
        }
        if (stop) break;
        for (__u32 i = 0; i < n; i++) {
            const struct xdp_desc *d = xsk_ring_cons__rx_desc(&rx, idx_rx + i);
            bytes += d->len;
            *xsk_ring_prod__fill_addr(&fill, idx_fq + i) = xsk_umem__extract_addr(d->addr) & ~(__u64)(FRAME_SIZE - 1);
        }
        xsk_ring_prod__submit(&fill, n);
        xsk_ring_cons__release(&rx, n);
        last = now();
        if (!packets) first = last;
        packets += n;
    }
    double seconds = packets ? (last > first ? last - first : 1e-9) : 0;
    printf("{\"packets\": %llu, \"bytes\": %llu, \"seconds\": %.6f, \"pps\": %.1f, \"wakeups\": %llu, "
           "\"program\": \"%s\", \"batch\": %lu}\n",
           packets, bytes, seconds, seconds > 0 ? packets / seconds : 0.0, wakeups, program, batch);
    fflush(stdout);
    xsk_socket__delete(xsk); /* and with it its XSKMAP entry, if still its own */
    xsk_umem__delete(umem);
    munmap(area, size);
    return 0;
}
