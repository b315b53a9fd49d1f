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
# # Lesson 6: generation
#
# A language model gives, for every position, a score (a **logit**) for each token of the vocabulary. To write,
# we run it on a prompt, turn the last position's logits into one next token, append it, and go again. This
# lesson covers the three things that decide what comes out, and how fast:
#
# 1. **Choosing the token**: greedy, temperature, top-k, top-p and min-p, each written by hand, each with a
#    picture of the distribution it keeps, and each checked against the library's `Sampling` (through
#    `next_token_probs`, the distribution the library's `sample_next` draws from).
# 2. **The KV cache**: the keys and values of the tokens already seen do not change, so a step can compute
#    only the new token's. We write a whole Llama forward pass with a cache by hand, check that it gives the
#    logits of full recomputation and of the library's cached path, and measure the time per token with and
#    without it.
# 3. **Batching with left padding**: several prompts of different lengths decoded together, and why the
#    positions must count a row's real tokens, not its slots.
#
# The model is a small character-level Llama (lessons 3 and 4), trained here for 600 steps on TinyShakespeare
# (from `tests/data/` in this repository) with the project's trainer: no network, a CPU is enough.

# %%
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.utils.flop_counter import FlopCounterMode

import scratchllm
from scratchllm.generate import GREEDY, Sampling, generate, generate_batch, next_token_probs, sample_next
from scratchllm.layers import padded_causal_mask
from scratchllm.models import GPT, GPTConfig, Llama, LlamaConfig
from scratchllm.train.run import train

LESSON_START = time.perf_counter()
torch.set_num_threads(1)  # these models are small; one thread cannot be stalled by other programs on the CPU
torch.manual_seed(0)
CORPUS = Path("../tests/data/tinyshakespeare.txt")  # lessons run from lessons/; the file is in the repo
text = CORPUS.read_text(encoding="utf-8")

# %% [markdown]
# ## 0. A small Llama to generate with
#
# The preset `llama-bpe-baby` (RMSNorm, RoPE, 4 query heads sharing 2 key/value heads, SwiGLU) made smaller so
# that it trains in a few seconds: characters instead of BPE tokens, 2 layers of width 64, a context of 64
# characters, 600 steps in fp32. It will not write Shakespeare (lesson 1's GPT trained longer), but its
# next-character distributions have the shapes this lesson needs: sharp where the next character is nearly
# certain, flat where many would do.

# %%
runs = Path(tempfile.mkdtemp(prefix="scratchllm-lesson6-"))
summary = train("llama-bpe-baby", data=str(CORPUS), out=runs / "llama", max_steps=600, precision="fp32", progress=False,
                overrides=["tokenizer.kind=char", "n_layer=2", "n_embd=64", "block_size=64", "batch_size=16",
                           "lr=5e-3", "min_lr=5e-4", "warmup_steps=30", "eval_interval=600", "eval_batches=4",
                           "device=cpu"])
pretrained = scratchllm.load_pretrained(runs / "llama" / "best")  # fp32 weights and the character tokenizer
model, tokenizer = pretrained.model.eval(), pretrained.tokenizer
cfg = model.config
print(f"{summary['n_params']:,} parameters; validation loss {summary['val_loss']:.3f} nats per character")
print(cfg)
assert isinstance(model, Llama) and next(model.parameters()).dtype == torch.float32
assert summary["val_loss"] < 2.4  # below the bigram of lesson 1 (2.5): it has learned more than letter pairs


def show(ids) -> str:
    """Characters as text, with a newline and a space made visible."""
    return "".join({"\n": "↵", " ": "␣"}.get(c, c) for c in tokenizer.decode(list(ids)))


# %% [markdown]
# Every filter below is checked on real rows of logits: one window of 64 characters from the end of the corpus
# (the last 10%, the validation text, which the model did not train on) gives 64 rows, the model's prediction
# after each prefix of the window.

# %%
window = text[-3000:-3000 + cfg.block_size]
window_ids = torch.tensor([tokenizer.encode(window)])  # (1, 64)
with torch.no_grad():
    rows = model(window_ids)[0]  # (64, V): row t scores the character after window[: t + 1]
