/* Whole decoding steps: one new token per row through every layer, in one call. */
#include "kernels.h"

#ifdef DK_X86
#include <stdlib.h>
#include <string.h>

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

/* ---- a Llama-family decoding step ---- */

/* dims: layers, dim, heads, kv_heads, head_dim, ffn, qk_norm (0/1), vocab (the embedding's rows)
 * weights: embed, final_norm, cos, sin, then per layer 18 pointers: input_norm, q, k, v, o,
 *   post_norm, gate, up, down, q_norm, k_norm (NULL without qk_norm), then the biases of q, k,
 *   v, o, gate, up, down (each NULL where the layer has none)
 * keys, values: per layer the cache buffer (rows, kv_heads, capacity, head_dim), contiguous;
 *   each row's n new tokens are written at slots [length, length + n)
 * tokens, positions: (rows, n)
 * mask: (rows, n, length + n) bytes, nonzero = the token sees the slot; NULL: every cached slot
 *   and the block's tokens up to itself (causal)
 * out: (rows, n, dim), the final normed hidden states; returns 0, -1 if out of memory, -2 if a
 * token is not a row of the embedding (nothing written) */
DK_TARGET int dk_llama_step(const int64_t *dims, const float *scalars, const float *const *weights,
                            float *const *keys, float *const *values, int64_t capacity, int64_t length,
                            const int64_t *tokens, const int64_t *positions, const uint8_t *mask,
                            int64_t rows, int64_t n, float *out) {
    int64_t layers = dims[0], D = dims[1], H = dims[2], Hkv = dims[3], d = dims[4], F = dims[5];
    int qk_norm = (int)dims[6];
    int64_t m = rows * n; /* the tokens computed */
    for (int64_t t = 0; t < m; t++)
        if (tokens[t] < 0 || tokens[t] >= dims[7]) return -2;
    float eps = scalars[0], scale = scalars[1];
    int64_t Q = H * d, KV = Hkv * d, slots = length + n, group = H / Hkv;
    size_t floats = (size_t)m * (2 * D + Q + 2 * KV + Q + 2 * F) + (size_t)((slots + 7) & ~(int64_t)7);
    float *buffer = malloc(floats * sizeof(float));
    if (!buffer) return -1;
    float *hidden = buffer, *x = hidden + m * D, *q = x + m * D, *k = q + m * Q;
    float *v = k + m * KV, *att = v + m * KV, *gate = att + m * Q, *up = gate + m * F;
    float *scores = up + m * F;
    const float *embed = weights[0], *cos = weights[2], *sin = weights[3];
    for (int64_t t = 0; t < m; t++) memcpy(hidden + t * D, embed + tokens[t] * D, D * sizeof(float));
    for (int64_t l = 0; l < layers; l++) {
        const float *const *w = weights + 4 + 18 * l, *const *b = w + 11;
        rms_norm(hidden, w[0], x, m, D, eps);
        dk_linear(x, w[1], b[0], q, m, Q, D);
        dk_linear(x, w[2], b[1], k, m, KV, D);
        dk_linear(x, w[3], b[2], v, m, KV, D);
        for (int64_t t = 0; t < m; t++) { /* rotary embedding, then the cache write */
            int64_t r = t / n, slot = length + t % n;
            const float *c = cos + positions[t] * d, *s = sin + positions[t] * d;
            for (int64_t h = 0; h < H; h++) {
                float *qh = q + t * Q + h * d;
                if (qk_norm) rms_norm(qh, w[9], qh, 1, d, eps);
                rotate(qh, c, s, d);
            }
            for (int64_t h = 0; h < Hkv; h++) {
                float *kh = k + t * KV + h * d;
                if (qk_norm) rms_norm(kh, w[10], kh, 1, d, eps);
                rotate(kh, c, s, d);
                size_t at = (((size_t)r * Hkv + h) * capacity + slot) * d;
                memcpy(keys[l] + at, kh, d * sizeof(float));
                memcpy(values[l] + at, v + t * KV + h * d, d * sizeof(float));
            }
        }
        for (int64_t t = 0; t < m; t++) { /* every token of a row after all of them are written */
            int64_t r = t / n;
            const uint8_t *visible = mask ? mask + t * slots : NULL;
            int64_t count = mask ? slots : length + t % n + 1;
            for (int64_t h = 0; h < H; h++) {
                size_t base = ((size_t)r * Hkv + h / group) * capacity * d;
                dk_attend(q + t * Q + h * d, keys[l] + base, values[l] + base, visible, count, d, scale, scores, att + t * Q + h * d);
            }
        }
        dk_linear(att, w[4], b[3], x, m, D, Q);
        for (int64_t i = 0; i < m * D; i++) hidden[i] += x[i];
        rms_norm(hidden, w[5], x, m, D, eps);
        dk_linear(x, w[6], b[4], gate, m, F, D);
        dk_linear(x, w[7], b[5], up, m, F, D);
        int64_t i = 0, cells = m * F; /* SiLU(gate) * up */
        for (; i + 8 <= cells; i += 8) {
            __m256 g = _mm256_loadu_ps(gate + i), e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            __m256 silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
            _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
        }
        for (; i < cells; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
        dk_linear(gate, w[8], b[6], x, m, D, F);
        for (int64_t i = 0; i < m * D; i++) hidden[i] += x[i];
    }
    rms_norm(hidden, weights[1], out, m, D, eps);
    free(buffer);
    return 0;
}

/* ---- a GPT-2 decoding step ---- */

DK_TARGET static void layer_norm(const float *x, const float *w, const float *b, float *y, int64_t rows, int64_t n, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double sum = 0.0, squares = 0.0;
        for (int64_t i = 0; i < n; i++) sum += xr[i];
        double mean = sum / (double)n;
        for (int64_t i = 0; i < n; i++) squares += ((double)xr[i] - mean) * ((double)xr[i] - mean);
        float inv = 1.0f / sqrtf((float)(squares / (double)n) + eps), m = (float)mean;
        for (int64_t i = 0; i < n; i++) yr[i] = (xr[i] - m) * inv * w[i] + b[i];
    }
}

