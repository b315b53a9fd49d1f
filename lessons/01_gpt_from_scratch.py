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
# # Lesson 1: a GPT from scratch
#
# We go from raw text to a small GPT that writes pseudo-Shakespeare, one idea at a time:
#
# 1. characters become integers;
# 2. the simplest language model, the **bigram**: first as a table of counts, then as a table learned by
#    gradient descent, and why both end up at the same place;
# 3. the **averaging trick** that lets a token look at the tokens before it, written three ways;
# 4. one **attention head**, then **several heads**, then the **block** (residual connections, LayerNorm, MLP,
#    dropout);
# 5. the baby GPT (`gpt-char-baby`): batches and a training step written by hand, then a 600-step run with the
#    project's trainer, a generation loop written by hand, samples, and a look at what its attention heads learned.
#
# Everything we write by hand is checked against the library (`scratchllm`) with an `assert`: the
# hand-built block, given the library block's weights, computes the same numbers; the hand-written training
# loop gives the trainer's losses; the hand-written generation loop, the library's characters.
#
# The corpus is TinyShakespeare (1.1M characters), read from `tests/data/` in this repository, so the
# lesson needs no network, and a CPU is enough.

# %%
import json
import math
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.colors import PowerNorm

import scratchllm
from scratchllm.data.batches import TokenBatches
from scratchllm.generate import Engine, Request, Sampling, generate
from scratchllm.layers import PreNormBlock
from scratchllm.models import GPT, Bigram, BigramConfig, GPTConfig
from scratchllm.tokenizers import CharTokenizer
from scratchllm.train.optim import lr_at as library_lr_at
from scratchllm.train.presets import get_preset
from scratchllm.train.run import train

LESSON_START = time.perf_counter()
torch.set_num_threads(1)  # these models are small; one thread cannot be stalled by other programs on the CPU
torch.manual_seed(0)
CORPUS = Path("../tests/data/tinyshakespeare.txt")  # lessons run from lessons/; the file is in the repo
text = CORPUS.read_text(encoding="utf-8")
print(f"{len(text):,} characters")
print(text[:250])

# %% [markdown]
# ## 1. Characters to integers
#
# A neural network computes with numbers, so the first step is a fixed, reversible map from text to
# integers. The simplest one gives every distinct character its own id. We sort the characters so the
# map does not depend on the order in which they happen to appear. The library's `CharTokenizer` does
# exactly this; we build it by hand and compare.

# %%
chars = sorted(set(text))
V = len(chars)
stoi = {c: i for i, c in enumerate(chars)}
itos = {i: c for i, c in enumerate(chars)}


def encode(s: str) -> list[int]:
    return [stoi[c] for c in s]


def decode(ids: list[int]) -> str:
    return "".join(itos[i] for i in ids)


print(f"vocabulary: {V} characters: {''.join(chars)!r}")
print(encode("hii there"), "->", repr(decode(encode("hii there"))))

library_tokenizer = CharTokenizer.train(text)
assert library_tokenizer.chars == chars and library_tokenizer.encode(text[:1000]) == encode(text[:1000])
assert decode(encode(text)) == text  # nothing is lost

# %% [markdown]
# The whole corpus becomes one long tensor of ids. As in nanoGPT, the first 90% is for training and the
# last 10% for validation: text the model never trains on, so its loss there tells us whether it learned
# something general or merely memorised.

# %%
data = torch.tensor(encode(text))
n_train = int(0.9 * len(data))
train_ids, val_ids = data[:n_train], data[n_train:]
print(train_ids.shape, val_ids.shape)

# %% [markdown]
# ## 2. The bigram model
#
# The smallest useful language model predicts the next character from the current one only. It is a
# table `P[a, b]`: the probability that `b` follows `a`.
#
# ### 2a. Counting
#
# The obvious estimate counts how often each pair occurs in the training text and divides every row by
# its total. The picture of the counts shows some structure of the text: after `q` comes almost always `u`;
# after a space, nearly always a letter; after a newline, mostly a capital (verse lines and speakers' names
# start with one) or another newline (the blank line between speeches).

# %%
def pair_counts(ids: torch.Tensor) -> torch.Tensor:
    counts = torch.zeros(V, V)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)
    return counts


counts_train, counts_val = pair_counts(train_ids), pair_counts(val_ids)
P = counts_train / counts_train.sum(dim=1, keepdim=True).clamp(min=1)

fig, ax = plt.subplots(figsize=(7, 7))
ax.imshow(counts_train.log1p(), cmap="Blues")
labels = [repr(c)[1:-1] for c in chars]
ax.set_xticks(range(V), labels, fontsize=6)
ax.set_yticks(range(V), labels, fontsize=6)
ax.set_xlabel("next character")
ax.set_ylabel("current character")
ax.set_title("log(1 + count) of each character pair in the training text")
plt.show()

q, u, space, newline = stoi["q"], stoi["u"], stoi[" "], stoi["\n"]
upper = torch.tensor([c.isupper() for c in chars])
letters = torch.tensor([c.isalpha() for c in chars])
print(f"P(u | q) = {P[q, u]:.3f}")
print(f"P(letter | space) = {P[space, letters].sum():.3f}")
print(f"P(capital | newline) = {P[newline, upper].sum():.3f}, P(newline | newline) = {P[newline, newline]:.3f}")
assert P[q, u] > 0.9 and P[space, letters].sum() > 0.99
assert P[newline, upper].sum() + P[newline, newline] > 0.9

# %% [markdown]
# How good is a model? We measure the **negative log-likelihood**: the average, over every position of
# the text, of `-log P(actual next character)`. A model that guessed uniformly would score `log(65) ≈ 4.17`;
# lower is better.
#
# Because a bigram's prediction depends only on the current character, the loss over *all* N pairs of a
# text only needs the pair counts: `loss = -Σ_ab count[a, b] · log P[a, b] / N`. One line computes the loss
# over the whole corpus.
#
# A few pairs appear in the validation text but never in training; the count table gives them probability
# zero and so an infinite loss. The usual fix is to add one to every count ("add-one smoothing").

# %%
def nll(log_probs: torch.Tensor, counts: torch.Tensor) -> float:
    """Average negative log-likelihood of all pairs whose counts are given, under a (V, V) table."""
    return (-(counts * log_probs).sum() / counts.sum()).item()


log_P = P.clamp(min=1e-30).log()
log_P_smooth = ((counts_train + 1) / (counts_train + 1).sum(dim=1, keepdim=True)).log()
unseen = counts_val[counts_train == 0].sum().item()
print(f"uniform guess:           {math.log(V):.4f}")
print(f"count table, train:      {nll(log_P, counts_train):.4f}")
print(f"validation pairs never seen in training: {unseen:.0f}")
print(f"smoothed table, val:     {nll(log_P_smooth, counts_val):.4f}")
assert unseen > 0 and nll(log_P, counts_train) < math.log(V)