V = rows.size(-1)
entropy = -(rows.softmax(-1) * rows.log_softmax(-1)).sum(-1)  # (64,) nats: low = sure, high = unsure
sure, unsure = int(entropy.argmin()), int(entropy.argmax())
typical = int(entropy.argsort()[len(entropy) // 2])  # the row of median entropy, for the pictures
print(repr(window))
for name, t in (("surest", sure), ("median", typical), ("least sure", unsure)):
    print(f"{name:>10} row {t:2d}: entropy {entropy[t]:.2f} nats after ...{show(window_ids[0, max(0, t - 15):t + 1])!r}")


# %% [markdown]
# A helper draws a row's distribution: the 24 likeliest characters at temperature 1 in grey, and in colour what
# a filter keeps (renormalised, so it sums to 1 again).

# %%
def draw(ax, logits, kept, title, color="C0", n=24):
    """Bars of softmax(logits) (grey) and of the kept distribution (colour) over the n likeliest tokens."""
    order = logits.argsort(descending=True)[:n]
    xs = torch.arange(n)
    ax.bar(xs - 0.2, logits.softmax(-1)[order], width=0.4, color="lightgrey", label="softmax(logits)")
    ax.bar(xs + 0.2, kept[order], width=0.4, color=color, label="kept, renormalised")
    ax.set_xticks(xs.tolist(), [show([i]) for i in order.tolist()])
    ax.set_xlabel("next character, likeliest first")
    ax.set_ylabel("probability")
    ax.set_title(title, fontsize=10)


def context_of(t: int) -> str:
    return show(window_ids[0, max(0, t - 15):t + 1])


# %% [markdown]
# ## 1. Choosing the next token
#
# ### 1a. Greedy
#
# The simplest rule takes the likeliest token, the argmax of the logits. The library's `Sampling(temperature=0)`
# (`GREEDY`) means exactly that: `next_token_probs` puts all the probability on the argmax.
#
# Greedy generation by hand: run the model on the context, take the argmax at the last position, append it,
# repeat. Without its cache (`use_cache=False`) the library's `generate` runs the same forward passes, so the
# characters must be the same; and with its cache (section 2) too.

# %%
def greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


assert torch.equal(next_token_probs(rows, GREEDY), torch.nn.functional.one_hot(greedy(rows), V).float())

fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
draw(ax, rows[typical], next_token_probs(rows, GREEDY)[typical], f"greedy, after ...{context_of(typical)!r}", "C7")
ax.legend()
plt.show()


@torch.no_grad()
def greedy_by_hand(prompt: list[int], n: int) -> list[int]:
    """n new tokens, each the argmax after the whole context so far (recomputed at every step)."""
    context = list(prompt)
    for _ in range(n):
        context.append(int(greedy(model(torch.tensor([context]))[0, -1])))
    return context[len(prompt):]


prompt = tokenizer.encode("ROMEO:\n")
N_NEW = 48  # prompt + reply stay within the 64-character context
ours = greedy_by_hand(prompt, N_NEW)
print(repr(tokenizer.decode(ours)))
assert ours == list(generate(model, prompt, N_NEW, temperature=0, use_cache=False))
assert ours == list(generate(model, prompt, N_NEW, temperature=0))  # the library's cached path

# %% [markdown]
# Greedy is deterministic and often repetitive (lesson 1 watched it loop). Sampling draws the next token from a
# distribution instead; the rest of this section is about which distribution.
#
# ### 1b. Temperature
#
# Divide the logits by a temperature `T` before the softmax. `T = 1` is the model's own distribution; `T < 1`
# sharpens it (the likely tokens take more of the mass), `T > 1` flattens it; `T → 0` tends to greedy, which is
# why the library reads `temperature=0` as greedy (at `T = 0.001`, every row whose two largest logits are 0.01
# or more apart puts over 99% on its argmax). The entropy of the distribution grows with `T`, on every row.

# %%
def with_temperature(logits: torch.Tensor, T: float) -> torch.Tensor:
    return torch.softmax(logits / T, dim=-1)


temperatures = (0.5, 0.8, 1.0, 1.5, 2.0)
for T in temperatures:
    diff = (with_temperature(rows, T) - next_token_probs(rows, Sampling(temperature=T))).abs().max()
    assert diff < 1e-6, (T, diff)
entropies = torch.stack([-(p * p.clamp(min=1e-30).log()).sum(-1) for p in (with_temperature(rows, T) for T in temperatures)])
assert (entropies.diff(dim=0) > 0).all()  # (5, 64): higher T, higher entropy, on all 64 rows
top2 = rows.topk(2, dim=-1).values
apart = top2[:, 0] - top2[:, 1] >= 0.01
cold = with_temperature(rows, 1e-3)
assert torch.equal(cold.argmax(-1), greedy(rows)) and (cold.max(-1).values[apart] > 0.99).all()
print(f"{int(apart.sum())} of 64 rows have their two largest logits 0.01 or more apart")
print("mean entropy (nats) at T =", ", ".join(f"{T}: {h:.2f}" for T, h in zip(temperatures, entropies.mean(-1))))

fig, axes = plt.subplots(1, 3, figsize=(14, 3.4), layout="constrained", sharey=True)
for ax, T, color in zip(axes, (0.5, 1.0, 2.0), ("C3", "C0", "C2")):
    draw(ax, rows[typical], with_temperature(rows[typical], T), f"temperature {T}", color)
axes[0].legend()
fig.suptitle(f"Temperature, after ...{context_of(typical)!r}")
plt.show()

# %% [markdown]
# ### 1c. Top-k
#
# Sampling at `T = 1` from a model's full distribution sometimes picks a token from the long tail of unlikely
# ones, and one bad token can derail everything after it. Top-k sampling (Fan, Lewis and Dauphin, 2018,
# *Hierarchical Neural Story Generation*) keeps only the `k` likeliest tokens and renormalises. The library
# sets every logit below the k-th largest to `-inf`; on probabilities, the same thing is: zero all but the k
# largest.

# %%
def top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    kth = probs.topk(k, dim=-1).values[..., -1:]  # the k-th largest probability of each row
    kept = probs * (probs >= kth)
    return kept / kept.sum(-1, keepdim=True)


base = with_temperature(rows, 1.0)
for k in (1, 5, 20):
    kept = top_k(base, k)
    assert (kept > 0).sum(-1).eq(k).all()  # exactly k tokens on every row
    assert (kept - next_token_probs(rows, Sampling(top_k=k))).abs().max() < 1e-6
assert torch.equal(top_k(base, 1).argmax(-1), greedy(rows))  # k = 1 is greedy

fig, axes = plt.subplots(1, 2, figsize=(14, 3.4), layout="constrained", sharey=True)
draw(axes[0], rows[sure], top_k(base[sure], 5), f"top-k = 5, the surest row: ...{context_of(sure)!r}")
draw(axes[1], rows[unsure], top_k(base[unsure], 5), f"top-k = 5, the least sure row: ...{context_of(unsure)!r}")
axes[0].legend()
plt.show()
print(f"mass of the 5 likeliest: surest row {base[sure].topk(5).values.sum():.2f}, "
      f"least sure row {base[unsure].topk(5).values.sum():.2f}")

# %% [markdown]
# The picture shows top-k's weakness: a fixed `k` is too many where the model is sure (tokens with almost no
# probability get renormalised up) and too few where it is not (plausible tokens are cut).
#
# ### 1d. Top-p (nucleus sampling)
#
# Holtzman et al. (2019, *The Curious Case of Neural Text Degeneration*) proposed keeping the **smallest set of
# likeliest tokens whose probabilities add up to at least `p`**: the "nucleus". Sort the probabilities from
# the largest down and keep a token if the mass of the tokens ranked above it is still below `p` (so the
# likeliest is always kept). How many tokens that keeps depends on the row: few where the model is sure, many
# where it is not.

# %%
def top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_above = sorted_probs.cumsum(-1) - sorted_probs  # the probability of the tokens ranked above each one
    keep_sorted = mass_above < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to vocabulary order
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


for p in (0.5, 0.9, 0.95):
    kept = top_p(base, p)
    assert (kept - next_token_probs(rows, Sampling(top_p=p))).abs().max() < 1e-6
    kept_mass = (base * (kept > 0)).sum(-1)
    least_kept = base.masked_fill(kept == 0, 1.0).min(-1).values
    assert (kept_mass >= p - 1e-6).all()  # what is kept reaches p ...
    assert (kept_mass - least_kept < p + 1e-6).all()  # ... and without its least likely token it would not

n_kept = (top_p(base, 0.9) > 0).sum(-1)
print(f"top-p 0.9 keeps {n_kept[sure]} token(s) on the surest row, {n_kept[unsure]} on the least sure, "
      f"from {n_kept.min()} to {n_kept.max()} over the 64 rows")
assert n_kept[sure] < n_kept[unsure]

fig, axes = plt.subplots(1, 3, figsize=(15, 3.4), layout="constrained", width_ratios=[2, 2, 1.3])
draw(axes[0], rows[sure], top_p(base[sure], 0.9), f"top-p = 0.9, surest row: ...{context_of(sure)!r}", "C1")
draw(axes[1], rows[unsure], top_p(base[unsure], 0.9), f"top-p = 0.9, least sure row: ...{context_of(unsure)!r}", "C1")
axes[0].legend()
for t, label in ((sure, "surest row"), (typical, "median row"), (unsure, "least sure row")):
    axes[2].plot(range(1, V + 1), base[t].sort(descending=True).values.cumsum(-1), label=label)
axes[2].axhline(0.9, color="grey", ls=":")
axes[2].set_xscale("log")
axes[2].set_xlabel("number of likeliest tokens")
axes[2].set_ylabel("their total probability")
axes[2].set_title("top-p keeps tokens until the curve reaches p", fontsize=10)
axes[2].legend(fontsize=8)
plt.show()

# %% [markdown]
# ### 1e. Min-p
#
# Min-p (Nguyen et al., 2024, *Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs*) sets
# the bar relative to the likeliest token: keep every token whose probability is at least `min_p` times the
# largest probability. When the model is sure (a large maximum), the bar is high and few tokens pass; when it is
# unsure, the bar drops and more pass. It needs no sort.

# %%
def min_p(probs: torch.Tensor, m: float) -> torch.Tensor:
    kept = probs * (probs >= m * probs.max(dim=-1, keepdim=True).values)
    return kept / kept.sum(-1, keepdim=True)


for m in (0.05, 0.1, 0.3):
    kept = min_p(base, m)
    assert (kept - next_token_probs(rows, Sampling(min_p=m))).abs().max() < 1e-6
bar = 0.1 * base.max(-1).values
n_min_p = (min_p(base, 0.1) > 0).sum(-1)
print(f"min-p 0.1 keeps {n_min_p[sure]} token(s) on the surest row (bar {bar[sure]:.3f}), "
      f"{n_min_p[unsure]} on the least sure (bar {bar[unsure]:.3f})")
assert n_min_p[sure] < n_min_p[unsure]

fig, axes = plt.subplots(1, 2, figsize=(14, 3.4), layout="constrained")
for ax, t, name in ((axes[0], sure, "surest"), (axes[1], unsure, "least sure")):
    draw(ax, rows[t], min_p(base[t], 0.1), f"min-p = 0.1, {name} row: ...{context_of(t)!r}", "C4")
    ax.axhline(bar[t], color="C4", ls=":", label="0.1 × the largest probability")
axes[0].legend()
plt.show()

# %% [markdown]
# ### 1f. All together, and sampling
#
# The options combine. The library applies them in a fixed order, temperature, top-k, min-p, top-p (the
# docstring of `Sampling`), and so does our chain of the four functions. The order matters: top-p after a
# temperature of 2 keeps more tokens than top-p before it, because the flatter distribution needs more tokens to
# reach `p`.

# %%
def by_hand(logits: torch.Tensor, T: float, k: int, m: float, p: float) -> torch.Tensor:
    return top_p(min_p(top_k(with_temperature(logits, T), k), m), p)


options = dict(temperature=0.8, top_k=20, min_p=0.05, top_p=0.9)
combined = by_hand(rows, 0.8, 20, 0.05, 0.9)
assert (combined - next_token_probs(rows, Sampling(**options))).abs().max() < 1e-6
assert (by_hand(rows, 2.0, V, 0.0, 0.9) > 0).sum() > (top_p(base, 0.9) > 0).sum()  # temperature 2, then top-p

fig, ax = plt.subplots(figsize=(8, 3.4), layout="constrained")
draw(ax, rows[typical], combined[typical], f"temperature 0.8, top-k 20, min-p 0.05, top-p 0.9: ...{context_of(typical)!r}", "C5")
ax.legend()
plt.show()

# %% [markdown]
# The library's `sample_next` draws the token from that distribution with `torch.multinomial` and a random
# generator of the request's own. 20,000 draws from one row: none falls outside the kept set, each token's share
# of the draws is within 0.015 of its probability, and the total variation distance (half the sum of the
# absolute differences) is below 0.02.

# %%
N_DRAWS = 20_000
draws = sample_next(rows[typical].expand(N_DRAWS, V), Sampling(**options), torch.Generator().manual_seed(1))
shares = torch.bincount(draws, minlength=V).float() / N_DRAWS
tv = 0.5 * (shares - combined[typical]).abs().sum()
print(f"{int((combined[typical] > 0).sum())} tokens kept; total variation between draws and distribution: {tv:.4f}")
assert (shares[combined[typical] == 0] == 0).all() and tv < 0.02
assert (shares - combined[typical]).abs().max() < 0.015

# %% [markdown]
# ## 2. The KV cache, by hand
#
# Generating token `t + 1` by recomputation (as `greedy_by_hand` does) runs the model over all `t` tokens of the
# context, to use the last position only. But in a causal model, the key and value of position `s` depend on
# the tokens up to `s` only: they are the same at every later step. A **KV cache** keeps them. Then a step runs
# the model on the new token alone: its query attends to the cached keys plus its own, and its key and value
# join the cache.
#
# We write the whole Llama forward pass by hand from the model's weights (lessons 3 and 4: RMSNorm, RoPE on q and
# k, grouped-query attention, SwiGLU), taking explicit positions, a cache (a list of per-layer keys and values,
# `(B, KV heads, S, head_dim)`) and an optional mask, and returning the new cache. The library stores a linear
# layer's weight `(in, out)`, so a projection is `x @ W`; q, k and v come from one fused matrix whose columns
# are `[q heads | k heads | v heads]`.

# %%
def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, positions, theta):
    """Rotate channel pairs (i, i + d/2) of x (B, heads, T, d) by positions (B, T) times theta^(-2i/d)."""
    d = x.size(-1)
    angles = positions[:, None, :, None].float() * theta ** (-torch.arange(0, d, 2).float() / d)  # (B, 1, T, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def forward_by_hand(W, c, ids, positions, cache=None, mask=None):
    """Llama logits (B, T, V) for tokens ids (B, T) at positions (B, T), after the keys and values in `cache`
    (a list of (k, v) per layer, or None). mask (B, T, S) says which of the S keys each query sees (default:
    causal). Returns the logits and the cache with the T new positions appended."""
    B, T = ids.shape
    H, KV, D = c.n_head, c.n_kv_head, c.head_size
    x = W["embed.weight"][ids]  # (B, T, C)
    new_cache = []
    for i in range(c.n_layer):
        w = {name.removeprefix(f"blocks.{i}."): p for name, p in W.items() if name.startswith(f"blocks.{i}.")}
        qkv = (rms_norm(x, w["attn_norm.weight"], c.norm_eps) @ w["attn.qkv.weight"]).view(B, T, H + 2 * KV, D)
        q, k, v = qkv.transpose(1, 2).split([H, KV, KV], dim=1)  # (B, H, T, D), (B, KV, T, D), (B, KV, T, D)
        q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
        if cache is not None:  # the keys and values of the earlier positions, computed at earlier steps
            k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)  # (B, KV, S, D)
        new_cache.append((k, v))
        S = k.size(2)
        k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)  # GQA: heads share k, v
        scores = q @ k.transpose(-2, -1) / D**0.5  # (B, H, T, S)
        if mask is None:  # causal: the T queries are the last T of the S positions
            mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)[None]
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D)
        x = x + y @ w["attn.proj.weight"]
        gate, up = (rms_norm(x, w["mlp_norm.weight"], c.norm_eps) @ w["mlp.gate_up.weight"]).chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(gate) * up) @ w["mlp.down.weight"]
    return rms_norm(x, W["norm.weight"], c.norm_eps) @ W["lm_head.weight"], new_cache


