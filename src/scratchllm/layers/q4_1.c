/* Group-wise 4-bit times float: llama.cpp's Q4_0 / Q4_1 blocks multiplied as they are stored.

   w[n, 32 g + j] = d[n, g] * c[n, 32 g + j] + m[n, g]     c in 0..15 (Q4_0: m = -8 d)
   y[r, n] = sum over groups g of  d[n, g] * sum_j c[n, 32 g + j] x[r, 32 g + j]  +  m[n, g] * sum_j x[r, 32 g + j]

   The second term needs each group's sum of x once per call, not once per weight row: a group costs
   one scaled dot product of its 32 codes, as a Q8_0 group does in q8_0.c. The codes are GGUF's layout:
   16 bytes a group, byte j holding code j in its low nibble and code j + 16 in its high nibble.
   codes: (N, K / 2) uint8, d, m: (N, K / 32) float, x: (M, K) float, y: (M, N) float; K a multiple of 32.
   Rows n are split over OpenMP threads (torch's own pool: see q8_0.c).

   q4_1_row (one weight row against one x row) is also the building block of llama_step.c. */
#include <stdint.h>
#include <stdlib.h>
#include "simd.h"

#define Q4_GROUP 32
#define Q4_ROWS 16 /* x rows one pass over a weight row serves */

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

/* sums[g] = the sum of x's group g (the m term's factor) */
static inline void q4_group_sums(const float *x, float *sums, int64_t groups) {
    for (int64_t g = 0; g < groups; g++) {
        float s = 0.0f;
        for (int j = 0; j < Q4_GROUP; j++) s += x[g * Q4_GROUP + j];
        sums[g] = s;
    }
}

static inline float q4_min_term(const float *m, const float *sums, int64_t groups) {
    float s = 0.0f;
    for (int64_t g = 0; g < groups; g++) s += m[g] * sums[g];
    return s;
}

int q4_1_matmul(const float *x, const uint8_t *codes, const float *d, const float *m, float *y,
                int64_t M, int64_t K, int64_t N, int threads) {
    if (M < 1 || K % Q4_GROUP != 0) return 1;
    const int64_t groups = K / Q4_GROUP;
    float *sums = malloc(sizeof(float) * M * groups);
    if (sums == NULL) return 2;
    for (int64_t r = 0; r < M; r++) q4_group_sums(x + r * K, sums + r * groups, groups);
    if (M == 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t n = 0; n < N; n++)
            y[n] = q4_1_row(codes + n * (K / 2), d + n * groups, x, groups) + q4_min_term(m + n * groups, sums, groups);
        free(sums);
        return 0;
    }
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
      for (int64_t r0 = 0; r0 < M; r0 += Q4_ROWS) {
        const uint8_t *cn = codes + n * (K / 2);
        const float *dn = d + n * groups;
        const int64_t rows = M - r0 < Q4_ROWS ? M - r0 : Q4_ROWS;
#if defined(__AVX512F__)
        /* each group's codes unpacked once to two vectors of 16 floats, then used for up to 16 x rows */
        const __m128i low4 = _mm_set1_epi8(0x0F);
        __m512 total[Q4_ROWS];
        for (int64_t r = 0; r < rows; r++) total[r] = _mm512_setzero_ps();
        for (int64_t g = 0; g < groups; g++) {
            __m128i packed = _mm_loadu_si128((const __m128i *)(cn + g * 16));
            __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(packed, low4)));
            __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(packed, 4), low4)));
            __m512 dg = _mm512_set1_ps(dn[g]);
            for (int64_t r = 0; r < rows; r++) {
                const float *xg = x + (r0 + r) * K + g * Q4_GROUP;
                __m512 s = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xg)));
                total[r] = _mm512_fmadd_ps(dg, s, total[r]);
            }
        }
        for (int64_t r = 0; r < rows; r++)
            y[(r0 + r) * N + n] = _mm512_reduce_add_ps(total[r]) + q4_min_term(m + n * groups, sums + (r0 + r) * groups, groups);
#elif defined(__AVX2__) && defined(__FMA__)
        /* as q8_0.c: each group's codes unpacked to floats once, then used for up to 16 x rows */
        const __m128i low4 = _mm_set1_epi8(0x0F);
        __m256 total[Q4_ROWS];
        for (int64_t r = 0; r < rows; r++) total[r] = _mm256_setzero_ps();
        for (int64_t g = 0; g < groups; g++) {
            __m128i packed = _mm_loadu_si128((const __m128i *)(cn + g * 16));
            __m128i lo = _mm_and_si128(packed, low4), hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
            __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            __m256 w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            __m256 w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
            __m256 dg = _mm256_set1_ps(dn[g]);
            for (int64_t r = 0; r < rows; r++) {
                const float *xg = x + (r0 + r) * K + g * Q4_GROUP;
                __m256 s = _mm256_mul_ps(w0, _mm256_loadu_ps(xg));
                s = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xg + 8), s);
                s = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xg + 16), s);
                s = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xg + 24), s);
                total[r] = _mm256_fmadd_ps(dg, s, total[r]);
            }
        }
        for (int64_t r = 0; r < rows; r++)
            y[(r0 + r) * N + n] = hsum256(total[r]) + q4_min_term(m + n * groups, sums + (r0 + r) * groups, groups);
#else
        for (int64_t r = r0; r < r0 + rows; r++)
            y[r * N + n] = q4_1_row(cn, dn, x + r * K, groups) + q4_min_term(m + n * groups, sums + r * groups, groups);
#endif
      }
    }
    free(sums);
    return 0;
}