# %% [markdown]
# ### 2b. Learning the table by gradient descent
#
# Now the same model as a neural network: a (V, V) table of **logits** `W`, turned into probabilities by a
# softmax over each row, trained to lower the loss. This is the library's `Bigram` model (an `nn.Embedding`
# whose row `a` holds the logits of the character after `a`), starting from zeros, i.e. uniform.
#
# We can train on the entire training text at every step thanks to the observation above: the loss over
# all pairs is the count-weighted loss, so a full pass costs one (V, V) operation, not a million lookups.
# First we check that claim against the library's own loss on the real pairs of the validation text.

# %%
bigram = Bigram(BigramConfig(vocab_size=V, block_size=8))
W = bigram.table.weight  # (V, V) logits, zeros at the start
with torch.no_grad():
    W.normal_(0, 1)  # any weights will do for the check
    _, library_loss = bigram(val_ids[None, :-1], val_ids[None, 1:])
assert abs(library_loss.item() - nll(F.log_softmax(W, dim=1), counts_val)) < 1e-4
print(f"library loss over the {len(val_ids) - 1:,} validation pairs: {library_loss.item():.5f} (random table)")

# %%
with torch.no_grad():
    W.zero_()
optimizer = torch.optim.Adam([W], lr=0.3)
losses = []
for step in range(300):
    loss = -(counts_train * F.log_softmax(W, dim=1)).sum() / counts_train.sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())

learned_log_P = F.log_softmax(W.detach(), dim=1)
print(f"learned table, train: {nll(learned_log_P, counts_train):.4f}  (count table {nll(log_P, counts_train):.4f})")
print(f"learned table, val:   {nll(learned_log_P, counts_val):.4f}  (smoothed count table {nll(log_P_smooth, counts_val):.4f})")

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(losses, label="learned table (gradient descent)")
ax.axhline(nll(log_P, counts_train), color="k", ls="--", label="count table")
ax.set_ylim(2.4, 2.7)
ax.set_xlabel("step")
ax.set_ylabel("train loss")
ax.legend()
plt.show()

# %% [markdown]
# ### Why the two agree
#
# The loss for row `a` is `-Σ_b count[a, b] · log softmax(W[a])_b`. Its gradient with respect to the logits
# of that row is `n_a · softmax(W[a]) - count[a]` (divided by N), where `n_a` is the number of times `a`
# occurs. The gradient is zero exactly when `softmax(W[a]) = count[a] / n_a`: the count table. The count
# table is the best any bigram can do on the training text, and gradient descent walks towards it.
#
# Two small differences remain, and both are expected. A pair never seen in training has probability zero
# in the count table, which a softmax only reaches as its logit goes to minus infinity, so the learned table
# keeps a little probability there (that is also why it does better on validation than the raw table, like
# smoothing does). And we stopped after 300 steps.

# %%
learned_P = learned_log_P.exp()
frequent = counts_train.sum(dim=1) >= 1000  # rows with plenty of data
print(f"largest difference in probability, frequent rows: {(learned_P - P)[frequent].abs().max():.5f}")
assert nll(learned_log_P, counts_train) - nll(log_P, counts_train) < 1e-3
assert nll(learned_log_P, counts_val) < nll(log_P, counts_val)  # the raw table pays for the unseen pairs
assert (learned_P - P)[frequent].abs().max() < 5e-3
W_count = log_P.clone().requires_grad_()  # the gradient at the count table is zero
(grad,) = torch.autograd.grad(-(counts_train * F.log_softmax(W_count, dim=1)).sum() / counts_train.sum(), W_count)
print(f"largest gradient at the count table: {grad.abs().max():.2e}")
assert grad.abs().max() < 1e-6

# %% [markdown]
# A bigram writes text that has the right letters in roughly the right places and nothing more. We sample
# from the learned table with the library's generator (`scratchllm.generate.generate`, the same one every
# model in the project uses).

# %%
bigram_sample = list(generate(bigram, encode("\n"), max_new_tokens=200, temperature=1.0, seed=1))
print(decode(bigram_sample))

# %% [markdown]
# ## 3. Letting tokens talk: the averaging trick
#
# To do better, the prediction at position `t` must use more than the character at `t`: it should use
# everything **before** it (never after: at generation time the future does not exist yet). Take a batch of
# sequences where each position holds a vector of `C` numbers, shape `(B, T, C)`. The crudest way to
# summarise the past is the average of the vectors at positions `0..t`. We write it three ways.
#
# 1. A loop, exactly as the definition says.
# 2. A matrix product: averaging is a weighted sum, so it is `wei @ x` for a (T, T) matrix `wei` whose row `t`
#    holds `1/(t+1)` in its first `t+1` columns and zeros after. That is a lower-triangular matrix with
#    normalised rows. One product replaces the loop, and it runs in parallel over positions.
# 3. The same matrix from a softmax: start from scores of zero, set the scores of future positions to `-inf`,
#    and take a softmax of each row. `exp(-inf) = 0` removes the future, and equal scores share the weight
#    equally.
#
# The third way is the one that matters. In it the weights come from *scores*, and scores need not be
# equal: if each position computes how interesting every earlier position is, the softmax turns those scores
# into weights. That is attention.

# %%
torch.manual_seed(1)
B, T, C = 4, 8, 2
x = torch.randn(B, T, C)

# 1. loop
avg_loop = torch.zeros(B, T, C)
for b in range(B):
    for t in range(T):
        avg_loop[b, t] = x[b, : t + 1].mean(dim=0)

# 2. lower-triangular matrix
tril = torch.tril(torch.ones(T, T))
wei = tril / tril.sum(dim=1, keepdim=True)
avg_matmul = wei @ x  # (T, T) @ (B, T, C) -> (B, T, C)

# 3. masked softmax
scores = torch.zeros(T, T).masked_fill(tril == 0, float("-inf"))
wei_softmax = torch.softmax(scores, dim=-1)
avg_softmax = wei_softmax @ x

assert torch.allclose(avg_loop, avg_matmul, atol=1e-6)
assert torch.allclose(avg_loop, avg_softmax, atol=1e-6)
assert torch.equal(wei, wei_softmax)

fig, axes = plt.subplots(1, 2, figsize=(7, 3))
axes[0].imshow(tril, cmap="Greys")
axes[0].set_title("which past positions (tril)")
axes[1].imshow(wei_softmax, cmap="viridis")
axes[1].set_title("weights: softmax of masked zeros")
for a in axes:
    a.set_xlabel("key position s")
    a.set_ylabel("query position t")