W = {name: p.detach() for name, p in model.named_parameters()}
assert set(W) == {"embed.weight", "norm.weight", "lm_head.weight"} | {
    f"blocks.{i}.{n}" for i in range(cfg.n_layer)
    for n in ("attn_norm.weight", "attn.qkv.weight", "attn.proj.weight", "mlp_norm.weight", "mlp.gate_up.weight",
              "mlp.down.weight")}  # every weight of the model is used above
positions = torch.arange(cfg.block_size)[None]
full_by_hand, _ = forward_by_hand(W, cfg, window_ids, positions)
print(f"max |ours - library| over the window's logits: {(full_by_hand[0] - rows).abs().max():.1e} "
      f"(the logits range over ±{rows.abs().max():.1f})")
assert (full_by_hand[0] - rows).abs().max() < 5e-5  # fp32 products summed in another order round differently

# %% [markdown]
# Now decoding with the cache: **prefill** the prompt in one pass (which fills the cache with its keys and
# values), then feed the window's characters one at a time, each at its position, with the cache. Every step's
# logits must be those of full recomputation, i.e. of the row for that position in the model's pass over the
# whole window (up to float32 rounding). The library's own cached path (`model.new_cache`, a `KVCache` that the model fills as it goes)
# must agree too.

# %%
P = 8  # prompt: the first 8 characters of the window
with torch.no_grad():
    logits, cache = forward_by_hand(W, cfg, window_ids[:, :P], positions[:, :P])  # prefill
    cached_rows = [logits[0, -1]]
    library_cache = model.new_cache(1, cfg.block_size, torch.float32, torch.device("cpu"))
    library_rows = [model(window_ids[:, :P], cache=library_cache)[0, -1]]
    for t in range(P, cfg.block_size):  # one token per step, at position t
        assert cache[0][0].shape == (1, cfg.n_kv_head, t, cfg.head_size)  # the cache holds positions 0 .. t - 1
        logits, cache = forward_by_hand(W, cfg, window_ids[:, t:t + 1], positions[:, t:t + 1], cache)
        cached_rows.append(logits[0, -1])
        library_rows.append(model(window_ids[:, t:t + 1], cache=library_cache)[0, -1])  # positions from its length
