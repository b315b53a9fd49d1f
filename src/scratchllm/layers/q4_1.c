/* Group-wise 4-bit times float: llama.cpp's Q4_0 / Q4_1 blocks multiplied as they are stored.

   w[n, 32 g + j] = d[n, g] * c[n, 32 g + j] + m[n, g]     c in 0..15 (Q4_0: m = -8 d)
   y[r, n] = sum over groups g of  d[n, g] * sum_j c[n, 32 g + j] x[r, 32 g + j]  +  m[n, g] * sum_j x[r, 32 g + j]

   The second term needs each group's sum of x once per call, not once per weight row: a group costs
   one scaled dot product of its 32 codes, as a Q8_0 group does in q8_0.c. The codes are GGUF's layout:
   16 bytes a group, byte j holding code j in its low nibble and code j + 16 in its high nibble.
   codes: (N, K / 2) uint8, d, m: (N, K / 32) float, x: (M, K) float, y: (M, N) float; K a multiple of 32.
   That is the one-row product; several rows use w = d c + m itself, unpacked once for several rows (below).
   Rows n are split over OpenMP threads (torch's own pool: see q8_0.c).

   q4_1_row (one weight row against one x row) is also the building block of llama_step.c. */
#include <stdint.h>
#include <stdlib.h>
#include "simd.h"

#define Q4_GROUP 32

/* sum over the row's groups of d * (codes . x), without the m term (see q4_1_matmul) */
static inline float q4_1_row(const uint8_t *codes, const float *d, const float *x, int64_t groups) {
#if defined(__AVX512F__)
    /* a group is two vectors of 16: the low nibbles (codes 0..15) and the high ones (16..31) */
    const __m128i low4 = _mm_set1_epi8(0x0F);
    __m512 total = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        __m128i packed = _mm_loadu_si128((const __m128i *)(codes + g * 16));
        __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(packed, low4)));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(packed, 4), low4)));
        const float *xg = x + g * Q4_GROUP;
        __m512 s = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xg)));
        total = _mm512_fmadd_ps(_mm512_set1_ps(d[g]), s, total);
    }
    return _mm512_reduce_add_ps(total);
#elif defined(__AVX2__) && defined(__FMA__)
    const __m128i low4 = _mm_set1_epi8(0x0F);
    __m256 total = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        __m128i packed = _mm_loadu_si128((const __m128i *)(codes + g * 16));
        __m128i lo = _mm_and_si128(packed, low4);                     /* codes 0..15 of the group */
        __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);  /* codes 16..31 */
        const float *xg = x + g * Q4_GROUP;
        __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_loadu_ps(xg));
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), _mm256_loadu_ps(xg + 8), s);
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_loadu_ps(xg + 16), s);
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), _mm256_loadu_ps(xg + 24), s);
        total = _mm256_fmadd_ps(_mm256_set1_ps(d[g]), s, total);
    }
    return hsum256(total);
#else
    float total = 0.0f;
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *c = codes + g * 16;
        const float *xg = x + g * Q4_GROUP;
        float s = 0.0f;
        for (int j = 0; j < 16; j++) s += (float)(c[j] & 0x0F) * xg[j] + (float)(c[j] >> 4) * xg[j + 16];
        total += d[g] * s;
    }
    return total;
#endif
}

/* out[r] = q4_1_row(codes, d, x + r * x_stride, groups) for each of `rows` x rows, in the same order of sums (a
   row's result does not depend on the rows beside it): llama_step.c's several rows. AVX512: each group's nibbles
   unpacked once for up to four x rows. */