plt.show()

# %% [markdown]
# ## 4. One attention head
#
# Each position emits three vectors, computed from its own embedding `x` by three learned matrices:
#
# - a **query** `q = x Wq`: what am I looking for?
# - a **key** `k = x Wk`: what do I contain?
# - a **value** `v = x Wv`: what do I pass on if someone attends to me?
#
# The score of position `t` for position `s` is `q_t · k_s`; a masked softmax over `s ≤ t` turns scores into
# weights; the output is the weighted sum of values. Our `Linear` layers store a weight as `(in, out)` and
# compute `y = x @ W` (the layout of the maths, and of GPT-2's files), so a projection here is `x @ W`.
#
# The scores are divided by `sqrt(head_size)`. Why: if q and k have unit-variance entries, their dot product
# sums `head_size` such products and has variance `head_size`. The wider the head, the larger the scores, and
# large scores make the softmax nearly one-hot: each position attends to a single other one, and the gradients
# through all the others vanish. Dividing by `sqrt(head_size)` brings the variance back to 1 at every width.
#
# The cell measures it. For each head width, 500 queries, each scored against 16 keys of its own (every
# entry an independent standard normal), and for each query the largest of its 16 softmax weights, averaged
# over the queries: 1/16 ≈ 0.06 would be uniform weights, 1 a one-hot row.

# %%
torch.manual_seed(2)
n_queries, n_keys = 500, 16
widths = [4, 16, 64, 256, 1024]
peak_unscaled, peak_scaled = [], []
print("head_size   var(q.k)   var(q.k / sqrt(head_size))   largest weight: unscaled   scaled")
for width in widths:
    q_ = torch.randn(n_queries, 1, width)  # one query per row
    k_ = torch.randn(n_queries, n_keys, width)  # and its own 16 keys
    raw = (q_ @ k_.transpose(-2, -1))[:, 0]  # (n_queries, n_keys) scores
    scaled = raw / math.sqrt(width)
    peak_unscaled.append(torch.softmax(raw, dim=-1).max(dim=-1).values.mean().item())
    peak_scaled.append(torch.softmax(scaled, dim=-1).max(dim=-1).values.mean().item())
    print(f"{width:9d}   {raw.var():8.1f}   {scaled.var():26.2f}   {peak_unscaled[-1]:24.3f}   {peak_scaled[-1]:6.3f}")
    assert 0.8 * width < raw.var() < 1.2 * width and 0.8 < scaled.var() < 1.2

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(widths, peak_unscaled, "o-", label="scores q·k")
ax.plot(widths, peak_scaled, "s-", label="scores q·k / sqrt(head_size)")
ax.axhline(1 / n_keys, color="k", ls=":", label="uniform weights (1/16)")
ax.set_xscale("log", base=2)
ax.set_xticks(widths, [str(w) for w in widths])
ax.set_ylim(0, 1.05)
ax.set_xlabel("head_size (entries of each query and key)")
ax.set_ylabel("largest softmax weight\n(mean over 500 queries)")
ax.legend(loc="center right")
plt.show()
assert all(a < b for a, b in zip(peak_unscaled, peak_unscaled[1:])) and peak_unscaled[-1] > 0.9  # towards one-hot
assert max(peak_scaled) - min(peak_scaled) < 0.05 and max(peak_scaled) < 0.3  # scaled: the same spread at every width