cached_rows, library_rows = torch.stack(cached_rows), torch.stack(library_rows)  # (57, V): positions 7 .. 63
print(f"cached by hand vs recomputation: {(cached_rows - rows[P - 1:]).abs().max():.1e}; "
      f"vs the library's cache: {(cached_rows - library_rows).abs().max():.1e}")
assert (cached_rows - rows[P - 1:]).abs().max() < 5e-5
assert (cached_rows - library_rows).abs().max() < 5e-5
assert library_cache.length == cfg.block_size

# %% [markdown]
# What does it save? Count the floating-point operations of the matrix products (torch's `FlopCounterMode`
# counts them from the shapes: the same on every machine). Full recomputation at position `t` runs the `t`
# tokens through every projection, and each of the `t` queries against `t` keys (our hand code computes the
# whole `(t, t)` score matrix and masks it); the cached step runs one token through the projections and one
# query against `t` keys. So the cached step costs exactly `1/t` of the recomputation: the longer the text, the
# larger the saving.
#
# The cache costs memory instead: per token, a key and a value of `KV heads × head_dim` numbers in every layer.
# That is why grouped-query attention (lesson 3) matters for long contexts: here 2 KV heads instead of 4 halve it.

# %%
def matmul_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def full_step(W, c, ids):
    return lambda: forward_by_hand(W, c, ids, torch.arange(ids.size(1))[None])