static inline void q4_1_rows(const uint8_t *codes, const float *d, const float *x, int64_t x_stride, int64_t rows,
                             int64_t groups, float *out) {
    int64_t r = 0;
#if defined(__AVX512F__)
    const __m128i low4 = _mm_set1_epi8(0x0F);
    for (; r + 1 < rows; r += BLOCK) {  /* 2-4 rows a block; a lone last row: the one-row sums */
        const int64_t m = rows - r < BLOCK ? rows - r : BLOCK;
        __m512 total[BLOCK];
#pragma GCC unroll 4
        for (int i = 0; i < BLOCK; i++) total[i] = _mm512_setzero_ps();
        for (int64_t g = 0; g < groups; g++) {
            __m128i packed = _mm_loadu_si128((const __m128i *)(codes + g * 16));
            __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(packed, low4)));
            __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(packed, 4), low4)));
            group_rows(total, lo, hi, _mm512_set1_ps(d[g]), x + r * x_stride + g * Q4_GROUP, x_stride, m);
        }
        for (int64_t i = 0; i < m; i++) out[r + i] = _mm512_reduce_add_ps(total[i]);
    }
#endif
    for (; r < rows; r++) out[r] = q4_1_row(codes, d, x + r * x_stride, groups);
}

/* sums[g] = the sum of x's group g (the m term's factor) */
static inline void q4_group_sums(const float *x, float *sums, int64_t groups) {
    for (int64_t g = 0; g < groups; g++) {
        float s = 0.0f;
        for (int j = 0; j < Q4_GROUP; j++) s += x[g * Q4_GROUP + j];
        sums[g] = s;
    }
}

/* sum over groups of m[g] * sums[g], in vector lanes where the CPU has them (a scalar chain of one multiply-add
   per group cost ~2 ms of an int4 SmolLM2 step's 8) */
static inline float q4_min_term(const float *m, const float *sums, int64_t groups) {
    int64_t g = 0;
    float s = 0.0f;
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    for (; g + 16 <= groups; g += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(m + g), _mm512_loadu_ps(sums + g), acc);
    s = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps();
    for (; g + 8 <= groups; g += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(m + g), _mm256_loadu_ps(sums + g), acc);
    s = hsum256(acc);
#endif
    for (; g < groups; g++) s += m[g] * sums[g];
    return s;
}

/* Several x rows: each thread takes Q4_TILE weight rows at a time, dequantizes them once to floats
   (w = d c + m, the file's values) in a small buffer that stays in L1, and multiplies every x row by
   them in register blocks of Q4_BLOCK x rows by Q4_TILE weight rows: per Q4_BLOCK x Q4_TILE products,
   Q4_BLOCK + Q4_TILE loads. With AVX512 and up to Q4_DIRECT_ROWS x rows the 4 weight rows' groups are
   unpacked straight into registers instead (no tile written and read back). Unpacking each group once
   per x row and weight row (this file's first multi-row kernel) spent more instructions unpacking than
   multiplying: 0.42-0.52x torch's int4 kernel at 4 to 64 rows; these are 0.66-0.92x at 2-8 rows, 0.75-0.87x
   at 16-64 (benchmarks/quantized_kernels.py, AMD EPYC AVX512-BF16, 2 threads, 2026-12-03), and the server's
   8 concurrent int4 clients went from 58.6 to 96.9 tokens/s (benchmarks/serve.py). */
#define Q4_TILE 4
#ifndef Q4_DIRECT_ROWS
#define Q4_DIRECT_ROWS 8 /* measured: at 5-8 rows 1.1-1.3x the tile; alike from 16 */
#endif
#if defined(__AVX512F__)
typedef __m512 vec;
#define VW 16
#define Q4_BLOCK 4 /* 16 accumulators + 4 weights + 1 x: 21 of the 32 vector registers */
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vsum(v) _mm512_reduce_add_ps(v)
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 vec;
#define VW 8
#define Q4_BLOCK 2 /* 8 accumulators + 4 weights + 1 x: 13 of the 16 vector registers */
#define vzero() _mm256_setzero_ps()
#define vload(p) _mm256_loadu_ps(p)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vsum(v) hsum256(v)
#endif

