/* tcp_shutrd.c IP PORT: recv with length 0 and shutdown(SHUT_RD) as the app sees them, one line each, with
 * no timing but "waited"/"at once": run on kernel sockets and under `kbypass run`, the lines must be equal.
 * The peer (tests/netns/test_run_tcp_edges.py) sends "before", and 5000 bytes after our "go". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void show(const char *what, ssize_t r, double t0) {
    printf("%s: %zd %s %s\n", what, r, r < 0 ? strerror(errno) : "-", now() - t0 > 0.2 ? "waited" : "at once");
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    if (connect(s, (struct sockaddr *)&to, sizeof(to))) {
        perror("connect");
        return 1;
    }
    struct timeval tv = {0, 300000};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[8192];
    struct pollfd p = {s, POLLIN, 0};
    poll(&p, 1, 3000); /* "before" is here */
    double t0 = now();
    show("recv 0 with data queued", recv(s, buf, 0, 0), t0);
    t0 = now();
    show("recv of the data", recv(s, buf, sizeof(buf), 0), t0);
    t0 = now();
    show("recv 0, nothing queued, SO_RCVTIMEO 300 ms", recv(s, buf, 0, 0), t0);
    t0 = now();
    show("recv 0, nothing queued, MSG_DONTWAIT", recv(s, buf, 0, MSG_DONTWAIT), t0);
    t0 = now();
    show("shutdown SHUT_RD", shutdown(s, SHUT_RD), t0);
    p.events = POLLIN | POLLOUT | POLLRDHUP;
    poll(&p, 1, 0);
    printf("poll after SHUT_RD: %s%s%s%s\n", p.revents & POLLIN ? "IN " : "", p.revents & POLLOUT ? "OUT " : "",
           p.revents & POLLRDHUP ? "RDHUP " : "", p.revents & POLLHUP ? "HUP" : "");
    t0 = now();
    show("recv after SHUT_RD, nothing queued", recv(s, buf, sizeof(buf), 0), t0);
    send(s, "go", 2, 0);
    long total = 0;
    for (double end = now() + 5; total < 5000 && now() < end;) {
        ssize_t n = recv(s, buf, sizeof(buf), 0);
        if (n > 0) total += n;
        else if (n == 0) usleep(10000); /* SHUT_RD: 0 rather than a wait */
        else break;
    }
    printf("read after SHUT_RD: %ld\n", total);
    t0 = now();
    show("send after SHUT_RD", send(s, "ok", 2, MSG_NOSIGNAL), t0);
    sleep(1); /* the peer reads "ok" */
    return 0;
}
