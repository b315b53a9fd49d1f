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
# # Lesson 4: the rest of the Llama block, and a race
#
# Lesson 3 built Llama's attention. The rest of its block changes two things from GPT's:
#
# 1. **RMSNorm** instead of LayerNorm: normalise the scale only, not the mean.
# 2. **SwiGLU** instead of the GELU MLP: a gated feed-forward network with three matrices, and the odd-looking
#    width of 14,336 in Llama 3 8B, which follows from one rule.
#
# We assemble the whole block and check it against the library's Llama block and `transformers`'
# `LlamaDecoderLayer`. Then the library trains a small Llama (`llama-bpe-baby`) and a GPT of the same size
# (`gpt-bpe-baby`) for the same wall-clock time on the same tokens, and we compare them in bits per byte.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bar, imported by transformers

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
import transformers
from transformers.models.gemma import modeling_gemma
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
from transformers.models.mistral import modeling_mistral
from transformers.models.qwen3 import modeling_qwen3

import scratchllm
from scratchllm.layers import GatedMLP, RMSNorm, inverse_frequencies, llama_hidden_dim, rope_cos_sin
from scratchllm.models import Llama, LlamaConfig
from scratchllm.tokenizers import patterns
from scratchllm.train.run import train

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)  # these models are small; one thread cannot be stalled by other programs on the CPU
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. RMSNorm against LayerNorm
#
# LayerNorm does two things to each token's vector: it subtracts the mean (re-centring) and divides by the
# standard deviation (re-scaling), then applies a learned gain and bias. RMSNorm (Zhang and Sennrich, 2019)
# keeps only the re-scaling: divide by the root mean square, multiply by a learned gain, no bias.
#
# What each removes, checked below:
#
# - LayerNorm's output ignores both a shift and a scale of its input: `LN(a·x + c) = LN(x)`.
# - RMSNorm's output ignores a scale, `RMS(a·x) = RMS(x)`, but not a shift.
# - On an input whose mean is already zero, the two are the same function.
#
# Zhang and Sennrich argue that the re-scaling is what keeps activations in range, and report that dropping
# the mean keeps the quality while saving a reduction over the vector on every call. Llama, Gemma, Qwen3 and
# Mistral all use it (checked below in `transformers`' own modules).

# %%
def layer_norm(x, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps)


def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


x = torch.randn(4, 64) * 3 + 1.5
ones = torch.ones(64)
assert torch.allclose(layer_norm(5 * x + 2), layer_norm(x), atol=1e-4)  # shift and scale removed
assert torch.allclose(rms_norm(5 * x, ones), rms_norm(x, ones), atol=1e-5)  # scale removed
assert not torch.allclose(rms_norm(x + 2, ones), rms_norm(x, ones), atol=1e-2)  # shift kept
centred = x - x.mean(-1, keepdim=True)
assert torch.allclose(rms_norm(centred, ones), layer_norm(centred), atol=1e-4)  # the same on zero-mean input
print(f"RMSNorm output: mean {rms_norm(x, ones).mean():.3f}, mean square {rms_norm(x, ones).pow(2).mean():.3f}")
print(f"LayerNorm output: mean {layer_norm(x).mean():.3f}, variance {layer_norm(x).var(unbiased=False):.3f}")

assert all(hasattr(module, name) for module, name in ((modeling_llama, "LlamaRMSNorm"), (modeling_gemma, "GemmaRMSNorm"),
                                                      (modeling_mistral, "MistralRMSNorm"), (modeling_qwen3, "Qwen3RMSNorm")))

library_norm = RMSNorm(64, eps=1e-5)
with torch.no_grad():
    library_norm.weight.uniform_(0.5, 1.5)
    assert torch.allclose(library_norm(x), rms_norm(x, library_norm.weight), atol=1e-6)

# %% [markdown]
# ## 2. SwiGLU
#
# GPT's MLP is `proj(gelu(fc(x)))`. A gated linear unit (Shazeer, 2020) computes two projections of the input
# and multiplies them element by element, one passed through a non-linearity: `down(silu(gate(x)) * up(x))`.
# The `gate` branch decides, per hidden unit and per token, how much of the `up` branch gets through. SiLU
# (`x·sigmoid(x)`, also called swish) is a smooth relative of ReLU that lets small negative values through;
# hence **Swi**GLU.