def cached_step(W, c, ids, cache):
    return lambda: forward_by_hand(W, c, ids[:, -1:], torch.tensor([[ids.size(1) - 1]]), cache)


def prefilled(W, c, ids):
    """The cache after the first t - 1 tokens of ids (1, t)."""
    return forward_by_hand(W, c, ids[:, :-1], torch.arange(ids.size(1) - 1)[None])[1]


with torch.no_grad():
    for t in (2, 16, 64):
        ids = window_ids[:, :t]
        full, step = matmul_flops(full_step(W, cfg, ids)), matmul_flops(cached_step(W, cfg, ids, prefilled(W, cfg, ids)))
        print(f"t = {t:2d}: recomputation {full:>10,} FLOPs, cached step {step:>8,} FLOPs, ratio {full / step:.0f}")
        assert full == t * step
kv_bytes_per_token = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_size * 4  # k and v, every layer, fp32
print(f"cache: {kv_bytes_per_token} bytes per token ({cfg.n_layer} layers x 2 x {cfg.n_kv_head} KV heads x "
      f"{cfg.head_size} numbers x 4 bytes)")
assert cache[0][0].numel() * 2 * cfg.n_layer * 4 == kv_bytes_per_token * cfg.block_size
assert 2 * cfg.n_kv_head == cfg.n_head  # with a KV head per query head, the cache would be twice as large

