/* One decoding step of a Llama-shaped model, the whole stack in one call: a token for each of n rows of the KV
   cache in (each row at its own position: a server's running requests), their logits out.

       x = embed[token]
       per layer:  h = rmsnorm(x) * attn_norm          q, k, v = W_qkv h   (H, KV, KV heads of D)
                   q, k = rope(q, k) at pos           k, v -> the cache at pos   (Qwen3: q, k RMS-normed first)
                   a = softmax(q k^T / sqrt(D)) v     over keys 0..pos, each query head on its group's kv head
                   x += W_proj a
                   h = rmsnorm(x) * mlp_norm           g, u = W_gate_up h
                   x += W_down (silu(g) * u)
       logits = W_head (rmsnorm(x) * final_norm)

   Why: a step of SmolLM2-135M in torch is ~1,850 operator calls (62 a layer), each a few microseconds of
   dispatch and thread wake-up for a few hundred numbers, so two thirds of an int4 token went to overhead
   (the notes' profile). Here a step is one call into one OpenMP parallel region: the products split their
   outputs over the threads, as do the attention's (row, head) pairs, the gate, and the rows' norms, RoPE and
   cache writes; threads meet only at the barriers between stages. A product reads each weight once for all n
   rows (a thread's row of W, or chunk of rows, stays in L1 or L2 while every x row takes its turn), so a batch
   of requests costs about one read of the weights, as one request does.

   The weights are read where the model keeps them: the compact forms of layers/quantized.py as stored (Q8_0
   codes and scales, q8_0.c; Q4_0 / Q4_1 nibbles with scale and minimum, q4_1.c), or fp32 / bf16 matrices in
   our Linear's (in, out) layout (each thread sums its own block of output columns over the rows in order) or,
   for a head tied to the embedding, the table's (vocab, dim). The embedding and norms are fp32, or both bf16; the
   KV cache is either, laid out as the model's KVCache (layer, row, kv head, position, D).
   Activations stay fp32 throughout. The sums run in another order than torch's, so logits equal the model's
   forward pass to fp32 rounding, not bit for bit (in bf16 the forward pass also rounds every op's output,
   which this does not: tests/test_fused_step.py). Each output is summed by one thread in one order (a bf16
   (in, out) weight's over fixed chunks of rows, each chunk by one thread, the chunks added in order), the order
   it has alone, so neither the thread count nor the rows stepped beside it change a bit of a row's logits. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "q4_1.c"
#include "q8_0.c"

enum { Q8_0 = 8, Q4 = 4, F32_IN_OUT = 32, BF16_IN_OUT = 16, F32_OUT_IN = 33, BF16_OUT_IN = 17 };

typedef struct {
    int32_t kind;      /* one of the above: a compact form, or a float matrix in our Linear's (in, out) layout
                          or nn.Linear's (out, in) (a head tied to the embedding table) */
    int32_t in, out;   /* compact forms: in a multiple of 32 */
    const void *codes; /* Q8_0: (out, in) int8; Q4: (out, in / 2) uint8; float kinds: the matrix */
    const float *scale;  /* compact forms: (out, in / 32) */
    const float *min;    /* Q4: (out, in / 32) */
} QWeight;

typedef struct {
    int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, hidden;
    int32_t bf16;                     /* the embedding, norms and cache are bf16 (else fp32) */
    float eps;
    const void *embed;                /* (vocab, dim) */
    const void *const *attn_norm;     /* n_layers pointers to (dim,) */
    const void *const *mlp_norm;
    const void *const *q_norm;        /* QK-norm (Qwen3): n_layers pointers to (head_dim,), or NULL without */
    const void *const *k_norm;
    const void *final_norm;
    const QWeight *qkv, *proj, *gate_up, *down; /* n_layers each */
    const QWeight *head;
    void *k_cache, *v_cache;          /* row 0's layer 0, kv head 0, position 0 */
    int64_t layer_stride, head_stride, row_stride; /* elements between layers, between kv heads, between rows */
    float *scratch;                   /* llama_step_scratch floats */
    int64_t max_len;
    int32_t max_rows;                 /* the most rows one call steps (the scratch's room) */
    int32_t cache_bf16;               /* the KV cache is bf16 (a bf16 model's, or a quantized one's: fp32 else) */
} LlamaStep;

