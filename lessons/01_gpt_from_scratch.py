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
# 4. one **attention head**, then **several heads**, then the **block** (residual connections, LayerNorm, MLP);
# 5. the baby GPT (`gpt-char-baby`) trained for 800 steps with the project's trainer, a sample, and a look at
#    what its attention heads learned.
#
# Everything we write by hand is checked against the library (`scratchllm`) with an `assert`: the
# hand-built block, given the library block's weights, computes the same numbers.
#
# The corpus is TinyShakespeare (1.1M characters), read from `tests/data/` in this repository, so the
# lesson needs no network, and a CPU is enough.

# %%
import json
import math
import re
import tempfile
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import scratchllm
from scratchllm.generate import generate
from scratchllm.layers import PreNormBlock
from scratchllm.models import Bigram, BigramConfig
from scratchllm.tokenizers import CharTokenizer
from scratchllm.train.run import train

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
# sums `head_size` such products and has variance `head_size`. Large scores make the softmax nearly one-hot,
# so each position would attend to a single other one and the gradients through the others vanish. Dividing
# by `sqrt(head_size)` brings the variance back to about 1. The cell below measures both.

# %%
torch.manual_seed(2)
head_size = 64
q_, k_ = torch.randn(1000, head_size), torch.randn(1000, head_size)
raw = (q_ * k_).sum(dim=-1)
scaled = raw / math.sqrt(head_size)
print(f"variance of q.k: {raw.var():.1f}, after scaling: {scaled.var():.2f}")
row = torch.randn(8, head_size)
peak_raw = torch.softmax(row @ row[0] * 1.0, dim=0).max()
peak_scaled = torch.softmax(row @ row[0] / math.sqrt(head_size), dim=0).max()
print(f"largest softmax weight, unscaled: {peak_raw:.3f}, scaled: {peak_scaled:.3f}")
assert 0.7 * head_size < raw.var() < 1.3 * head_size and 0.7 < scaled.var() < 1.3
assert peak_raw > 0.99 and peak_scaled < peak_raw

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
# ## 7. The baby GPT
#
# A GPT is: a token embedding plus a position embedding, a stack of blocks, a final LayerNorm, and a linear
# map to one logit per vocabulary entry (GPT-2 reuses the token-embedding table for it: "tied" weights).
# The `gpt-char-baby` preset is nanoGPT's CPU model: 4 blocks, 4 heads, width 128, a context of 64 characters,
# 0.8M parameters.
#
# We train it with the project's trainer for 800 steps of 12 sequences. The full preset runs 2000 steps; for
# this shorter run we raise the peak learning rate from 1e-3 to 2e-3 and shorten the warm-up from 100 steps to
# 50 (the cosine schedule shrinks with `max_steps`). Precision is the trainer's default, `auto`: bf16 matrix
# products where the CPU does them natively, fp32 elsewhere. The run folder goes to a temporary directory.

# %%
runs = Path(tempfile.mkdtemp(prefix="scratchllm-lesson1-"))
summary = train("gpt-char-baby", data=str(CORPUS), out=runs / "gpt", max_steps=800,
                overrides=["lr=2e-3", "warmup_steps=50", "eval_interval=200", "device=cpu"], progress=False)
print(f"{summary['n_params']:,} parameters; val loss {summary['val_loss']:.4f} after {summary['step']} steps")
assert 0.79e6 < summary["n_params"] < 0.81e6

# %% [markdown]
# Each run writes `metrics.jsonl`: one record per logged step and one per evaluation. The training loss is
# noisy (each step sees a different random batch); the evaluations average 20 fixed batches.

# %%
records = [json.loads(line) for line in (runs / "gpt" / "metrics.jsonl").read_text().splitlines()]
train_curve = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
eval_curve = [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(*zip(*train_curve), label="train (one batch)", alpha=0.6)
ax.plot(*zip(*eval_curve), "o-", label="validation")
ax.axhline(nll(learned_log_P, counts_val), color="k", ls="--", label="bigram, validation")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats per character)")
ax.legend()
plt.show()
assert summary["val_loss"] < nll(learned_log_P, counts_val) - 0.2  # attention beats the bigram clearly

# %% [markdown]
# ### A sample
#
# `load_pretrained` reads a checkpoint folder (the best one by validation loss) back into a model with its
# tokenizer. We prompt it with a speaker's name and sample 300 characters at temperature 0.8 (a little
# sharper than the model's own distribution), with a fixed seed.

