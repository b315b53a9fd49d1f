/* One decoding step of a Llama-shaped model, the whole stack in one call: a token in, its logits out.

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
   outputs over the threads, as do the attention's heads and the gate; the rest between them (norms, RoPE, the
   cache writes) runs on one thread, and threads meet only at the barriers between stages.

   The weights are read where the model keeps them: the compact forms of layers/quantized.py as stored (Q8_0
   codes and scales, q8_0.c; Q4_0 / Q4_1 nibbles with scale and minimum, q4_1.c), or fp32 / bf16 matrices in
   our Linear's (in, out) layout (each thread sums its own block of output columns over the rows in order) or,
   for a head tied to the embedding, the table's (vocab, dim). The embedding, norms and KV cache are fp32, or
   all bf16; the cache is laid out as the model's KVCache (layer, kv head, position, D) for one row.
   Activations stay fp32 throughout. The sums run in another order than torch's, so logits equal the model's
   forward pass to fp32 rounding, not bit for bit (in bf16 the forward pass also rounds every op's output,
   which this does not: tests/test_fused_step.py). Each output is summed by one thread in one order (a bf16
   (in, out) weight's over fixed chunks of rows, each chunk by one thread, the chunks added in order), so the
   thread count does not change a bit. */
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
    void *k_cache, *v_cache;          /* this row's layer 0, kv head 0, position 0 */
    int64_t layer_stride, head_stride; /* elements between layers, between kv heads */
    float *scratch;                   /* llama_step_scratch floats */
    int64_t max_len;
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