# %%
def head(x: torch.Tensor, Wq: torch.Tensor, Wk: torch.Tensor, Wv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One causal self-attention head. x (B, T, C); W* (C, head_size). Returns output (B, T, hs), weights (B, T, T)."""
    T = x.size(1)
    q, k, v = x @ Wq, x @ Wk, x @ Wv
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, T, T)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return weights @ v, weights


torch.manual_seed(3)
C, hs = 32, 16
x = torch.randn(2, 8, C)
Wq, Wk, Wv = (torch.randn(C, hs) / math.sqrt(C) for _ in range(3))
out, weights = head(x, Wq, Wk, Wv)
print(out.shape)
assert torch.allclose(weights.sum(-1), torch.ones(2, 8))  # each row is a distribution
assert (weights.triu(diagonal=1) == 0).all()  # and never looks ahead
print(weights[0].numpy().round(2))

# %% [markdown]
# Unlike the plain average, the weights now differ from row to row and from sequence to sequence: they
# depend on the data. Note what attention does *not* know: the order of the positions. Permute the earlier
# tokens and position `t`'s output does not change, since a weighted sum has no order. That is why a GPT adds a
# learned **position embedding** to each token embedding before the first block.

# %%
perm = torch.tensor([2, 0, 1, 3, 4, 5, 6, 7])  # shuffle positions 0-2, which position 7 all sees
out_perm, _ = head(x[:, perm], Wq, Wk, Wv)
assert torch.allclose(out_perm[:, 7], out[:, 7], atol=1e-6)

# %% [markdown]
# ## 5. Many heads
#
# One head computes one kind of weighting. Several heads in parallel, each with a smaller `head_size`,
# can look for different things at once (one the previous character, another the start of the line, ...).
# Their outputs are concatenated back to width `C` and mixed by one more matrix, the output projection.
#
# Written as a loop over heads it is easy to read. In practice all the query matrices sit side by side in
# one `(C, C)` matrix, as do the keys and values, and the library fuses all three into a single
# `(C, 3C)` matrix whose columns are `[q heads | k heads | v heads]`: one matrix product instead of `3 × n_head`.
# Both are the same computation; the cell checks it.

# %%
def multi_head(x, Wqkv, Wproj, n_head):
    """Causal multi-head attention with a fused (C, 3C) weight, columns [q | k | v], head h at h*hs:(h+1)*hs."""
    C = x.size(-1)
    hs = C // n_head
    Wq, Wk, Wv = Wqkv.split(C, dim=1)
    outs = [head(x, Wq[:, h * hs:(h + 1) * hs], Wk[:, h * hs:(h + 1) * hs], Wv[:, h * hs:(h + 1) * hs])[0]
            for h in range(n_head)]
    return torch.cat(outs, dim=-1) @ Wproj


def multi_head_batched(x, Wqkv, Wproj, n_head):
    """The same, with the heads as a batch dimension: one product for q, k and v of every head."""
    B, T, C = x.shape
    q, k, v = (x @ Wqkv).view(B, T, 3, n_head, C // n_head).permute(2, 0, 3, 1, 4)  # each (B, H, T, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // n_head)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    y = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v  # (B, H, T, hs)
    return y.transpose(1, 2).reshape(B, T, C) @ Wproj


torch.manual_seed(4)
Wqkv, Wproj = torch.randn(C, 3 * C) / math.sqrt(C), torch.randn(C, C) / math.sqrt(C)
assert torch.allclose(multi_head(x, Wqkv, Wproj, 4), multi_head_batched(x, Wqkv, Wproj, 4), atol=1e-5)

# %% [markdown]
# ## 6. The block
#
# A transformer block is attention (tokens exchange information) followed by an MLP (each token thinks about
# what it gathered, on its own), each wrapped in two more ideas:
#
# - **Residual connections**: `x = x + attention(...)`, `x = x + mlp(...)`. Each sub-layer adds a correction
#   to a running stream instead of replacing it. The addition passes gradients straight through, so even
#   a deep stack trains; and a sub-layer whose output is zero leaves its input untouched, so a new block starts
#   close to doing nothing and learns how much to change.
# - **LayerNorm** before each sub-layer ("pre-norm", as in GPT-2): each token's vector is shifted to mean 0
#   and scaled to variance 1 (then multiplied by a learned gain), so the sub-layers always see inputs of the
#   same scale however the stream grows.
#
# The MLP widens each vector four times, applies a GELU, and projects back.

# %%
def layer_norm(x, weight, bias=None, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    y = (x - mean) / torch.sqrt(var + eps) * weight
    return y if bias is None else y + bias


def mlp(x, W_fc, W_proj):
    return F.gelu(x @ W_fc) @ W_proj  # the exact (erf) GELU, as nanoGPT


def block(x, p, n_head):
    """Pre-LayerNorm transformer block. p: weights by the library's parameter names (no biases)."""
    x = x + multi_head_batched(layer_norm(x, p["ln_1.weight"]), p["attn.qkv.weight"], p["attn.proj.weight"], n_head)
    return x + mlp(layer_norm(x, p["ln_2.weight"]), p["mlp.fc.weight"], p["mlp.proj.weight"])


z = layer_norm(torch.randn(3, 5, 32) * 7 + 2, torch.ones(32))
assert torch.allclose(z.mean(-1), torch.zeros(3, 5), atol=1e-5)
assert torch.allclose(z.var(-1, unbiased=False), torch.ones(3, 5), atol=1e-3)

# %% [markdown]
# Now the test that matters: the library's `PreNormBlock` (the block GPT and SigLIP are made of), with
# random weights, and our `block` reading those same weights, must compute the same output. The LayerNorm
# gains are randomised too, so that a mistake in any part would show.

# %%
torch.manual_seed(5)
library_block = PreNormBlock(dim=C, n_head=4, hidden=4 * C)
with torch.no_grad():
    for name, param in library_block.named_parameters():
        if name.endswith(("ln_1.weight", "ln_2.weight")):
            param.uniform_(0.5, 1.5)
params = dict(library_block.named_parameters())
print({name: tuple(p.shape) for name, p in params.items()})

x = torch.randn(2, 8, C)
with torch.no_grad():
    diff = (block(x, params, n_head=4) - library_block(x)).abs().max().item()
print(f"max |ours - library| = {diff:.2e}")
assert diff < 1e-6

# the residual claim: with both output projections at zero, the block is the identity
with torch.no_grad():
    params_zero = {**params, "attn.proj.weight": torch.zeros(C, C), "mlp.proj.weight": torch.zeros(4 * C, C)}
    assert torch.equal(block(x, params_zero, n_head=4), x)

# %% [markdown]
# ### Dropout
#
# One more piece sits in the block, switched off in the baby model but on in nanoGPT's larger `gpt-char`
# preset (`dropout=0.2`): **dropout** (Srivastava et al., 2014), a guard against memorising the training text.
# While training, a dropout layer sets each number that passes through it to zero with probability `p`, a new
# random choice at every step, and multiplies the survivors by `1/(1-p)`. No unit can rely on one particular
# other unit being there, and each step trains a different thinned network. The scaling keeps the expected
# value of every output what it was without dropout; doing it at training time ("inverted" dropout) means
# that at evaluation and generation time (`model.eval()`) the layer simply passes its input on, unchanged.
#
# The library's GPT applies it, as nanoGPT does, to the sum of token and position embeddings, to the attention
# weights, and to the output of each sub-layer (attention, MLP) before it is added to the stream. The cell
# writes it, checks it against `torch.nn.functional.dropout`, and checks that the library's block with
# dropout is our block in eval mode and random in training mode. (The baby model sets `dropout=0.0`: its short
# run sees less than half of the training text, too little to memorise; section 7c counts it.)

# %%
def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: in training, zero each entry with probability p and scale the others by 1/(1-p)."""
    if not training or p == 0.0:
        return x
    keep = torch.empty_like(x).bernoulli_(1 - p)  # 1 with probability 1 - p, else 0
    return x * (keep / (1 - p))


p_drop = 0.2
ones = torch.ones(100_000)
dropped = dropout(ones, p_drop, training=True)
print(f"zeroed: {(dropped == 0).float().mean():.4f}, survivors become {dropped.max():.4f}, mean {dropped.mean():.4f}")
assert abs((dropped == 0).float().mean() - p_drop) < 0.01  # a fraction p is zeroed
assert torch.allclose(dropped[dropped > 0], torch.tensor(1 / (1 - p_drop)))  # the rest scaled by 1/(1-p)
assert abs(dropped.mean() - 1) < 0.01  # so the mean is kept
assert torch.equal(dropout(ones, p_drop, training=False), ones)  # at eval time: nothing happens
torch.manual_seed(6)
ours = dropout(x, p_drop, training=True)
torch.manual_seed(6)
assert torch.allclose(ours, F.dropout(x, p_drop, training=True))  # torch's, from the same random numbers

torch.manual_seed(7)
dropout_block = PreNormBlock(dim=C, n_head=4, hidden=4 * C, dropout=p_drop)
with torch.no_grad():
    assert not torch.equal(dropout_block(x), dropout_block(x))  # training mode (the default): new masks at each call
    dropout_block.eval()
    assert (dropout_block(x) - block(x, dict(dropout_block.named_parameters()), n_head=4)).abs().max() < 1e-6

gpt_with_dropout = GPT(GPTConfig(vocab_size=V, n_layer=2, dropout=p_drop))
dropout_layers = [name for name, m in gpt_with_dropout.named_modules() if isinstance(m, torch.nn.Dropout)]
print(dropout_layers)  # embeddings, then each block's attention output and MLP output
assert dropout_layers == ["drop", "blocks.0.attn.resid_dropout", "blocks.0.mlp.dropout",
                          "blocks.1.attn.resid_dropout", "blocks.1.mlp.dropout"]
assert all(b.attn.dropout == p_drop for b in gpt_with_dropout.blocks)  # and the attention weights, in `attend`
assert get_preset("gpt-char-baby").model.dropout == 0.0 and get_preset("gpt-char").model.dropout == 0.2

# %% [markdown]
# The library's dropout layers are the same rule with a cheaper way to draw the mask on the CPU
# (`scratchllm/layers/dropout.py`). `bernoulli_` asks the random generator for one number per element; at
# `gpt-char`'s shapes that was a fifth of a training step. The library instead takes four 16-bit numbers
# from each 64-bit draw and keeps an element when its number is at least `p * 65536` (so `p` is rounded
# to a multiple of 1/65536, and the survivors are scaled by the inverse of that rounded keep rate). Other
# random numbers, so not torch's masks, but the same statistics, which the cell checks:

# %%
from scratchllm.layers.dropout import dropout as library_dropout

torch.manual_seed(8)
dropped = library_dropout(torch.ones(1_000_000), p_drop)
print(f"library: zeroed {(dropped == 0).float().mean():.4f}, survivors {dropped.max():.6f}, mean {dropped.mean():.4f}")
assert abs((dropped == 0).float().mean() - p_drop) < 0.002  # 5 standard errors of a million draws
assert abs(dropped.max() - 1 / (1 - p_drop)) < 1e-4 and abs(dropped.mean() - 1) < 0.003


# %% [markdown]
# ## 7. The baby GPT
#
# A GPT is: a token embedding plus a position embedding, a stack of blocks, a final LayerNorm, and a linear
# map to one logit per vocabulary entry (GPT-2 reuses the token-embedding table for it: "tied" weights).
# The `gpt-char-baby` preset is nanoGPT's CPU model: 4 blocks, 4 heads, width 128, a context (`block_size`) of
# 64 characters, 0.8M parameters.
#
# Training it takes two more pieces, which we write by hand: batches and a training step. Then we check that
# our loop is the loop the project's trainer runs, and let the trainer do the real run (it also evaluates,
# saves checkpoints and logs metrics). After training comes the third piece, the generation loop.
#
# ### 7a. Batches
#
# The model learns from windows of the training text: `block_size` characters as the input `x`, and as the
# targets `y` the same window moved on by one character. So at every position `t` the target is the
# character that follows `x[0..t]`, and one window holds 64 training examples at once (predict character 1
# from character 0, character 2 from characters 0-1, ..., character 64 from characters 0-63). A batch is
# `batch_size` windows starting at random places.
#
# The library's `TokenBatches` (in `src/scratchllm/data/batches.py`) draws the start positions with
# `torch.randint` from its own random generator, seeded with the run's seed (1337 by default), so that a
# run can be repeated and resumed. Our `get_batch`, given a generator seeded the same way, draws the same
# windows.

# %%
baby = get_preset("gpt-char-baby")  # its model config and its trainer config
block_size, batch_size, seed = baby.model.block_size, baby.train.batch_size, baby.train.seed
print(f"block_size {block_size}, batch_size {batch_size}, seed {seed}")


def get_batch(data: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of data: inputs x (B, T) and targets y (B, T), y being x moved on by one."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    x = torch.stack([data[s:s + block_size] for s in starts])
    y = torch.stack([data[s + 1:s + block_size + 1] for s in starts])
    return x, y


xb, yb = get_batch(train_ids, torch.Generator().manual_seed(seed))
print(xb.shape, yb.shape)
print(f"x[0, :24] = {decode(xb[0, :24].tolist())!r}\ny[0, :24] = {decode(yb[0, :24].tolist())!r}")
assert torch.equal(xb[:, 1:], yb[:, :-1])  # the targets are the inputs one position on

generator = torch.Generator().manual_seed(seed)
library_batches = TokenBatches(train_ids.numpy(), val_ids.numpy(), block_size, seed=seed)
for _ in range(5):  # the first 5 steps' batches
    xb, yb = get_batch(train_ids, generator)
    (library_batch,) = library_batches.draw_step(batch_size, grad_accum=1)  # a list of micro-batches: one here
    assert torch.equal(xb, library_batch["idx"]) and torch.equal(yb, library_batch["targets"])

# %% [markdown]
# ### 7b. A training step
#
# One step of training:
#
# 1. set the learning rate from the **schedule**: a linear warm-up from almost 0 to the peak `lr` over the first
#    `warmup_steps` (Adam's first updates, made from noisy estimates of the gradient's moments, would
#    otherwise be large), then a cosine from `lr` down to `min_lr` at the last step;
# 2. draw a batch and compute the loss: the model returns it with the logits, the cross-entropy
#    `-log P(target)` averaged over all B × T positions;
# 3. backpropagate, and **clip** the gradient: if the norm of all gradients together exceeds 1, scale them
#    down to norm 1, so that one unlucky batch cannot throw the weights far;
# 4. update the weights with **AdamW**: Adam, plus a weight decay that pulls weights towards zero, applied to
#    the matrices and embeddings only (not to the LayerNorm gains).
#
# The library's trainer (`train_step` in `src/scratchllm/train/trainer.py`, with `src/scratchllm/train/optim.py`)
# does exactly this. To check, we run both for 10 steps (so the schedule goes through its warm-up and its
# whole cosine) in fp32, from the same initial weights (the trainer calls `torch.manual_seed(seed)` just before
# it builds the model) and on the same batches. Their losses must agree.
#
# The trainer also evaluates the model, at the start, every `eval_interval` steps and at the end, on fixed
# batches of the training and of the validation text, and prints the mean loss in two units. The loss is in
# **nats** per character (natural logarithms). Divided by ln 2 it is in **bits** per character: the number of
# bits per character a compressor driven by the model's predictions would need (arithmetic coding comes within
# a hair of it). The trainer prints **bits per byte**: the bits for the whole text divided by the number of
# bytes the text takes in UTF-8. Per byte, models with different tokenizers become comparable: a BPE token
# (lesson 2) stands for several characters, so its loss per token is larger even when the model is better; per
# byte, every model pays for the same text. Every character of TinyShakespeare is ASCII, one byte, so here
# bits per byte = bits per character = loss / ln 2.

# %%
def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up to lr over warmup_steps, then a cosine down to min_lr at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 -> 1 over the cosine
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def train_by_hand(model: torch.nn.Module, max_steps: int, lr: float, min_lr: float, warmup_steps: int) -> list[float]:
    """Train on batches from get_batch with AdamW and the schedule above; returns the loss of every step."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]  # linear weights and embeddings: decayed
    vectors = [p for p in model.parameters() if p.dim() < 2]  # LayerNorm gains: not decayed
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.99), fused=True)  # fused: one kernel per group, as the trainer's
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for step in range(max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr, min_lr, warmup_steps, max_steps)
        x, y = get_batch(train_ids, generator)
        _, loss = model(x, y)  # logits (B, T, V) and the mean cross-entropy over the B * T positions
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def read_metrics(run: Path) -> list[dict]:
    """The records of a run's metrics.jsonl: one per logged training step and one per evaluation."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


CHECK_STEPS, CHECK_WARMUP, LR, MIN_LR = 10, 3, 3e-3, 1e-4
torch.manual_seed(seed)
gpt = GPT(replace(baby.model, vocab_size=V))  # the trainer builds the preset's config with the tokenizer's vocabulary
losses_by_hand = train_by_hand(gpt, CHECK_STEPS, LR, MIN_LR, CHECK_WARMUP)

runs = Path(tempfile.mkdtemp(prefix="scratchllm-lesson1-"))  # the run folders of this lesson
check_overrides = [f"lr={LR}", f"min_lr={MIN_LR}", f"warmup_steps={CHECK_WARMUP}", "log_interval=1",
                   f"eval_interval={CHECK_STEPS}", "eval_batches=1", "device=cpu"]  # a loss logged at every step
check = train("gpt-char-baby", data=str(CORPUS), out=runs / "check", max_steps=CHECK_STEPS, precision="fp32",
              overrides=check_overrides, progress=False)
losses_library = [r["loss"] for r in read_metrics(runs / "check") if r["kind"] == "train"]
print("step   lr        by hand    trainer")
for step, (ours, theirs) in enumerate(zip(losses_by_hand, losses_library)):
    print(f"{step + 1:4d}   {lr_at(step, LR, MIN_LR, CHECK_WARMUP, CHECK_STEPS):.2e}  {ours:.6f}   {theirs:.6f}")
assert len(losses_library) == CHECK_STEPS
assert max(abs(ours - theirs) for ours, theirs in zip(losses_by_hand, losses_library)) < 1e-5
assert len(text.encode("utf-8")) == len(text)  # one byte per character, so bits per byte = loss / ln 2:
assert abs(check["val_bpb"] - check["val_loss"] / math.log(2)) < 1e-6


# %% [markdown]
# ### 7c. The real run
#
# Now the project's trainer trains the baby GPT for 600 steps of 12 windows. The full preset runs 2000 steps
# at a peak learning rate of 1e-3 after 100 warm-up steps; for this shorter run we raise the peak to 3e-3 and
# shorten the warm-up to 50 steps (the cosine shrinks with `max_steps`). 600 steps see 600 × 12 × 64 = 460,800
# target characters, less than half of the training text: the model has no time to memorise it, which is why
# the preset does without dropout. Precision is the trainer's default, `auto`: bf16 matrix products where the
# CPU does them natively, fp32 elsewhere. So the run is not the same, bit for bit, on every CPU; what the rest
# of the lesson asserts about the trained model holds whichever the CPU. The trainer evaluates every 200 steps,
# on 20 fixed batches.

# %%
assert (baby.model.n_layer, baby.model.n_head, baby.model.n_embd, baby.model.block_size) == (4, 4, 128, 64)
assert (baby.train.max_steps, baby.train.lr, baby.train.warmup_steps) == (2000, 1e-3, 100)
MAX_STEPS, WARMUP = 600, 50
assert MAX_STEPS * batch_size * block_size < 0.5 * len(train_ids)  # less than half the training text
run_config = replace(baby.train, lr=LR, min_lr=MIN_LR, warmup_steps=WARMUP, max_steps=MAX_STEPS)
assert all(abs(lr_at(step, LR, MIN_LR, WARMUP, MAX_STEPS) - library_lr_at(step, run_config)) < 1e-12
           for step in range(MAX_STEPS))  # our schedule is the trainer's, at every step of this run
summary = train("gpt-char-baby", data=str(CORPUS), out=runs / "gpt", max_steps=MAX_STEPS, progress=False,
                overrides=[f"lr={LR}", f"min_lr={MIN_LR}", f"warmup_steps={WARMUP}", "eval_interval=200", "device=cpu"])
print(f"{summary['n_params']:,} parameters, {summary['precision']}; "
      f"val loss {summary['val_loss']:.4f} after {summary['step']} steps")
assert 0.79e6 < summary["n_params"] < 0.81e6

# %% [markdown]
# Each run writes `metrics.jsonl`: one record per logged step (every 10 steps) and one per evaluation. The
# training loss of a step is noisy (each step sees a different random batch); the evaluations average 20 fixed
# batches. The learning rate, from our `lr_at` (the cell above checked it against the trainer's for every step
# of this run), is drawn below the losses.

# %%
records = read_metrics(runs / "gpt")
train_curve = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
eval_curve = [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"]
bigram_val = nll(learned_log_P, counts_val)
fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, height_ratios=[3, 1])
ax.plot(*zip(*train_curve), label="train (one batch)", alpha=0.6)
ax.plot(*zip(*eval_curve), "o-", label="validation (20 batches)")
ax.axhline(bigram_val, color="k", ls="--", label="bigram, validation")
ax.set_ylabel("loss (nats per character)")
ax.legend()
ax_lr.plot(range(MAX_STEPS), [lr_at(step, LR, MIN_LR, WARMUP, MAX_STEPS) for step in range(MAX_STEPS)])
ax_lr.set_xlabel("step")
ax_lr.set_ylabel("learning rate")
plt.show()
print(f"validation: {summary['val_loss']:.3f} nats = {summary['val_bpb']:.3f} bits per character; "
      f"bigram: {bigram_val:.3f} nats = {bigram_val / math.log(2):.3f} bits")
assert summary["val_loss"] < bigram_val - 0.2  # attention beats the bigram clearly


# %% [markdown]
# ### 7d. Generating, by hand
#
# `load_pretrained` reads a checkpoint folder (the best one by validation loss) back into a model with its
# tokenizer. To write, the model repeats one step: run the context through the model, take the logits at the
# last position (its prediction for the next character), pick a character, append it to the context.
#
# - **Picking.** Greedy decoding takes the most likely character (the argmax). Sampling draws one from
#   `softmax(logits / temperature)`: at temperature 1 that is the model's own distribution, below 1 a sharper
#   one that favours the likely characters.
# - **The context.** The model has position embeddings for 64 positions only, so the context is cropped to
#   `block_size`. nanoGPT keeps the last 64 characters at every step. The library's generator keeps a KV cache
#   (lesson 3: the keys and values of the positions already seen, so that a step computes only the new
#   position's), and with learned positions a window that slides by one character moves every cached key to
#   another position: the whole cache would have to be recomputed at every step. So when the context is full
#   it keeps the last half (32 characters), computes them once, and grows again from there: one recomputation
#   per 32 characters. Our loop crops the same way.
#
# Without its cache (`use_cache=False`) the library's `generate` runs the same computation as our loop, so the
# characters must be the same: greedy, and sampled with the same seed.

# %%
pretrained = scratchllm.load_pretrained(runs / "gpt" / "best")
model, tokenizer = pretrained.model, pretrained.tokenizer


@torch.no_grad()
def generate_by_hand(model, prompt: list[int], max_new_tokens: int, temperature: float, seed: int) -> list[int]:
    """Continue the prompt: greedy at temperature 0, else sampled with a random generator seeded with `seed`."""
    model.eval()
    context_size = model.config.block_size
    generator = torch.Generator().manual_seed(seed)
    context = prompt[-context_size:]
    new = []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([context]))[:, -1, :]  # (1, T) -> (1, T, V) -> (1, V): the last position's
        if temperature == 0:
            next_id = logits.argmax(dim=-1).item()
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            next_id = torch.multinomial(probs, 1, generator=generator).item()
        new.append(next_id)
        context = context + [next_id]
        if len(context) > context_size:  # full: keep the last half
            context = context[-(context_size // 2):]
    return new


def distinct_4grams(s: str) -> float:
    """The share of a text's 4-character sequences that are distinct: low when it repeats itself."""
    grams = [s[i:i + 4] for i in range(len(s) - 3)]
    return len(set(grams)) / len(grams)