# %% [markdown]
# The time per token, measured. Our model is small and its context short; to see the growth, we measure on a
# larger Llama (random weights: speed does not depend on what the weights learned) with 4 layers
# of width 128 and contexts up to 1,024 tokens: for some positions `t`, the time of one full recomputation over
# `t` tokens and of one cached step at position `t` (the best of a few runs; on a busy machine the points are
# noisy, so the lesson asserts nothing about time). Beside it, the FLOPs, counted.

# %%
torch.manual_seed(1)
big_cfg = LlamaConfig(vocab_size=V, block_size=1024, n_layer=4, n_head=4, n_kv_head=2, n_embd=128, rope_theta=10_000.0)
big = {name: p.detach() for name, p in Llama(big_cfg).named_parameters()}
big_ids = torch.randint(V, (1, big_cfg.block_size))


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


at = [8, 64, 128, 256, 384, 512, 768, 1024]
measured = {"recomputation": [], "KV cache": []}
counted = {"recomputation": [], "KV cache": []}
with torch.no_grad():
    for t in at:
        ids = big_ids[:, :t]
        big_cache = prefilled(big, big_cfg, ids)
        for name, fn in (("recomputation", full_step(big, big_cfg, ids)), ("KV cache", cached_step(big, big_cfg, ids, big_cache))):
            measured[name].append(best_time(fn, 2 if name == "recomputation" else 5) * 1e3)
            counted[name].append(matmul_flops(fn))
assert all(f == t * s for t, f, s in zip(at, counted["recomputation"], counted["KV cache"]))

fig, (ax_t, ax_f) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
for name, marker in (("recomputation", "o-"), ("KV cache", "s-")):
    ax_t.plot(at, measured[name], marker, label=name)
    ax_f.plot(at, counted[name], marker, label=name)