/* bf16 (in, out) products sum their rows in fixed chunks of ROW_CHUNK (rows_in_out_bf16) */
enum { ROW_CHUNK = 32 };

/* floats of the Q4 group sums (q4_group_sums): one per group of the widest input */
static int64_t group_sums_floats(int64_t dim, int64_t hidden) { return (hidden > dim ? hidden : dim) / 32 + 16; }

static int64_t chunks_of(int64_t in) { return (in + ROW_CHUNK - 1) / ROW_CHUNK; }

/* floats of the chunks' partial sums: the largest of the block's four products */
static int64_t partial_floats(int64_t dim, int64_t qkv_out, int64_t att, int64_t hidden) {
    int64_t most = chunks_of(dim) * qkv_out, p;
    if ((p = chunks_of(att) * dim) > most) most = p;
    if ((p = chunks_of(dim) * 2 * hidden) > most) most = p;
    if ((p = chunks_of(hidden) * dim) > most) most = p;
    return most;
}

/* The scratch, each part one block per row (row r's x at x + r * dim, ...): the residual stream x (dim), the
   normed h (dim), qkv, the heads' outputs att, scores (n_heads x max_len), the MLP's gate and up gu (2 hidden),
   act (hidden), the Q4 group sums, the bf16 chunks' partial sums and a product's input in bf16. */
typedef struct {
    float *x, *h, *qkv, *att, *scores, *gu, *act, *sums, *partial;
    uint16_t *xb;  /* a product's x rows rounded to bf16 (dot_rows_bf16) */
    int64_t sums_stride, partial_stride, xb_stride;
} Scratch;

/* the floats of a scratch for `rows` rows; its strides into *p, and with `base` its parts */
static int64_t scratch_layout(int64_t dim, int64_t H, int64_t KV, int64_t D, int64_t hidden, int64_t max_len,
                              int64_t rows, float *base, Scratch *p) {
    const int64_t sums_stride = group_sums_floats(dim, hidden), partial_stride = partial_floats(dim, (H + 2 * KV) * D, H * D, hidden);
    int64_t widest = dim > H * D ? dim : H * D;  /* the widest input of a product */
    widest = widest > hidden ? widest : hidden;
    const int64_t xb_floats = (widest + 1) / 2 + 16;
    const int64_t sizes[10] = {dim, dim, (H + 2 * KV) * D, H * D, H * max_len, 2 * hidden, hidden, sums_stride, partial_stride,
                               xb_floats};
    float *xb = NULL;
    float **parts[10] = {&p->x, &p->h, &p->qkv, &p->att, &p->scores, &p->gu, &p->act, &p->sums, &p->partial, &xb};
    int64_t at = 0;
    for (int i = 0; i < 10; i++) {
        if (base != NULL) *parts[i] = base + at;
        at += rows * sizes[i];
    }
    p->xb = (uint16_t *)xb;
    p->sums_stride = sums_stride;
    p->partial_stride = partial_stride;
    p->xb_stride = 2 * xb_floats;
    return at;
}

int64_t llama_step_scratch(int32_t dim, int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, int32_t hidden,
                           int64_t max_len, int32_t max_rows) {
    Scratch unused;
    return scratch_layout(dim, n_heads, n_kv_heads, head_dim, hidden, max_len, max_rows, NULL, &unused);
}