/* GPT-2's tanh GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in place */
DK_TARGET static void gelu_tanh(float *x, int64_t n) {
    const __m256 c = _mm256_set1_ps(0.7978845608028654f), cubic = _mm256_set1_ps(0.044715f);
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f), limit = _mm256_set1_ps(9.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 u = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(cubic, v), _mm256_mul_ps(v, v), v));
        u = _mm256_max_ps(_mm256_min_ps(u, limit), _mm256_sub_ps(_mm256_setzero_ps(), limit)); /* tanh(9) is 1 in float */
        __m256 e = exp8(_mm256_add_ps(u, u));                                                   /* tanh u = (e - 1) / (e + 1) */
        __m256 t = _mm256_div_ps(_mm256_sub_ps(e, one), _mm256_add_ps(e, one));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, t)));
    }
    for (; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + tanhf(0.7978845608028654f * (x[i] + 0.044715f * x[i] * x[i] * x[i])));
}

/* dims: layers, dim, heads, ffn, vocab (wte's rows), positions (wpe's rows)
 * scalars: eps, scale
 * weights: wte, wpe, ln_f weight, ln_f bias, then per layer 12 pointers: ln_1 w, b, c_attn w
 *   (dim, 3 dim), b, attn c_proj w (dim, dim), b, ln_2 w, b, c_fc w (dim, ffn), b, mlp c_proj w
 *   (ffn, dim), b (Conv1D weights are (in, out))
 * keys, values, capacity, length, tokens, positions, mask, rows, n, out: as dk_llama_step
 * returns 0, -1 if out of memory, -2 if a token or position is outside its table */
DK_TARGET int dk_gpt2_step(const int64_t *dims, const float *scalars, const float *const *weights,
                           float *const *keys, float *const *values, int64_t capacity, int64_t length,
                           const int64_t *tokens, const int64_t *positions, const uint8_t *mask,
                           int64_t rows, int64_t n, float *out) {
    int64_t layers = dims[0], D = dims[1], H = dims[2], F = dims[3], d = D / H, slots = length + n, m = rows * n;
    for (int64_t t = 0; t < m; t++)
        if (tokens[t] < 0 || tokens[t] >= dims[4] || positions[t] < 0 || positions[t] >= dims[5]) return -2;
    float eps = scalars[0], scale = scalars[1];
    size_t floats = (size_t)m * (3 * D + 3 * D + F) + (size_t)((slots + 7) & ~(int64_t)7);
    float *buffer = malloc(floats * sizeof(float));
    if (!buffer) return -1;
    float *hidden = buffer, *x = hidden + m * D, *att = x + m * D, *qkv = att + m * D;
    float *inner = qkv + m * 3 * D, *scores = inner + m * F;
    const float *wte = weights[0], *wpe = weights[1];
    for (int64_t t = 0; t < m; t++)
        for (int64_t i = 0; i < D; i++) hidden[t * D + i] = wte[tokens[t] * D + i] + wpe[positions[t] * D + i];
    for (int64_t l = 0; l < layers; l++) {
        const float *const *w = weights + 4 + 12 * l;
        layer_norm(hidden, w[0], w[1], x, m, D, eps);
        dk_linear_t(x, w[2], w[3], qkv, m, 3 * D, D);
        for (int64_t t = 0; t < m; t++) { /* the cache write */
            const float *row = qkv + t * 3 * D;
            for (int64_t h = 0; h < H; h++) {
                size_t at = (((size_t)(t / n) * H + h) * capacity + length + t % n) * d;
                memcpy(keys[l] + at, row + D + h * d, d * sizeof(float));
                memcpy(values[l] + at, row + 2 * D + h * d, d * sizeof(float));
            }
        }
        for (int64_t t = 0; t < m; t++) {
            const uint8_t *visible = mask ? mask + t * slots : NULL;
            int64_t count = mask ? slots : length + t % n + 1;
            for (int64_t h = 0; h < H; h++) {
                size_t base = ((size_t)(t / n) * H + h) * capacity * d;
                dk_attend(qkv + t * 3 * D + h * d, keys[l] + base, values[l] + base, visible, count, d, scale, scores, att + t * D + h * d);
            }
        }
        dk_linear_t(att, w[4], w[5], x, m, D, D);
        for (int64_t i = 0; i < m * D; i++) hidden[i] += x[i];
        layer_norm(hidden, w[6], w[7], x, m, D, eps);
        dk_linear_t(x, w[8], w[9], inner, m, F, D);
        gelu_tanh(inner, m * F);
        dk_linear_t(inner, w[10], w[11], x, m, D, F);
        for (int64_t i = 0; i < m * D; i++) hidden[i] += x[i];
    }
    layer_norm(hidden, weights[2], weights[3], out, m, D, eps);
    free(buffer);
    return 0;
}
#endif
