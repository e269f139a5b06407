/* decodekit's CPU kernels for few-row decoding steps (x86-64 with AVX2 and FMA): what the
 * files share.
 *
 * Loaded with ctypes by decodekit.native (no Python API here). Every kernel is compiled for
 * AVX2/FMA through a target attribute and used only when dk_supported() says the CPU has
 * both, so the library itself loads on any x86-64 CPU; elsewhere it only says it is not
 * supported.
 */
#ifndef DECODEKIT_KERNELS_H
#define DECODEKIT_KERNELS_H

#include <stdint.h>

#if defined(__x86_64__) || defined(_M_X64)
#define DK_X86 1
#include <immintrin.h>
#include <math.h>
#define DK_TARGET __attribute__((target("avx2,fma")))

DK_TARGET static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    return _mm_cvtss_f32(_mm_add_ss(lo, _mm_movehdup_ps(lo)));
}

/* e^x in 8 lanes (Cephes' single-precision polynomial, within ~2 ulp); 0 below -87.3 */
DK_TARGET static inline __m256 exp8(__m256 x) {
    const __m256 low = _mm256_set1_ps(-87.33654475f);
    __m256 zero = _mm256_cmp_ps(x, low, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, low), _mm256_set1_ps(88.3762626647949f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* y = x W^T (+ bias): x (rows, in), W (out, in) as torch.nn.Linear keeps it */
void dk_linear(const float *x, const float *W, const float *bias, float *y, int64_t rows, int64_t out, int64_t in);
/* y = x W (+ bias): W (in, out) as transformers' Conv1D keeps it */
void dk_linear_t(const float *x, const float *W, const float *bias, float *y, int64_t rows, int64_t out, int64_t in);
/* fn(arg, part, parts) for each part of a split into at most `most` parts, one per thread
 * (dk_set_threads), all done on return */
void dk_parallel(void (*fn)(void *, int, int), void *arg, int64_t most);
/* one query's softmax(q . K^T * scale) V over slots [0, count) of one head (K, V: count x d) */
void dk_attend(const float *q, const float *K, const float *V, const uint8_t *visible, int64_t count, int64_t d,
               float scale, float *scores, float *out);
#endif
#endif