# %%
pretrained = scratchllm.load_pretrained(runs / "gpt" / "best")
model, tokenizer = pretrained.model, pretrained.tokenizer
prompt = tokenizer.encode("ROMEO:\n")
ids = list(generate(model, prompt, max_new_tokens=300, temperature=0.8, seed=1))
sample = "ROMEO:\n" + tokenizer.decode(ids)
print(sample)
assert re.search(r"\n[A-Z]{2,}:\n", sample)  # a new speaker, in capitals, with a colon and a line break

with torch.no_grad():  # temperature 0.8 divides the logits by 0.8: a sharper, lower-entropy distribution
    next_logits = model(torch.tensor([prompt]))[0, -1]
entropy = lambda logits: -(logits.softmax(-1) * logits.log_softmax(-1)).sum()  # noqa: E731
assert entropy(next_logits / 0.8) < entropy(next_logits)

# %% [markdown]
# After 800 steps it has learned the form of a play: names in capitals followed by
# a colon, line breaks, common short words, plausible spelling. The meaning comes much later, if at all, at
# this size.
#
# ### Looking inside, with our own code
#
# Our hand-built `block` can run the trained model: embed the prompt, apply the four blocks with the trained
# weights, the final LayerNorm and the tied head. It should reproduce the library's logits. On the way we keep
# every head's attention weights, to see what the layers learned.

# %%
state = {name: p.detach() for name, p in model.named_parameters()}
cfg = model.config
hs = cfg.n_embd // cfg.n_head
snippet = "ROMEO:\nWhat light through yonder window breaks?"
idx = torch.tensor([tokenizer.encode(snippet)])
h = state["wte.weight"][idx] + state["wpe.weight"][: idx.size(1)]
attention_weights = []  # [layer][head]: (T, T)
for i in range(cfg.n_layer):
    p = {name.removeprefix(f"blocks.{i}."): w for name, w in state.items() if name.startswith(f"blocks.{i}.")}
    Wq, Wk, Wv = p["attn.qkv.weight"].split(cfg.n_embd, dim=1)
    normed = layer_norm(h, p["ln_1.weight"])
    attention_weights.append([head(normed, Wq[:, s], Wk[:, s], Wv[:, s])[1][0]
                              for s in (slice(j * hs, (j + 1) * hs) for j in range(cfg.n_head))])
    h = block(h, p, cfg.n_head)
logits_ours = layer_norm(h, state["ln_f.weight"]) @ state["wte.weight"].T
with torch.no_grad():
    logits_library = model(idx)
print(f"max |ours - library| over {logits_ours.numel():,} logits: {(logits_ours - logits_library).abs().max():.2e}")
assert (logits_ours - logits_library).abs().max() < 1e-4

labels = [repr(c)[1:-1] for c in snippet]
fig, axes = plt.subplots(2, cfg.n_head, figsize=(14, 7.4))
for layer, row in enumerate(axes):
    for j, ax in enumerate(row):
        ax.imshow(attention_weights[layer][j], cmap="viridis")
        ax.set_title(f"layer {layer}, head {j}")
        ax.set_xticks(range(len(snippet)), labels, fontsize=5)
        ax.set_yticks(range(len(snippet)), labels, fontsize=5)
plt.tight_layout()
plt.show()

# %% [markdown]
# Each row is one position's weights over the positions up to it. In layer 0, three of the four heads put a
# third or more of every row's weight on the current and the previous character: they read local spelling. The
# fourth spreads its weight widely, much like the plain average of section 3. Deeper heads lock onto landmarks:
# vertical stripes are keys that most rows attend to, such as the newline that starts the speech or the colon
# after the speaker's name. The cell measures both (over the rows from position 10 on).

# %%
def local_share(w):  # weight on the current and the previous position
    return (torch.diagonal(w)[10:] + torch.diagonal(w, -1)[9:]).mean().item()


def landmark(w):  # the key that most rows attend to most, and the share of rows that do
    position, rows = Counter(w.argmax(dim=-1)[10:].tolist()).most_common(1)[0]
    return snippet[position], rows / (len(snippet) - 10)


layer0 = [local_share(w) for w in attention_weights[0]]
print("layer 0, weight on the current and previous character:", [round(x, 2) for x in layer0])
landmarks = [(layer, j, *landmark(w)) for layer in range(1, cfg.n_layer) for j, w in enumerate(attention_weights[layer])]
strong = [(layer, j, char, share) for layer, j, char, share in landmarks if share >= 0.5]
for layer, j, char, share in strong:
    print(f"layer {layer}, head {j}: {share:.0%} of rows attend most to {char!r}")
assert sum(x >= 0.3 for x in layer0) == 3 and min(layer0) < 0.2
assert {char for _, _, char, _ in strong} == {"\n", ":"}

# %% [markdown]
# **Next:** lesson 2 replaces characters with byte-level BPE tokens, the tokenizer of GPT-2 and Llama 3.
