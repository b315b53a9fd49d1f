/* Causal self-attention in bf16, forward and backward, for the short contexts we train on a CPU.

     forward:  qkv (B, T, 3, H, D)  ->  y (B, T, H, D), and P (B, H, T, T) kept for the backward
     backward: dy (B, T, H, D)      ->  dqkv (B, T, 3, H, D)

   y = P v with P = softmax(scale q k^T + causal mask), head by head, straight from the fused qkv projection and
   back into it (no split into heads, no transposes, no joining the heads again: the layout is the products').

   Why a kernel of our own: at the baby GPT's shapes (B 12, H 4, T 64, D 32) a head's products are 64 x 64 x 32,
   too small for a library's batched matmul to run at the machine's speed (oneDNN: ~170 GFLOP/s against a 400
   peak, ~110 when an operand is transposed, as backward's are), and torch adds passes to split qkv, mask,
   soft-max and join the heads. Here one thread takes one (b, h) at a time with the head's operands in L1 cache,
   and skips the masked half of each product: 0.37 ms forward + backward against torch's best 0.95 at those
   shapes (benchmarks/attention.py --kernel, 2 threads of an AMD EPYC). The transposes the products need are
   few: k^T and v^T are gathered as 32-bit pairs, and the backward's dS^T and P^T are never made (their rows are
   read down the columns of dS and P taken two rows at a time), which took its time from 0.30 to 0.16 ms.

   The arithmetic is torch's bf16 path's: bf16 operands, fp32 sums (AVX512-BF16's dot product of bf16 pairs),
   P and dS rounded to bf16 before they are multiplied (as torch's bf16 softmax and its backward return them);
   the scores and the softmax are fp32 (torch rounds the scores to bf16 first: ours are the more exact).
   Only built for CPUs with AVX512-BF16 (-march=native); elsewhere causal_attention_available() is 0 and
   layers/attention.py keeps torch's path. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#define ROWS 4 /* output rows a product makes at once: 8 independent sums keep the FMA units busy */

static inline int64_t padded(int64_t n) { return (n + 15) / 16 * 16; }

/* The one product everything here is made of, for ROWS rows at once:
     out[i, 0 .. N) = sum over k in [k0, k1) of A[i, k] * B[k, 0 .. N)         (fp32 sums; k0, k1 even)
   in pairs of k, as AVX512-BF16's dot product takes them: the 32-bit word Ap[i * a_row + (k / 2) * a_col] holds
   A[i, k] (low half) and A[i, k + 1] (high), Bp[(k / 2) * ldb + n] holds B[k, n] and B[k + 1, n]. A matrix whose
   rows have k contiguous is its own pair-words (a_col 1); a_row 1 reads them down the columns of a matrix of
   pairs. N: a multiple of 16. */
static void product(const uint32_t *Ap, int64_t a_row, int64_t a_col, const uint32_t *Bp, int64_t ldb, int64_t k0,
                    int64_t k1, int64_t N, float *out, int64_t ldo) {
    int64_t n0 = 0;
    for (; n0 + 32 <= N; n0 += 32) {
        __m512 acc[ROWS][2];
        for (int i = 0; i < ROWS; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        for (int64_t k = k0; k < k1; k += 2) {
            const uint32_t *b = Bp + (k / 2) * ldb + n0, *a = Ap + (k / 2) * a_col;
            const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
            for (int i = 0; i < ROWS; i++) {
                const __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i * a_row]);
                acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
                acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
            }
        }
        for (int i = 0; i < ROWS; i++) {
            _mm512_storeu_ps(out + i * ldo + n0, acc[i][0]);
            _mm512_storeu_ps(out + i * ldo + n0 + 16, acc[i][1]);
        }
    }
    if (n0 < N) {  /* 16 columns left */
        __m512 acc[ROWS];
        for (int i = 0; i < ROWS; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t k = k0; k < k1; k += 2) {
            const uint32_t *a = Ap + (k / 2) * a_col;
            const __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp + (k / 2) * ldb + n0);
            for (int i = 0; i < ROWS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_set1_epi32((int)a[i * a_row]), b0);
        }
        for (int i = 0; i < ROWS; i++) _mm512_storeu_ps(out + i * ldo + n0, acc[i]);
    }
}

