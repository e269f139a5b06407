/* decodekit's CPU kernels for few-row decoding steps (x86-64 with AVX2 and FMA).
 *
 * Loaded with ctypes by decodekit.native (no Python API here). Every kernel is compiled for
 * AVX2/FMA through a target attribute and used only when dk_supported() says the CPU has
 * both, so the library itself loads on any x86-64 CPU.
 *
 * Products: y[r, o] = sum_k x[r, k] * W[o, k] (+ bias[o]) with W in torch.nn.Linear's
 * (out, in) layout. A block of R rows and O outputs keeps R*O accumulators of 8 lanes, reads
 * each weight once per block of rows, and sums k in the same order for every row: a row's
 * result does not depend on how many rows are computed with it.
 */
#include <stdint.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DK_TARGET __attribute__((target("avx2,fma")))

int dk_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

DK_TARGET static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    return _mm_cvtss_f32(_mm_add_ss(lo, _mm_movehdup_ps(lo)));
}

/* R rows, O outputs from o0; vectors over k < in8, then the scalar tail k in [in8, in) */
#define BLOCK(R, O)                                                                            \
    DK_TARGET static void block_##R##_##O(const float *x, const float *W, const float *bias,   \
                                          float *y, int64_t o0, int64_t out, int64_t in) {     \
        __m256 acc[R][O];                                                                      \
        for (int r = 0; r < R; r++)                                                            \
            for (int j = 0; j < O; j++) acc[r][j] = _mm256_setzero_ps();                       \
        const float *w = W + o0 * in;                                                          \
        int64_t in8 = in & ~(int64_t)7;                                                        \
        for (int64_t k = 0; k < in8; k += 8) {                                                 \
            __m256 wv[O];                                                                      \
            for (int j = 0; j < O; j++) wv[j] = _mm256_loadu_ps(w + j * in + k);               \
            for (int r = 0; r < R; r++) {                                                      \
                __m256 xv = _mm256_loadu_ps(x + r * in + k);                                   \
                for (int j = 0; j < O; j++) acc[r][j] = _mm256_fmadd_ps(wv[j], xv, acc[r][j]); \
            }                                                                                  \
        }                                                                                      \
        for (int r = 0; r < R; r++)                                                            \
            for (int j = 0; j < O; j++) {                                                      \
                float s = hsum(acc[r][j]);                                                     \
                for (int64_t k = in8; k < in; k++) s += x[r * in + k] * w[j * in + k];         \
                y[r * out + o0 + j] = bias ? s + bias[o0 + j] : s;                             \
            }                                                                                  \
    }

BLOCK(1, 8) BLOCK(1, 1) BLOCK(2, 4) BLOCK(2, 1) BLOCK(3, 3) BLOCK(3, 1)
BLOCK(4, 2) BLOCK(4, 1) BLOCK(6, 2) BLOCK(6, 1) BLOCK(8, 1)

#define SWEEP(R, O)                                                                            \
    for (; o + O <= out; o += O) block_##R##_##O(xr, W, bias, yr, o, out, in);                  \
    for (; o < out; o++) block_##R##_1(xr, W, bias, yr, o, out, in);                            \
    break;

/* x (rows, in), W (out, in), bias (out) or NULL, y (rows, out): all contiguous float32 */
DK_TARGET void dk_linear(const float *x, const float *W, const float *bias, float *y,
                         int64_t rows, int64_t out, int64_t in) {
    for (int64_t r0 = 0; r0 < rows;) {
        int64_t left = rows - r0;
        int64_t R = left >= 8 ? 8 : left >= 6 ? 6 : left >= 4 ? 4 : left;
        const float *xr = x + r0 * in;
        float *yr = y + r0 * out;
        int64_t o = 0;
        switch (R) {
        case 1: SWEEP(1, 8)
        case 2: SWEEP(2, 4)
        case 3: SWEEP(3, 3)
        case 4: SWEEP(4, 2)
        case 6: SWEEP(6, 2)
        default:
            for (; o < out; o++) block_8_1(xr, W, bias, yr, o, out, in);
        }
        r0 += R;
    }
}

/* ---- a Llama-family decoding step: one new token per row, every layer, in one call ---- */

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* dims: layers, dim, heads, kv_heads, head_dim, ffn, qk_norm (0/1), vocab (the embedding's rows)
 * weights: embed, final_norm, cos, sin, then per layer 18 pointers: input_norm, q, k, v, o,
 *   post_norm, gate, up, down, q_norm, k_norm (NULL without qk_norm), then the biases of q, k,
 *   v, o, gate, up, down (each NULL where the layer has none)
 * keys, values: per layer the cache buffer (rows, kv_heads, capacity, head_dim), contiguous
 * mask: (rows, length + 1) bytes, nonzero = visible, or NULL (every slot visible)
 * out: (rows, dim), the final normed hidden states; returns 0, -1 if out of memory, -2 if a
 * token is not a row of the embedding (nothing written) */

DK_TARGET static void rms_norm(const float *x, const float *w, float *y, int64_t rows, int64_t n, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        float inv = 1.0f / sqrtf((float)(ss / (double)n) + eps);
        for (int64_t i = 0; i < n; i++) yr[i] = w[i] * (xr[i] * inv);
    }
}

