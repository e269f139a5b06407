/* Threads for large products: the OpenMP team of the calling thread. The kernels are loaded
 * after torch, whose OpenMP runtime (libgomp.so.1) is then the one linked here, so a product
 * runs on the threads torch's own operations use (already spinning between a step's
 * operations) rather than on a second pool competing with them for the cores. The count is
 * set from Python (decodekit.native.follow_threads: torch's, or one in a forked child). */
#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int threads = 1;

void dk_set_threads(int64_t count) { threads = count > 1 ? (int)count : 1; }

void dk_parallel(void (*fn)(void *, int, int), void *arg, int64_t most) {
    int parts = threads < most ? threads : (int)most;
#ifdef _OPENMP
    if (parts > 1) {
#pragma omp parallel num_threads(parts)
        fn(arg, omp_get_thread_num(), omp_get_num_threads());
        return;
    }
#endif
    fn(arg, 0, 1);
}
