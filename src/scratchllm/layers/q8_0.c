/* Group-wise int8 times float: llama.cpp's Q8_0 blocks multiplied as they are stored.

   y[m, n] = sum over groups g of  scale[n, g] * sum_{j < 32} q[n, 32 g + j] * x[m, 32 g + j]

   q: (N, K) int8, scale: (N, K / 32) float, x: (M, K) float, y: (M, N) float; K a multiple of 32.
   Torch has no kernel for this (its int8 one, _weight_int8pack_mm, takes one scale per row), so
   layers/quantized.py compiles this file once per CPU (native.py) and calls it through ctypes for the
   few rows of a decoding step. Each weight is read from memory once per call, whatever M is: the products
   for several x rows are made from the same 32 codes while they sit in registers. The rows n are split over
   OpenMP threads; the process already runs torch's libgomp, which this library shares (same soname),
   so torch's threads and these are one pool.

   The sums are in fp32; their order differs from a float matmul's, so results match the dequantized
   product to fp32 rounding, not bit for bit (tests/test_quantized.py). */
#include <stdint.h>
#include "simd.h"

#define GROUP 32
#define ROWS 16 /* x rows one pass over a weight row serves; more rows take more passes (from L1) */

/* one weight row's groups against one x row: the building block of llama_step.c's decoding step */
static inline float q8_0_row(const int8_t *qn, const float *sn, const float *x, int64_t groups) {
#if defined(__AVX512F__)
    __m512 total = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        __m256i codes = _mm256_loadu_si256((const __m256i *)(qn + g * GROUP));
        __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(codes)));
        __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(codes, 1)));
        const float *xg = x + g * GROUP;
        __m512 s = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xg + 16), _mm512_mul_ps(w0, _mm512_loadu_ps(xg)));
        total = _mm512_fmadd_ps(_mm512_set1_ps(sn[g]), s, total);
    }
    return _mm512_reduce_add_ps(total);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 total = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        __m256i codes = _mm256_loadu_si256((const __m256i *)(qn + g * GROUP));
        __m128i lo = _mm256_castsi256_si128(codes), hi = _mm256_extracti128_si256(codes, 1);
        const float *xg = x + g * GROUP;
        __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), _mm256_loadu_ps(xg));
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), _mm256_loadu_ps(xg + 8), s);
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), _mm256_loadu_ps(xg + 16), s);
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), _mm256_loadu_ps(xg + 24), s);
        total = _mm256_fmadd_ps(_mm256_set1_ps(sn[g]), s, total);
    }
    return hsum256(total);
#else
    float total = 0.0f;
    for (int64_t g = 0; g < groups; g++) {
        float s = 0.0f;
        for (int j = 0; j < GROUP; j++) s += (float)qn[g * GROUP + j] * x[g * GROUP + j];
        total += sn[g] * s;
    }
    return total;
#endif
}

/* out[r] = q8_0_row(qn, sn, x + r * x_stride, groups) for each of `rows` x rows, in the same order of sums (a row's
   result does not depend on the rows beside it): llama_step.c's several rows. AVX512: each group's codes unpacked
   once for up to four x rows. */
static inline void q8_0_rows(const int8_t *qn, const float *sn, const float *x, int64_t x_stride, int64_t rows,
                             int64_t groups, float *out) {
    int64_t r = 0;
#if defined(__AVX512F__)
    for (; r + 1 < rows; r += BLOCK) {  /* 2-4 rows a block; a lone last row: the one-row sums */
        const int64_t m = rows - r < BLOCK ? rows - r : BLOCK;
        __m512 total[BLOCK];
#pragma GCC unroll 4
        for (int i = 0; i < BLOCK; i++) total[i] = _mm512_setzero_ps();
        for (int64_t g = 0; g < groups; g++) {
            __m256i codes = _mm256_loadu_si256((const __m256i *)(qn + g * GROUP));
            __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(codes)));
            __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(codes, 1)));
            group_rows(total, w0, w1, _mm512_set1_ps(sn[g]), x + r * x_stride + g * GROUP, x_stride, m);
        }
        for (int64_t i = 0; i < m; i++) out[r + i] = _mm512_reduce_add_ps(total[i]);
    }
#endif
    for (; r < rows; r++) out[r] = q8_0_row(qn, sn, x + r * x_stride, groups);
}