/* rotary embedding of one head's vector in place: v*cos + rotate_half(v)*sin */
static void rotate(float *v, const float *cos, const float *sin, int64_t d) {
    int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* e^x in 8 lanes (Cephes' single-precision polynomial, within ~2 ulp); 0 below -87.3 */
DK_TARGET static __m256 exp8(__m256 x) {
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

DK_TARGET static void attend(const float *q, const float *K, const float *V, const uint8_t *visible,
                             int64_t count, int64_t d, float scale, float *scores, float *out) {
    switch (d / 8) {
    case 1: attend_1(q, K, V, visible, count, scale, scores, out); break;
    case 2: attend_2(q, K, V, visible, count, scale, scores, out); break;
    case 4: attend_4(q, K, V, visible, count, scale, scores, out); break;
    case 8: attend_8(q, K, V, visible, count, scale, scores, out); break;
    default: attend_16(q, K, V, visible, count, scale, scores, out); break;
    }
}

DK_TARGET int dk_llama_step(const int64_t *dims, const float *scalars, const float *const *weights,
                            float *const *keys, float *const *values, int64_t capacity, int64_t length,
                            const int64_t *tokens, const int64_t *positions, const uint8_t *mask,
                            int64_t rows, float *out) {
    int64_t layers = dims[0], D = dims[1], H = dims[2], Hkv = dims[3], d = dims[4], F = dims[5];
    int qk_norm = (int)dims[6];
    for (int64_t r = 0; r < rows; r++)
        if (tokens[r] < 0 || tokens[r] >= dims[7]) return -2;
    float eps = scalars[0], scale = scalars[1];
    int64_t Q = H * d, KV = Hkv * d, count = length + 1, group = H / Hkv;
    size_t floats = (size_t)rows * (2 * D + Q + 2 * KV + Q + 2 * F) + (size_t)((count + 7) & ~(int64_t)7);
    float *buffer = malloc(floats * sizeof(float));
    if (!buffer) return -1;
    float *hidden = buffer, *x = hidden + rows * D, *q = x + rows * D, *k = q + rows * Q;
    float *v = k + rows * KV, *att = v + rows * KV, *gate = att + rows * Q, *up = gate + rows * F;
    float *scores = up + rows * F;
    const float *embed = weights[0], *cos = weights[2], *sin = weights[3];
    for (int64_t r = 0; r < rows; r++) memcpy(hidden + r * D, embed + tokens[r] * D, D * sizeof(float));
    for (int64_t l = 0; l < layers; l++) {
        const float *const *w = weights + 4 + 18 * l, *const *b = w + 11;
        rms_norm(hidden, w[0], x, rows, D, eps);
        dk_linear(x, w[1], b[0], q, rows, Q, D);
        dk_linear(x, w[2], b[1], k, rows, KV, D);
        dk_linear(x, w[3], b[2], v, rows, KV, D);
        for (int64_t r = 0; r < rows; r++) {
            const float *c = cos + positions[r] * d, *s = sin + positions[r] * d;
            for (int64_t h = 0; h < H; h++) {
                float *qh = q + r * Q + h * d;
                if (qk_norm) rms_norm(qh, w[9], qh, 1, d, eps);
                rotate(qh, c, s, d);
            }
            for (int64_t h = 0; h < Hkv; h++) {
                float *kh = k + r * KV + h * d;
                if (qk_norm) rms_norm(kh, w[10], kh, 1, d, eps);
                rotate(kh, c, s, d);
                size_t slot = (((size_t)r * Hkv + h) * capacity + length) * d;
                memcpy(keys[l] + slot, kh, d * sizeof(float));
                memcpy(values[l] + slot, v + r * KV + h * d, d * sizeof(float));
            }
            const uint8_t *visible = mask ? mask + r * count : NULL;
            for (int64_t h = 0; h < H; h++) {
                size_t base = ((size_t)r * Hkv + h / group) * capacity * d;
                attend(q + r * Q + h * d, keys[l] + base, values[l] + base, visible, count, d, scale, scores, att + r * Q + h * d);
            }
        }
        dk_linear(att, w[4], b[3], x, rows, D, Q);
        for (int64_t i = 0; i < rows * D; i++) hidden[i] += x[i];
        rms_norm(hidden, w[5], x, rows, D, eps);
        dk_linear(x, w[6], b[4], gate, rows, F, D);
        dk_linear(x, w[7], b[5], up, rows, F, D);
        int64_t i = 0, cells = rows * F; /* SiLU(gate) * up */
        for (; i + 8 <= cells; i += 8) {
            __m256 g = _mm256_loadu_ps(gate + i), e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            __m256 silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
            _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
        }
        for (; i < cells; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
        dk_linear(gate, w[8], b[6], x, rows, D, F);
        for (int64_t i = 0; i < rows * D; i++) hidden[i] += x[i];
    }
    rms_norm(hidden, weights[1], out, rows, D, eps);
    free(buffer);
    return 0;
}
#else
int dk_supported(void) { return 0; }
#endif