static inline float bf16_to_float(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) {  /* round to nearest even, as torch's .to(bfloat16) */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);  /* NaN stays NaN */
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* one element of a float vector of either dtype */
static inline float load(const void *p, int64_t i, int bf16) {
    return bf16 ? bf16_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* acc[r][0:width] = x[r][k0:k1] W[k0:k1, 0:width] for each of `rows` x rows (x[r] at x + r * x_stride, acc[r] at
   acc + r * acc_stride), bf16 W with `stride` elements between its rows: W's rows k0..k1 summed in order, four a
   pass, each pass's four rows of W (in L1) used for every x row. The step's bf16 (in, out) products run it over
   fixed chunks of rows, each chunk by one thread over all columns (matvec), rather than over each thread's
   columns and all rows (columns_in_out, still the head's): a thread then streams its rows in order, one region of
   memory, where its columns held 4 streams of rows. SmolLM2's bf16 products, all 30 layers, 2 threads, AMD EPYC
   AVX512 (microseconds, chunks / columns): gate_up 3,818 / 4,355, down 2,329 / 3,777, qkv 1,356 / 1,536, proj
   353 / 477. (The (out, in) copies of pack_for_inference are quicker still: models/llama_step.py.) */
static void rows_in_out_bf16(const uint16_t *W, int64_t stride, int64_t width, const float *x, int64_t x_stride,
                             float *acc, int64_t acc_stride, int64_t rows, int64_t k0, int64_t k1) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < width; j++) acc[r * acc_stride + j] = 0.0f;
    int64_t k = k0;
    for (; k + 4 <= k1; k += 4) {
        const uint16_t *r0 = W + k * stride, *r1 = r0 + stride, *r2 = r1 + stride, *r3 = r2 + stride;
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * x_stride;
            const float x0 = xr[k], x1 = xr[k + 1], x2 = xr[k + 2], x3 = xr[k + 3];
            float *a = acc + r * acc_stride;
            for (int64_t j = 0; j < width; j++)
                a[j] += x0 * bf16_to_float(r0[j]) + x1 * bf16_to_float(r1[j]) + x2 * bf16_to_float(r2[j])
                        + x3 * bf16_to_float(r3[j]);
        }
    }
    for (; k < k1; k++)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < width; j++) acc[r * acc_stride + j] += x[r * x_stride + k] * bf16_to_float(W[k * stride + j]);
}

/* y[r][n0:n1] (+)= x[r] W[:, n0:n1] for W (in, out) row-major and each of `rows` x rows (strides: W's in and out):
   a thread's own columns, summed over W's rows in order (the same order whatever the thread count), four rows of
   W per pass over an accumulator, one x row at a time over a block of 512 columns */
static void columns_in_out(const QWeight *w, const float *x, float *y, int64_t rows, int64_t n0, int64_t n1,
                           int accumulate) {
    float acc[512];
    const int64_t out = w->out, in = w->in;
    for (int64_t c0 = n0; c0 < n1; c0 += 512) {
        const int64_t width = n1 - c0 < 512 ? n1 - c0 : 512;
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * in;
            if (w->kind == F32_IN_OUT) {
                const float *W = (const float *)w->codes;
                int64_t k = 0;
                for (int64_t j = 0; j < width; j++) acc[j] = 0.0f;
                for (; k + 4 <= in; k += 4) {
                    const float *r0 = W + k * out + c0, *r1 = r0 + out, *r2 = r1 + out, *r3 = r2 + out;
                    const float x0 = xr[k], x1 = xr[k + 1], x2 = xr[k + 2], x3 = xr[k + 3];
                    for (int64_t j = 0; j < width; j++) acc[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j];
                }
                for (; k < in; k++)
                    for (int64_t j = 0; j < width; j++) acc[j] += xr[k] * W[k * out + c0 + j];
            } else {
                rows_in_out_bf16((const uint16_t *)w->codes + c0, out, width, xr, in, acc, width, 1, 0, in);
            }
            float *yr = y + r * out;
            for (int64_t j = 0; j < width; j++) yr[c0 + j] = accumulate ? yr[c0 + j] + acc[j] : acc[j];
        }
    }
}

/* a . b over n floats (b fp32; a fp32, or bf16 when a_bf16): vector lanes and two accumulators, the lanes'
   sum at the end; the scalar tail in order */
