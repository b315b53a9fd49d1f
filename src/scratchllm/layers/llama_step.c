/* One decoding step of a Llama-shaped model, the whole stack in one call: a token in, its logits out.

       x = embed[token]
       per layer:  h = rmsnorm(x) * attn_norm          q, k, v = W_qkv h   (H, KV, KV heads of D)
                   q, k = rope(q, k) at pos           k, v -> the cache at pos
                   a = softmax(q k^T / sqrt(D)) v     over keys 0..pos, each query head on its group's kv head
                   x += W_proj a
                   h = rmsnorm(x) * mlp_norm           g, u = W_gate_up h
                   x += W_down (silu(g) * u)
       logits = W_head (rmsnorm(x) * final_norm)

   Why: a step of SmolLM2-135M in torch is ~1,850 operator calls (62 a layer), each a few microseconds of
   dispatch and thread wake-up for a few hundred numbers, so two thirds of an int4 token went to overhead
   (the notes' profile). Here a step is one call into one OpenMP parallel region: the products split their
   output rows over the threads, everything between them (norms, RoPE, softmax over at most a few thousand
   keys) runs on one thread, and threads meet only at the barriers between stages.

   The weights are the compact forms of layers/quantized.py as they are stored (kind 8: Q8_0 codes and
   scales, q8_0.c; kind 4: Q4_0 / Q4_1 nibbles with scale and minimum, q4_1.c), the rest fp32, the cache
   fp32 and laid out as the model's KVCache (layer, kv head, position, D) for one row. The sums run in a
   different order from torch's, so logits equal the model's own forward pass to fp32 rounding, not bit
   for bit (tests/test_fused_step.py). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "q4_1.c"
#include "q8_0.c"

typedef struct {
    int32_t kind;      /* 8 or 4 */
    int32_t in, out;   /* in: a multiple of 32 */
    const void *codes; /* kind 8: (out, in) int8; kind 4: (out, in / 2) uint8 */
    const float *scale;  /* (out, in / 32) */
    const float *min;    /* kind 4: (out, in / 32) */
} QWeight;

typedef struct {
    int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, hidden;
    float eps;
    const float *embed;               /* (vocab, dim) */
    const float *const *attn_norm;    /* n_layers pointers to (dim,) */
    const float *const *mlp_norm;
    const float *final_norm;
    const QWeight *qkv, *proj, *gate_up, *down; /* n_layers each */
    const QWeight *head;
    float *k_cache, *v_cache;         /* this row's layer 0, kv head 0, position 0 */
    int64_t layer_stride, head_stride; /* floats between layers, between kv heads */
    float *scratch;                   /* llama_step_scratch floats */
    int64_t max_len;
} LlamaStep;

int64_t llama_step_scratch(int32_t dim, int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, int32_t hidden,
                           int64_t max_len) {
    int64_t widest = hidden > dim ? hidden : dim;
    return 2 * (int64_t)dim + (int64_t)(n_heads + 2 * n_kv_heads) * head_dim + (int64_t)n_heads * head_dim
           + (int64_t)n_heads * max_len + 3 * (int64_t)hidden + widest / 32 + 16;
}

/* y = W x (accumulate: y += W x); called by every thread of the region */
static void matvec(const QWeight *w, const float *x, float *y, float *sums, int accumulate) {
    const int64_t groups = w->in / 32;
    if (w->kind == 4) {
#pragma omp single
        q4_group_sums(x, sums, groups);
    }
#pragma omp for schedule(static)
    for (int64_t n = 0; n < w->out; n++) {
        float v;
        if (w->kind == 4) {
            v = q4_1_row((const uint8_t *)w->codes + n * (w->in / 2), w->scale + n * groups, x, groups)
                + q4_min_term(w->min + n * groups, sums, groups);
        } else {
            v = q8_0_row((const int8_t *)w->codes + n * w->in, w->scale + n * groups, x, groups);
        }
        y[n] = accumulate ? y[n] + v : v;
    }
}

