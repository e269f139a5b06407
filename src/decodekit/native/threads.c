/* A second thread for large products: one persistent worker that spins briefly between jobs
 * (a step's products follow each other within microseconds) and then sleeps. Work is handed
 * over only by one caller at a time (others compute alone), and a process forked after the
 * worker started (the serving engine's process) starts its own. */
#define _GNU_SOURCE
#include "kernels.h"

#ifdef DK_X86
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

static int threads = 1;
static pid_t owner = 0; /* the process whose worker is running */
static pthread_mutex_t dispatch = PTHREAD_MUTEX_INITIALIZER, sleeping = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static atomic_long posted, finished;
static void (*job)(void *, int);
static void *job_arg;

void dk_set_threads(int64_t count) { threads = count > 1 ? 2 : 1; }

static void *work(void *unused) {
    (void)unused;
    long seen = 0; /* posted is reset to 0 before the worker starts */
    for (;;) {
        long now;
        int spins = 0;
        while ((now = atomic_load(&posted)) == seen && ++spins < 20000) __builtin_ia32_pause();
        if (now == seen) {
            pthread_mutex_lock(&sleeping);
            while ((now = atomic_load(&posted)) == seen) pthread_cond_wait(&wake, &sleeping);
            pthread_mutex_unlock(&sleeping);
        }
        seen = now;
        job(job_arg, 1);
        atomic_store(&finished, now);
    }
    return NULL;
}

int dk_parallel(void (*fn)(void *, int), void *arg) {
    if (threads < 2 || pthread_mutex_trylock(&dispatch) != 0) return 0;
    if (owner != getpid()) { /* first use, or a forked child: the worker is not in this process */
        pthread_t thread;
        atomic_store(&posted, 0);
        atomic_store(&finished, 0);
        if (pthread_create(&thread, NULL, work, NULL) != 0) {
            pthread_mutex_unlock(&dispatch);
            return 0;
        }
        pthread_detach(thread);
        owner = getpid();
    }
    job = fn;
    job_arg = arg;
    pthread_mutex_lock(&sleeping);
    long ticket = atomic_fetch_add(&posted, 1) + 1;
    pthread_cond_signal(&wake);
    pthread_mutex_unlock(&sleeping);
    fn(arg, 0);
    while (atomic_load(&finished) != ticket) __builtin_ia32_pause();
    pthread_mutex_unlock(&dispatch);
    return 1;
}
#endif