# %%
t = torch.linspace(-5, 5, 200)
fig, ax = plt.subplots(figsize=(5, 3))
for name, f in (("ReLU", F.relu), ("GELU", F.gelu), ("SiLU", F.silu)):
    ax.plot(t, f(t), label=name)
ax.axhline(0, color="gray", lw=0.5)
ax.legend()
ax.set_title("the non-linearities")
plt.show()
assert torch.allclose(F.silu(t), t * torch.sigmoid(t)) and F.silu(torch.tensor(-1.0)) < 0


def swiglu(x, W_gate, W_up, W_down):
    return (F.silu(x @ W_gate) * (x @ W_up)) @ W_down


# %% [markdown]
# The library's `GatedMLP` stores `gate` and `up` side by side in one `(dim, 2·hidden)` matrix (one matrix
# product instead of two; columns `[:hidden]` are the gate) and `down` as `(hidden, dim)`.

# %%
mlp = GatedMLP(64, 96)
W_gate, W_up = mlp.gate_up.weight.detach().split(96, dim=1)
with torch.no_grad():
    assert torch.allclose(mlp(x), swiglu(x, W_gate, W_up, mlp.down.weight), atol=1e-6)

# %% [markdown]
# ### Why 14,336
#
# A GPT MLP of width `4·d` has two `d × 4d` matrices: `8d²` parameters. SwiGLU has three matrices, so to cost
# the same its hidden width must be two thirds of that: `2/3 · 4d`. Meta's code then multiplies by an optional
# `ffn_dim_multiplier` and rounds *up* to a multiple of `multiple_of`, so the matrices tile well on the
# hardware. For Llama 3 8B, `d = 4096`, the multiplier is 1.3 and the multiple 1024:
#
# `int(2/3 · 4 · 4096) = 10922`, `int(1.3 · 10922) = 14198`, rounded up to a multiple of 1024: **14336**.
#
# Llama 2 7B used the same rule with no multiplier and a multiple of 256: 11008.

# %%
d = 4096
step1 = int(2 * 4 * d / 3)
step2 = int(1.3 * step1)
step3 = 1024 * math.ceil(step2 / 1024)
print(step1, step2, step3)
assert (step1, step2, step3) == (10922, 14198, 14336)
assert llama_hidden_dim(4096, multiple_of=1024, ffn_dim_multiplier=1.3) == 14336
assert llama_hidden_dim(4096, multiple_of=256) == 11008
assert abs(3 * d * step1 - 2 * d * 4 * d) / (8 * d * d) < 1e-4  # 2/3 of 4d: the same parameters as a 4d GELU MLP
print(f"Llama 3 8B's SwiGLU: {3 * d * 14336 / 1e6:.0f}M parameters per layer, {3 * 14336 / (8 * d):.2f}x a 4d GELU MLP")

# %% [markdown]
# ## 3. The whole block
#
# `x + attention(rmsnorm(x))`, then `x + swiglu(rmsnorm(x))`: the shape of GPT's block with Llama's parts.
# For the attention we use the library's module, which lesson 3 showed equal to our hand-built one and to
# `transformers`'; the norms, the feed-forward network and the wiring are ours.
#
# We take the block of a one-layer library `Llama`, give all its weights random values (norm gains too), and
# compare three things on the same input: our block, the library's block, and `transformers`'
# `LlamaDecoderLayer` with the same weights (its linear layers store `(out, in)`, so ours are transposed).

# %%
config = LlamaConfig(vocab_size=97, block_size=32, n_layer=1, n_head=4, n_kv_head=2, n_embd=64, intermediate_size=96,
                     norm_eps=1e-5, rope_theta=10_000.0)
block = Llama(config).blocks[0]
with torch.no_grad():
    for name, p in block.named_parameters():
        p.copy_(torch.rand_like(p) + 0.5 if p.dim() == 1 else torch.randn_like(p) * 0.2)


def llama_block(x, block, rope):
    """Our block: the library's attention module, everything else by hand."""
    eps = config.norm_eps
    W_gate, W_up = block.mlp.gate_up.weight.split(config.hidden_dim, dim=1)
    h = x + block.attn(rms_norm(x, block.attn_norm.weight, eps), rope)
    return h + swiglu(rms_norm(h, block.mlp_norm.weight, eps), W_gate, W_up, block.mlp.down.weight)