#ifdef VW
/* tile[j, k] = w[n0 + j, k] for j < cols; rows cols..Q4_TILE-1 zero */
static void q4_dequantize_tile(const uint8_t *codes, const float *d, const float *m, float *tile,
                               int64_t n0, int64_t cols, int64_t K) {
    const int64_t groups = K / Q4_GROUP;
    for (int64_t j = 0; j < Q4_TILE; j++) {
        float *t = tile + j * K;
        if (j >= cols) {
            for (int64_t k = 0; k < K; k++) t[k] = 0.0f;
            continue;
        }
        const uint8_t *c = codes + (n0 + j) * (K / 2);
        for (int64_t g = 0; g < groups; g++) {
            const float dg = d[(n0 + j) * groups + g], mg = m[(n0 + j) * groups + g];
            float *tg = t + g * Q4_GROUP;
#if defined(__AVX512F__)
            const __m128i packed = _mm_loadu_si128((const __m128i *)(c + g * 16)), low4 = _mm_set1_epi8(0x0F);
            const __m512 dv = _mm512_set1_ps(dg), mv = _mm512_set1_ps(mg);
            _mm512_storeu_ps(tg, _mm512_fmadd_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(packed, low4))), mv));
            _mm512_storeu_ps(tg + 16, _mm512_fmadd_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                                 _mm_and_si128(_mm_srli_epi16(packed, 4), low4))), mv));
            continue;
#else
            const __m128i packed = _mm_loadu_si128((const __m128i *)(c + g * 16)), low4 = _mm_set1_epi8(0x0F);
            const __m128i lo = _mm_and_si128(packed, low4), hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
            const __m256 dv = _mm256_set1_ps(dg), mv = _mm256_set1_ps(mg);
            _mm256_storeu_ps(tg, _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), mv));
            _mm256_storeu_ps(tg + 8, _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), mv));
            _mm256_storeu_ps(tg + 16, _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), mv));
            _mm256_storeu_ps(tg + 24, _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), mv));
            continue;
#endif
            for (int i = 0; i < 16; i++) {
                const uint8_t b = c[g * 16 + i];
                t[g * Q4_GROUP + i] = dg * (float)(b & 0x0F) + mg;
                t[g * Q4_GROUP + i + 16] = dg * (float)(b >> 4) + mg;
            }
        }
    }
}

/* y[r0 + i, n0 + j] = x[r0 + i] . tile[j] for i < rows (<= Q4_BLOCK), j < cols */
static inline void q4_block(const float *x, const float *tile, float *y, int64_t r0, int64_t rows,
                            int64_t n0, int64_t cols, int64_t K, int64_t N) {
    vec acc[Q4_BLOCK][Q4_TILE];
#pragma GCC unroll 4
    for (int i = 0; i < Q4_BLOCK; i++)
#pragma GCC unroll 4
        for (int j = 0; j < Q4_TILE; j++) acc[i][j] = vzero();
    for (int64_t k = 0; k < K; k += VW) {
        vec w[Q4_TILE];
#pragma GCC unroll 4
        for (int j = 0; j < Q4_TILE; j++) w[j] = vload(tile + j * K + k);
#pragma GCC unroll 4
        for (int i = 0; i < Q4_BLOCK; i++) {
            if (i < rows) {
                vec xv = vload(x + (r0 + i) * K + k);
#pragma GCC unroll 4
                for (int j = 0; j < Q4_TILE; j++) acc[i][j] = vfma(xv, w[j], acc[i][j]);
            }
        }
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) y[(r0 + i) * N + n0 + j] = vsum(acc[i][j]);
}
#endif

#if defined(__AVX512F__)
/* y[i, n0 + j] for all rows i < M <= Q4_BLOCK: with one block of x rows each weight is used M times
   only, so its group is unpacked straight into registers (w = d c + m) instead of through the tile */
