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
# changes two things, each for a reason; this lesson adds a third that newer models use, and one picture:
#
# 1. **RoPE**: positions enter by *rotating* queries and keys, so that attention scores depend on how far
#    apart two tokens are, not where they stand. We derive it from a 2-D rotation, meet its two memory layouts
#    (Meta's and Hugging Face's) and the classic bug of mixing them, and look at Llama 3.1's frequency
#    scaling for long contexts.
# 2. **Grouped-query attention (GQA)**: several query heads share one key/value head, which makes the KV cache
#    (the memory that generation keeps per token) several times smaller.
# 3. **QK-norm**: a normalisation of queries and keys found in *Qwen3 and Llama 4*; Llama 3 has none.
# 4. the **causal mask**, unchanged from GPT, drawn.
#
# The hand-built attention is then checked against the library's `Attention` and against the `LlamaAttention`
# of Hugging Face `transformers`, to 1e-5.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bar, imported by transformers

import math

import matplotlib.pyplot as plt
import torch
import transformers
from IPython.display import Markdown, display
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
from transformers.models.llama4.modeling_llama4 import Llama4TextAttention
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention

from scratchllm.layers import Attention, RopeScaling, apply_rope, interleaved_to_halves, inverse_frequencies, rope_cos_sin
from scratchllm.models import LlamaConfig

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

fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
for ax, freq in zip(axes, (0.6, 0.1)):
    for p in range(8):
        v = rotate2d(q2, p * freq)
        ax.annotate("", xy=v.tolist(), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=plt.cm.viridis(p / 7)))
        ax.text(*(1.12 * v).tolist(), str(p), ha="center", va="center", fontsize=9)
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.set_title(f"one pair rotated by position p, w = {freq}")
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
plt.figure(figsize=(4.5, 4))
plt.imshow(S, cmap="RdBu")
plt.xlabel("key position n")
plt.ylabel("query position m")
plt.title("q·k after RoPE: constant along diagonals")
plt.colorbar()
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
wq_meta, wk_meta = torch.randn(n_heads * d, dim), torch.randn(n_heads * d, dim)  # (out, in), as in the files
x = torch.randn(T, dim)
positions = torch.arange(T)


def heads(x, w):  # (T, dim) -> (heads, T, d)
    return (x @ w.T).view(T, n_heads, d).transpose(0, 1)


def split_halves(q):  # the library's rotation (split halves), on (heads, T, d)
    return apply_rope(q[None], *rope_cos_sin(positions[None], inv8))[0]


reference = rope_interleaved(heads(x, wq_meta), positions, inv8) @ rope_interleaved(heads(x, wk_meta), positions, inv8).mT
mixed = split_halves(heads(x, wq_meta)) @ split_halves(heads(x, wk_meta)).mT
print("allclose:", torch.allclose(mixed, reference, atol=1e-5))
print(f"at positions (0, 0): {mixed[:, 0, 0].tolist()} vs {reference[:, 0, 0].tolist()}")
print(f"largest difference elsewhere: {(mixed - reference).abs().max():.2f}")
assert not torch.allclose(mixed, reference, atol=1e-5)
assert torch.allclose(mixed[:, 0, 0], reference[:, 0, 0], atol=1e-5)

# %% [markdown]
# **Why `False`.** At position 0 nothing is rotated, and the two agree: the weights are fine. Everywhere else,
# the split-halves code rotates channel 0 together with channel `d/2`, while the checkpoint was trained with
# channel 0 paired with channel 1. The pairs being rotated are the wrong pairs, so every score except the
# unrotated one is wrong. Nothing crashes: every shape is right, only the numbers are not.
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

fig, ax = plt.subplots(figsize=(7, 3.5))
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
    """Llama attention by hand. x (B, T, dim); W* stored (in, out), y = x @ W. Returns output, weights."""
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
    weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(B, T, n_heads * d) @ Wo, weights


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
# The attention logits are `q·k / sqrt(d)`. If the residual stream grows during training, q and k grow with
# it, the logits grow quadratically, and the softmax collapses onto one key (large vision transformers were
# reported to diverge this way, Dehghani et al., 2023).
# QK-norm normalises each head's q and k before the dot product, which bounds the logits whatever the input
# scale. Below: the same attention on `x` and on `100·x`.

# %%
torch.manual_seed(1)
dim, H, KV, d = 64, 4, 2, 16
Wq, Wk, Wv, Wo = (torch.randn(dim, n) * 0.2 for n in (H * d, KV * d, KV * d, dim))
ones = torch.ones(d)
x = torch.randn(1, 12, dim)
peak = {}
for scale in (1, 100):
    _, plain_weights = attention(scale * x, Wq, Wk, Wv, Wo, H, KV, 10_000.0)
    _, normed_weights = attention(scale * x, Wq, Wk, Wv, Wo, H, KV, 10_000.0, q_norm=ones, k_norm=ones)
    peak[scale] = (plain_weights[..., 6:, :].max(-1).values.mean().item(), normed_weights)
    print(f"x * {scale:3}: mean largest weight without QK-norm {peak[scale][0]:.3f}")
assert peak[100][0] > 0.99  # without: nearly one-hot
assert torch.allclose(peak[1][1], peak[100][1], atol=1e-5)  # with: the input scale no longer matters

# %% [markdown]
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
# ## 6. The causal mask, drawn
#
# As in GPT, query `t` may only see keys `0..t`. Masked scores become `-inf` before the softmax, so their
# weights are exactly zero. Left: the mask. Right: the weights of the four query heads of the GQA attention
# above, on one sequence; heads 0 and 1 share KV head 0, heads 2 and 3 share KV head 1.

# %%
_, weights = attention(x, Wq, Wk, Wv, Wo, H, KV, 10_000.0)
fig, axes = plt.subplots(1, 1 + H, figsize=(15, 3.2))
axes[0].imshow(torch.ones(12, 12).tril(), cmap="Greys")
axes[0].set_title("causal mask (black: may attend)")
for h in range(H):
    axes[1 + h].imshow(weights[0, h], cmap="viridis")
    axes[1 + h].set_title(f"query head {h} (KV head {h // (H // KV)})")
for ax in axes:
    ax.set_xlabel("key")
    ax.set_ylabel("query")
plt.tight_layout()
plt.show()
assert (weights.triu(diagonal=1) == 0).all()

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
