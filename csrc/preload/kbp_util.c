/* kbp_util.c: libc's own functions (dlsym RTLD_NEXT), the shim's environment, log lines and clock. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kbp.h"

struct kbp_libc kbp_real;

#define LOAD(name) kbp_real.name = (__typeof__(kbp_real.name))dlsym(RTLD_NEXT, #name)

void kbp_init_libc(void) {
    if (kbp_real.socket) return;
    LOAD(bind), LOAD(connect), LOAD(close), LOAD(sendto), LOAD(recvfrom), LOAD(sendmsg), LOAD(recvmsg);
    LOAD(sendmmsg), LOAD(recvmmsg), LOAD(send), LOAD(recv), LOAD(read), LOAD(write), LOAD(setsockopt);
    LOAD(getsockopt), LOAD(fcntl), LOAD(ioctl), LOAD(dup), LOAD(dup2), LOAD(dup3), LOAD(poll), LOAD(ppoll);
    LOAD(select), LOAD(pselect), LOAD(epoll_ctl), LOAD(epoll_wait), LOAD(epoll_pwait), LOAD(sigaction);
    LOAD(readv), LOAD(writev), LOAD(epoll_pwait2), LOAD(syscall); /* epoll_pwait2: NULL before glibc 2.35 */
    LOAD(listen), LOAD(accept4), LOAD(getsockname), LOAD(getpeername), LOAD(shutdown), LOAD(sendfile), LOAD(socketpair);
    LOAD(socket); /* last: it is the "loaded" mark */
}

/* The variables `kbypass run` passes the shim, as they were when the process started (kbp_init): an app may
 * replace its environment, and a fork's child then has none of them (nginx's worker keeps only TZ and the `env`
 * directive's), yet it adopts its listener (kbp_tcpadopt.c) and needs the control plane's socket for that. */
static const char *const env_names[] = {"KBYPASS_CP_SOCKET", "KBYPASS_TCP", "KBYPASS_LIBPYTHON", "KBYPASS_PYTHONPATH",
                                        "KBYPASS_PYTHONHOME"};
#define ENV_N (sizeof(env_names) / sizeof(env_names[0]))
static char *env_values[ENV_N];

void kbp_env_snapshot(void) {
    for (size_t i = 0; i < ENV_N; i++) {
        const char *v = getenv(env_names[i]);
        env_values[i] = v ? strdup(v) : NULL;
    }
}

const char *kbp_env(const char *name) {
    for (size_t i = 0; i < ENV_N; i++)
        if (!strcmp(env_names[i], name)) return env_values[i];
    return getenv(name);
}

static void out(const char *fmt, va_list ap) {
    char line[640];
    int n = snprintf(line, sizeof(line), "kbypass[%d]: ", getpid());
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    if (n > (int)sizeof(line) - 2) n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    kbp_init_libc();
    (void)!kbp_real.write(2, line, (size_t)n);
}

void kbp_say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    out(fmt, ap);
    va_end(ap);
}

void kbp_verbose(const char *fmt, ...) {
    if (!kbp_log) return;
    va_list ap;
    va_start(ap, fmt);
    out(fmt, ap);
    va_end(ap);
}

uint64_t kbp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