prompt = tokenizer.encode("ROMEO:\n")
for temperature in (0.0, 0.8):
    ours = generate_by_hand(model, prompt, 200, temperature, seed=1)
    library_ids = list(generate(model, prompt, 200, temperature=temperature, seed=1, use_cache=False))
    print(f"temperature {temperature}, {distinct_4grams(decode(ours)):.0%} distinct 4-grams:\n{decode(ours)!r}\n")
    assert ours == library_ids  # 200 characters: the context was full, and cropped, several times
    if temperature == 0:
        assert distinct_4grams(decode(ours)) < 0.5  # it goes round in a loop
    else:
        assert distinct_4grams(decode(ours)) > 0.8

# %% [markdown]
# Greedy decoding soon repeats itself: once the likeliest continuation of some text leads back to that text,
# it loops forever. Sampling does not get stuck that way, which is why we sample.
#
# ### 7e. Samples
#
# We prompt the model with a speaker's name and sample 300 characters at temperature 0.8, 32 times (seeds 1
# to 32), and the same from the bigram of section 2 for comparison. Our loop recomputes the whole context for
# every character; for 32 samples we use the library's decoding loop, `Engine` (the one behind `generate` and
# the server): it decodes the 32 requests together, one row each of one KV cache, each request with its own
# seeded random generator. Here is the first sample:

# %%
N_SAMPLES, SAMPLE_CHARS = 32, 300


def samples_of(model) -> list[str]:
    """N_SAMPLES continuations of the prompt, SAMPLE_CHARS characters each, at temperature 0.8, seeds 1, 2, ..."""
    engine = Engine(model, max_batch=N_SAMPLES)
    requests = [Request(prompt, Sampling(max_tokens=SAMPLE_CHARS, temperature=0.8, seed=seed))
                for seed in range(1, N_SAMPLES + 1)]
    new = {id(request): [] for request in requests}
    tokens = engine.add_all(requests)  # prefill the prompts: the first token of every request
    while tokens:  # then one token per running request and step, until each has its SAMPLE_CHARS
        for token in tokens:
            new[id(token.request)].append(token.token)
        tokens = engine.step()
    return [decode(new[id(request)]) for request in requests]


gpt_samples, bigram_samples = samples_of(model), samples_of(bigram)
print("ROMEO:\n" + gpt_samples[0])

# %% [markdown]
# After 600 steps it has learned the form of a play: speeches that end with a blank line and a new speaker's
# name in capitals and a colon, line breaks, common short words, plausible spelling. The meaning comes much
# later, if at all, at this size.
#
# One sample shows little, and which characters come out changes with the machine's arithmetic (different
# CPUs train slightly different models). So we measure the form over all 32 samples, against the bigram's:
# how many of them start a new speech (a blank line, then a line with only a name in capitals and a colon),
# and what share of their words of three letters or more are words of the training text. A quarter of the
# GPT's samples or more start a new speech, at least twice as many as the bigram's, and the share of its words
# that are real is more than twice the bigram's.