static inline float dot(const void *a, int a_bf16, const float *b, int64_t n) {
    int64_t k = 0;
    float s = 0.0f;
#if defined(__AVX512F__)
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    if (a_bf16) {
        const uint16_t *p = (const uint16_t *)a;
        for (; k + 32 <= n; k += 32) {
            __m512 a0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + k))), 16));
            __m512 a1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + k + 16))), 16));
            s0 = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b + k), s0);
            s1 = _mm512_fmadd_ps(a1, _mm512_loadu_ps(b + k + 16), s1);
        }
    } else {
        const float *p = (const float *)a;
        for (; k + 32 <= n; k += 32) {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(p + k), _mm512_loadu_ps(b + k), s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(p + k + 16), _mm512_loadu_ps(b + k + 16), s1);
        }
    }
    s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    if (a_bf16) {
        const uint16_t *p = (const uint16_t *)a;
        for (; k + 16 <= n; k += 16) {
            __m256 a0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + k))), 16));
            __m256 a1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + k + 8))), 16));
            s0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b + k), s0);
            s1 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(b + k + 8), s1);
        }
    } else {
        const float *p = (const float *)a;
        for (; k + 16 <= n; k += 16) {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(p + k), _mm256_loadu_ps(b + k), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + k + 8), _mm256_loadu_ps(b + k + 8), s1);
        }
    }
    s = hsum256(_mm256_add_ps(s0, s1));
#endif
    for (; k < n; k++) s += load(a, k, a_bf16) * b[k];
    return s;
}

#if defined(__AVX512BF16__)
/* out[r] = a . xb[r] over n for each of `rows` rows xb[r] (at xb + r * xb_stride), a and xb bf16: the CPU's bf16
   pair products (vdpbf16ps, 32 products an instruction, nothing converted), two accumulators a row, up to four
   rows a pass over a; each row's sums in the same order whatever rows are beside it */
static void dot_rows_bf16(const uint16_t *a, const uint16_t *xb, int64_t xb_stride, int64_t rows, int64_t n, float *out) {
    for (int64_t r = 0; r < rows; r += 4) {
        const int64_t m = rows - r < 4 ? rows - r : 4;
        const uint16_t *xr = xb + r * xb_stride;
        __m512 s0[4], s1[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) s0[i] = s1[i] = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 64 <= n; k += 64) {
            const __m512bh a0 = (__m512bh)_mm512_loadu_si512(a + k), a1 = (__m512bh)_mm512_loadu_si512(a + k + 32);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                if (i < m) {
                    s0[i] = _mm512_dpbf16_ps(s0[i], a0, (__m512bh)_mm512_loadu_si512(xr + i * xb_stride + k));
                    s1[i] = _mm512_dpbf16_ps(s1[i], a1, (__m512bh)_mm512_loadu_si512(xr + i * xb_stride + k + 32));
                }
        }
        for (int64_t i = 0; i < m; i++) {
            float t = _mm512_reduce_add_ps(_mm512_add_ps(s0[i], s1[i]));
            for (int64_t kk = k; kk < n; kk++) t += bf16_to_float(a[kk]) * bf16_to_float(xr[i * xb_stride + kk]);
            out[r + i] = t;
        }
    }
}
#endif

/* out[r] = dot(a, a_bf16, x + r * x_stride, n) for each of `rows` x rows, the same sums in the same order as dot's
   (a row's result does not depend on the rows beside it). AVX512: up to four x rows a pass over a, each of its
   vectors loaded (and converted from bf16) once for them. */
static void dot_rows(const void *a, int a_bf16, const float *x, int64_t x_stride, int64_t rows, int64_t n, float *out) {
    int64_t r = 0;
#if defined(__AVX512F__)
    for (; r + 1 < rows; r += 4) {  /* 2-4 rows a block; a lone last row: the one-row sums */
        const int64_t m = rows - r < 4 ? rows - r : 4;
        const float *xr = x + r * x_stride;
        __m512 s0[4], s1[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) s0[i] = s1[i] = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 32 <= n; k += 32) {
            __m512 a0, a1;
            if (a_bf16) {
                const uint16_t *p = (const uint16_t *)a + k;
                a0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
                a1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 16))), 16));
            } else {
                a0 = _mm512_loadu_ps((const float *)a + k);
                a1 = _mm512_loadu_ps((const float *)a + k + 16);
            }
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                if (i < m) {
                    s0[i] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(xr + i * x_stride + k), s0[i]);
                    s1[i] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(xr + i * x_stride + k + 16), s1[i]);
                }
        }
        for (int64_t i = 0; i < m; i++) {
            float s = _mm512_reduce_add_ps(_mm512_add_ps(s0[i], s1[i]));
            for (int64_t kk = k; kk < n; kk++) s += load(a, kk, a_bf16) * xr[i * x_stride + kk];
            out[r + i] = s;
        }
    }
