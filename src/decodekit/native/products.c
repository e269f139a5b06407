/* Few-row products against a layer's weights, in either layout.
 *
 * y[r, o] = sum_k x[r, k] * W[o, k] (+ bias[o]) with W in torch.nn.Linear's (out, in) layout:
 * a block of R rows and O outputs keeps R*O accumulators of 8 lanes and reads each weight once
 * per block of rows. dk_linear_t takes W as (in, out) (transformers' Conv1D): a block of R rows
 * and V vectors of 8 outputs adds x[r, k] * W[k, block] for k in order. Either way a row's sums
 * run in the same order whatever rows are computed with it, so its result does not depend on
 * them.
 */
#include "kernels.h"

#ifdef DK_X86
int dk_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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

BLOCK(1, 8) BLOCK(1, 1) BLOCK(2, 1) BLOCK(3, 1) BLOCK(4, 1) BLOCK(5, 1) BLOCK(6, 1)
BLOCK(7, 1) BLOCK(8, 1)

/* Subtle: from two rows on, a block takes one output at a time, so the weights are read as
 * one stream along their rows (several outputs at once, several streams, were up to 2.5x
 * slower where the weights come from memory, as they do in a whole step); one row takes 8
 * outputs, or its adds would wait on each other. */
#define SWEEP(R, O)                                                                            \
    for (; o + O <= end; o += O) block_##R##_##O(xr, W, bias, yr, o, out, in);                  \
    for (; o < end; o++) block_##R##_1(xr, W, bias, yr, o, out, in);                            \
    break;

/* rows per block: all of them up to BLOCK_ROWS, else as few passes over the weights as that
 * allows, evenly filled (12 rows: 6 + 6, not 8 + 4); more rows per block were slower here */
#define BLOCK_ROWS 8

/* outputs [begin, end) of y = x W^T (+ bias) */
DK_TARGET static void linear_range(const float *x, const float *W, const float *bias, float *y,
                                   int64_t rows, int64_t out, int64_t in, int64_t begin, int64_t end) {
    int64_t passes = (rows + BLOCK_ROWS - 1) / BLOCK_ROWS;
    for (int64_t r0 = 0; r0 < rows;) {
        int64_t left = rows - r0, R = (left + passes - 1) / passes;
        passes--;
        const float *xr = x + r0 * in;
        float *yr = y + r0 * out;
        int64_t o = begin;
        switch (R) {
        case 1: SWEEP(1, 8)
        case 2: SWEEP(2, 1)
        case 3: SWEEP(3, 1)
        case 4: SWEEP(4, 1)
        case 5: SWEEP(5, 1)
        case 6: SWEEP(6, 1)
        case 7: SWEEP(7, 1)
        default:
            for (; o < end; o++) block_8_1(xr, W, bias, yr, o, out, in);
        }
        r0 += R;
    }
}

/* outputs [begin, end) of a product, in one of the two weight layouts */
typedef void (*Range)(const float *x, const float *W, const float *bias, float *y, int64_t rows, int64_t out, int64_t in,
                      int64_t begin, int64_t end);

typedef struct {
    Range range;
    const float *x, *W, *bias;
    float *y;
    int64_t rows, out, in;
} Product;

/* where part `part` of `parts` begins: a multiple of 8 outputs */
static int64_t boundary(int64_t out, int part, int parts) {
    int64_t at = ((out * part / parts) + 7) & ~(int64_t)7;
    return part == parts || at > out ? out : at;
}

static void product_part(void *arg, int part, int parts) {
    const Product *p = arg;
    p->range(p->x, p->W, p->bias, p->y, p->rows, p->out, p->in, boundary(p->out, part, parts), boundary(p->out, part + 1, parts));
}

/* A product on as many threads as are set (dk_set_threads), its outputs split between them
 * where it has at least 2^17 multiply-adds (smaller ones cost more to hand over than they
 * take), at most one part per 16 outputs; each output is summed as with one thread. */
static void product(Range range, const float *x, const float *W, const float *bias, float *y, int64_t rows, int64_t out, int64_t in) {
    Product p = {range, x, W, bias, y, rows, out, in};
    dk_parallel(product_part, &p, rows * out * in >= (1 << 17) ? out / 16 : 1);
}

