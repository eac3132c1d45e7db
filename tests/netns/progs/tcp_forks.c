/* tcp_forks.c: a classic TCP server for `kbypass run` tests (tests/netns/test_run_tcp_fork.py), plain libc.
 *
 *   tcp_forks fork IP PORT N        accept N connections, fork a child per connection (inetd style: the parent
 *                                   closes its copy), the child echoes until EOF; the parent reaps them
 *   tcp_forks closefork IP PORT N   accept one connection, write "bye" and close it (its peer keeps its end:
 *                                   the connection finishes in FIN_WAIT2), then as fork with N
 *   tcp_forks relisten IP PORT      accept one connection, fork a child that echoes it; the parent closes its
 *                                   listener (the child its copy), listens on the same port again (SO_REUSEADDR, as
 *                                   servers restart; EADDRINUSE retried for up to a second)
 *                                   and echoes one more connection itself; says "relisten ok" or the errno
 *   tcp_forks echo IP PORT          one process: accept one connection, echo until EOF or an error; prints
 *                                   "read: <errno name>" when a read fails (the control plane test); keepalive
 *                                   after 1 s idle, and "echo done" 2 s after the connection
 *   tcp_forks exec IP PORT          accept one connection, echo its first message, then exec cat on it (stdin
 *                                   and stdout the connection, inetd's way): cat echoes the rest
 *   tcp_forks execfail IP PORT      as exec, but the exec fails (no such program): the app echoes the rest itself
 *   tcp_forks spawn IP PORT         as exec, but the handler is started with posix_spawnp, its file actions
 *                                   dup2ing the connection (FD_CLOEXEC) onto the child's stdin and stdout; the
 *                                   parent closes its copy, waits for the child, then echoes one more connection
 *                                   itself on the listener it kept
 *   tcp_forks spawnfd IP PORT       as spawn, without file actions: the child (sh) inherits the connection as fd 9
 *                                   (no FD_CLOEXEC) and runs cat on it
 *   tcp_forks epollfork IP PORT     accept one connection, echo each message as epoll says it is readable;
 *                                   after the first, fork a child that exits at once (a helper, system()'s
 *                                   way): the connection, in epoll, goes on in the parent
 *   tcp_forks forkfds IP PORT       fork a child that prints "child eventfds N": the eventfds it holds (the
 *                                   shim's flusher's is the parent's own, not for a child to drain)
 *   tcp_forks connecting IP PORT DST DPORT [block]  a non-blocking connect to DST:DPORT (one that never answers), then
 *                                   waits for a line on stdin (the control plane killed meanwhile) and prints
 *                                   "connect: <errno name or 0> read: <errno name or 0>" once poll says it is done;
 *                                   block: a blocking connect, "connect: <errno name or 0>" when it returns
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* a listening socket (-1 and a line with the errno: the errno kept) */
static int listener(const char *ip, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 16) < 0) {
        int e = errno;
        printf("listen: %s\n", strerror(e));
        fflush(stdout);
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int echo(int c) {
    char buf[65536];
    for (;;) {
        ssize_t n = read(c, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            printf("read: %s\n", strerrorname_np(errno));
            fflush(stdout);
            return -1;
        }
        if (n == 0) return 0;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(c, buf + off, (size_t)(n - off));
            if (w < 0) {
                printf("write: %s\n", strerrorname_np(errno));
                fflush(stdout);
                return -1;
            }
            off += w;
        }
    }
}