#endif
    for (; r < rows; r++) out[r] = dot(a, a_bf16, x + r * x_stride, n);
}

/* y[r] = W x[r] (accumulate: y[r] += W x[r]) for `rows` x rows, x's and y's rows W's in and out apart; called by
   every thread of the region. A weight is read from memory once for all the rows: each thread takes its outputs
   (a row of W, in L1 while every x row is dotted with it), or its chunk of W's rows. Each x row's sums run in
   the order they would alone, so a row's logits do not depend on the rows beside it. The scratch `p` has room
   for the Q4 group sums, a bf16 (in, out) weight's chunks' sums (with `chunked`; else its columns instead) and x
   in bf16. */
static void matvec(const QWeight *w, int64_t rows, const float *x, float *y, const Scratch *p, int chunked,
                   int accumulate) {
    const int64_t in = w->in, out = w->out;
    float *sums = p->sums, *partial = p->partial;
    const int64_t sums_stride = p->sums_stride, partial_stride = p->partial_stride;
    if (w->kind == BF16_IN_OUT && chunked) {
        /* each chunk of W's rows summed by one thread, then the chunks' sums added in chunk order: each output's
           sum has one order whatever the thread count */
        const int64_t chunks = chunks_of(in);
        const uint16_t *W = (const uint16_t *)w->codes;
#pragma omp for schedule(static)
        for (int64_t c = 0; c < chunks; c++) {
            const int64_t k1 = (c + 1) * ROW_CHUNK < in ? (c + 1) * ROW_CHUNK : in;
            rows_in_out_bf16(W, out, out, x, in, partial + c * out, partial_stride, rows, c * ROW_CHUNK, k1);
        }
#pragma omp for schedule(static)
        for (int64_t j = 0; j < out; j++)
            for (int64_t r = 0; r < rows; r++) {
                const float *p = partial + r * partial_stride;
                float v = p[j];
                for (int64_t c = 1; c < chunks; c++) v += p[c * out + j];
                y[r * out + j] = accumulate ? y[r * out + j] + v : v;
            }
        return;
    }
    if (w->kind == F32_IN_OUT || w->kind == BF16_IN_OUT) {
        /* each thread its own block of columns, whole cache lines (16 floats) of y each */
        int t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        const int64_t lines = (out + 15) / 16;
        int64_t n0 = lines * t / T * 16, n1 = lines * (t + 1) / T * 16;
        n1 = n1 < out ? n1 : out;
        if (n0 < n1) columns_in_out(w, x, y, rows, n0, n1, accumulate);
#pragma omp barrier
        return;
    }
    const int64_t groups = in / 32;
    if (w->kind == Q4) {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) q4_group_sums(x + r * in, sums + r * sums_stride, groups);
    }
    const int bf16 = w->kind == BF16_OUT_IN, size = bf16 ? 2 : 4;
#if defined(__AVX512BF16__)
    /* bf16 rows: x rounded to bf16 once (as torch's bf16 products and llama.cpp's round their inputs), then the
       CPU's bf16 pair products, nothing converted per weight: SmolLM2's step, 2 threads, AMD EPYC, alternated,
       against the fp32 x of dot_rows: 1 row 9.9 against 13.8 ms, 4 rows 15.9 / 23.1, 8 rows 26.4 / 39.7 */
    if (bf16) {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < in; k++) p->xb[r * p->xb_stride + k] = float_to_bf16(x[r * in + k]);
    }
