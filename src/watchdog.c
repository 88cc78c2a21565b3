/* watchdog.c — see watchdog.h. The thread sleeps on a condition variable (so that stop is immediate) and wakes
 * at a quarter of the timeout, at most every second, to compare the time of the last tick with now. On expiry it
 * writes its message with write(2) (the main thread may hold stdio's lock, stuck inside a write of its own) and
 * calls _exit: no atexit handler, no MPI call from this thread (MPI is initialised for one thread). */
#include "mome/watchdog.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mome/common.h"

struct mome_watchdog {
    double timeout;
    int rank;
    _Atomic double last;              /* mome_now() of the last tick */
    _Atomic long step;                /* step of the last tick */
    const char *_Atomic phase;        /* phase of the last tick */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int quit;
};

static void *watch(void *arg) {
    mome_watchdog *w = arg;
    double period = w->timeout / 4.0;
    if (period > 1.0) period = 1.0;
    pthread_mutex_lock(&w->lock);
    while (!w->quit) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        const long ns = until.tv_nsec + (long)(period * 1e9);
        until.tv_sec += ns / 1000000000L;
        until.tv_nsec = ns % 1000000000L;
        int rc = 0;
        while (!w->quit && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&w->wake, &w->lock, &until);
        if (w->quit) break;
        const double idle = mome_now() - atomic_load(&w->last);
        if (idle > w->timeout) {
            char msg[512];
            const int n = snprintf(msg, sizeof msg,
                                   "mome: error: rank %d: no progress for %.1f s (train.watchdog = %.0f) in %s at step "
                                   "%ld: another rank, the network or a file system is stuck; ending this rank "
                                   "(exit %d) so that the job ends; train.resume=auto continues from the last "
                                   "checkpoint\n",
                                   w->rank, idle, w->timeout, atomic_load(&w->phase), atomic_load(&w->step),
                                   MOME_EXIT_WATCHDOG);
            if (n > 0) {
                ssize_t unused = write(STDERR_FILENO, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
                (void)unused;
            }
            _exit(MOME_EXIT_WATCHDOG);
        }
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

mome_watchdog *mome_watchdog_start(double timeout_s, int rank) {
    if (!(timeout_s > 0.0)) return NULL;
    mome_watchdog *w = mome_calloc(1, sizeof *w);
    w->timeout = timeout_s;
    w->rank = rank;
    atomic_store(&w->last, mome_now());
    atomic_store(&w->step, 0L);
    atomic_store(&w->phase, "start");
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    const int rc = pthread_create(&w->thread, NULL, watch, w);
    if (rc) {
        mome_error_set(MOME_EIO, "watchdog: cannot start its thread: %s", strerror(rc));
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->lock);
        mome_free(w);
        return NULL;
    }
    return w;
}

void mome_watchdog_tick(mome_watchdog *w, long step, const char *phase) {
    if (!w) return;
    atomic_store(&w->step, step);
    atomic_store(&w->phase, phase);
    atomic_store(&w->last, mome_now());
}

void mome_watchdog_stop(mome_watchdog *w) {
    if (!w) return;
    pthread_mutex_lock(&w->lock);
    w->quit = 1;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    mome_free(w);
}