static void rmsnorm(const float *x, const float *weight, float *out, int64_t n, float eps) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * weight[i];
}

/* x (D,) rotated in place: x * cos + roll(x, D / 2) * signed_sin (layers/rope.py's apply_rope) */
static void rope(float *x, const float *cos, const float *ssin, int64_t D) {
    float tmp[1024];
    const int64_t half = D / 2;
    for (int64_t i = 0; i < D; i++) tmp[i] = x[i] * cos[i] + x[(i + half) % D] * ssin[i];
    memcpy(x, tmp, sizeof(float) * D);
}

int llama_step(const LlamaStep *s, int64_t token, int64_t pos, const float *cos, const float *ssin, float *logits,
               int threads) {
    const int64_t dim = s->dim, H = s->n_heads, KV = s->n_kv_heads, D = s->head_dim, hidden = s->hidden;
    if (D > 1024 || pos < 0 || pos >= s->max_len) return 1;
    float *x = s->scratch, *h = x + dim, *qkv = h + dim, *att = qkv + (H + 2 * KV) * D;
    float *scores = att + H * D, *gu = scores + H * s->max_len, *act = gu + 2 * hidden, *sums = act + hidden;
    const int64_t keys = pos + 1, group = H / KV;
    const float scale = 1.0f / sqrtf((float)D);
    memcpy(x, s->embed + token * dim, sizeof(float) * dim);
#pragma omp parallel num_threads(threads)
    {
        for (int32_t l = 0; l < s->n_layers; l++) {
            float *kc = s->k_cache + l * s->layer_stride, *vc = s->v_cache + l * s->layer_stride;
#pragma omp single
            rmsnorm(x, s->attn_norm[l], h, dim, s->eps);
            matvec(&s->qkv[l], h, qkv, sums, 0);
#pragma omp single
            {
                for (int64_t j = 0; j < H + KV; j++) rope(qkv + j * D, cos, ssin, D); /* query and key heads */
                for (int64_t j = 0; j < KV; j++) {
                    memcpy(kc + j * s->head_stride + pos * D, qkv + (H + j) * D, sizeof(float) * D);
                    memcpy(vc + j * s->head_stride + pos * D, qkv + (H + KV + j) * D, sizeof(float) * D);
                }
            }
#pragma omp for schedule(static)
            for (int64_t i = 0; i < H; i++) {  /* query head i attends with kv head i / group */
                const float *q = qkv + i * D, *kh = kc + (i / group) * s->head_stride, *vh = vc + (i / group) * s->head_stride;
                float *p = scores + i * s->max_len, *out = att + i * D, top = -INFINITY, total = 0.0f;
                for (int64_t t = 0; t < keys; t++) {
                    float dot = 0.0f;
                    for (int64_t c = 0; c < D; c++) dot += q[c] * kh[t * D + c];
                    p[t] = dot * scale;
                    top = p[t] > top ? p[t] : top;
                }
                for (int64_t t = 0; t < keys; t++) { p[t] = expf(p[t] - top); total += p[t]; }
                for (int64_t c = 0; c < D; c++) out[c] = 0.0f;
                for (int64_t t = 0; t < keys; t++) {
                    const float w = p[t] / total;
                    for (int64_t c = 0; c < D; c++) out[c] += w * vh[t * D + c];
                }
            }
            matvec(&s->proj[l], att, x, sums, 1);
#pragma omp single
            rmsnorm(x, s->mlp_norm[l], h, dim, s->eps);
            matvec(&s->gate_up[l], h, gu, sums, 0);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < hidden; i++) {
                const float g = gu[i];
                act[i] = g / (1.0f + expf(-g)) * gu[hidden + i];  /* silu(gate) * up */
            }
            matvec(&s->down[l], act, x, sums, 1);
        }
#pragma omp single
        rmsnorm(x, s->final_norm, h, dim, s->eps);
        matvec(s->head, h, logits, sums, 0);
    }
    return 0;
}
