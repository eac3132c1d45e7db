/* kbp_cp.c: the shim's connection to the control plane (kbypass/cp/protocol.py is the protocol).
 *
 * One SOCK_SEQPACKET connection per process, made at the first socket worth accelerating, CLOEXEC (an exec'd
 * image starts afresh) and closed in a fork's child (kbp_fork.c: it makes its own when it needs one): so the
 * control plane sees the app's end, kill -9 included, the moment the last holder goes, and drops its rules and
 * sockets then. Replies are read
 * with a tiny JSON reader: the fields the shim needs are flat numbers and strings of our own server's
 * compact JSON.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "kbp.h"

static int cp_fd = -1;
static int cp_state; /* 0 not tried, 1 connected, -1 none (everything stays on the kernel) */
static struct kbp_page_hdr {
    uint32_t magic, version, slots, pad;
    uint64_t tcp[KBP_PAGE_TCP];
} *page;
_Static_assert(sizeof(struct kbp_page_hdr) <= 64, "the header is shimpage.HEADER");

uint64_t *kbp_page_tcp(void) { return page ? page->tcp : NULL; }

int kbp_cp_fd(void) { return cp_state == 1 ? cp_fd : -1; }

static int send_req(const char *req, int fd_out) {
    struct iovec iov = {(void *)req, strlen(req)};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd_out >= 0) {
        memset(&u, 0, sizeof(u));
        m.msg_control = u.buf;
        m.msg_controllen = sizeof(u.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd_out, sizeof(int));
    }
    ssize_t r;
    do r = kbp_real.sendmsg(cp_fd, &m, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -1 : 0;
}

int kbp_cp_retry; /* the last refusal said "retry": true (the same request may succeed later) */
char kbp_cp_refusal[256]; /* the last error (kbp_tcpadopt.c says it once) */

void kbp_cp_refused(const char *why) {
    size_t n = strnlen(why, sizeof(kbp_cp_refusal) - 1);
    memcpy(kbp_cp_refusal, why, n);
    kbp_cp_refusal[n] = 0;
}

int kbp_cp_call(const char *req, int fd_out, char *buf, size_t cap, int *fds_in, int max_fds, int *nfds) {
    if (nfds) *nfds = 0;
    kbp_cp_retry = 0, kbp_cp_refusal[0] = 0;
    if (cp_state != 1) {
        snprintf(buf, cap, "no control plane");
        return -1;
    }
    if (send_req(req, fd_out) < 0) {
        kbp_cp_lost();
        snprintf(buf, cap, "the control plane went away");
        return -1;
    }
    union {
        char b[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {buf, cap - 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof(u.b)};
    ssize_t n;
    do n = kbp_real.recvmsg(cp_fd, &m, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        kbp_cp_lost();
        snprintf(buf, cap, "the control plane went away");
        return -1;
    }
    buf[n] = 0;
    int got = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (fds_in && got < max_fds) fds_in[got++] = fd;
            else kbp_real.close(fd);
        }
    }
    if (nfds) *nfds = got;
    if (strncmp(buf, "{\"ok\":true", 10) != 0) {
        char err[512];
        if (kbp_json_str(buf, "error", err, sizeof(err)) < 0) snprintf(err, sizeof(err), "a malformed reply");
        kbp_cp_retry = strstr(buf, "\"retry\":true") != NULL; /* protocol.error: only a retryable one has it */
        kbp_cp_refused(err);
        for (int i = 0; i < got; i++) kbp_real.close(fds_in[i]);
        if (nfds) *nfds = 0;
        snprintf(buf, cap, "%s", err);
        return -1;
    }
    return 0;
}