int64_t llama_step_scratch(int32_t dim, int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, int32_t hidden,
                           int64_t max_len) {
    return 2 * (int64_t)dim + (int64_t)(n_heads + 2 * n_kv_heads) * head_dim + (int64_t)n_heads * head_dim
           + (int64_t)n_heads * max_len + 3 * (int64_t)hidden + group_sums_floats(dim, hidden)
           + partial_floats(dim, (int64_t)(n_heads + 2 * n_kv_heads) * head_dim, (int64_t)n_heads * head_dim, hidden);
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

/* acc[0:width] = x[k0:k1] W[k0:k1, 0:width] for bf16 W with `stride` elements between rows: rows k0..k1 summed
   in order, four a pass. The step's bf16 (in, out) products run it over fixed chunks of rows, each chunk by one
   thread over all columns (matvec), rather than over each thread's columns and all rows (columns_in_out, still
   the head's): a thread then streams its rows in order, one region of memory, where its columns held 4 streams
   of rows. SmolLM2's bf16 products, all 30 layers, 2 threads, AMD EPYC AVX512 (microseconds, chunks / columns):
   gate_up 3,818 / 4,355, down 2,329 / 3,777, qkv 1,356 / 1,536, proj 353 / 477. (The (out, in) copies of
   pack_for_inference are quicker still: models/llama_step.py.) */
static void rows_in_out_bf16(const uint16_t *W, int64_t stride, int64_t width, const float *x, float *acc,
                             int64_t k0, int64_t k1) {
    for (int64_t j = 0; j < width; j++) acc[j] = 0.0f;
    int64_t k = k0;
    for (; k + 4 <= k1; k += 4) {
        const uint16_t *r0 = W + k * stride, *r1 = r0 + stride, *r2 = r1 + stride, *r3 = r2 + stride;
        const float x0 = x[k], x1 = x[k + 1], x2 = x[k + 2], x3 = x[k + 3];
        for (int64_t j = 0; j < width; j++)
            acc[j] += x0 * bf16_to_float(r0[j]) + x1 * bf16_to_float(r1[j]) + x2 * bf16_to_float(r2[j])
                      + x3 * bf16_to_float(r3[j]);
    }
    for (; k < k1; k++)
        for (int64_t j = 0; j < width; j++) acc[j] += x[k] * bf16_to_float(W[k * stride + j]);
}

/* y[n0:n1] (+)= x W[:, n0:n1] for W (in, out) row-major: a thread's own columns, summed over the rows in order
   (the same order whatever the thread count), four rows of W per pass over its accumulator */
static void columns_in_out(const QWeight *w, const float *x, float *y, int64_t n0, int64_t n1, int accumulate) {
    float acc[512];
    const int64_t out = w->out, in = w->in;
    for (int64_t c0 = n0; c0 < n1; c0 += 512) {
        const int64_t width = n1 - c0 < 512 ? n1 - c0 : 512;
        if (w->kind == F32_IN_OUT) {
            const float *W = (const float *)w->codes;
            int64_t k = 0;
            for (int64_t j = 0; j < width; j++) acc[j] = 0.0f;
            for (; k + 4 <= in; k += 4) {
                const float *r0 = W + k * out + c0, *r1 = r0 + out, *r2 = r1 + out, *r3 = r2 + out;
                const float x0 = x[k], x1 = x[k + 1], x2 = x[k + 2], x3 = x[k + 3];
                for (int64_t j = 0; j < width; j++) acc[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j];
            }
            for (; k < in; k++)
                for (int64_t j = 0; j < width; j++) acc[j] += x[k] * W[k * out + c0 + j];
        } else {
            rows_in_out_bf16((const uint16_t *)w->codes + c0, out, width, x, acc, 0, in);
        }
        for (int64_t j = 0; j < width; j++) y[c0 + j] = accumulate ? y[c0 + j] + acc[j] : acc[j];
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

/* one output of W (out, in) row-major: a float row dotted with x */
static inline float row_out_in(const QWeight *w, int64_t n, const float *x) {
    const int bf16 = w->kind == BF16_OUT_IN;
    return dot((const char *)w->codes + n * w->in * (bf16 ? 2 : 4), bf16, x, w->in);
}

/* y = W x (accumulate: y += W x); called by every thread of the region. `partial`: room for a bf16 (in, out)
   weight's chunks' sums (NULL: its columns instead) */
static void matvec(const QWeight *w, const float *x, float *y, float *sums, float *partial, int accumulate) {
    if (w->kind == BF16_IN_OUT && partial != NULL) {
        /* each chunk of rows summed by one thread, then the chunks' sums added in chunk order: each output's
           sum has one order whatever the thread count */
        const int64_t chunks = chunks_of(w->in), out = w->out;
        const uint16_t *W = (const uint16_t *)w->codes;
#pragma omp for schedule(static)
        for (int64_t c = 0; c < chunks; c++) {
            const int64_t k1 = (c + 1) * ROW_CHUNK < w->in ? (c + 1) * ROW_CHUNK : w->in;
            rows_in_out_bf16(W, out, out, x, partial + c * out, c * ROW_CHUNK, k1);
        }
#pragma omp for schedule(static)
        for (int64_t j = 0; j < out; j++) {
            float v = partial[j];
            for (int64_t c = 1; c < chunks; c++) v += partial[c * out + j];
            y[j] = accumulate ? y[j] + v : v;
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
        const int64_t lines = (w->out + 15) / 16;
        int64_t n0 = lines * t / T * 16, n1 = lines * (t + 1) / T * 16;
        n1 = n1 < w->out ? n1 : w->out;
        if (n0 < n1) columns_in_out(w, x, y, n0, n1, accumulate);
#pragma omp barrier
        return;
    }
    const int64_t groups = w->in / 32;
    if (w->kind == Q4) {
#pragma omp single
        q4_group_sums(x, sums, groups);
    }
#pragma omp for schedule(static)
    for (int64_t n = 0; n < w->out; n++) {
        float v;
        if (w->kind == Q4) {
            v = q4_1_row((const uint8_t *)w->codes + n * (w->in / 2), w->scale + n * groups, x, groups)
                + q4_min_term(w->min + n * groups, sums, groups);
        } else if (w->kind == Q8_0) {
            v = q8_0_row((const int8_t *)w->codes + n * w->in, w->scale + n * groups, x, groups);
        } else {
            v = row_out_in(w, n, x);
        }
        y[n] = accumulate ? y[n] + v : v;
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

/* the cache's element i (of either dtype) */
static inline void store(void *p, int64_t i, float v, int bf16) {
    if (bf16) ((uint16_t *)p)[i] = float_to_bf16(v);
    else ((float *)p)[i] = v;
}

int llama_step(const LlamaStep *s, int64_t token, int64_t pos, const float *cos, const float *ssin, float *logits,
               int threads) {
    const int64_t dim = s->dim, H = s->n_heads, KV = s->n_kv_heads, D = s->head_dim, hidden = s->hidden;
    const int bf16 = s->bf16, size = bf16 ? 2 : 4;
    if (D > 1024 || pos < 0 || pos >= s->max_len) return 1;
    float *x = s->scratch, *h = x + dim, *qkv = h + dim, *att = qkv + (H + 2 * KV) * D;
    float *scores = att + H * D, *gu = scores + H * s->max_len, *act = gu + 2 * hidden, *sums = act + hidden;
    float *partial = sums + group_sums_floats(dim, hidden);
    const int64_t keys = pos + 1, group = H / KV;
    const float scale = 1.0f / sqrtf((float)D);
    for (int64_t i = 0; i < dim; i++) x[i] = load(s->embed, token * dim + i, bf16);
#pragma omp parallel num_threads(threads)
    {
        for (int32_t l = 0; l < s->n_layers; l++) {
            char *kc = (char *)s->k_cache + l * s->layer_stride * size, *vc = (char *)s->v_cache + l * s->layer_stride * size;
#pragma omp single
            rmsnorm(x, s->attn_norm[l], bf16, h, dim, s->eps);
            matvec(&s->qkv[l], h, qkv, sums, partial, 0);
#pragma omp single
            {
                if (s->q_norm != NULL)  /* QK-norm: each query and key head RMS-normalised, before RoPE */
                    for (int64_t j = 0; j < H + KV; j++)
                        rmsnorm(qkv + j * D, j < H ? s->q_norm[l] : s->k_norm[l], bf16, qkv + j * D, D, s->eps);
                for (int64_t j = 0; j < H + KV; j++) rope(qkv + j * D, cos, ssin, D); /* query and key heads */
                for (int64_t j = 0; j < KV; j++)
                    for (int64_t c = 0; c < D; c++) {
                        store(kc, j * s->head_stride + pos * D + c, qkv[(H + j) * D + c], bf16);
                        store(vc, j * s->head_stride + pos * D + c, qkv[(H + KV + j) * D + c], bf16);
                    }
            }
#pragma omp for schedule(static)
            for (int64_t i = 0; i < H; i++) {  /* query head i attends with kv head i / group */
                const float *q = qkv + i * D;
                const int64_t kv = (i / group) * s->head_stride;
                float *p = scores + i * s->max_len, *out = att + i * D, top = -INFINITY, total = 0.0f;
                for (int64_t t = 0; t < keys; t++) {
                    p[t] = dot(kc + (kv + t * D) * size, bf16, q, D) * scale;
                    top = p[t] > top ? p[t] : top;
                }
                for (int64_t t = 0; t < keys; t++) { p[t] = expf(p[t] - top); total += p[t]; }
                for (int64_t c = 0; c < D; c++) out[c] = 0.0f;
                for (int64_t t = 0; t < keys; t++) {
                    const float w = p[t] / total;
                    if (bf16) {
                        const uint16_t *v = (const uint16_t *)vc + kv + t * D;
                        for (int64_t c = 0; c < D; c++) out[c] += w * bf16_to_float(v[c]);
                    } else {
                        const float *v = (const float *)vc + kv + t * D;
                        for (int64_t c = 0; c < D; c++) out[c] += w * v[c];
                    }
                }
            }
            matvec(&s->proj[l], att, x, sums, partial, 1);
#pragma omp single
            rmsnorm(x, s->mlp_norm[l], bf16, h, dim, s->eps);
            matvec(&s->gate_up[l], h, gu, sums, partial, 0);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < hidden; i++) {
                const float g = gu[i];
                act[i] = g / (1.0f + expf(-g)) * gu[hidden + i];  /* silu(gate) * up */
            }
            matvec(&s->down[l], act, x, sums, partial, 1);
        }
#pragma omp single
        rmsnorm(x, s->final_norm, bf16, h, dim, s->eps);
        matvec(s->head, h, logits, sums, NULL, 0);  /* an untied bf16 head's chunks would need vocab-wide room */
    }
    return 0;
}
