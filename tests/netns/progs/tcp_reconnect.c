/* tcp_reconnect.c IP PORT[,PORT..] SRCPORT N: N connections one after the other, the i-th to the i-th port of the
 * list (round robin; SRCPORT 0: ephemeral, else bound to 0.0.0.0:SRCPORT with SO_REUSEADDR), each sends "hi", reads the server's "ok" and closes first, so its side
 * ends in TIME_WAIT. A connect that fails or hangs (SO_SNDTIMEO 3 s) stops the loop with its errno. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int fixed = atoi(argv[3]), n = atoi(argv[4]);
    int ports[8], np = 0;
    for (char *p = argv[2]; *p && np < 8; p += *p == ',') ports[np++] = (int)strtol(p, &p, 10);
    struct sockaddr_in to = {.sin_family = AF_INET};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    for (int i = 0; i < n; i++) {
        to.sin_port = htons(ports[i % np]);
        int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        struct timeval tv = {3, 0};
        setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (fixed) {
            setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(fixed)};
            if (bind(s, (struct sockaddr *)&me, sizeof(me))) {
                printf("%d: bind: %s\n", i, strerror(errno));
                return 1;
            }
        }
        if (connect(s, (struct sockaddr *)&to, sizeof(to))) {
            printf("%d: connect: %s\n", i, strerror(errno));
            return 1;
        }
        struct sockaddr_in me;
        socklen_t ml = sizeof(me);
        getsockname(s, (struct sockaddr *)&me, &ml);
        char b[8], ip[32];
        if (send(s, "hi", 2, 0) != 2 || recv(s, b, sizeof(b), 0) != 2) {
            printf("%d: exchange: %s\n", i, strerror(errno));
            return 1;
        }
        close(s);
        inet_ntop(AF_INET, &me.sin_addr, ip, sizeof(ip));
        if (fixed || i % 100 == 0) printf("%d: ok from %s:%u to %d\n", i, ip, ntohs(me.sin_port), ports[i % np]);
        poll(NULL, 0, fixed ? 300 : 2); /* the FIN/ACK exchange ends: TIME_WAIT here */
    }
    printf("all %d done\n", n);
    return 0;
}
