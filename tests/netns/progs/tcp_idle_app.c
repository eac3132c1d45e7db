/* tcp_idle_app.c IP PORT SECONDS: accepts one connection, then makes no call of the shim for SECONDS (asleep:
 * busy elsewhere), then sends "awake" and reads until the peer's end, and says how much it read. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &me.sin_addr);
    if (bind(l, (struct sockaddr *)&me, sizeof(me)) || listen(l, 8)) {
        perror("listen");
        return 1;
    }
    printf("ready\n");
    int c = accept(l, 0, 0);
    sleep(atoi(argv[3]));
    send(c, "awake", 5, 0);
    static char buf[65536];
    long total = 0;
    ssize_t n;
    while ((n = recv(c, buf, sizeof(buf), 0)) > 0) total += n;
    printf("app read %ld\n", total);
    return 0;
}