ax_t.set_ylabel("milliseconds for the token at position t")
ax_t.set_title("time per token (measured on this machine)", fontsize=10)
ax_f.set_yscale("log")
ax_f.set_ylabel("FLOPs of the matrix products (log scale)")
ax_f.set_title("work per token (counted): recomputation = t × cached", fontsize=10)
for ax in (ax_t, ax_f):
    ax.set_xlabel("position t of the new token")
    ax.legend()
plt.show()
print("ms per token:", {name: [round(v, 2) for v in values] for name, values in measured.items()})

# %% [markdown]
# ## 3. Batching with left padding
#
# Decoding several prompts at once makes one forward pass do the work of several: the weights are read once per
# step for all rows. But a tensor is a rectangle, and prompts have different lengths, so the short ones are
# padded. **Left** padding puts the padding before each prompt: every row's last real token is then in the last
# column, where the next-token logits are read, and every new token goes into the same new column.
#
# Padding is not text, so two things must change:
#
# 1. **A padding mask**: no query may attend to a padding key. (A padding query then has no key at all; a
#    softmax over nothing but `-inf` is `0/0`, NaN, so the library's `padded_causal_mask` lets such a query see
#    itself. Its output is never read.)
# 2. **Positions that count real tokens**: the first real token of each row is at position 0, as it would be
#    alone; the padding slots before it get any position (we give them 0).

# %%
prompts = [tokenizer.encode(s) for s in ("ROMEO:\nWhat", "JULIET:\nO Romeo, Romeo! wherefore", "KING:\nNo")]
lengths = torch.tensor([len(p) for p in prompts])
S = int(lengths.max())
batch = torch.zeros(len(prompts), S, dtype=torch.long)
valid = torch.zeros(len(prompts), S, dtype=torch.bool)
for i, p in enumerate(prompts):
    batch[i, S - len(p):] = torch.tensor(p)  # left padding: the prompt ends in the last column
    valid[i, S - len(p):] = True
real_positions = (valid.cumsum(-1) - 1).clamp(min=0)  # (B, S): 0, 1, 2, ... from each row's first real token
slot_positions = torch.arange(S)[None].expand(len(prompts), S)  # 0 .. S - 1 whatever the padding
mask = torch.ones(S, S, dtype=torch.bool).tril()[None] & valid[:, None, :]  # causal, and never a padding key
mask = mask | (torch.eye(S, dtype=torch.bool)[None] & ~mask.any(-1, keepdim=True))  # a padding query sees itself
assert torch.equal(mask, padded_causal_mask(valid, S)[:, 0])  # the library's mask
assert torch.isnan(torch.softmax(torch.full((3,), float("-inf")), -1)).all()  # why: a row with no key is NaN
print(real_positions)

fig, axes = plt.subplots(1, len(prompts), figsize=(14, 4.6), layout="constrained")
for i, ax in enumerate(axes):
    ax.imshow(mask[i], cmap="Blues", vmin=0, vmax=1.3)
    ax.set_title(f"row {i}: {S - len(prompts[i])} padding slots, then {tokenizer.decode(prompts[i])!r}", fontsize=9)
    ax.set_xlabel("key slot")
    ax.set_ylabel("query slot")
fig.suptitle("The padded causal mask of each row (blue: the query may attend to the key; a padding query sees itself)")
plt.show()

# %% [markdown]
# Each row's last-position logits in the batch should be what the prompt gives alone. With the mask and
# real-token positions they are. With slot positions, the answer depends on how positions enter the model:
#
# - **learned positions** (GPT, lesson 1) add a table row per position to each token: a prompt padded by 3
#   reads as if it started at position 3, a different input, so its logits change;
# - **RoPE** (Llama) rotates queries and keys by their positions, and lesson 3 showed that a score depends only
#   on the *distance* between query and key. Shifting a whole row by 3 keeps every distance, so the logits stay
#   the same up to rounding.
#
# Counting real tokens is right for both, and it is what the library does (`positions = cumsum(valid) - 1` in
# `_forward_full`; its engine goes further, see below). It also keeps positions inside what the model knows: a
# GPT's table has `block_size` rows, and a long row of padding would push the slot positions of a short prompt
# past them. And without the mask, real positions do not help: a padded row's queries see the padding. The cell
# checks all of it on our Llama (by hand and with the library's model) and on a GPT with
# random weights (lesson 1's architecture; exactness needs no training).

