/* udp_doors.c: the doors to recv that are not recv, run under `kbypass run` by tests/netns/test_run.py:
 * built with -O2 -D_FORTIFY_SOURCE=2 (so recv/recvfrom/read/poll become __recv_chk/__recvfrom_chk/__read_chk/
 * __poll_chk), plus readv and epoll_pwait2. Prints one line per check; exits 1 at the first failure.
 * usage: udp_doors IP PORT   (then: "ready" -> the peer sends d0..d5, d6 0.5 s later -> "done", and waits for a signal) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define CHECK(cond, what)                                                     \
    do {                                                                      \
        if (!(cond)) {                                                        \
            printf("FAIL %s (errno %d %s)\n", what, errno, strerror(errno)); \
            fflush(stdout);                                                   \
            exit(1);                                                          \
        }                                                                     \
        printf("ok %s\n", what);                                              \
        fflush(stdout);                                                       \
    } while (0)

int main(int argc, char **argv) {
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))}, from;
    inet_pton(AF_INET, argv[1], &me.sin_addr);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(bind(s, (struct sockaddr *)&me, sizeof(me)) == 0, "bind");
    struct timeval tv = {10, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    printf("ready\n");
    fflush(stdout);
    char buf[2048];
    size_t n = (size_t)argc * 100; /* not a compile-time constant: fortify picks the _chk calls */
    struct pollfd p = {s, POLLIN, 0};
    CHECK(poll(&p, (nfds_t)(argc - 2), 10000) == 1, "__poll_chk sees the first datagram");
    CHECK(recv(s, buf, n, 0) == 2 && !memcmp(buf, "d0", 2), "__recv_chk");
    socklen_t fl = sizeof(from);
    CHECK(recvfrom(s, buf, n, 0, (struct sockaddr *)&from, &fl) == 2 && !memcmp(buf, "d1", 2), "__recvfrom_chk");
    CHECK(read(s, buf, n) == 2 && !memcmp(buf, "d2", 2), "__read_chk");
    struct iovec v[2] = {{buf, 1}, {buf + 1, 100}};
    CHECK(readv(s, v, 2) == 2 && !memcmp(buf, "d3", 2), "readv");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 7}, got;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) == 0, "epoll_ctl");
    struct timespec ts = {10, 0};
    CHECK(epoll_pwait2(ep, &got, 1, &ts, NULL) == 1 && got.data.u32 == 7, "epoll_pwait2 sees the last datagram");
    CHECK(recv(s, buf, n, 0) == 2 && !memcmp(buf, "d4", 2), "d4");
    /* the kernel's recvmmsg without MSG_WAITFORONE waits for all vlen (d6 comes 0.5 s after d5) */
    char b5[16], b6[16];
    struct iovec i5 = {b5, sizeof(b5)}, i6 = {b6, sizeof(b6)};
    struct mmsghdr mv[2] = {{.msg_hdr = {.msg_iov = &i5, .msg_iovlen = 1}}, {.msg_hdr = {.msg_iov = &i6, .msg_iovlen = 1}}};
    CHECK(recvmmsg(s, mv, 2, 0, NULL) == 2 && !memcmp(b6, "d6", 2), "recvmmsg waits for all its datagrams");
    printf("done\n");
    fflush(stdout);
    pause(); /* the socket stays for the test to read its counters */
    return 0;
}
