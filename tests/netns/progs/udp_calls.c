/* udp_calls.c: the socket calls an app makes beyond recvfrom/sendto, run under `kbypass run` by
 * tests/netns/test_run.py against a kernel peer. Prints one line per check; exits 1 at the first failure.
 * usage: udp_calls IP PORT   (then: "ready" -> the peer sends m0..m3 -> we answer it) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, what)                                                       \
    do {                                                                        \
        if (!(cond)) {                                                          \
            printf("FAIL %s (errno %d %s)\n", what, errno, strerror(errno));   \
            fflush(stdout);                                                     \
            exit(1);                                                            \
        }                                                                       \
        printf("ok %s\n", what);                                                \
        fflush(stdout);                                                         \
    } while (0)

int main(int argc, char **argv) {
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))}, peer;
    inet_pton(AF_INET, argv[1], &me.sin_addr);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(bind(s, (struct sockaddr *)&me, sizeof(me)) == 0, "bind");
    struct timeval tv = {0, 200000};
    CHECK(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0, "SO_RCVTIMEO set");
    char buf[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ssize_t n = recv(s, buf, sizeof(buf), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(n < 0 && errno == EAGAIN && waited > 0.15 && waited < 2.0, "SO_RCVTIMEO times out");
    tv.tv_usec = 0, tv.tv_sec = 10;
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int one = 1;
    CHECK(setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) == 0, "SO_TIMESTAMPNS set");
    int tos = 0x10;
    CHECK(setsockopt(s, IPPROTO_IP, IP_TOS, &tos, sizeof(tos)) == 0, "IP_TOS set");
    printf("ready\n");
    fflush(stdout);

    struct pollfd p = {s, POLLIN, 0};
    CHECK(poll(&p, 1, 10000) == 1 && (p.revents & POLLIN), "poll sees the first datagram");
    int avail = -1;
    CHECK(ioctl(s, FIONREAD, &avail) == 0 && avail == 2, "FIONREAD is the next datagram's size");

    char cbuf[CMSG_SPACE(sizeof(struct timespec))];
    struct iovec iov = {buf, sizeof(buf)};
    struct msghdr m = {.msg_name = &peer, .msg_namelen = sizeof(peer), .msg_iov = &iov, .msg_iovlen = 1,
                       .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    n = recvmsg(s, &m, 0);
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    CHECK(n == 2 && !memcmp(buf, "m0", 2), "recvmsg m0");
    CHECK(c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS, "SCM_TIMESTAMPNS comes with it");

    int d = dup(s);
    n = recv(d, buf, sizeof(buf), 0);
    CHECK(n == 2 && !memcmp(buf, "m1", 2), "recv on a dup gets m1");
    close(s);
    struct mmsghdr mm[2];
    char b2[2][64];
    struct iovec io2[2] = {{b2[0], 64}, {b2[1], 64}};
    memset(mm, 0, sizeof(mm));
    for (int i = 0; i < 2; i++) mm[i].msg_hdr.msg_iov = &io2[i], mm[i].msg_hdr.msg_iovlen = 1;
    int got = recvmmsg(d, mm, 2, MSG_WAITFORONE, NULL);
    if (got == 1) got += recvmmsg(d, mm + 1, 1, 0, NULL);
    CHECK(got == 2 && !memcmp(b2[0], "m2", 2) && !memcmp(b2[1], "m3", 2), "recvmmsg m2 m3 after closing the first fd");

    CHECK(dup2(d, 100) == 100, "dup2");
    CHECK(fcntl(100, F_SETFL, fcntl(100, F_GETFL) | O_NONBLOCK) == 0, "O_NONBLOCK");
    n = recv(100, buf, sizeof(buf), 0);
    CHECK(n < 0 && errno == EAGAIN, "a nonblocking recv with nothing says EAGAIN");

    struct mmsghdr out[2];
    struct iovec oi[2] = {{"r0", 2}, {"r1", 2}};
    memset(out, 0, sizeof(out));
    for (int i = 0; i < 2; i++)
        out[i].msg_hdr.msg_iov = &oi[i], out[i].msg_hdr.msg_iovlen = 1, out[i].msg_hdr.msg_name = &peer,
        out[i].msg_hdr.msg_namelen = sizeof(peer);
    CHECK(sendmmsg(100, out, 2, 0) == 2, "sendmmsg r0 r1");

    for (int fd = 3; fd < 1024; fd++) /* what daemons do: the shim's own fds are not the app's to close */
        if (fd != 100 && fd != d) close(fd);
    CHECK(fcntl(100, F_GETFD) >= 0, "closing every other fd");

    pid_t child = fork();
    if (child == 0) {
        /* the child's copy is the kernel socket: it may use it, the parent keeps the rings */
        char cb[8];
        ssize_t k = recv(100, cb, sizeof(cb), MSG_DONTWAIT);
        _exit(k < 0 && errno == EAGAIN ? 0 : 3);
    }
    int st;
    waitpid(child, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a fork's child falls back to the kernel socket");
    CHECK(write(100, "after-fork", 10) < 0 && errno == EDESTADDRREQ, "write on an unconnected socket: EDESTADDRREQ");
    CHECK(connect(100, (struct sockaddr *)&peer, sizeof(peer)) == 0, "connect");
    CHECK(write(100, "after-fork", 10) == 10, "write after connect, after the fork");
    printf("done\n");
    fflush(stdout);
    sleep(2); /* for the test to read our counters */
    return 0;
}
