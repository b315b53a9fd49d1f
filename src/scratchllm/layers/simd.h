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
#endif