# %%
train_words = set(re.findall(r"[A-Za-z]+", text[:n_train]))


def starts_a_speech(sample: str) -> bool:
    return re.search(r"\n\n[A-Z][A-Z ]+:\n", sample) is not None  # a blank line, "NAME:", a line break


def real_word_share(samples: list[str]) -> float:
    words = [w for s in samples for w in re.findall(r"[A-Za-z]+", s) if len(w) >= 3]
    return sum(w in train_words for w in words) / len(words)


gpt_speeches = sum(starts_a_speech(s) for s in gpt_samples)
bigram_speeches = sum(starts_a_speech(s) for s in bigram_samples)
print(f"samples that start a new speech: GPT {gpt_speeches} of {N_SAMPLES}, bigram {bigram_speeches} of {N_SAMPLES}")
print(f"words of 3+ letters found in the training text: GPT {real_word_share(gpt_samples):.0%}, "
      f"bigram {real_word_share(bigram_samples):.0%}, the validation text {real_word_share([text[n_train:]]):.0%}")
assert gpt_speeches >= N_SAMPLES // 4 and gpt_speeches >= 2 * bigram_speeches
assert real_word_share(gpt_samples) > 2 * real_word_share(bigram_samples)

with torch.no_grad():  # temperature 0.8 divides the logits by 0.8: a sharper, lower-entropy distribution
    next_logits = model(torch.tensor([prompt]))[0, -1]
entropy = lambda logits: -(logits.softmax(-1) * logits.log_softmax(-1)).sum()  # noqa: E731
assert entropy(next_logits / 0.8) < entropy(next_logits)


# %% [markdown]
# ### 7f. Looking inside, with our own code
#
# Our hand-built `block` can run the trained model: embed the characters, apply the four blocks with the
# trained weights, the final LayerNorm and the tied head. It should reproduce the library's logits. On the way
# we keep every head's attention weights, to see what the layers learned. We run it on 32 windows of 64
# characters spread evenly over the validation text: 2,048 rows of attention weights per head.