/* the first n of 16 lanes (all of them for n >= 16) */
static inline __mmask16 first_lanes(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u); }

/* bf16 rows as the pair-words they are (a row's even offset: 4-byte aligned) */
static inline const uint32_t *words(const uint16_t *x) { return (const uint32_t *)(const void *)x; }

/* B = X^T for X (T, D) bf16 rows `ld` apart: B[k = d, n = t] = X[t, d]; pairs of d are adjacent in X's rows,
   so the pair-word (d / 2, t) is X row t's 32-bit word d / 2, gathered 16 rows at a time. Out: (D / 2, ldb). */
static void pairs_of_transpose(const uint16_t *X, int64_t ld, int64_t T, int64_t D, uint32_t *out, int64_t ldb) {
    const __m512i lanes = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32((int)(ld / 2)));
    for (int64_t t = 0; t < T; t += 16) {
        const __mmask16 rows = first_lanes(T - t);
        const int *first = (const int *)(const void *)(X + t * ld);
        for (int64_t m = 0; m < D / 2; m++)
            _mm512_mask_storeu_epi32(out + m * ldb + t, rows,
                                     _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), rows, lanes, first + m, 4));
    }
}

/* B = X (T, D): pair-word (t / 2, d) = X[t, d] | X[t + 1, d] << 16. Out: (T / 2, D) words. */
static void pairs_of_rows(const uint16_t *X, int64_t ld, int64_t T, int64_t D, uint32_t *out) {
    for (int64_t t = 0; t < T; t += 2)
        for (int64_t d = 0; d < D; d++) out[(t / 2) * D + d] = (uint32_t)X[t * ld + d] | (uint32_t)X[(t + 1) * ld + d] << 16;
}

/* fp32 row of n (a multiple of 16) to bf16, rounded to nearest even */
static inline void to_bf16(const float *x, int64_t n, uint16_t *out, float scale) {
    for (int64_t j = 0; j < n; j += 16) {
        const __m256bh h = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(x + j), _mm512_set1_ps(scale)));
        _mm256_storeu_si256((__m256i *)(out + j), (__m256i)h);
    }
}

/* e^x for x <= 0: x = n ln2 + r, |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial (relative error < 2e-7,
   far below bf16's 4e-3), times 2^n (scalef). Below -87, e^x is taken as e^-87 ~ 1.6e-38. */
static inline __m512 exp_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* the lanes of the 16 columns from j that are keys 0 .. t */
static inline __mmask16 seen(int64_t j, int64_t t) { return first_lanes(t + 1 - j); }

/* the lanes `mask` of 16 bf16 at p as fp32 (0 elsewhere): a bf16 is the high half of its fp32 */
static inline __m512 load_bf16(__mmask16 mask, const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p)), 16));
}

/* per-thread scratch */
typedef struct {
    float *rows;                    /* (ROWS, max(Tp, D)) fp32: one product's output rows */
    uint32_t *kt, *vt;              /* (D / 2, Tp): k^T and v^T in pairs (scores; dP) */
    uint32_t *kp, *vp, *qp, *dyp;   /* (T / 2, D): k, v, q, dy in pairs of rows (dq; y; dk; dv) */
    uint16_t *ds;                   /* (T, T) bf16: dS */
    uint32_t *dsp, *pp;             /* (T / 2, T): dS and P in pairs of rows (dk; dv) */
} Scratch;

static int scratch_alloc(Scratch *s, int64_t T, int64_t D) {
    const size_t Tp = (size_t)padded(T), wide = Tp > (size_t)D ? Tp : (size_t)D;
    const size_t words = 2 * (size_t)(D / 2) * Tp + 4 * (size_t)(T / 2) * (size_t)D;
    char *all = calloc(1, sizeof(float) * ROWS * wide + sizeof(uint32_t) * words + 3 * sizeof(uint16_t) * (size_t)(T * T));
    if (!all) return 0;  /* calloc: the padding columns (t >= T) of kt and vt stay 0 */
    s->rows = (float *)all;
    s->kt = (uint32_t *)(s->rows + ROWS * wide);
    s->vt = s->kt + (size_t)(D / 2) * Tp;
    s->kp = s->vt + (size_t)(D / 2) * Tp;
    s->vp = s->kp + (size_t)(T / 2) * D;
    s->qp = s->vp + (size_t)(T / 2) * D;
    s->dyp = s->qp + (size_t)(T / 2) * D;
    s->dsp = s->dyp + (size_t)(T / 2) * D;
    s->pp = s->dsp + (size_t)(T / 2) * T;
    s->ds = (uint16_t *)(s->pp + (size_t)(T / 2) * T);
    return 1;
}