hf_config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                     rms_norm_eps=1e-5, rope_theta=10_000.0, max_position_embeddings=32)
hf_config._attn_implementation = "eager"
hf_block = LlamaDecoderLayer(hf_config, layer_idx=0)
W_q, W_k, W_v = block.attn.qkv.weight.detach().split([64, 32, 32], dim=1)
W_gate, W_up = block.mlp.gate_up.weight.detach().split(96, dim=1)
with torch.no_grad():
    for hf_param, ours in ((hf_block.self_attn.q_proj.weight, W_q.T), (hf_block.self_attn.k_proj.weight, W_k.T),
                           (hf_block.self_attn.v_proj.weight, W_v.T), (hf_block.self_attn.o_proj.weight, block.attn.proj.weight.T),
                           (hf_block.mlp.gate_proj.weight, W_gate.T), (hf_block.mlp.up_proj.weight, W_up.T),
                           (hf_block.mlp.down_proj.weight, block.mlp.down.weight.T),
                           (hf_block.input_layernorm.weight, block.attn_norm.weight),
                           (hf_block.post_attention_layernorm.weight, block.mlp_norm.weight)):
        hf_param.copy_(ours)

x = torch.randn(2, 12, 64)
positions = torch.arange(12)[None].expand(2, 12)
rope = rope_cos_sin(positions, inverse_frequencies(config.head_size, config.rope_theta))
causal = torch.full((12, 12), float("-inf")).triu(1)[None, None].expand(2, 1, 12, 12)
with torch.no_grad():
    ours = llama_block(x, block, rope)
    library = block(x, rope)
    theirs = hf_block(x, attention_mask=causal, position_embeddings=LlamaRotaryEmbedding(hf_config)(x, positions))
print(f"max |ours - library| = {(ours - library).abs().max():.1e}, max |ours - transformers| = {(ours - theirs).abs().max():.1e}")
assert (ours - library).abs().max() < 1e-5 and (ours - theirs).abs().max() < 1e-5

# %% [markdown]
# ## 4. A race: Llama against GPT, same time, same tokens
#
# `gpt-bpe-baby` and `llama-bpe-baby` are the same size on purpose: 4 layers, width 128, a context of 128 tokens,
# the same 2048-token byte-level BPE (Llama 3's split pattern, trained by the library on the training split of
# TinyShakespeare and cached). What differs is the architecture:
#
# | | GPT | Llama |
# |---|---|---|
# | positions | learned vectors, added once | RoPE in every attention |
# | norm | LayerNorm | RMSNorm |
# | attention | 4 heads, 4 KV heads | 4 heads, 2 KV heads (GQA) |
# | feed-forward | GELU, 512 wide | SwiGLU, 352 wide |
# | output head | tied to the embedding | separate |
# | peak learning rate | 1e-3 | 2e-3 |
#
# Each gets the same wall-clock budget (`max_time`, which counts the evaluation at the start; the final one
# comes after it). We compare them in **bits per byte**: the validation loss, converted from nats to bits and divided by
# the number of bytes each token stands for. Per-token loss is only comparable between models that share a
# tokenizer; bits per byte is comparable across any two (here the tokenizer is the same, so it is simply a
# rescaled loss). The trainer computes it at every evaluation; below we check the conversion ourselves.
#
# The trainer prints one line per evaluation; we keep those lines in a variable instead, because *how many*
# steps fit in 20 seconds depends on the machine and its load, so they differ from one run to the next.

# %%
CORPUS = Path("../tests/data/tinyshakespeare.txt")  # lessons run from lessons/
BUDGET = 20  # seconds of training for each model
runs = Path(tempfile.mkdtemp(prefix="scratchllm-lesson4-"))
summaries, logs = {}, {}
for preset in ("gpt-bpe-baby", "llama-bpe-baby"):
    with contextlib.redirect_stdout(io.StringIO()) as log:
        summaries[preset] = train(preset, data=str(CORPUS), out=runs / preset, max_time=BUDGET,
                                  overrides=["eval_interval=100000", "device=cpu"], progress=False)
    logs[preset] = log.getvalue()
print({preset: f"{s['n_params']:,} parameters" for preset, s in summaries.items()})