/* x (rows, in), W (out, in), bias (out) or NULL, y (rows, out): all contiguous float32 */
void dk_linear(const float *x, const float *W, const float *bias, float *y, int64_t rows, int64_t out, int64_t in) {
    product(linear_range, x, W, bias, y, rows, out, in);
}

/* R rows, V vectors of 8 outputs from o0, W (in, out): the sums over k in [k0, k1), added to
 * the partial sums in y unless k0 is 0, the bias added when k1 is in (each output's fused
 * multiply-adds run in k's order, as in one pass) */
#define TBLOCK(R, V)                                                                                 \
    DK_TARGET static void tblock_##R##_##V(const float *x, const float *W, const float *bias, float *y, \
                                           int64_t o0, int64_t out, int64_t in, int64_t k0, int64_t k1) { \
        __m256 acc[R][V];                                                                            \
        for (int r = 0; r < R; r++)                                                                  \
            for (int v = 0; v < V; v++)                                                              \
                acc[r][v] = k0 ? _mm256_loadu_ps(y + r * out + o0 + 8 * v) : _mm256_setzero_ps();    \
        for (int64_t k = k0; k < k1; k++) {                                                          \
            __m256 w[V];                                                                             \
            for (int v = 0; v < V; v++) w[v] = _mm256_loadu_ps(W + k * out + o0 + 8 * v);           \
            for (int r = 0; r < R; r++) {                                                            \
                __m256 xb = _mm256_set1_ps(x[r * in + k]);                                           \
                for (int v = 0; v < V; v++) acc[r][v] = _mm256_fmadd_ps(w[v], xb, acc[r][v]);        \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++)                                                                  \
            for (int v = 0; v < V; v++) {                                                            \
                __m256 s = acc[r][v];                                                                \
                if (bias && k1 == in) s = _mm256_add_ps(s, _mm256_loadu_ps(bias + o0 + 8 * v));      \
                _mm256_storeu_ps(y + r * out + o0 + 8 * v, s);                                       \
            }                                                                                        \
    }

TBLOCK(1, 8) TBLOCK(1, 1) TBLOCK(2, 4) TBLOCK(2, 1) TBLOCK(4, 2) TBLOCK(4, 1)

#define TSWEEP(R, V)                                                                                   \
    for (; o + 8 * V <= end; o += 8 * V) tblock_##R##_##V(xr, W, bias, yr, o, out, in, k0, k1);          \
    for (; o + 8 <= end; o += 8) tblock_##R##_1(xr, W, bias, yr, o, out, in, k0, k1);                    \
    break;

/* k is taken in chunks, each swept across every output: W's rows are then read along their
 * length, not down a column (whose stride, at 1024 outputs, is 4 KiB and defeats the caches) */
#define K_CHUNK 16

/* outputs [begin, end) of y = x W (+ bias), begin a multiple of 8 */
DK_TARGET static void linear_t_range(const float *x, const float *W, const float *bias, float *y,
                                     int64_t rows, int64_t out, int64_t in, int64_t begin, int64_t end) {
    int64_t vectors = begin + ((end - begin) & ~(int64_t)7); /* outputs up to here in vectors of 8 */
    for (int64_t k0 = 0; k0 < in; k0 += K_CHUNK) {
        int64_t k1 = k0 + K_CHUNK < in ? k0 + K_CHUNK : in;
        for (int64_t r0 = 0; r0 < rows;) {
            int64_t left = rows - r0;
            int64_t R = left >= 4 ? 4 : left >= 2 ? 2 : 1;
            const float *xr = x + r0 * in;
            float *yr = y + r0 * out;
            int64_t o = begin;
            switch (R) {
            case 1: TSWEEP(1, 8)
            case 2: TSWEEP(2, 4)
            default: TSWEEP(4, 2)
            }
            r0 += R;
        }
    }
    for (int64_t r = 0; r < rows; r++) /* the last outputs short of a vector, k in the same order */
        for (int64_t c = vectors; c < end; c++) {
            float s = 0.0f;
            for (int64_t k = 0; k < in; k++) s = fmaf(x[r * in + k], W[k * out + c], s);
            y[r * out + c] = bias ? s + bias[c] : s;
        }
}

void dk_linear_t(const float *x, const float *W, const float *bias, float *y, int64_t rows, int64_t out, int64_t in) {
    product(linear_t_range, x, W, bias, y, rows, out, in);
}
#else
int dk_supported(void) { return 0; }
#endif