/* this thread's scratch, or 0 with *failed set (the thread then skips its heads and the call returns 1) */
static int thread_scratch(Scratch *s, int64_t T, int64_t D, int *failed) {
    if (scratch_alloc(s, T, D)) return 1;
#pragma omp atomic write
    *failed = 1;
    return 0;
}

int causal_attention_available(void) { return 1; }

/* forward. T a multiple of 4, D of 16 (the caller checks). Returns 0, or 1 if scratch memory could not be had. */
int causal_attention_forward(const uint16_t *qkv, uint16_t *y, uint16_t *probs, int64_t B, int64_t T, int64_t H,
                             int64_t D, float scale) {
    int failed = 0;
    const int64_t Tp = padded(T), row = 3 * H * D;
#pragma omp parallel
    {
        Scratch s;
        const int ok = thread_scratch(&s, T, D, &failed);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            if (!ok) continue;
            const int64_t b = bh / H, h = bh % H;
            const uint16_t *q = qkv + b * T * row + h * D, *k = q + H * D, *v = k + H * D;  /* rows `row` apart */
            uint16_t *P = probs + bh * T * T;
            pairs_of_transpose(k, row, T, D, s.kt, Tp);
            pairs_of_rows(v, row, T, D, s.vp);
            for (int64_t t0 = 0; t0 < T; t0 += ROWS) {  /* ROWS queries at a time: they see keys 0 .. t0 + ROWS - 1 */
                const int64_t n = t0 + ROWS, cols = padded(n);
                product(words(q + t0 * row), row / 2, 1, s.kt, Tp, 0, D, cols, s.rows, Tp);  /* q k^T, unscaled */
                for (int64_t t = t0; t < n; t++) {  /* softmax of row t over keys 0 .. t, in fp32 */
                    float *sc = s.rows + (t - t0) * Tp;
                    __m512 top = _mm512_set1_ps(-INFINITY);
                    for (int64_t j = 0; j <= t; j += 16)
                        top = _mm512_mask_max_ps(top, seen(j, t), top, _mm512_loadu_ps(sc + j));
                    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(top)), sc_scale = _mm512_set1_ps(scale);
                    __m512 sum = _mm512_setzero_ps();
                    for (int64_t j = 0; j < padded(t + 1); j += 16) {
                        const __m512 e = _mm512_maskz_mov_ps(seen(j, t),
                                                             exp_nonpositive(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(sc + j), m), sc_scale)));
                        _mm512_storeu_ps(sc + j, e);
                        sum = _mm512_add_ps(sum, e);
                    }
                    const float inv = 1.0f / _mm512_reduce_add_ps(sum);
                    uint16_t *p = P + t * T;
                    for (int64_t j = 0; j < T; j += 16) {  /* P row t: bf16, 0 past key t */
                        __m256i h = _mm256_setzero_si256();
                        if (j <= t) h = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(sc + j), _mm512_set1_ps(inv)));
                        _mm256_mask_storeu_epi16(p + j, first_lanes(T - j), h);
                    }
                }
                product(words(P + t0 * T), T / 2, 1, s.vp, D, 0, n, D, s.rows, D);  /* P v */
                for (int64_t i = 0; i < ROWS; i++) to_bf16(s.rows + i * D, D, y + ((b * T + t0 + i) * H + h) * D, 1.0f);
            }
        }
        if (ok) free(s.rows);
    }
    return failed;
}

/* backward. With S = scale q k^T and P = softmax(S): dP = dy v^T, dS = P * (dP - rowsum(P * dP)),
   dq = scale dS k, dk = scale dS^T q, dv = P^T dy. dqkv is written whole. */