# %%
state = {name: p.detach() for name, p in model.named_parameters()}
cfg = model.config
hs = cfg.n_embd // cfg.n_head
head_columns = [slice(j * hs, (j + 1) * hs) for j in range(cfg.n_head)]  # head j's columns of Wq, Wk, Wv


def forward_by_hand(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained GPT with our functions: idx (B, T) -> logits (B, T, V), attention (layers, heads, B, T, T)."""
    h = state["wte.weight"][idx] + state["wpe.weight"][: idx.size(1)]  # (B, T, C)
    weights = []
    for i in range(cfg.n_layer):
        p = {name.removeprefix(f"blocks.{i}."): w for name, w in state.items() if name.startswith(f"blocks.{i}.")}
        Wq, Wk, Wv = p["attn.qkv.weight"].split(cfg.n_embd, dim=1)
        normed = layer_norm(h, p["ln_1.weight"])
        heads = [head(normed, Wq[:, s], Wk[:, s], Wv[:, s])[1] for s in head_columns]  # each (B, T, T)
        weights.append(torch.stack(heads))  # (H, B, T, T)
        h = block(h, p, cfg.n_head)
    return layer_norm(h, state["ln_f.weight"]) @ state["wte.weight"].T, torch.stack(weights)


starts = torch.linspace(0, len(val_ids) - block_size, 32).long()
windows = torch.stack([val_ids[s:s + block_size] for s in starts])  # (32, 64)
with torch.no_grad():
    logits_ours, attention = forward_by_hand(windows)
    logits_library = model(windows)
print(f"max |ours - library| over {logits_ours.numel():,} logits: {(logits_ours - logits_library).abs().max():.2e}")
assert (logits_ours - logits_library).abs().max() < 1e-4
print("attention weights:", tuple(attention.shape), "(layer, head, window, query position, key position)")

# %% [markdown]
# Two kinds of head stand out in the measurements below (each is a mean over rows; "uniform" is what equal
# weights over the visible characters would give on the same rows):
#
# - In **layer 0**, the heads put a large share of each row's weight on the current and the previous
#   character, at least twice what uniform weights would, and more than the heads of any deeper layer do on
#   average: they read local spelling.
# - **Deeper** heads lock onto landmarks: keys that rows attend to wherever they are, such as the newline that
#   starts a line or the colon after a speaker's name. The deeper head with the most weight on newlines gives
#   them, on average over the rows that have one in view, at least four times the uniform share; likewise the
#   deeper head with the most weight on colons.

# %%
L, H, n_windows, T, _ = attention.shape
visible = torch.arange(1, T + 1.0)  # query position t sees t + 1 keys
# the weight on key t (the current character) and key t - 1 (the previous one), at query positions t = 1 .. T - 1
current_and_previous = (attention.diagonal(dim1=-2, dim2=-1)[..., 1:]
                        + attention.diagonal(offset=-1, dim1=-2, dim2=-1)).mean(dim=(2, 3))  # (L, H)
local_uniform = (2 / visible[1:]).mean().item()


def weight_on(char: str) -> tuple[torch.Tensor, float]:
    """Each head's mean weight on keys holding `char`, over the rows that see one (L, H); and uniform weights'."""
    is_char = (windows == stoi[char]).float()  # (windows, keys)
    seen = is_char.cumsum(dim=-1)  # (windows, queries): how many such keys row t sees
    on_char = (attention * is_char[:, None, :]).sum(dim=-1)  # (L, H, windows, queries)
    rows = seen > 0
    return on_char[..., rows].mean(dim=-1), (seen / visible)[rows].mean().item()


on_newline, newline_uniform = weight_on("\n")
on_colon, colon_uniform = weight_on(":")
print(f"weight on the current and previous character (uniform: {local_uniform:.3f}); rows: layers, columns: heads")
print(current_and_previous.numpy().round(2))
print(f"\nweight on newlines (uniform: {newline_uniform:.3f})\n{on_newline.numpy().round(2)}")
print(f"\nweight on colons (uniform: {colon_uniform:.3f})\n{on_colon.numpy().round(2)}")
layer_means = current_and_previous.mean(dim=1)
assert layer_means[0] >= 2 * local_uniform and layer_means[0] > layer_means[1:].max()
assert on_newline[1:].max() >= 4 * newline_uniform and on_colon[1:].max() >= 4 * colon_uniform

# %% [markdown]
# The picture shows three of those heads on a short exchange: the most local head of layer 0, and the deeper
# heads with the most weight on newlines and on colons. Each row is a query position's weights over the key
# positions up to it (the colour scale is a square root, so that small weights show too).

# %%
def strongest_deeper_head(share: torch.Tensor) -> tuple[int, int]:
    """The (layer, head) of layers 1 and up with the largest share."""
    i = int(share[1:].flatten().argmax())
    return 1 + i // H, i % H


local_head = (0, int(current_and_previous[0].argmax()))
newline_head, colon_head = strongest_deeper_head(on_newline), strongest_deeper_head(on_colon)
panels = [(local_head, f"{current_and_previous[local_head]:.0%} on the current and previous character",
           f"uniform: {local_uniform:.0%}"),
          (newline_head, f"{on_newline[newline_head]:.0%} on newlines", f"uniform: {newline_uniform:.1%}"),
          (colon_head, f"{on_colon[colon_head]:.0%} on colons", f"uniform: {colon_uniform:.1%}")]

snippet = "ROMEO:\nI go.\n\nJULIET:\nStay!"
with torch.no_grad():
    _, snippet_attention = forward_by_hand(torch.tensor([tokenizer.encode(snippet)]))  # (L, H, 1, T, T)
labels = [{"\n": "↵", " ": "␣"}.get(c, c) for c in snippet]
fig, axes = plt.subplots(1, 3, figsize=(14, 5.6), layout="constrained")
for ax, ((layer, j), measured, uniform) in zip(axes, panels):
    image = ax.imshow(snippet_attention[layer, j, 0], cmap="viridis", norm=PowerNorm(0.5, vmin=0, vmax=1))
    ax.set_title(f"layer {layer}, head {j}\n{measured}\n({uniform})", fontsize=10)
    ax.set_xticks(range(len(snippet)), labels, fontsize=9)
    ax.set_yticks(range(len(snippet)), labels, fontsize=9)
    ax.set_xlabel("key position (the character attended to)")
axes[0].set_ylabel("query position (the character attending)")
fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight (square-root scale)")
plt.show()

# %% [markdown]
# **Next:** lesson 2 replaces characters with byte-level BPE tokens, the tokenizer of GPT-2 and Llama 3.

# %%
print(f"This lesson ran in {time.perf_counter() - LESSON_START:.1f} s")
