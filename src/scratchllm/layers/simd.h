/* What the C kernels (q8_0.c, q4_1.c, llama_step.c) share: the CPU's vector instructions where it has them. */
#ifndef SCRATCHLLM_SIMD_H
#define SCRATCHLLM_SIMD_H
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* the sum of a vector's 8 lanes */
static inline float hsum256(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
#endif

#if defined(__AVX512F__)
/* The 4 x 4 register block of q8_0.c's and q4_1.c's several-row products: 4 x rows by 4 weight rows, one
   group of 32 at a time, the weights already unpacked to floats (lo: codes 0-15, hi: 16-31 of each row). */
#define BLOCK 4

static inline void block_zero(__m512 acc[BLOCK][BLOCK]) {
#pragma GCC unroll 4
    for (int i = 0; i < BLOCK; i++)
#pragma GCC unroll 4
        for (int j = 0; j < BLOCK; j++) acc[i][j] = _mm512_setzero_ps();
}

/* acc[i][j] += x row i's group (at x + i * K) . weight row j's group, for i < rows */
static inline void block_group(__m512 acc[BLOCK][BLOCK], const __m512 lo[BLOCK], const __m512 hi[BLOCK],
                               const float *x, int64_t K, int64_t rows) {
#pragma GCC unroll 4
    for (int i = 0; i < BLOCK; i++) {
        if (i < rows) {
            const __m512 x0 = _mm512_loadu_ps(x + i * K), x1 = _mm512_loadu_ps(x + i * K + 16);
#pragma GCC unroll 4
            for (int j = 0; j < BLOCK; j++) acc[i][j] = _mm512_fmadd_ps(x1, hi[j], _mm512_fmadd_ps(x0, lo[j], acc[i][j]));
        }
    }
}

/* total[i] += d * (lo . x_i[0:16] + hi . x_i[16:32]) for the first m of 4 x rows (x_i at x + i * x_stride): one group
   of 32 weights, unpacked once, against several rows in the one-row kernels' order of sums (q8_0_row, q4_1_row), so
   that q8_0_rows and q4_1_rows give each row what it gets alone */
static inline void group_rows(__m512 total[BLOCK], __m512 lo, __m512 hi, __m512 d, const float *x, int64_t x_stride,
                              int64_t m) {
#pragma GCC unroll 4
    for (int i = 0; i < BLOCK; i++)
        if (i < m) {
            const float *xi = x + i * x_stride;
            __m512 s = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xi + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xi)));
            total[i] = _mm512_fmadd_ps(d, s, total[i]);
        }
}

/* y[i * N + j] = the sum of acc[i][j]'s lanes, for i < rows, j < cols */
static inline void block_store(__m512 acc[BLOCK][BLOCK], float *y, int64_t N, int64_t rows, int64_t cols) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) y[i * N + j] = _mm512_reduce_add_ps(acc[i][j]);
}
#endif
#endif
