/* kbp_spawn.c: posix_spawn and posix_spawnp start a child that execs without running our execve (glibc clones
 * with CLONE_VFORK and calls its internal execve), so kbp_exec.c never sees that exec, and the child has no
 * rings. The connections it inherits go to the kernel's TCP first (kbp_tcp_before_exec), as before an exec:
 * those without FD_CLOEXEC, and those the spawn's file actions dup2 into it, FD_CLOEXEC or not (a spawn-based
 * inetd or CGI runner puts the connection on the child's stdin and stdout). posix_spawn_file_actions_t is
 * opaque, so the dup2 sources are noted as posix_spawn_file_actions_adddup2 adds them, per file-actions object.
 * The parent goes on with its listeners on the rings; each accepted connection handed gets a pass rule of its
 * 4-tuple from the control plane, so its segments reach the kernel socket, not the port's rule (if one is
 * refused, the listeners go back to the kernel as at a fork: slower, never a black hole).
 *
 * system() and popen() spawn their shell through glibc's internal posix_spawn, which no preload can see: their
 * child's copies of accelerated connections stay placeholders (a command line that talks on an inherited
 * connection is rare, and handing every connection over at each system() would take them all off the rings).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <spawn.h>

#include "kbp.h"

#define NOTED_MAX 256 /* dup2 actions waiting for their spawn, all file-actions objects together */

static struct {
    const posix_spawn_file_actions_t *fa;
    int fd;
} noted[NOTED_MAX];
static int n_noted;
static pthread_mutex_t noted_lock = PTHREAD_MUTEX_INITIALIZER;

#define REAL(name, type)                                                                                  \
    static type real;                                                                                     \
    if (!real) real = (type)dlsym(RTLD_NEXT, name)

typedef int (*dup2_fn)(posix_spawn_file_actions_t *, int, int);
typedef int (*destroy_fn)(posix_spawn_file_actions_t *); /* init's type too */
typedef int (*spawn_fn)(pid_t *, const char *, const posix_spawn_file_actions_t *, const posix_spawnattr_t *,
                        char *const[], char *const[]);

int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *fa, int fd, int newfd) {
    REAL("posix_spawn_file_actions_adddup2", dup2_fn);
    int r = real(fa, fd, newfd), full = 0;
    pthread_mutex_lock(&noted_lock);
    if (r == 0 && !(full = n_noted == NOTED_MAX)) noted[n_noted].fa = fa, noted[n_noted++].fd = fd;
    pthread_mutex_unlock(&noted_lock);
    if (full) kbp_verbose("posix_spawn: more than %d dup2 actions at once: fd %d, if accelerated, goes to the child "
                          "as a placeholder unless it lacks FD_CLOEXEC", NOTED_MAX, fd);
    return r;
}

/* the entries of an object at fa's address (destroyed or not: a new object there starts with none) */
static void forget(const posix_spawn_file_actions_t *fa) {
    pthread_mutex_lock(&noted_lock);
    for (int i = 0; i < n_noted;)
        if (noted[i].fa == fa) noted[i] = noted[--n_noted];
        else i++;
    pthread_mutex_unlock(&noted_lock);
}

int posix_spawn_file_actions_init(posix_spawn_file_actions_t *fa) {
    REAL("posix_spawn_file_actions_init", destroy_fn);
    forget(fa);
    return real(fa);
}

int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *fa) {
    REAL("posix_spawn_file_actions_destroy", destroy_fn);
    forget(fa);
    return real(fa);
}

/* what the child inherits goes to the kernel's TCP (and the frames a burst left on the TX ring go out) */
static void before_spawn(const posix_spawn_file_actions_t *fa) {
    int fds[NOTED_MAX], n = 0;
    pthread_mutex_lock(&noted_lock);
    for (int i = 0; fa && i < n_noted; i++)
        if (noted[i].fa == fa) fds[n++] = noted[i].fd;
    pthread_mutex_unlock(&noted_lock);
    kbp_flush_now();
    if (kbp_tcp_before_exec(fds, n, 1) < 0) { /* a handed connection's segments could go to our rings: */
        kbp_verbose("posix_spawn: the listening sockets go back to the kernel, as at a fork");
        kbp_tcp_before_fork();
    }
}

int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *attr,
                char *const argv[], char *const envp[]) {
    REAL("posix_spawn", spawn_fn);
    before_spawn(fa);
    return real(pid, path, fa, attr, argv, envp);
}

int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *attr,
                 char *const argv[], char *const envp[]) {
    REAL("posix_spawnp", spawn_fn);
    before_spawn(fa);
    return real(pid, file, fa, attr, argv, envp);
}