static void send_page(void) {
    int fd = memfd_create("kbypass-shim-counters", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return;
    void *p = MAP_FAILED;
    if (ftruncate(fd, KBP_PAGE_BYTES) == 0 &&
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
        p = mmap(NULL, KBP_PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
        page = p;
        page->magic = KBP_PAGE_MAGIC;
        page->version = KBP_PAGE_VERSION;
        page->slots = KBP_PAGE_SLOTS;
        char buf[512];
        if (kbp_cp_call("{\"op\":\"shim_page\"}", fd, buf, sizeof(buf), NULL, 0, NULL) < 0)
            kbp_verbose("no counters for 'kbypass run --status': %s", buf);
    }
    kbp_real.close(fd);
}

struct kbp_slot *kbp_page_slot(void) {
    if (!page) return NULL;
    struct kbp_slot *slots = (struct kbp_slot *)((char *)page + 64);
    for (int i = 0; i < KBP_PAGE_SLOTS; i++)
        if (!slots[i].used) {
            memset(&slots[i], 0, sizeof(slots[i]));
            return &slots[i];
        }
    return NULL;
}

/* TCP socket s's slot (if it has one) as s is now: its addresses, role and state (kbp_tcp_changed says again) */
void kbp_page_show_tcp(const struct kbp_sock *s) {
    struct kbp_slot *t = s->slot;
    if (!t) return;
    t->fd = (uint32_t)s->fd;
    memcpy(t->ip, &s->tcp_local.sin_addr, 4);
    t->port = ntohs(s->tcp_local.sin_port);
    t->proto = IPPROTO_TCP;
    t->role = (uint8_t)s->tcp_role;
    t->state = s->tcp_state;
    memcpy(t->peer_ip, &s->tcp_peer.sin_addr, 4);
    t->peer_port = ntohs(s->tcp_peer.sin_port);
}

int kbp_cp_connect(void) {
    if (cp_state) return cp_state == 1 ? 0 : -1;
    cp_state = -1;
    const char *path = kbp_env("KBYPASS_CP_SOCKET");
    if (!path || !*path) {
        kbp_verbose("KBYPASS_CP_SOCKET is not set (start the app with 'kbypass run'): sockets stay on the kernel");
        return -1;
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path)) return -1;
    strcpy(a.sun_path, path);
    cp_fd = kbp_real.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (cp_fd < 0) return -1;
    struct timeval tv = {10, 0}; /* a control plane that does not answer: the app goes on on the kernel */
    kbp_real.setsockopt(cp_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (kbp_real.connect(cp_fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        kbp_say("warning: cannot reach the control plane at %s (%s): the app runs on kernel sockets", path,
                strerror(errno));
        kbp_real.close(cp_fd);
        cp_fd = -1;
        return -1;
    }
    char comm[64] = "?", req[256], buf[1024];
    int cf = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
    if (cf >= 0) {
        ssize_t n = kbp_real.read(cf, comm, sizeof(comm) - 1);
        comm[n > 0 ? n : 0] = 0;
        comm[strcspn(comm, "\n\"\\")] = 0;
        kbp_real.close(cf);
    }
    snprintf(req, sizeof(req), "{\"op\":\"hello\",\"version\":1,\"command\":\"%s (kbypass run)\"}", comm);
    cp_state = 1;
    if (kbp_cp_call(req, -1, buf, sizeof(buf), NULL, 0, NULL) < 0) {
        kbp_say("warning: the control plane at %s refused us (%s): the app runs on kernel sockets", path, buf);
        if (cp_fd >= 0) kbp_real.close(cp_fd);
        cp_fd = -1;
        cp_state = -1;
        return -1;
    }
    send_page();
    return 0;
}

void kbp_cp_lost(void) {
    if (cp_state != 1) return;
    cp_state = -1;
    kbp_say("error: the control plane went away: accelerated sockets fall back to the kernel (restart the app "
            "with 'kbypass run' to accelerate it again)");
    kbp_tcp_cp_lost(); /* TCP connections to the kernel's TCP (or reset), while the rings still send */
    kbp_fall_back_all();
    kbp_real.close(cp_fd);
    cp_fd = -1;
}

/* a fork's child: the connection is the parent's (kbp_fork.c's atfork handler). The child makes its own at its
 * first socket worth accelerating (a "hello" of its own: the control plane counts it as another app, and drops its
 * rules when it exits, the parent's stay); a parent that had no control plane (none, refused, lost) gives its
 * children none either, nor the warning once per child. */
void kbp_cp_forget(void) {
    if (cp_fd >= 0) kbp_real.close(cp_fd);
    cp_fd = -1;
    cp_state = cp_state < 0 ? -1 : 0;
    page = NULL;
}

static const char *json_find(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(json, pat);
    return p ? p + strlen(pat) : NULL;
}

int kbp_json_int(const char *json, const char *key, long long *out) {
    const char *p = json_find(json, key);
    if (!p) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (end == p || errno) return -1;
    *out = v;
    return 0;
}

int kbp_json_str(const char *json, const char *key, char *out, size_t cap) {
    const char *p = json_find(json, key);
    if (!p || *p != '"' || cap == 0) return -1;
    size_t n = 0;
    for (p++; *p && *p != '"'; p++) {
        char c = *p;
        if (c == '\\') {
            p++;
            if (!*p) return -1;
            c = *p == 'n' ? ' ' : *p == 't' ? ' ' : *p;
            if (*p == 'u') { /* \uXXXX: shown as '?' */
                for (int i = 0; i < 4 && p[1]; i++) p++;
                c = '?';
            }
        }
        if (n + 1 < cap) out[n++] = c;
    }
    if (*p != '"') return -1;
    out[n] = 0;
    return 0;
}

void kbp_cp_accelerate_req(char *req, size_t cap, const struct sockaddr_in *peer) {
    char ip[INET_ADDRSTRLEN];
    if (peer && inet_ntop(AF_INET, &peer->sin_addr, ip, sizeof(ip)))
        snprintf(req, cap, "{\"op\":\"accelerate\",\"peer\":\"%s\",\"peer_port\":%d}", ip, ntohs(peer->sin_port));
    else
        snprintf(req, cap, "{\"op\":\"accelerate\"}");
}