#if defined(__AVX512F__)
/* Several x rows (AVX512): 4 weight rows' groups unpacked once into registers (w = scale * q) and used for
   up to 4 x rows: 16 accumulators, 8 weight vectors, 2 of x. The loop below it unpacks each group once per
   x row as well, 8 lanes wide: at 16 rows that took 3.7x the time of 8 (a 1024 x 1024 weight), and the float
   product of the dequantized weight won from 64 rows on (native_rows). With this block (benchmarks/
   quantized_kernels.py, AMD EPYC AVX512-BF16, 2 threads, 2026-12-03, microseconds before / after): 576 x 960 at
   16 rows 253 / 176, 64 rows 768 / 512; 576 x 3072 775 / 478, 2964 / 2145; 1536 x 576 348 / 299, 1302 / 1094. */
static inline void q8_block(const float *x, const int8_t *q, const float *scale, float *y, int64_t r0, int64_t rows,
                            int64_t n0, int64_t cols, int64_t K, int64_t N) {
    const int64_t groups = K / GROUP;
    __m512 acc[BLOCK][BLOCK];
    block_zero(acc);
    for (int64_t g = 0; g < groups; g++) {
        __m512 lo[BLOCK], hi[BLOCK];
#pragma GCC unroll 4
        for (int j = 0; j < BLOCK; j++) {
            const int64_t n = n0 + (j < cols ? j : 0);  /* past N: a copy of row n0, not stored */
            const __m256i codes = _mm256_loadu_si256((const __m256i *)(q + n * K + g * GROUP));
            const __m512 d = _mm512_set1_ps(scale[n * groups + g]);
            lo[j] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(codes))));
            hi[j] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(codes, 1))));
        }
        block_group(acc, lo, hi, x + r0 * K + g * GROUP, K, rows);
    }
    block_store(acc, y + r0 * N + n0, N, rows, cols);
}
#endif

int q8_0_matmul(const float *x, const int8_t *q, const float *scale, float *y,
                int64_t M, int64_t K, int64_t N, int threads) {
    if (M < 1 || K % GROUP != 0) return 1;
    const int64_t groups = K / GROUP;
#if defined(__AVX512F__)
    if (M > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t n0 = 0; n0 < N; n0 += BLOCK)
            for (int64_t r0 = 0; r0 < M; r0 += BLOCK)
                q8_block(x, q, scale, y, r0, M - r0 < BLOCK ? M - r0 : BLOCK, n0, N - n0 < BLOCK ? N - n0 : BLOCK, K, N);
        return 0;
    }
#endif
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
      for (int64_t m0 = 0; m0 < M; m0 += ROWS) {
        const int8_t *qn = q + n * K;
        const float *sn = scale + n * groups;
        const int64_t rows = M - m0 < ROWS ? M - m0 : ROWS;
        const float *x0 = x + m0 * K;
        float *y0 = y + m0 * N;
#if defined(__AVX2__) && defined(__FMA__)
        __m256 total[ROWS];
        for (int64_t m = 0; m < rows; m++) total[m] = _mm256_setzero_ps();
        for (int64_t g = 0; g < groups; g++) {
            /* 32 codes -> four vectors of 8 floats */
            __m256i codes = _mm256_loadu_si256((const __m256i *)(qn + g * GROUP));
            __m128i lo = _mm256_castsi256_si128(codes), hi = _mm256_extracti128_si256(codes, 1);
            __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
            __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
            __m256 w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
            __m256 w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
            __m256 d = _mm256_set1_ps(sn[g]);
            for (int64_t m = 0; m < rows; m++) {
                const float *xg = x0 + m * K + g * GROUP;
                __m256 s = _mm256_mul_ps(w0, _mm256_loadu_ps(xg));
                s = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xg + 8), s);
                s = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xg + 16), s);
                s = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xg + 24), s);
                total[m] = _mm256_fmadd_ps(d, s, total[m]);  /* the group's sum, scaled once */
            }
        }
        for (int64_t m = 0; m < rows; m++) y0[m * N + n] = hsum256(total[m]);
#else
        for (int64_t m = 0; m < rows; m++) {
            const float *xm = x0 + m * K;
            float total = 0.0f;
            for (int64_t g = 0; g < groups; g++) {
                float s = 0.0f;
                for (int j = 0; j < GROUP; j++) s += (float)qn[g * GROUP + j] * xm[g * GROUP + j];
                total += sn[g] * s;
            }
            y0[m * N + n] = total;
        }
#endif
      }
    }
    return 0;
}
