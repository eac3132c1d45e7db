/* tcp_adopt: servers whose children inherit a listening socket (csrc/preload/kbp_tcpadopt.c).
 *   tcp_adopt thread IP PORT 0     a threaded server: a thread polls the listener (in and out of the shim)
 *                                  while a second thread forks; the child (forked from that second thread, not
 *                                  the one that started the shim's Python) polls the listener, so adopts it,
 *                                  accepts one connection, writes "child PID" and exits
 *   tcp_adopt prefork IP PORT N    a blocking prefork server: N children, each in a blocking accept(); each
 *                                  request is read, answered after 2 s with "served by PID", closed
 * Prints "listening" once the listener is up. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int lfd;
static volatile int stop;

static void *sender(void *a) {
    (void)a;
    while (!stop) {
        struct pollfd pf = {lfd, 0, 0};
        poll(&pf, 1, 0);
        usleep(200);
    }
    return NULL;
}

static void *forker(void *a) {
    (void)a;
    pid_t p = fork();
    if (p == 0) {
        struct pollfd pf = {lfd, POLLIN, 0};
        if (poll(&pf, 1, 20000) != 1) _exit(4);
        int c = accept(lfd, NULL, NULL);
        if (c < 0) _exit(3);
        char msg[64], b[16];
        int n = snprintf(msg, sizeof msg, "child %d\n", getpid());
        (void)!write(c, msg, n);
        (void)!read(c, b, sizeof b);
        close(c);
        _exit(0);
    }
    int st = 0;
    waitpid(p, &st, 0);
    fprintf(stderr, "child status %d\n", st);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &sa.sin_addr);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (void *)&sa, sizeof sa) || listen(lfd, 64)) {
        perror("listen");
        return 1;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(argv[1], "prefork")) {
        int n = atoi(argv[4]);
        for (int i = 0; i < n; i++)
            if (fork() == 0)
                for (;;) {
                    int c = accept(lfd, NULL, NULL);
                    if (c < 0) continue;
                    char b[64];
                    (void)!read(c, b, sizeof b);
                    sleep(2);
                    int k = snprintf(b, sizeof b, "served by %d\n", getpid());
                    (void)!write(c, b, k);
                    close(c);
                }
        printf("listening\n");
        for (;;) pause();
    }
    pthread_t t1, t2;
    pthread_create(&t1, NULL, sender, NULL);
    usleep(100000);
    printf("listening\n");
    pthread_create(&t2, NULL, forker, NULL);
    pthread_join(t2, NULL);
    stop = 1;
    pthread_join(t1, NULL);
    return 0;
}
