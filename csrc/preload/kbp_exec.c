/* kbp_exec.c: exec replaces the image, and with it the flusher thread and the rings (the new image starts on
 * kernel sockets, kbp_socket.c): the frames a burst left on the TX ring go out first, and the TCP connections
 * the new image inherits (fds without FD_CLOEXEC: an inetd-style server that execs its handler on the
 * connection) are handed to the kernel's TCP (kbp_tcprepair.c), so the new image holds a real connection, not
 * an unconnected placeholder. glibc's execl* build an argv and call its internal execve, so they get the same
 * here. posix_spawn and posix_spawnp exec in a child that never runs our execve: kbp_spawn.c hands the same
 * connections over before they start it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <unistd.h>

#include "kbp.h"

#define MAX_ARGS 4096

#define REAL(name, ...)                                                                                   \
    do {                                                                                                  \
        static int (*real)();                                                                             \
        if (!real) real = (int (*)())dlsym(RTLD_NEXT, #name);                                             \
        kbp_flush_now();                                                                                  \
        if (kbp_tcp_before_exec(NULL, 0, 1) < 0) /* 1: pass rules too, in case the exec fails */         \
            kbp_tcp_before_fork(); /* one refused: the listeners go back to the kernel, as at a fork */       \
        return real(__VA_ARGS__);                                                                         \
    } while (0)

int execve(const char *path, char *const argv[], char *const envp[]) { REAL(execve, path, argv, envp); }
int execv(const char *path, char *const argv[]) { REAL(execv, path, argv); }
int execvp(const char *file, char *const argv[]) { REAL(execvp, file, argv); }
int execvpe(const char *file, char *const argv[], char *const envp[]) { REAL(execvpe, file, argv, envp); }
int fexecve(int fd, char *const argv[], char *const envp[]) { REAL(fexecve, fd, argv, envp); }

/* the execl* arguments as an argv (and, for execle, the environment after the NULL) */
static int collect(const char *arg0, va_list ap, char **argv, char ***envp) {
    int n = 0;
    argv[n++] = (char *)arg0;
    while (argv[n - 1]) {
        if (n == MAX_ARGS) {
            errno = E2BIG;
            return -1;
        }
        argv[n++] = va_arg(ap, char *);
    }
    if (envp) *envp = va_arg(ap, char **);
    return 0;
}

#define EXECL(call, envp_out)                                                                             \
    do {                                                                                                  \
        char *argv[MAX_ARGS];                                                                             \
        va_list ap;                                                                                       \
        va_start(ap, arg);                                                                                \
        int bad = collect(arg, ap, argv, envp_out);                                                       \
        va_end(ap);                                                                                       \
        if (bad) return -1;                                                                               \
        return call;                                                                                      \
    } while (0)

int execl(const char *path, const char *arg, ...) { EXECL(execv(path, argv), NULL); }
int execlp(const char *file, const char *arg, ...) { EXECL(execvp(file, argv), NULL); }
int execle(const char *path, const char *arg, ...) {
    char **envp;
    EXECL(execve(path, argv, envp), &envp);
}
