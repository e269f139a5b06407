/* One-token attention: a query against the keys and values of one head's cache slots. */
#include "kernels.h"

#ifdef DK_X86
/* 8 vectors -> one vector of their 8 horizontal sums, in order */
DK_TARGET static inline __m256 sums8(__m256 a, __m256 b, __m256 c, __m256 d, __m256 e, __m256 f, __m256 g, __m256 h) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d), ef = _mm256_hadd_ps(e, f), gh = _mm256_hadd_ps(g, h);
    __m256 abcd = _mm256_hadd_ps(ab, cd), efgh = _mm256_hadd_ps(ef, gh);
    /* abcd = [a0 b0 c0 d0 | a1 b1 c1 d1] (low/high 128-bit halves' partial sums) */
    return _mm256_add_ps(_mm256_permute2f128_ps(abcd, efgh, 0x20), _mm256_permute2f128_ps(abcd, efgh, 0x31));
}

/* One query's attention over one kv head's slots [0, count): softmax(q . K^T * scale) V.
 * D8: the head dim in vectors of 8 (a constant, so the accumulators stay in registers). */
#define ATTEND(D8)                                                                                            \
    DK_TARGET static void attend_##D8(const float *q, const float *K, const float *V, const uint8_t *visible,    \
                                      int64_t count, float scale, float *scores, float *out) {                \
        const int64_t d = 8 * D8;                                                                             \
        __m256 qv[D8];                                                                                        \
        for (int i = 0; i < D8; i++) qv[i] = _mm256_loadu_ps(q + 8 * i);                                      \
        int64_t j = 0;                                                                                        \
        for (; j + 8 <= count; j += 8) {                                                                      \
            __m256 a[8];                                                                                      \
            for (int t = 0; t < 8; t++) {                                                                     \
                const float *key = K + (j + t) * d;                                                           \
                __m256 acc = _mm256_mul_ps(qv[0], _mm256_loadu_ps(key));                                      \
                for (int i = 1; i < D8; i++) acc = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(key + 8 * i), acc); \
                a[t] = acc;                                                                                   \
            }                                                                                                 \
            __m256 sums = sums8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);                              \
            _mm256_storeu_ps(scores + j, _mm256_mul_ps(sums, _mm256_set1_ps(scale)));                         \
        }                                                                                                     \
        for (; j < count; j++) {                                                                              \
            const float *key = K + j * d;                                                                     \
            __m256 acc = _mm256_mul_ps(qv[0], _mm256_loadu_ps(key));                                          \
            for (int i = 1; i < D8; i++) acc = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(key + 8 * i), acc);     \
            scores[j] = hsum(acc) * scale;                                                                    \
        }                                                                                                     \
        if (visible)                                                                                          \
            for (j = 0; j < count; j++)                                                                       \
                if (!visible[j]) scores[j] = -INFINITY;                                                       \
        float inverse = softmax(scores, count);                                                               \
        __m256 acc[D8];                                                                                       \
        for (int i = 0; i < D8; i++) acc[i] = _mm256_setzero_ps();                                            \
        for (j = 0; j < count; j++) {                                                                         \
            __m256 p = _mm256_set1_ps(scores[j]);                                                             \
            const float *value = V + j * d;                                                                   \
            for (int i = 0; i < D8; i++) acc[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(value + 8 * i), acc[i]);  \
        }                                                                                                     \
        __m256 inv = _mm256_set1_ps(inverse);                                                                 \
        for (int i = 0; i < D8; i++) _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(acc[i], inv));               \
    }

/* scores[0, count) -> their softmax's numerators in place (padded to 8 with zeros); returns
 * 1 / their sum */
DK_TARGET static float softmax(float *scores, int64_t count) {
    int64_t padded = (count + 7) & ~(int64_t)7;
    for (int64_t j = count; j < padded; j++) scores[j] = -INFINITY;
    __m256 top = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j < padded; j += 8) top = _mm256_max_ps(top, _mm256_loadu_ps(scores + j));
    __m128 t = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
    t = _mm_max_ps(t, _mm_movehl_ps(t, t));
    t = _mm_max_ss(t, _mm_movehdup_ps(t));
    __m256 peak = _mm256_set1_ps(_mm_cvtss_f32(t)), total = _mm256_setzero_ps();
    for (int64_t j = 0; j < padded; j += 8) {
        __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), peak));
        _mm256_storeu_ps(scores + j, p);
        total = _mm256_add_ps(total, p);
    }
    return 1.0f / hsum(total);
}

ATTEND(1) ATTEND(2) ATTEND(4) ATTEND(8) ATTEND(16)

/* head dims the kernel serves: 8, 16, 32, 64, 128 */
int dk_attends(int64_t d) { return d == 8 || d == 16 || d == 32 || d == 64 || d == 128; }

DK_TARGET void dk_attend(const float *q, const float *K, const float *V, const uint8_t *visible,
                             int64_t count, int64_t d, float scale, float *scores, float *out) {
    switch (d / 8) {
    case 1: attend_1(q, K, V, visible, count, scale, scores, out); break;
    case 2: attend_2(q, K, V, visible, count, scale, scores, out); break;
    case 4: attend_4(q, K, V, visible, count, scale, scores, out); break;
    case 8: attend_8(q, K, V, visible, count, scale, scores, out); break;
    default: attend_16(q, K, V, visible, count, scale, scores, out); break;
    }
}
#endif