# the table above, read back from the two checkpoints
gpt_run, llama_run = (scratchllm.load_pretrained(runs / preset / "best") for preset in summaries)
g, l = gpt_run.model.config, llama_run.model.config
assert (g.n_layer, g.n_embd, g.block_size, g.n_head) == (l.n_layer, l.n_embd, l.block_size, l.n_head) == (4, 128, 128, 4)
assert l.n_kv_head == 2 and l.hidden_dim == 352 and 4 * g.n_embd == 512 and not l.tie_embeddings
assert (gpt_run.meta["train"]["lr"], llama_run.meta["train"]["lr"]) == (1e-3, 2e-3)
assert gpt_run.tokenizer.ranks == llama_run.tokenizer.ranks and gpt_run.tokenizer.vocab_size == 2048
assert gpt_run.tokenizer.pattern == patterns.LLAMA3
assert isinstance(gpt_run.model.ln_f, torch.nn.LayerNorm) and isinstance(llama_run.model.norm, RMSNorm)
assert hasattr(gpt_run.model, "wpe") and not hasattr(llama_run.model, "wpe")  # learned positions, or RoPE

# %% [markdown]
# The results of this run. From here on, the numbers depend on how many steps each model got in its 20
# seconds, which depends on the machine's speed and load; the checks hold whichever (everything before this
# point prints the same on every run):

# %%
for preset, s in summaries.items():
    print(f"{preset:15} {s['step']:4} steps in {BUDGET} s: val loss {s['val_loss']:.3f} nats/token, {s['val_bpb']:.3f} bits/byte")
print("".join(logs.values()))  # the trainer's own lines

records = {preset: [json.loads(line) for line in (runs / preset / "metrics.jsonl").read_text().splitlines()]
           for preset in summaries}
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for preset, rs in records.items():
    train_rs = [r for r in rs if r["kind"] == "train"]
    axes[0].plot([r["elapsed"] for r in train_rs], [r["loss"] for r in train_rs], label=preset)
    axes[1].plot([r["step"] for r in train_rs], [r["loss"] for r in train_rs], label=preset)
axes[0].set_xlabel("seconds")
axes[1].set_xlabel("step")
for ax in axes:
    ax.set_ylabel("train loss (nats per token)")
    ax.legend()
axes[0].set_title("against wall-clock time")
axes[1].set_title("against steps")
plt.show()

# %% [markdown]
# Bits per byte, recomputed: the validation loss in nats per token, divided by `ln 2` (bits per token) and by
# the bytes per token of the validation text. The trainer evaluates on 20 fixed windows of the validation
# split rather than all of it, so our figure from the whole split's bytes per token agrees to within a few
# percent.

# %%
tokenizer = llama_run.tokenizer
text = CORPUS.read_text(encoding="utf-8")
val_text = text[int(0.9 * len(text)):]
bytes_per_token = len(val_text.encode("utf-8")) / len(tokenizer.encode(val_text))
for preset, s in summaries.items():
    ours = s["val_loss"] / math.log(2) / bytes_per_token
    print(f"{preset:15} trainer {s['val_bpb']:.3f} bits/byte, from the loss {ours:.3f}")
    assert abs(ours - s["val_bpb"]) / s["val_bpb"] < 0.05
print(f"{bytes_per_token:.2f} bytes per token on the validation split")

# %% [markdown]
# Per step, the Llama learns faster: at every logged step from 50 on, its training loss (averaged over the
# last 50 steps, to smooth the batch-to-batch noise) is below the GPT's. This part does not depend on the
# machine: the loss at a given step is the same whatever the speed (both runs follow their 2000-step
# schedules, cut off by the clock). In equal time the Llama also ends lower in bits per byte. The two presets
# differ in learning rate too (2e-3 against 1e-3), so this race compares two recipes, not the architectures
# alone.

# %%
def smoothed(rs, window=5):  # train records every 10 steps: 5 of them cover 50 steps
    train_rs = [r for r in rs if r["kind"] == "train" and r["step"] % 10 == 0]
    return {r["step"]: sum(x["loss"] for x in train_rs[max(0, i - window + 1):i + 1]) / len(train_rs[max(0, i - window + 1):i + 1])
            for i, r in enumerate(train_rs)}


gpt, llama = smoothed(records["gpt-bpe-baby"]), smoothed(records["llama-bpe-baby"])
common = [step for step in gpt if step in llama and step >= 50]
print(f"compared at {len(common)} logged steps, from 50 to {max(common, default=0)}")
assert common, "fewer than 50 steps in the budget: is the machine very busy?"
assert all(llama[step] < gpt[step] for step in common)
assert summaries["llama-bpe-baby"]["val_bpb"] < summaries["gpt-bpe-baby"]["val_bpb"]

# %% [markdown]
# **Next:** lesson 5 leaves text-only models: SigLIP turns images into embeddings, and PaliGemma answers
# questions about them.
