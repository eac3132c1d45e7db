/* kb_pool_lock.h: the lock of a shared queue's fill and completion rings, taken from C.
 *
 * The twin of kbypass.xsk.pool_lock.PoolLock.acquire (the module doc there says why the lock exists): a
 * process-shared robust pthread mutex in a memfd the control plane made. Free: one trylock, no syscall.
 * A holder that died (EOWNERDEAD): made consistent and taken, since what it published stands and what it
 * did not is not the kernel's. Busy: one wait of KB_POOL_SLICE_MS, then ETIMEDOUT, so that the caller
 * returns to Python, which runs its signal handlers and counts the waits against PoolLock's PATIENCE (a
 * stopped holder is named after it, as PoolLock names it). Other errors as pthread gives them. */
#ifndef KB_POOL_LOCK_H
#define KB_POOL_LOCK_H

#include <errno.h>
#include <pthread.h>
#include <time.h>

#define KB_POOL_SLICE_MS 100 /* PoolLock's _SLICE */

static inline int kb_pool_lock(pthread_mutex_t *m) {
    int err = pthread_mutex_trylock(m);
    if (err == EBUSY) {
        struct timespec until; /* the mutex's clock is CLOCK_REALTIME */
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)KB_POOL_SLICE_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        err = pthread_mutex_timedlock(m, &until);
    }
    if (err == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        err = 0;
    }
    return err;
}

static inline void kb_pool_unlock(pthread_mutex_t *m) { pthread_mutex_unlock(m); }

#endif
