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

/* dims: layers, dim, heads, kv_heads, head_dim, ffn, qk_norm (0/1)
 * weights: embed, final_norm, cos, sin, then per layer 11 pointers: input_norm, q, k, v, o,
 *   post_norm, gate, up, down, q_norm, k_norm (the last two NULL without qk_norm)
 * keys, values: per layer the cache buffer (rows, kv_heads, capacity, head_dim), contiguous
 * mask: (rows, length + 1) bytes, nonzero = visible, or NULL (every slot visible)
 * out: (rows, dim), the final normed hidden states; returns 0, or -1 if out of memory */

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

DK_TARGET static float dot(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t n8 = n & ~(int64_t)7, k = 0;
    for (; k < n8; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
    float s = hsum(acc);
    for (; k < n; k++) s += a[k] * b[k];
    return s;
}

/* softmax(q . K^T * scale) V for one query over slots [0, count) of one kv head */
DK_TARGET static void attend(const float *q, const float *K, const float *V, const uint8_t *visible,
                             int64_t count, int64_t d, float scale, float *scores, float *out) {
    float top = -INFINITY;
    for (int64_t j = 0; j < count; j++) {
        float s = (!visible || visible[j]) ? dot(q, K + j * d, d) * scale : -INFINITY;
        scores[j] = s;
        if (s > top) top = s;
    }
    float total = 0.0f;
    for (int64_t j = 0; j < count; j++) {
        float p = scores[j] == -INFINITY ? 0.0f : expf(scores[j] - top);
        scores[j] = p;
        total += p;
    }
    for (int64_t i = 0; i < d; i++) out[i] = 0.0f;
    for (int64_t j = 0; j < count; j++) {
        float p = scores[j];
        if (p == 0.0f) continue;
        const float *v = V + j * d;
        for (int64_t i = 0; i < d; i++) out[i] += p * v[i];
    }
    float inv = 1.0f / total;
    for (int64_t i = 0; i < d; i++) out[i] *= inv;
}

DK_TARGET int dk_llama_step(const int64_t *dims, const float *scalars, const float *const *weights,
                            float *const *keys, float *const *values, int64_t capacity, int64_t length,
                            const int64_t *tokens, const int64_t *positions, const uint8_t *mask,
                            int64_t rows, float *out) {
    int64_t layers = dims[0], D = dims[1], H = dims[2], Hkv = dims[3], d = dims[4], F = dims[5];
    int qk_norm = (int)dims[6];
    float eps = scalars[0], scale = scalars[1];
    int64_t Q = H * d, KV = Hkv * d, count = length + 1, group = H / Hkv;
    size_t floats = (size_t)rows * (2 * D + Q + 2 * KV + Q + 2 * F) + (size_t)count;
    float *buffer = malloc(floats * sizeof(float));
    if (!buffer) return -1;
    float *hidden = buffer, *x = hidden + rows * D, *q = x + rows * D, *k = q + rows * Q;
    float *v = k + rows * KV, *att = v + rows * KV, *gate = att + rows * Q, *up = gate + rows * F;
    float *scores = up + rows * F;
    const float *embed = weights[0], *cos = weights[2], *sin = weights[3];
    for (int64_t r = 0; r < rows; r++) memcpy(hidden + r * D, embed + tokens[r] * D, D * sizeof(float));
    for (int64_t l = 0; l < layers; l++) {
        const float *const *w = weights + 4 + 11 * l;
        rms_norm(hidden, w[0], x, rows, D, eps);
        dk_linear(x, w[1], NULL, q, rows, Q, D);
        dk_linear(x, w[2], NULL, k, rows, KV, D);
        dk_linear(x, w[3], NULL, v, rows, KV, D);
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
        dk_linear(att, w[4], NULL, x, rows, D, Q);
        for (int64_t i = 0; i < rows * D; i++) hidden[i] += x[i];
        rms_norm(hidden, w[5], x, rows, D, eps);
        dk_linear(x, w[6], NULL, gate, rows, F, D);
        dk_linear(x, w[7], NULL, up, rows, F, D);
        for (int64_t i = 0; i < rows * F; i++) {
            float g = gate[i];
            gate[i] = g / (1.0f + expf(-g)) * up[i];
        }
        dk_linear(gate, w[8], NULL, x, rows, D, F);
        for (int64_t i = 0; i < rows * D; i++) hidden[i] += x[i];
    }
    rms_norm(hidden, weights[1], out, rows, D, eps);
    free(buffer);
    return 0;
}
#else
int dk_supported(void) { return 0; }
#endif
