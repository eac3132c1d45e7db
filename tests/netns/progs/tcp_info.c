/* tcp_info IP PORT BYTES: connect, send BYTES, read the server's 2-byte answer (sent once it has read them all,
 * so everything sent is acknowledged by then), then print what getsockopt(TCP_INFO) says, one "name value" per
 * line. Run natively and under `kbypass run` by tests/netns/test_run_tcp_edges.py: the two outputs must agree. */
#include <arpa/inet.h>
#include <linux/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) return perror("connect"), 1;
    long total = atol(argv[3]);
    static char buf[65536];
    memset(buf, 'x', sizeof(buf));
    for (long sent = 0; sent < total;) {
        ssize_t n = send(fd, buf, (size_t)(total - sent < (long)sizeof(buf) ? total - sent : (long)sizeof(buf)), 0);
        if (n <= 0) return perror("send"), 1;
        sent += n;
    }
    char ok[2];
    for (int got = 0; got < 2;) {
        ssize_t n = recv(fd, ok + got, (size_t)(2 - got), 0);
        if (n <= 0) return perror("recv"), 1;
        got += (int)n;
    }
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    memset(&ti, 0xAB, sizeof(ti));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0) return perror("getsockopt"), 1;
    printf("len %u\nstate %u\noptions %u\nsnd_mss %u\nadvmss %u\npmtu %u\nunacked %u\nbytes_acked %llu\n"
           "bytes_received %llu\nnotsent_bytes %u\nrtt %u\nsnd_cwnd %u\nsegs_out %u\nsegs_in %u\n",
           len, ti.tcpi_state, ti.tcpi_options, ti.tcpi_snd_mss, ti.tcpi_advmss, ti.tcpi_pmtu, ti.tcpi_unacked,
           (unsigned long long)ti.tcpi_bytes_acked, (unsigned long long)ti.tcpi_bytes_received,
           ti.tcpi_notsent_bytes, ti.tcpi_rtt, ti.tcpi_snd_cwnd, ti.tcpi_segs_out, ti.tcpi_segs_in);
    close(fd);
    return 0;
}
