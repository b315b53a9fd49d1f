# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 3: the attention of Llama
#
# Lesson 1's GPT added a learned position vector to each token before its first block. Llama 3's attention
# changes two things, each for a reason; this lesson adds a third that newer models use, and draws a fourth:
#
# 1. **RoPE**: positions enter by *rotating* queries and keys, so that attention scores depend on how far
#    apart two tokens are, not where they stand. We derive it from a 2-D rotation, meet its two memory layouts
#    (Meta's and Hugging Face's) and the classic bug of mixing them, and look at Llama 3.1's frequency
#    scaling for long contexts.
# 2. **Grouped-query attention (GQA)**: several query heads share one key/value head, which makes the KV cache
#    (the memory that generation keeps per token) several times smaller.
# 3. **QK-norm**: a normalisation of queries and keys found in *Qwen3 and Llama 4*; Llama 3 has none.
# 4. the **causal mask**, unchanged from GPT, drawn on four hand-built GQA heads.
#
# The hand-built attention is then checked against the library's `Attention` and against the `LlamaAttention`
# of Hugging Face `transformers`, to 1e-5.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bar, imported by transformers

import math
import time

import matplotlib.pyplot as plt
import torch
import transformers
from IPython.display import Markdown, display
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
from transformers.models.llama4.modeling_llama4 import Llama4TextAttention
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention

from scratchllm.layers import Attention, RopeScaling, apply_rope, interleaved_to_halves, inverse_frequencies, rope_cos_sin
from scratchllm.models import LlamaConfig

LESSON_START = time.perf_counter()
transformers.logging.set_verbosity_error()
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. RoPE, derived as a rotation
#
# Attention compares a query at position `m` with a key at position `n` through their dot product. We want
# that score to know the *distance* `m - n` (how far back is this word?) but not the absolute position: a
# phrase should be read the same at the start of a book and on page 300.
#
# Take a pair of numbers `(x1, x2)` as a point in the plane, and rotate the query of position `m` by the angle
# `m·w`, the key of position `n` by `n·w`. Rotations preserve lengths, and the angle between two rotated
# vectors changes by the difference of their rotations. So `rot(q, m·w) · rot(k, n·w) = q · rot(k, (n - m)·w)`:
# the score depends on `m - n` only. That is the whole idea of rotary position embeddings (Su et al., 2021).

# %%
def rotate2d(v: torch.Tensor, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]]) @ v


q2, k2 = torch.tensor([1.0, 0.3]), torch.tensor([0.4, -0.9])
w = 0.6
pairs = [(3, 1), (12, 10), (40, 38)]  # three (query, key) positions, all two apart
dots = [rotate2d(q2, m * w) @ rotate2d(k2, n * w) for m, n in pairs]
print("score at distance 2:", [round(float(d), 6) for d in dots])
assert all(abs(d - dots[0]) < 1e-5 for d in dots)
assert abs(rotate2d(q2, 7 * w).norm() - q2.norm()) < 1e-6  # a rotation keeps the length

fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), layout="constrained")
for ax, freq in zip(axes, (0.6, 0.1)):
    for p in range(8):
        v = rotate2d(q2, p * freq)
        ax.annotate("", xy=v.tolist(), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=plt.cm.viridis(p / 7)))
        ax.text(*(1.12 * v).tolist(), str(p), ha="center", va="center", fontsize=9)
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_title(f"w = {freq}: the pair at positions p = 0..7")
plt.show()

# %% [markdown]
# A head of dimension `d` holds `d/2` such pairs, each with its own frequency `w_i = θ^(-2i/d)` for
# `i = 0 .. d/2 - 1` (θ = 10,000 in the RoPE paper and in `transformers`' default `LlamaConfig`; Llama 3 uses
# 500,000). The frequencies fall geometrically: the first pair turns by one radian per token and tells
# neighbours apart, the last turns so slowly that it still distinguishes positions a million tokens apart.
#
# Which two channels form a pair is a convention. Hugging Face's code (and this library) pairs channel `i`
# with channel `i + d/2`: the "split halves" layout. Written out by hand:

# %%
def rope_halves(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate pair (i, i + d/2) of every vector by position * inv_freq[i]. x (..., T, d), positions (T,)."""
    half = x.size(-1) // 2
    angles = positions[:, None].float() * inv_freq  # (T, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


d, theta = 64, 500_000.0
inv_freq = theta ** (-torch.arange(0, d, 2).float() / d)
assert torch.allclose(inv_freq, inverse_frequencies(d, theta))
wavelengths = 2 * math.pi / inv_freq
print(f"wavelengths from {wavelengths[0]:.2f} to {wavelengths[-1]:,.0f} tokens")
assert inv_freq[0] == 1.0 and wavelengths[-1] > 1e6
assert transformers.LlamaConfig().rope_parameters["rope_theta"] == 10_000.0

x = torch.randn(1, 3, 20, d)  # (batch, heads, T, d)
positions = torch.arange(20)
ours = rope_halves(x, positions, inv_freq)
library = apply_rope(x, *rope_cos_sin(positions[None], inv_freq))
assert torch.allclose(ours, library, atol=1e-5)
assert torch.allclose(ours.norm(dim=-1), x.norm(dim=-1), atol=1e-4)

# %% [markdown]
# The score between a fixed query vector placed at position `m` and a fixed key vector at position `n`,
# for every `m` and `n`: each diagonal (one distance `m - n`) holds a single value.

# %%
qv, kv = torch.randn(d), torch.randn(d)
T = 48
grid = torch.arange(T)
Q = rope_halves(qv.expand(T, d), grid, inv_freq)  # the same query at every position
K = rope_halves(kv.expand(T, d), grid, inv_freq)
S = Q @ K.T  # S[m, n]
for offset in range(-T + 1, T):
    diagonal = torch.diagonal(S, offset)
    assert (diagonal - diagonal[0]).abs().max() < 1e-3
fig, ax = plt.subplots(figsize=(5.5, 4.6), layout="constrained")
image = ax.imshow(S, cmap="RdBu", vmin=-S.abs().max(), vmax=S.abs().max())  # white at 0
ax.set_xlabel("key position n")
ax.set_ylabel("query position m")
ax.set_title("q·k after RoPE: constant along diagonals")
fig.colorbar(image, ax=ax, label="score q·k")
plt.show()

# %% [markdown]
# ## 2. Two layouts, and `allclose False`
#
# Meta's reference code pairs *neighbouring* channels, `(0, 1), (2, 3), ...`, and implements the rotation
# with complex numbers: each pair is `x1 + i·x2`, multiplied by `e^(i·p·w)`. That is the "interleaved"
# layout, and Meta's checkpoints were trained with it. Hugging Face's Llama code uses split halves.
#
# Both are the same mathematics with different bookkeeping. What breaks is loading weights trained under one
# convention into code that uses the other. Below, `wq` and `wk` are a (random) Meta-layout checkpoint. The
# reference scores use Meta's rotation; the "mixed" scores feed the very same weights to the split-halves
# rotation.

# %%
def rope_interleaved(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Meta's layout: channels (2i, 2i+1) form pair i, rotated as the complex number x[2i] + i x[2i+1]."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (..., T, d/2)
    turn = torch.polar(torch.ones(len(positions), len(inv_freq)), positions[:, None].float() * inv_freq)
    return torch.view_as_real(pairs * turn).flatten(-2)


n_heads, d, dim, T = 2, 8, 16, 6
inv8 = inverse_frequencies(d, 10_000.0)
# (out, in), as in the files; scaled by 1/sqrt(dim) as at initialisation, so that scores are of order 1
wq_meta, wk_meta = (torch.randn(n_heads * d, dim) / math.sqrt(dim) for _ in range(2))
x = torch.randn(T, dim)
positions = torch.arange(T)


def heads(x, w):  # (T, dim) -> (heads, T, d)
    return (x @ w.T).view(T, n_heads, d).transpose(0, 1)


def split_halves(q):  # the library's rotation (split halves), on (heads, T, d)
    return apply_rope(q[None], *rope_cos_sin(positions[None], inv8))[0]


def same_position(scores):  # (heads, T, T) -> (heads, T): the diagonal m = n
    return torch.diagonal(scores, dim1=-2, dim2=-1)


reference = rope_interleaved(heads(x, wq_meta), positions, inv8) @ rope_interleaved(heads(x, wk_meta), positions, inv8).mT
mixed = split_halves(heads(x, wq_meta)) @ split_halves(heads(x, wk_meta)).mT  # (heads, T, T), [h, m, n]
off_diagonal = ~torch.eye(T, dtype=torch.bool)
difference_elsewhere = (mixed - reference)[:, off_diagonal].abs()  # (heads, T * (T - 1)): m != n
print("allclose:", torch.allclose(mixed, reference, atol=1e-5))
print(f"difference where m = n: at most {(same_position(mixed) - same_position(reference)).abs().max():.1e}")
print(f"difference where m != n: from {difference_elsewhere.min():.2f} to {difference_elsewhere.max():.2f} "
      f"(the scores range over ±{reference.abs().max():.2f})")
assert not torch.allclose(mixed, reference, atol=1e-5)
assert torch.allclose(same_position(mixed), same_position(reference), atol=1e-5)  # the diagonal agrees
assert difference_elsewhere.min() > 1e-3  # and every other score differs

# %% [markdown]
# **Why `False`, and why not everywhere.** Where query and key stand at the same position (`m = n`, the
# diagonal), both come out of the same rotation. A rotation, whichever channels it pairs, preserves dot
# products: `R q · R k = q · k`. So on the diagonal the score is the unrotated `q · k` in both codes, and they
# agree at every position, not just at position 0. (A test that runs a one-token prompt sees only that score,
# and passes.)
#
# Off the diagonal, the score is `q · rot(k, (n - m)·w)`, a rotation by the distance, and here the pairing
# matters: the split-halves code turns channel 0 together with channel `d/2`, while the checkpoint was trained
# with channel 0 paired with channel 1. The pairs being rotated are the wrong pairs, so every score between
# two different positions is wrong. Nothing crashes: every shape is right, only the numbers are not.
#
# How wrong grows with the distance `m - n`. On a Llama 3 head (d = 128, θ = 500,000), 2,048 random query
# and key vectors per distance, and the error of the mixed code as a fraction of the typical score (both
# root-mean-square):

# %%
inv128 = inverse_frequencies(128, 500_000.0)
distances = [0] + [2**p for p in range(14)]  # 0, 1, 2, 4, .., 8192
N = 2048  # query/key pairs per distance
q_rows = torch.randn(N, 128).repeat(len(distances), 1)  # (15 * N, 128): the same N queries at each distance
k_rows = torch.randn(N, 128).repeat(len(distances), 1)  # and the same N keys
q_at = torch.randint(8192, 16_384, (N,)).repeat(len(distances))  # (15 * N,) the queries' positions
k_at = q_at - torch.tensor(distances).repeat_interleave(N)  # each key `distance` tokens before its query
right = (rope_interleaved(q_rows, q_at, inv128) * rope_interleaved(k_rows, k_at, inv128)).sum(-1).view(len(distances), N)
wrong = (rope_halves(q_rows, q_at, inv128) * rope_halves(k_rows, k_at, inv128)).sum(-1).view(len(distances), N)
rms_error = ((wrong - right).pow(2).mean(-1) / right.pow(2).mean(-1)).sqrt()  # (15,) RMS error / RMS score
relative_error = dict(zip(distances, rms_error.tolist()))
print("  ".join(f"{distance}: {error:.2f}" for distance, error in relative_error.items()))
assert relative_error[0] < 1e-5  # the diagonal: right, at every position
assert 0.25 < relative_error[1] < relative_error[4] < relative_error[16] < relative_error[256]
assert all(1 < relative_error[distance] < 1.5 for distance in distances if distance >= 256)

fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
ax.semilogx(distances[1:], [relative_error[distance] for distance in distances[1:]], "o-")
ax.axhline(1.0, color="gray", ls=":")
ax.text(1, 1.03, "error as large as the scores", color="gray", va="bottom")
ax.set_xticks(distances[1::2], [str(distance) for distance in distances[1::2]])
ax.set_xlabel("distance m - n (tokens, log scale; at 0 the error is 0)")
ax.set_ylabel("RMS error / RMS score")
ax.set_ylim(0, 1.5)
ax.set_title("Meta's weights, split-halves rotation: one Llama 3 head")
plt.show()

# %% [markdown]
# The fast pairs are wrong from the first neighbour on (over a quarter of the score there already); each
# slower pair joins in as the distance grows, and from a few hundred tokens on the error is larger than the
# scores themselves: the model's sense of where its context stands is noise.
#
# **The fix** reorders the rows of `wq` and `wk` within each head, `(0, 1, 2, 3, ...) → (0, 2, 4, ..., 1, 3, 5, ...)`,
# so that Meta's pair `(2i, 2i+1)` lands on channels `(i, i + d/2)`, where split halves expects it. That is
# `interleaved_to_halves` (Hugging Face's conversion script does the same). `wv` and `wo` stay as they are:
# RoPE never touches values.

# %%
wq_hf, wk_hf = interleaved_to_halves(wq_meta, n_heads), interleaved_to_halves(wk_meta, n_heads)
fixed = split_halves(heads(x, wq_hf)) @ split_halves(heads(x, wk_hf)).mT
print("allclose:", torch.allclose(fixed, reference, atol=1e-5))
assert torch.allclose(fixed, reference, atol=1e-5)

order = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # the same rotation, channels reordered
assert torch.allclose(split_halves(heads(x, wq_hf)), rope_interleaved(heads(x, wq_meta), positions, inv8)[..., order], atol=1e-5)

# %% [markdown]
# ## 3. Llama 3.1's frequency scaling
#
# Llama 3 was trained on sequences of 8,192 tokens; Llama 3.1 extends that to 128K. A pair whose wavelength
# exceeds the training length never completed a turn in training: at position 100,000 it would show angles
# the model never saw. Llama 3.1's fix works per frequency band:
#
# - wavelengths shorter than `8192 / high_freq_factor` (2,048 tokens) stay as they are: they have turned
#   many times in training, every angle is familiar, and they carry the fine, local position information;
# - wavelengths longer than `8192 / low_freq_factor` (8,192) are slowed down by `factor` (8): position 65,536
#   then looks, to those pairs, like position 8,192 did;
# - in between, the two are blended smoothly.

# %%
scaling = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
plain = inverse_frequencies(128, 500_000.0)
scaled = inverse_frequencies(128, 500_000.0, scaling)
wl_plain, wl_scaled = 2 * math.pi / plain, 2 * math.pi / scaled

short, long = wl_plain < 2048, wl_plain > 8192
middle = ~short & ~long
assert torch.equal(scaled[short], plain[short])
assert torch.allclose(scaled[long], plain[long] / 8)
assert ((scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 8)).all()
assert torch.allclose(65_536 * scaled[long], 8_192 * plain[long])  # the angle at 64K is the old angle at 8K
print(f"{int(short.sum())} pairs untouched, {int(middle.sum())} blended, {int(long.sum())} slowed down 8x")

fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
ax.semilogy(wl_plain, "o", ms=3, label="Llama 3 (θ = 500,000)")
ax.semilogy(wl_scaled, "o", ms=3, label="Llama 3.1 scaled")
for y, text in ((2048, "8192 / 4"), (8192, "8192")):
    ax.axhline(y, color="gray", ls=":")
    ax.text(0, y * 1.3, text, color="gray")
ax.set_xlabel("pair index i")
ax.set_ylabel("wavelength (tokens)")
ax.legend()
plt.show()

# %% [markdown]
# ## 4. Grouped-query attention and the KV cache
#
# When a model generates, each new token attends to all earlier ones, whose keys and values do not change.
# So they are computed once and kept: the **KV cache**. It grows with the sequence, one key and one value
# vector per layer per KV head per token, and at long contexts it rivals the weights in memory.
#
# GQA keeps all the query heads but lets a *group* of them share one key/value head. Llama 3 8B has 32 query
# heads and 8 KV heads: each KV head serves 4 query heads. In code, each KV head is simply repeated for its
# group before the usual attention:

# %%
def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def attention(x, Wq, Wk, Wv, Wo, n_heads, n_kv_heads, theta, q_norm=None, k_norm=None):
    """Llama attention by hand. x (B, T, dim); W* stored (in, out), y = x @ W. Returns the output (B, T, dim)
    and the logits (B, H, T, T), -inf where the mask hides a key: their softmax is the attention weights."""
    B, T, _ = x.shape
    d = Wq.size(1) // n_heads
    q = (x @ Wq).view(B, T, n_heads, d).transpose(1, 2)  # (B, H, T, d)
    k = (x @ Wk).view(B, T, n_kv_heads, d).transpose(1, 2)  # (B, KV, T, d)
    v = (x @ Wv).view(B, T, n_kv_heads, d).transpose(1, 2)
    if q_norm is not None:  # QK-norm (Qwen3): per-head RMSNorm before the rotation
        q, k = rms_norm(q, q_norm), rms_norm(k, k_norm)
    positions = torch.arange(T)
    inv = theta ** (-torch.arange(0, d, 2).float() / d)
    q, k = rope_halves(q, positions, inv), rope_halves(k, positions, inv)
    group = n_heads // n_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # query head h uses kv head h // group
    scores = q @ k.mT / math.sqrt(d)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    logits = scores.masked_fill(~causal, float("-inf"))  # (B, H, T, T)
    weights = torch.softmax(logits, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(B, T, n_heads * d) @ Wo, logits


# %% [markdown]
# The memory saved, computed from Llama 3 8B's configuration: 32 layers, 32 query heads, 8 KV heads of
# dimension 128, a context of 8,192 tokens, 2 bytes per number (bf16). One token costs
# `2 (key and value) × layers × kv_heads × head_dim × 2 bytes`. For comparison, the same model with full
# multi-head attention (32 KV heads) and with multi-query attention (1).

# %%
llama3_8b = LlamaConfig(vocab_size=128_256, block_size=8192, n_layer=32, n_head=32, n_kv_head=8, n_embd=4096,
                        multiple_of=1024, ffn_dim_multiplier=1.3, rope_theta=500_000.0)
c = llama3_8b
n_params = (2 * c.vocab_size * c.n_embd  # embedding and output head (not tied)
            + c.n_layer * (c.n_embd * (c.n_head + 2 * c.n_kv_head) * c.head_size + c.n_head * c.head_size * c.n_embd
                           + 3 * c.n_embd * c.hidden_dim + 2 * c.n_embd) + c.n_embd)
weights_gib = n_params * 2 / 2**30


def kv_bytes_per_token(kv_heads: int) -> int:
    return 2 * c.n_layer * kv_heads * c.head_size * 2


rows = ["| attention | KV heads | KV cache per token | at 8,192 tokens | vs the weights |", "|---|---|---|---|---|"]
for name, kv_heads in (("multi-head (MHA)", c.n_head), ("grouped-query, Llama 3 (GQA)", c.n_kv_head), ("multi-query (MQA)", 1)):
    per_token = kv_bytes_per_token(kv_heads)
    total = per_token * c.block_size / 2**30
    rows.append(f"| {name} | {kv_heads} | {per_token / 2**10:.0f} KiB | {total:.2f} GiB | {total / weights_gib:.1%} |")
display(Markdown("\n".join(rows)))
print(f"Llama 3 8B: {n_params / 1e9:.2f}B parameters, {weights_gib:.1f} GiB in bf16")
assert 8.0e9 < n_params < 8.1e9
assert kv_bytes_per_token(8) * 8192 == 2**30  # exactly 1 GiB per sequence
assert kv_bytes_per_token(32) == 4 * kv_bytes_per_token(8)

# %% [markdown]
# A quarter of the memory for the cache means four times the batch (or four times the context) in the same
# memory, and a quarter of the bytes to read at every decoding step. The GQA paper (Ainslie et al., 2023)
# reports that sharing keys and values among small groups of heads keeps nearly all of multi-head attention's
# quality, while a single KV head for all (MQA) loses more.
#
# ## 5. QK-norm: Qwen3 and Llama 4, not Llama 3
#
# The attention logits are `q·k / sqrt(d)`. When they grow large, the softmax collapses onto one key (nearly
# one-hot weights), and training can diverge: this *attention logit growth* broke the training of a
# 22-billion-parameter vision transformer (Dehghani et al., 2023) and appears in small models trained at high
# learning rates (Wortsman et al., 2023). Both fixed it with QK-norm: a normalisation of each head's q and k
# before the dot product.
#
# Where does the growth come from? Not from the residual stream `x`, however large it gets: in a pre-norm
# block (Llama's, lesson 4) attention reads `rmsnorm(x)·g`, whose size does not depend on the size of `x`.
# What remains is the weights. `q = (rmsnorm(x)·g) W_q` and `k = (rmsnorm(x)·g) W_k`, so scaling `W_q` and
# `W_k` together, or the norm's gain `g`, by `s` scales every logit by `s²`, and training is free to grow
# them. Below, one pre-norm attention with random weights as at initialisation; each row scales one thing,
# and the columns compare the largest logit and the mean largest weight (over the queries that see at least
# 7 keys) without and with QK-norm.

# %%
torch.manual_seed(1)
dim, H, KV, d = 64, 4, 2, 16
Wq, Wk, Wv, Wo = (torch.randn(dim, n) / math.sqrt(dim) for n in (H * d, KV * d, KV * d, dim))  # as initialised
gain, ones = torch.ones(dim), torch.ones(d)  # the block's RMSNorm gain g; QK-norm's weights
residual = torch.randn(1, 12, dim)  # the residual stream entering the block, (B, T, dim)


def block_logits(residual, gain, w_scale, qk_weight=None):
    """The attention logits (B, H, T, T) of a pre-norm block, attention(rmsnorm(residual)·gain), with W_q and
    W_k scaled by w_scale and, if qk_weight is given, QK-norm with that weight on q and on k."""
    _, logits = attention(rms_norm(residual, gain), w_scale * Wq, w_scale * Wk, Wv, Wo, H, KV, 10_000.0,
                          q_norm=qk_weight, k_norm=qk_weight)
    return logits


def largest(logits):
    return logits[logits.isfinite()].abs().max().item()


def top_weight(logits):  # the largest weight of each query that sees at least 7 keys, averaged
    return logits.softmax(-1)[..., 6:, :].max(-1).values.mean().item()


changes = {  # name: (residual, gain, scale of W_q and W_k, QK-norm weight)
    "nothing": (residual, gain, 1.0, ones),
    "the residual stream × 100": (100 * residual, gain, 1.0, ones),
    "W_q and W_k × 4": (residual, gain, 4.0, ones),
    "the RMSNorm gain g × 4": (residual, 4 * gain, 1.0, ones),
    "QK-norm's weights × 4": (residual, gain, 1.0, 4 * ones),
}
plain, normed = {}, {}
rows = ["| scaled | largest logit | mean largest weight | with QK-norm: largest logit | mean largest weight |",
        "|---|---|---|---|---|"]
for name, (stream, g, w_scale, qk_weight) in changes.items():
    plain[name], normed[name] = block_logits(stream, g, w_scale), block_logits(stream, g, w_scale, qk_weight)
    rows.append(f"| {name} | {largest(plain[name]):.1f} | {top_weight(plain[name]):.2f} "
                f"| {largest(normed[name]):.1f} | {top_weight(normed[name]):.2f} |")
display(Markdown("\n".join(rows)))

for logits in (plain, normed):  # pre-norm: the size of the residual stream never reaches q and k
    assert torch.allclose(logits["the residual stream × 100"], logits["nothing"], rtol=1e-4, atol=1e-5)
for name in ("W_q and W_k × 4", "the RMSNorm gain g × 4"):
    assert torch.allclose(plain[name], 16 * plain["nothing"], rtol=1e-4, atol=1e-5)  # quadratic: 4² = 16
    assert top_weight(plain[name]) > 0.85 > 0.5 > top_weight(plain["nothing"])  # the softmax saturates
    assert torch.allclose(normed[name], normed["nothing"], rtol=1e-4, atol=1e-5)  # QK-norm divides it out
for name, (*_, qk_weight) in changes.items():  # |q|, |k| <= sqrt(d)·max|weight| after QK-norm, and RoPE keeps lengths
    assert largest(normed[name]) <= math.sqrt(d) * qk_weight.abs().max() ** 2 * (1 + 1e-5)

# %% [markdown]
# The residual stream's size never arrives; the scale of `W_q`, `W_k` or `g` arrives squared (4 × 4 = 16 times
# the logits) and nearly one-hot weights. With QK-norm, each head's q and k have RMS 1 before their weight,
# whatever `W_q`, `W_k` and `g` do, so `|q·k| / sqrt(d) <= sqrt(d)·max|w_q|·max|w_k|`: only QK-norm's own
# two weight vectors (d numbers each) can make the logits large.
#
# Which models use it, checked in `transformers`' own modules rather than asserted from memory:
#
# - **Llama 3** (`LlamaAttention`): no normalisation of q or k.
# - **Qwen3** (`Qwen3Attention`): a learned RMSNorm over each head's dimension, on q and on k, before RoPE.
#   The library's `Attention(qk_norm=True)` is this one, and the parity check in section 7 covers it.
# - **Llama 4** (`Llama4TextAttention`): an RMS normalisation *without* a learned weight. Without a weight,
#   whether it comes before or after RoPE makes no difference, since a rotation does not change a vector's
#   length (checked below); with Qwen3's learned per-channel weight, the order matters.

# %%
small = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96)
llama = LlamaAttention(transformers.LlamaConfig(**small), layer_idx=0)
qwen3 = Qwen3Attention(transformers.Qwen3Config(**small), layer_idx=0)
llama4 = Llama4TextAttention(transformers.Llama4TextConfig(**small, intermediate_size_mlp=96, num_hidden_layers=1), layer_idx=0)
print("Llama 3:", sorted(name for name, _ in llama.named_parameters()))
print("Qwen3:  ", sorted(name for name, _ in qwen3.named_parameters()))
print("Llama 4:", sorted(name for name, _ in llama4.named_parameters()), "+", llama4.qk_norm)
assert not any("norm" in name for name, _ in llama.named_modules())
assert tuple(qwen3.q_norm.weight.shape) == tuple(qwen3.k_norm.weight.shape) == (16,)
assert list(llama4.qk_norm.parameters()) == []

q = torch.randn(1, 4, 12, 16)
inv16 = inverse_frequencies(16, 10_000.0)
assert torch.allclose(rope_halves(rms_norm(q, ones), torch.arange(12), inv16),
                      rms_norm(rope_halves(q, torch.arange(12), inv16), ones), atol=1e-5)  # weightless: order free
learned_weight = torch.rand(16) + 0.5
assert not torch.allclose(rope_halves(rms_norm(q, learned_weight), torch.arange(12), inv16),
                          rms_norm(rope_halves(q, torch.arange(12), inv16), learned_weight), atol=1e-3)

# %% [markdown]
# ## 6. The causal mask and four GQA heads, drawn
#
# As in GPT, query `t` may only see keys `0..t`. Masked logits become `-inf` before the softmax, so their
# weights are exactly zero (grey below). To have something worth looking at, the `attention` of section 4,
# with four query heads and two KV heads of dimension 16 (θ = 10,000), gets hand-set weights and reads the
# sentence "the cat sat on the mat and the dog sat on it", one word per token, each word a one-hot vector over
# the 8-word vocabulary:
#
# - **KV head 0**'s key is the word itself, one channel per word, in the four slowest RoPE pairs (over 12
#   tokens they turn by 0.11 radians at most, so position barely touches them). Query heads 0 and 1 share it
#   and ask it different questions, whatever word they stand on: head 0 "where is *the*?", head 1 "where is
#   *sat*?". Before the first *sat*, nothing matches and head 1 spreads its weight evenly.
# - **KV head 1**'s key is the same vector for every word, in the three fastest pairs, so only its RoPE
#   rotation tells the keys apart. Query head 2's query is that key turned back by one position, so its score
#   peaks one token back (section 1: the score depends on `m - n` only); query head 3's is turned back by two.

# %%
sentence = "the cat sat on the mat and the dog sat on it".split()
T = len(sentence)
vocabulary = sorted(set(sentence))
tokens = torch.tensor([vocabulary.index(word) for word in sentence])
x = torch.nn.functional.one_hot(tokens, len(vocabulary)).float()[None]  # (1, T = 12, 8)

# a head's 16 channels in the split-halves layout: pair i is channels (i, i + 8) and turns by θ^(-i/8) per token
word_channel = [4, 5, 6, 7, 12, 13, 14, 15]  # the four slowest pairs, one channel per word of the vocabulary
assert (len(sentence) - 1) * inv16[4] < 0.12  # the fastest of them turns by 0.11 radians over the sentence
fast_key = torch.zeros(d)
fast_key[:3] = 1.0  # one channel in each of the three fastest pairs
Wq, Wk = torch.zeros(len(vocabulary), H * d), torch.zeros(len(vocabulary), KV * d)  # (in, out); rows: words
Wv, Wo = torch.zeros(len(vocabulary), KV * d), torch.zeros(H * d, len(vocabulary))  # values do not change the weights
Wk[torch.arange(len(vocabulary)), word_channel] = 1.0  # KV head 0: word j's key is channel word_channel[j]
Wk[:, d:] = fast_key  # KV head 1: the same key for every word
Wq[:, word_channel[vocabulary.index("the")]] = 60.0  # query head 0, on every word: "where is 'the'?"
Wq[:, d + word_channel[vocabulary.index("sat")]] = 60.0  # query head 1: "where is 'sat'?"
for head, back in ((2, 1), (3, 2)):  # query heads 2 and 3: the key turned back by one and by two positions
    Wq[:, head * d:(head + 1) * d] = 40.0 * rope_halves(fast_key[None], torch.tensor([-back]), inv16)[0]

_, logits = attention(x, Wq, Wk, Wv, Wo, H, KV, 10_000.0)
weights = logits.softmax(-1)[0]  # (H, T, T)
on_word = {word: (tokens == vocabulary.index(word)).float() for word in ("the", "sat")}  # (T,) 1 where the word is
assert (weights.triu(diagonal=1) == 0).all()  # the mask: no weight on a later token
assert ((weights[0] @ on_word["the"]) > 0.99).all()  # head 0: on the 'the's before it
seen_sat = torch.cumsum(on_word["sat"], 0) > 0  # the queries with a 'sat' at or before them
assert ((weights[1] @ on_word["sat"])[seen_sat] > 0.99).all()
assert torch.allclose(weights[1, 1, :2], torch.tensor([0.5, 0.5]))  # no 'sat' yet: even
assert (weights[2].diagonal(-1) > 0.95).all() and (weights[3].diagonal(-2) > 0.95).all()  # one back, two back

labels = [f"{position} {word}" for position, word in enumerate(sentence)]
fig, axes = plt.subplots(2, 2, figsize=(9, 8.6), layout="constrained")
cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # masked (future) keys in grey
questions = ["where is 'the'?", "where is 'sat'?", "one token back", "two tokens back"]
for head, ax in enumerate(axes.flat):
    image = ax.imshow(weights[head].masked_fill(~logits[0, head].isfinite(), float("nan")), cmap=cmap, vmin=0, vmax=1)
    ax.set_title(f"query head {head} (KV head {head // (H // KV)}): {questions[head]}")
    ax.set_xticks(range(T), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(T), labels, fontsize=8)
    ax.set_xlabel("key (position, word)")
    ax.set_ylabel("query (position, word)")
fig.colorbar(image, ax=axes, label="attention weight (grey: masked)", shrink=0.6)
plt.show()

# %% [markdown]
# ## 7. Ours = the library's = `transformers`'
#
# The library's `Attention` computes q, k and v with one fused matrix stored `(in, out)`, whose columns are
# `[q heads | k heads | v heads]`, and the output projection `proj`. `transformers`' `LlamaAttention` keeps four
# `nn.Linear` layers stored `(out, in)`, so their weights are our matrices transposed. We give all three the
# same random weights (and RoPE tables for the same positions) and compare, with and without QK-norm
# (against `Qwen3Attention` for the latter).

# %%
torch.manual_seed(2)
theta = 10_000.0
Wq, Wk, Wv, Wo = (torch.randn(dim, n) / math.sqrt(dim) for n in (H * d, KV * d, KV * d, dim))  # random, (in, out)
x = torch.randn(2, 10, dim)
positions = torch.arange(10)[None].expand(2, 10)
causal_additive = torch.full((10, 10), float("-inf")).triu(1)[None, None].expand(2, 1, 10, 10)
q_norm_w, k_norm_w = torch.rand(d) + 0.5, torch.rand(d) + 0.5

for qk_norm in (False, True):
    ours, _ = attention(x, Wq, Wk, Wv, Wo, H, KV, theta, *((q_norm_w, k_norm_w) if qk_norm else ()))

    library_attn = Attention(dim, H, KV, head_dim=d, qk_norm=qk_norm)
    hf_config = (transformers.Qwen3Config if qk_norm else transformers.LlamaConfig)(**small, rope_theta=theta)
    hf_config._attn_implementation = "eager"  # the plain matmul-softmax path, with the mask we pass
    hf_attn = (Qwen3Attention if qk_norm else LlamaAttention)(hf_config, layer_idx=0)
    with torch.no_grad():
        library_attn.qkv.weight.copy_(torch.cat([Wq, Wk, Wv], dim=1))
        library_attn.proj.weight.copy_(Wo)
        for linear, W in ((hf_attn.q_proj, Wq), (hf_attn.k_proj, Wk), (hf_attn.v_proj, Wv), (hf_attn.o_proj, Wo)):
            linear.weight.copy_(W.T)
        if qk_norm:
            library_attn.q_norm.weight.copy_(q_norm_w)
            library_attn.k_norm.weight.copy_(k_norm_w)
            hf_attn.q_norm.weight.copy_(q_norm_w)
            hf_attn.k_norm.weight.copy_(k_norm_w)

        theirs_library = library_attn(x, rope=rope_cos_sin(positions, inverse_frequencies(d, theta)))
        cos_sin = LlamaRotaryEmbedding(hf_config)(x, positions)
        theirs_hf, _ = hf_attn(x, position_embeddings=cos_sin, attention_mask=causal_additive)

    diff_library = (ours - theirs_library).abs().max().item()
    diff_hf = (ours - theirs_hf).abs().max().item()
    print(f"QK-norm {qk_norm!s:5}: max |ours - library| = {diff_library:.1e}, max |ours - transformers| = {diff_hf:.1e}")
    assert diff_library < 1e-5 and diff_hf < 1e-5

# %% [markdown]
# **Next:** lesson 4 completes the Llama block (RMSNorm, SwiGLU), checks it against `LlamaDecoderLayer`, and
# races a Llama against a GPT of the same size.

# %%
print(f"This lesson ran in {time.perf_counter() - LESSON_START:.1f} s")