#endif
#pragma omp for schedule(static)
    for (int64_t n = 0; n < out; n++) {
        float v[64];
        for (int64_t r0 = 0; r0 < rows; r0 += 64) {  /* all the x rows against weight row n, 64 at a time */
            const int64_t m = rows - r0 < 64 ? rows - r0 : 64;
            const float *xr = x + r0 * in;
            if (w->kind == Q4) {
                q4_1_rows((const uint8_t *)w->codes + n * (in / 2), w->scale + n * groups, xr, in, m, groups, v);
                for (int64_t r = 0; r < m; r++)
                    v[r] += q4_min_term(w->min + n * groups, sums + (r0 + r) * sums_stride, groups);
            } else if (w->kind == Q8_0) {
                q8_0_rows((const int8_t *)w->codes + n * in, w->scale + n * groups, xr, in, m, groups, v);
#if defined(__AVX512BF16__)
            } else if (bf16) {
                dot_rows_bf16((const uint16_t *)w->codes + n * in, p->xb + r0 * p->xb_stride, p->xb_stride, m, in, v);
#endif
            } else {
                dot_rows((const char *)w->codes + n * in * size, bf16, xr, in, m, in, v);
            }
            for (int64_t r = 0; r < m; r++) {
                float *yr = y + (r0 + r) * out + n;
                *yr = accumulate ? *yr + v[r] : v[r];
            }
        }
    }
}

static void rmsnorm(const float *x, const void *weight, int bf16, float *out, int64_t n, float eps) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * load(weight, i, bf16);
}

/* x (D,) rotated in place: x * cos + roll(x, D / 2) * signed_sin (layers/rope.py's apply_rope) */
static void rope(float *x, const float *cos, const float *ssin, int64_t D) {
    float tmp[1024];
    const int64_t half = D / 2;
    for (int64_t i = 0; i < D; i++) tmp[i] = x[i] * cos[i] + x[(i + half) % D] * ssin[i];
    memcpy(x, tmp, sizeof(float) * D);
}

/* where layer `layer`'s block of cache row `row` starts (k_cache or v_cache); `size`: bytes an element */
static inline char *cache_block(void *cache, const LlamaStep *s, int64_t row, int32_t layer, int size) {
    return (char *)cache + (row * s->row_stride + layer * s->layer_stride) * size;
}

/* the cache's element i (of either dtype) */
static inline void store(void *p, int64_t i, float v, int bf16) {
    if (bf16) ((uint16_t *)p)[i] = float_to_bf16(v);
    else ((float *)p)[i] = v;
}

/* One token for each of n rows of the cache: tokens[i] at positions[i] of cache row rows[i] (which holds
   positions 0 .. positions[i] - 1), its logits into logits[i] (vocab floats each). rope: the (cos, signed sin)
   table, (rope_len, 2, head_dim). Rows must differ. 0: done; 1: a bad argument (nothing written). */