int causal_attention_backward(const uint16_t *qkv, const uint16_t *probs, const uint16_t *dy, uint16_t *dqkv,
                              int64_t B, int64_t T, int64_t H, int64_t D, float scale) {
    int failed = 0;
    const int64_t Tp = padded(T), row = 3 * H * D;
#pragma omp parallel
    {
        Scratch s;
        const int ok = thread_scratch(&s, T, D, &failed);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            if (!ok) continue;
            const int64_t b = bh / H, h = bh % H;
            const uint16_t *q = qkv + b * T * row + h * D, *k = q + H * D, *v = k + H * D;
            const uint16_t *g = dy + b * T * H * D + h * D;  /* dy rows, H * D apart */
            uint16_t *dq = dqkv + b * T * row + h * D, *dk = dq + H * D, *dv = dk + H * D;
            const uint16_t *P = probs + bh * T * T;
            pairs_of_transpose(v, row, T, D, s.vt, Tp);
            pairs_of_rows(k, row, T, D, s.kp);
            pairs_of_rows(q, row, T, D, s.qp);
            pairs_of_rows(g, H * D, T, D, s.dyp);
            for (int64_t t0 = 0; t0 < T; t0 += ROWS) {  /* dS, ROWS rows at a time, and dq from them */
                const int64_t n = t0 + ROWS;
                product(words(g + t0 * H * D), H * D / 2, 1, s.vt, Tp, 0, D, padded(n), s.rows, Tp);  /* dP = dy v^T */
                for (int64_t t = t0; t < n; t++) {
                    const float *dp = s.rows + (t - t0) * Tp;
                    const uint16_t *p = P + t * T;  /* 0 past key t */
                    __m512 dot = _mm512_setzero_ps();
                    for (int64_t j = 0; j <= t; j += 16)
                        dot = _mm512_fmadd_ps(load_bf16(seen(j, t), p + j), _mm512_maskz_loadu_ps(seen(j, t), dp + j), dot);
                    const __m512 rowsum = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
                    uint16_t *ds = s.ds + t * T;
                    for (int64_t j = 0; j < T; j += 16) {  /* dS row t in bf16, 0 past key t */
                        __m256i h = _mm256_setzero_si256();
                        if (j <= t)
                            h = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(load_bf16(seen(j, t), p + j),
                                                                          _mm512_sub_ps(_mm512_maskz_loadu_ps(seen(j, t), dp + j), rowsum)));
                        _mm256_mask_storeu_epi16(ds + j, first_lanes(T - j), h);
                    }
                }
                product(words(s.ds + t0 * T), T / 2, 1, s.kp, D, 0, n, D, s.rows, D);  /* dq = dS k */
                for (int64_t i = 0; i < ROWS; i++) to_bf16(s.rows + i * D, D, dq + (t0 + i) * row, scale);
            }
            pairs_of_rows(s.ds, T, T, T, s.dsp);  /* dS^T's and P^T's rows are their columns: read as pairs */
            pairs_of_rows(P, T, T, T, s.pp);
            for (int64_t j0 = 0; j0 < T; j0 += ROWS) {  /* keys j0 .. j0 + ROWS - 1, seen by the queries t >= j0 */
                product(s.dsp + j0, 1, T, s.qp, D, j0, T, D, s.rows, D);  /* dk = dS^T q */
                for (int64_t i = 0; i < ROWS; i++) to_bf16(s.rows + i * D, D, dk + (j0 + i) * row, scale);
                product(s.pp + j0, 1, T, s.dyp, D, j0, T, D, s.rows, D);  /* dv = P^T dy */
                for (int64_t i = 0; i < ROWS; i++) to_bf16(s.rows + i * D, D, dv + (j0 + i) * row, 1.0f);
            }
        }
        if (ok) free(s.rows);
    }
    return failed;
}

#else /* no AVX512-BF16: nothing here; layers/attention.py keeps torch's path */
int causal_attention_available(void) { return 0; }
int causal_attention_forward(const uint16_t *qkv, uint16_t *y, uint16_t *probs, int64_t B, int64_t T, int64_t H,
                             int64_t D, float scale) { return 2; }
int causal_attention_backward(const uint16_t *qkv, const uint16_t *probs, const uint16_t *dy, uint16_t *dqkv,
                              int64_t B, int64_t T, int64_t H, int64_t D, float scale) { return 2; }
#endif
