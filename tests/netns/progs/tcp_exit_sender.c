/* tcp_exit_sender.c connect|accept IP PORT close|shutdown|exit|closed|reader|handler: a connection (to IP:PORT, or the first one
 * accepted on it: "ready" said once listening), stdin to EOF written to it (nc -q0 PEER PORT < file, a
 * server's response), then the end the mode names, and exit() at once: close then exit, shutdown(SHUT_WR) then
 * exit (nc -q0), or exit with the connection still open; closed: close, 0.2 s, exit (nothing left to send);
 * reader: exit with the connection open while another thread of the app is blocked in recv on it; handler: recv
 * on it until SIGTERM, whose handler calls exit() (a server's shutdown on `kill`).
 * Says "wrote N" before the end and "exiting T" last (T: CLOCK_MONOTONIC in ns, for the exit's duration). */
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void bye(int sig) { exit(sig == SIGTERM ? 0 : 1); }

static void *reader(void *arg) {
    char b[16];
    recv(*(int *)arg, b, sizeof(b), 0); /* the peer sends nothing: blocked until the exit */
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &a.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (!strcmp(argv[1], "accept")) {
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 8)) {
            perror("listen");
            return 1;
        }
        printf("ready\n");
        s = accept(s, NULL, NULL);
    } else if (connect(s, (struct sockaddr *)&a, sizeof(a))) {
        perror("connect");
        return 1;
    }
    pthread_t th;
    if (!strcmp(argv[4], "reader")) pthread_create(&th, NULL, reader, &s);
    static char buf[1 << 16];
    long total = 0;
    ssize_t n;
    while ((n = read(0, buf, sizeof(buf))) > 0)
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(s, buf + off, (size_t)(n - off));
            if (w <= 0) {
                perror("write");
                return 1;
            }
            off += w, total += w;
        }
    printf("wrote %ld\n", total);
    if (!strcmp(argv[4], "handler")) {
        signal(SIGTERM, bye);
        recv(s, buf, sizeof(buf), 0); /* the peer sends nothing: until SIGTERM */
    }
    if (!strcmp(argv[4], "close") || !strcmp(argv[4], "closed")) close(s);
    else if (!strcmp(argv[4], "shutdown")) shutdown(s, SHUT_WR);
    if (!strcmp(argv[4], "closed")) usleep(200000);
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    printf("exiting %lld\n", (long long)t.tv_sec * 1000000000 + t.tv_nsec);
    exit(0);
}