/* the child's copy of the listener is closed once `closed` (a pipe) says so (-1: not told) */
static void serve_in_child(int l, int c, int closed) {
    pid_t p = fork();
    if (p == 0) {
        close(l);
        if (closed >= 0 && write(closed, "x", 1) != 1) _exit(1);
        int r = echo(c);
        close(c);
        _exit(r ? 1 : 0);
    }
    close(c);
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    signal(SIGPIPE, SIG_IGN);
    const char *mode = argv[1], *ip = argv[2];
    int port = atoi(argv[3]), l = listener(ip, port);
    if (l < 0) return 1;
    printf("listening\n");
    fflush(stdout);
    if (!strcmp(mode, "closefork")) {
        int c = accept(l, NULL, NULL);
        if (c < 0 || write(c, "bye\n", 4) != 4) return 1;
        close(c);
        mode = "fork";
    }
    if (!strcmp(mode, "fork")) {
        int n = argc > 4 ? atoi(argv[4]) : 1, bad = 0;
        for (int i = 0; i < n; i++) {
            int c = accept(l, NULL, NULL);
            if (c < 0) return 1;
            serve_in_child(l, c, -1);
        }
        for (int i = 0, st; i < n; i++) bad += wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st);
        printf("children done, %d failed\n", bad);
        return bad != 0;
    }
    if (!strcmp(mode, "relisten")) {
        int c = accept(l, NULL, NULL);
        if (c < 0) return 1;
        int closed[2];
        char x;
        if (pipe(closed) < 0) return 1;
        serve_in_child(l, c, closed[1]);
        close(l);
        if (read(closed[0], &x, 1) != 1) return 1; /* the child's copy too: the old listener is gone */
        for (int i = 0; i < 100 && (l = listener(ip, port)) < 0 && errno == EADDRINUSE; i++) usleep(10000);
        if (l < 0) return 1;
        printf("relisten ok\n");
        fflush(stdout);
        int c2 = accept(l, NULL, NULL);
        int r = c2 < 0 ? -1 : echo(c2);
        int st;
        wait(&st);
        printf("done %d %d\n", r, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        return r != 0;
    }
    if (!strcmp(mode, "exec")) {
        int c = accept(l, NULL, NULL);
        char buf[4096];
        ssize_t k = c < 0 ? -1 : read(c, buf, sizeof(buf));
        if (k <= 0 || write(c, buf, (size_t)k) != k) return 1;
        close(l);
        dup2(c, 0), dup2(c, 1), close(c);
        execlp("cat", "cat", (char *)NULL);
        return 1;
    }
    if (!strcmp(mode, "execfail")) {
        int c = accept(l, NULL, NULL);
        char buf[4096];
        ssize_t k = c < 0 ? -1 : read(c, buf, sizeof(buf));
        if (k <= 0 || write(c, buf, (size_t)k) != k) return 1;
        execlp("/nonexistent/handler", "handler", (char *)NULL);
        printf("exec failed: %s\n", strerror(errno));
        fflush(stdout);
        return echo(c) != 0;
    }
    if (!strcmp(mode, "spawn") || !strcmp(mode, "spawnfd")) {
        int c = accept4(l, NULL, NULL, SOCK_CLOEXEC), st;
        char buf[4096];
        ssize_t k = c < 0 ? -1 : read(c, buf, sizeof(buf));
        if (k <= 0 || write(c, buf, (size_t)k) != k) return 1;
        pid_t pid;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        char *cat[] = {"cat", NULL}, *sh[] = {"sh", "-c", "exec cat <&9 >&9", NULL};
        if (!strcmp(mode, "spawn")) {
            posix_spawn_file_actions_adddup2(&fa, c, 0), posix_spawn_file_actions_adddup2(&fa, c, 1);
        } else if (dup2(c, 9) != 9) {
            return 1; /* fd 9 without FD_CLOEXEC */
        }
        int r = posix_spawnp(&pid, mode[5] ? "sh" : "cat", &fa, NULL, mode[5] ? sh : cat, environ);
        posix_spawn_file_actions_destroy(&fa);
        if (r) return printf("posix_spawnp: %s\n", strerror(r)), 1;
        close(c), close(9);
        waitpid(pid, &st, 0);
        printf("spawned child done %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        fflush(stdout);
        int c2 = accept(l, NULL, NULL), bad = c2 < 0 || echo(c2) != 0;
        close(c2); /* closed, not left to the exit (which would hand an open one to the kernel) */
        return bad;
    }
    if (!strcmp(mode, "epollfork")) {
        int c = accept(l, NULL, NULL), ep = epoll_create1(0), msgs = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42}, got;
        if (c < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0) return 1;
        for (;;) {
            int n = epoll_wait(ep, &got, 1, 5000);
            if (n != 1 || got.data.u64 != 42) {
                printf("epoll_wait: %d\n", n);
                return 1;
            }
            char buf[4096];
            ssize_t k = read(c, buf, sizeof(buf));
            if (k <= 0) break;
            if (write(c, buf, (size_t)k) != k) return 1;
            if (++msgs == 1) {
                pid_t p = fork();
                if (p == 0) _exit(0);
                waitpid(p, NULL, 0);
            }
        }
        printf("epoll done %d\n", msgs);
        return 0;
    }
    if (!strcmp(mode, "forkfds")) {
        pid_t p = fork();
        if (p == 0) {
            int n = 0;
            char path[64], link[64];
            for (int fd = 0; fd < 1024; fd++) {
                snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
                ssize_t k = readlink(path, link, sizeof(link) - 1);
                n += k > 0 && (link[k] = 0, strstr(link, "eventfd") != NULL);
            }
            printf("child eventfds %d\n", n);
            fflush(stdout);
            _exit(0);
        }
        return p < 0 || waitpid(p, NULL, 0) < 0;
    }
    if (!strcmp(mode, "connecting") && argc > 5) {
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[5]))};
        int block = argc > 6 && !strcmp(argv[6], "block");
        int c = socket(AF_INET, SOCK_STREAM | (block ? 0 : SOCK_NONBLOCK), 0), err = 0;
        inet_pton(AF_INET, argv[4], &to.sin_addr);
        if (block) { /* the control plane is killed while connect waits */
            printf("connecting\n");
            fflush(stdout);
            int r = connect(c, (struct sockaddr *)&to, sizeof(to));
            printf("connect: %s\n", r < 0 ? strerrorname_np(errno) : "0");
            return 0;
        }
        if (c < 0 || (connect(c, (struct sockaddr *)&to, sizeof(to)) < 0 && errno != EINPROGRESS)) return 1;
        printf("connecting\n");
        fflush(stdout);
        char line[16];
        if (!fgets(line, sizeof(line), stdin)) return 1;
        struct pollfd p = {c, POLLOUT, 0};
        socklen_t el = sizeof(err);
        if (poll(&p, 1, 5000) != 1 || getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &el) < 0) return 1;
        char b;
        ssize_t k = read(c, &b, 1);
        printf("connect: %s read: %s\n", err ? strerrorname_np(err) : "0", k < 0 ? strerrorname_np(errno) : "0");
        return 0;
    }
    int c = accept(l, NULL, NULL);
    printf("accepted\n");
    fflush(stdout);
    if (c < 0) return 1;
    /* keepalive after 1 s idle: a timer of the shim's TCP is armed when the control plane dies */
    int one = 1;
    setsockopt(c, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(c, IPPROTO_TCP, TCP_KEEPIDLE, &one, sizeof(one));
    setsockopt(c, IPPROTO_TCP, TCP_KEEPINTVL, &one, sizeof(one));
    int r = echo(c) != 0;
    sleep(2); /* the process goes on after the connection (its timers must not touch the rings that went) */
    printf("echo done\n");
    fflush(stdout);
    return r;
}