static inline void q4_block_direct(const float *x, const uint8_t *codes, const float *d, const float *m,
                                   float *y, int64_t r0, int64_t M, int64_t n0, int64_t cols, int64_t K, int64_t N) {
    x += r0 * K;
    y += r0 * N;
    const int64_t groups = K / Q4_GROUP;
    const __m128i low4 = _mm_set1_epi8(0x0F);
    __m512 acc[BLOCK][BLOCK];  /* Q4_BLOCK = Q4_TILE = BLOCK with AVX512 (simd.h) */
    block_zero(acc);
    for (int64_t g = 0; g < groups; g++) {
        __m512 lo[BLOCK], hi[BLOCK];
#pragma GCC unroll 4
        for (int j = 0; j < BLOCK; j++) {
            const int64_t n = n0 + (j < cols ? j : 0);  /* past N: a copy of row n0, not stored */
            const __m128i packed = _mm_loadu_si128((const __m128i *)(codes + n * (K / 2) + g * 16));
            const __m512 dv = _mm512_set1_ps(d[n * groups + g]), mv = _mm512_set1_ps(m[n * groups + g]);
            lo[j] = _mm512_fmadd_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(packed, low4))), mv);
            hi[j] = _mm512_fmadd_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(packed, 4), low4))), mv);
        }
        block_group(acc, lo, hi, x + g * Q4_GROUP, K, M);
    }
    block_store(acc, y + n0, N, M, cols);
}
#endif

int q4_1_matmul(const float *x, const uint8_t *codes, const float *d, const float *m, float *y,
                int64_t M, int64_t K, int64_t N, int threads) {
    if (M < 1 || K % Q4_GROUP != 0) return 1;
    const int64_t groups = K / Q4_GROUP;
    if (M == 1) {
        /* one row: each group's codes are used once, so they are multiplied as they are unpacked,
           and m's term is one sum of x per group (q4_1_row, the fused step's product too) */
        float *sums = malloc(sizeof(float) * groups);
        if (sums == NULL) return 2;
        q4_group_sums(x, sums, groups);
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t n = 0; n < N; n++)
            y[n] = q4_1_row(codes + n * (K / 2), d + n * groups, x, groups) + q4_min_term(m + n * groups, sums, groups);
        free(sums);
        return 0;
    }
#if defined(__AVX512F__)
    if (M <= Q4_DIRECT_ROWS) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t n0 = 0; n0 < N; n0 += Q4_TILE)
            for (int64_t r0 = 0; r0 < M; r0 += Q4_BLOCK)
                q4_block_direct(x, codes, d, m, y, r0, M - r0 < Q4_BLOCK ? M - r0 : Q4_BLOCK, n0,
                                N - n0 < Q4_TILE ? N - n0 : Q4_TILE, K, N);
        return 0;
    }
#endif
#ifdef VW
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *tile = aligned_alloc(64, sizeof(float) * Q4_TILE * K);
        if (tile == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += Q4_TILE) {
            if (tile == NULL) continue;
            const int64_t cols = N - n0 < Q4_TILE ? N - n0 : Q4_TILE;
            q4_dequantize_tile(codes, d, m, tile, n0, cols, K);
            for (int64_t r0 = 0; r0 < M; r0 += Q4_BLOCK)
                q4_block(x, tile, y, r0, M - r0 < Q4_BLOCK ? M - r0 : Q4_BLOCK, n0, cols, K, N);
        }
        free(tile);
    }
    return failed ? 2 : 0;
#else
    float *sums = malloc(sizeof(float) * M * groups);
    if (sums == NULL) return 2;
    for (int64_t r = 0; r < M; r++) q4_group_sums(x + r * K, sums + r * groups, groups);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++)
        for (int64_t r = 0; r < M; r++)
            y[r * N + n] = q4_1_row(codes + n * (K / 2), d + n * groups, x + r * K, groups)
                           + q4_min_term(m + n * groups, sums + r * groups, groups);
    free(sums);
    return 0;
#endif
}