int llama_step(const LlamaStep *s, int32_t n, const int64_t *tokens, const int64_t *positions, const int64_t *rows,
               const float *rope_table, int64_t rope_len, float *logits, int threads) {
    const int64_t dim = s->dim, H = s->n_heads, KV = s->n_kv_heads, D = s->head_dim, hidden = s->hidden;
    const int bf16 = s->bf16, cache_bf16 = s->cache_bf16, size = cache_bf16 ? 2 : 4;  /* size: a cache element's */
    if (D > 1024 || n < 1 || n > s->max_rows) return 1;
    for (int32_t i = 0; i < n; i++) {
        if (positions[i] < 0 || positions[i] >= s->max_len || positions[i] >= rope_len || rows[i] < 0
            || tokens[i] < 0 || tokens[i] >= s->head->out)
            return 1;
        for (int32_t j = 0; j < i; j++)
            if (rows[j] == rows[i]) return 1;
    }
    Scratch p;
    scratch_layout(dim, H, KV, D, hidden, s->max_len, n, s->scratch, &p);
    const int64_t group = H / KV, qkv_width = (H + 2 * KV) * D;
    const float scale = 1.0f / sqrtf((float)D);
    for (int32_t r = 0; r < n; r++)
        for (int64_t i = 0; i < dim; i++) p.x[r * dim + i] = load(s->embed, tokens[r] * dim + i, bf16);
#pragma omp parallel num_threads(threads)
    {
        for (int32_t l = 0; l < s->n_layers; l++) {
#pragma omp for schedule(static)
            for (int32_t r = 0; r < n; r++) rmsnorm(p.x + r * dim, s->attn_norm[l], bf16, p.h + r * dim, dim, s->eps);
            matvec(&s->qkv[l], n, p.h, p.qkv, &p, 1, 0);
#pragma omp for schedule(static)
            for (int32_t r = 0; r < n; r++) {
                float *qkv = p.qkv + r * qkv_width;
                const float *cos = rope_table + positions[r] * 2 * D, *ssin = cos + D;
                char *kc = cache_block(s->k_cache, s, rows[r], l, size);
                char *vc = cache_block(s->v_cache, s, rows[r], l, size);
                if (s->q_norm != NULL)  /* QK-norm: each query and key head RMS-normalised, before RoPE */
                    for (int64_t j = 0; j < H + KV; j++)
                        rmsnorm(qkv + j * D, j < H ? s->q_norm[l] : s->k_norm[l], bf16, qkv + j * D, D, s->eps);
                for (int64_t j = 0; j < H + KV; j++) rope(qkv + j * D, cos, ssin, D); /* query and key heads */
                for (int64_t j = 0; j < KV; j++)
                    for (int64_t c = 0; c < D; c++) {
                        store(kc, j * s->head_stride + positions[r] * D + c, qkv[(H + j) * D + c], cache_bf16);
                        store(vc, j * s->head_stride + positions[r] * D + c, qkv[(H + KV + j) * D + c], cache_bf16);
                    }
            }
#pragma omp for schedule(static)
            for (int64_t ri = 0; ri < n * H; ri++) {  /* row r's query head i attends with kv head i / group */
                const int64_t r = ri / H, i = ri % H, keys = positions[r] + 1;
                const char *kc = cache_block(s->k_cache, s, rows[r], l, size);
                const char *vc = cache_block(s->v_cache, s, rows[r], l, size);
                const float *q = p.qkv + r * qkv_width + i * D;
                const int64_t kv = (i / group) * s->head_stride;
                float *pr = p.scores + ri * s->max_len, *out = p.att + ri * D, top = -INFINITY, total = 0.0f;
                for (int64_t t = 0; t < keys; t++) {
                    pr[t] = dot(kc + (kv + t * D) * size, cache_bf16, q, D) * scale;
                    top = pr[t] > top ? pr[t] : top;
                }
                for (int64_t t = 0; t < keys; t++) { pr[t] = expf(pr[t] - top); total += pr[t]; }
                for (int64_t c = 0; c < D; c++) out[c] = 0.0f;
                for (int64_t t = 0; t < keys; t++) {
                    const float w = pr[t] / total;
                    if (cache_bf16) {
                        const uint16_t *v = (const uint16_t *)vc + kv + t * D;
                        for (int64_t c = 0; c < D; c++) out[c] += w * bf16_to_float(v[c]);
                    } else {
                        const float *v = (const float *)vc + kv + t * D;
                        for (int64_t c = 0; c < D; c++) out[c] += w * v[c];
                    }
                }
            }
            matvec(&s->proj[l], n, p.att, p.x, &p, 1, 1);
#pragma omp for schedule(static)
            for (int32_t r = 0; r < n; r++) rmsnorm(p.x + r * dim, s->mlp_norm[l], bf16, p.h + r * dim, dim, s->eps);
            matvec(&s->gate_up[l], n, p.h, p.gu, &p, 1, 0);
#pragma omp for collapse(2) schedule(static)
            for (int32_t r = 0; r < n; r++)
                for (int64_t i = 0; i < hidden; i++) {
                    const float g = p.gu[r * 2 * hidden + i];
                    p.act[r * hidden + i] = g / (1.0f + expf(-g)) * p.gu[r * 2 * hidden + hidden + i];  /* silu(gate) * up */
                }
            matvec(&s->down[l], n, p.act, p.x, &p, 1, 1);
        }
#pragma omp for schedule(static)
        for (int32_t r = 0; r < n; r++) rmsnorm(p.x + r * dim, s->final_norm, bf16, p.h + r * dim, dim, s->eps);
        /* an untied bf16 head's chunks would need vocab-wide room: its columns */
        matvec(s->head, n, p.h, logits, &p, 0, 0);
    }
    return 0;
}