# %%
torch.manual_seed(2)
gpt = GPT(GPTConfig(vocab_size=V, block_size=64, n_layer=2, n_head=4, n_embd=64)).eval()
with torch.no_grad():
    alone = {"Llama": torch.stack([model(torch.tensor([p]))[0, -1] for p in prompts]),
             "GPT": torch.stack([gpt(torch.tensor([p]))[0, -1] for p in prompts])}
    batched = {
        ("Llama", "by hand", "real"): forward_by_hand(W, cfg, batch, real_positions, mask=mask)[0][:, -1],
        ("Llama", "by hand", "slots"): forward_by_hand(W, cfg, batch, slot_positions, mask=mask)[0][:, -1],
        ("Llama", "library", "real"): model(batch, positions=real_positions, mask=mask[:, None])[:, -1],
        ("Llama", "library", "slots"): model(batch, positions=slot_positions, mask=mask[:, None])[:, -1],
        ("GPT", "library", "real"): gpt(batch, positions=real_positions, mask=mask[:, None])[:, -1],
        ("GPT", "library", "slots"): gpt(batch, positions=slot_positions, mask=mask[:, None])[:, -1],
    }
    no_mask = model(batch, positions=real_positions)[:, -1]  # real positions, but padding keys visible
differences_no_mask = (no_mask - alone["Llama"]).abs().max(-1).values
differences = {key: (logits - alone[key[0]]).abs().max(-1).values for key, logits in batched.items()}  # (B,) each
for (arch, code, pos), diff in differences.items():
    print(f"{arch:5} {code:7} {pos:5} positions: max |batched - alone| per row = {[f'{d:.1e}' for d in diff.tolist()]}")
print(f"Llama library real  positions, no mask: {[f'{d:.1e}' for d in differences_no_mask.tolist()]}")
padded_rows = lengths < S  # the rows that have padding
for key, diff in differences.items():
    if key[2] == "real" or key[0] == "Llama":  # real positions: any model; RoPE: even slot positions
        assert (diff < 1e-4).all(), key
assert (differences[("GPT", "library", "slots")][padded_rows] > 1e-2).all()  # learned positions: another input
assert (differences[("GPT", "library", "slots")][~padded_rows] < 1e-4).all()  # the longest row has no padding
assert (differences_no_mask[padded_rows] > 1e-2).all()  # without the mask: wrong
assert gpt.wpe.num_embeddings == gpt.config.block_size  # the GPT knows positions 0 .. 63 only

# %% [markdown]
# **Decoding the batch with a cache.** After the prefill, each step feeds every row's new token as one new
# column. Its position is that row's count of real tokens so far, which differs from row to row; its key joins
# the cache, and the mask grows by one visible column. Greedy, every row must produce what its prompt produces
# alone.

# %%
@torch.no_grad()
def greedy_batch_by_hand(n: int) -> list[list[int]]:
    logits, cache = forward_by_hand(W, cfg, batch, real_positions, mask=mask)
    seen, count = valid.clone(), lengths.clone()  # which cache slots are real; real tokens per row
    out = []
    for _ in range(n):
        token = greedy(logits[:, -1])  # (B,)
        out.append(token)
        seen = torch.cat([seen, torch.ones(len(prompts), 1, dtype=torch.bool)], dim=1)
        logits, cache = forward_by_hand(W, cfg, token[:, None], count[:, None], cache, mask=seen[:, None, :])
        count += 1
    return torch.stack(out, dim=1).tolist()


N_BATCH = 24
ours = greedy_batch_by_hand(N_BATCH)
for p, row in zip(prompts, ours):
    print(f"{tokenizer.decode(p)!r} -> {tokenizer.decode(row)!r}")
    assert row == greedy_by_hand(p, N_BATCH)

# %% [markdown]
# The library's `generate_batch` decodes with its `Engine`, which keeps each request in its own row of one KV
# cache at its own length: positions count that request's tokens, and a key mask shows each row its own keys
# only, so every request generates what it would alone (the prompts it prefills together are padded on the
# right, which the mask hides the same way). Greedy, its rows match our batch and each prompt alone; sampled,
# each row with the same seed gives the same characters batched or alone, since each request draws from its
# own random generator.

# %%
library_steps = list(generate_batch(model, prompts, N_BATCH, temperature=0))
library_rows = [list(column) for column in zip(*library_steps)]
assert library_rows == ours
sampled = dict(temperature=0.8, top_p=0.95, seed=7)
together = [list(column) for column in zip(*generate_batch(model, prompts, N_BATCH, **sampled))]
assert together == [list(generate(model, p, N_BATCH, **sampled)) for p in prompts]

# %% [markdown]
# That is the whole decoding loop of the library, built by hand: a distribution from the logits and the
# `Sampling` options, a KV cache so that each step costs one token's work, and rows of different lengths
# decoded together, each with its own positions and its own keys.

# %%
print(f"This lesson ran in {time.perf_counter() - LESSON_START:.1f} s")
