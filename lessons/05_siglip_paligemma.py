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
# # Lesson 5: images in, answers out (SigLIP and PaliGemma)
#
# A language model reads a sequence of vectors. To read an image it only needs the image turned into such a
# sequence. This lesson follows that path:
#
# 1. the **shapes world**: small images the project draws itself, with captions and questions;
# 2. **patches to embeddings**: a vision transformer cuts the image into squares and projects each to a vector;
# 3. the **vision encoder layer**, built by hand and checked against `transformers`' `SiglipVisionModel`;
# 4. **SigLIP's sigmoid loss** against CLIP's softmax loss, on a small worked example;
# 5. **PaliGemma's prefix-LM mask**, drawn: image and question see each other, the answer is written left to right;
# 6. as the real PaliGemma does, a vision tower pretrained with SigLIP's loss (`siglip-shapes`), then a short
#    training of `paligemma-shapes` with the library's trainer, from that tower and from scratch, and questions
#    asked about new images, with both models' answers beside them.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bar, imported by transformers

import dataclasses
import math
import tempfile
import textwrap
import time
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
import transformers
from transformers import SiglipVisionModel

import scratchllm
from scratchllm.config import to_dict
from scratchllm.data import shapes
from scratchllm.data.images import ImageProcessor
from scratchllm.data.vision_language import ShapesBatches, shapes_tokenizer
from scratchllm.layers import PreNormBlock, padded_causal_mask
from scratchllm.models import get_spec
from scratchllm.models.siglip import Siglip, SiglipConfig, SiglipTextConfig, SiglipVisionConfig, sigmoid_loss
from scratchllm.train.presets import get_preset
from scratchllm.train.run import train
from scratchllm.train.trainer import Trainer

LESSON_START = time.perf_counter()
transformers.logging.set_verbosity_error()
torch.set_num_threads(1)  # these models are small; one thread cannot be stalled by other programs on the CPU
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. The shapes world
#
# `scratchllm.data.shapes` draws, from a seed, a 32×32 image with one to three coloured shapes (circle, square,
# triangle), each in its own quarter of the canvas, and writes questions about it whose answers are one or
# two words: colours, shapes, counts, positions, and whether one shape is left of or above another. A fixed
# set of scenes is held out: training never draws them (checked by content, not only by seed). Small enough to
# train on a CPU in seconds, rich enough that a model must actually look at the image.

# %%
fig, axes = plt.subplots(2, 3, figsize=(9, 7.5))
for ax, seed in zip(axes.flat, range(6)):
    ex = shapes.example(seed)
    ax.imshow(ex.image)
    ax.set_title(textwrap.fill(f"{ex.prompt} → {ex.answer}", 30), fontsize=10)  # the question and its answer
    ax.set_xlabel(textwrap.fill(shapes.caption(ex.scene), 30), fontsize=9)  # the caption (what SigLIP reads)
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
ex = shapes.example(0)
scenes = [shapes.example(seed).scene for seed in range(200)]
assert ex.image.size == (32, 32) and all(1 <= len(s) <= 3 for s in scenes)
assert all(len({thing.cell for thing in s}) == len(s) for s in scenes)  # one shape per quarter
assert all(e.scene != ex.scene or e.prompt != ex.prompt for e in shapes.held_out(256))

# %% [markdown]
# ## 2. Patches to embeddings
#
# A vision transformer (ViT) cuts the image into `p × p` patches, flattens each to a vector of `3·p·p`
# numbers, and projects it to the model width with one matrix, plus a bias; then it adds a learned position
# embedding per patch, since attention alone does not know where a patch came from. PaliGemma's shapes
# preset uses 8×8 patches: 16 of them per image, one token each.
#
# Libraries write this projection as a convolution whose kernel size and stride both equal `p`: the kernel
# visits each patch once, with no overlap, which is exactly "flatten and multiply". We check that they are
# the same computation.

# %%
processor = ImageProcessor(32)  # RGB in [0, 255] -> (3, 32, 32) in [-1, 1], as SigLIP expects
pixels = torch.stack([processor(shapes.example(seed).image) for seed in range(4)])
p = 8


def patchify(pixels: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*p*p): the patches row by row, each flattened channel first."""
    B, C, H, W = pixels.shape
    patches = pixels.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(B, (H // p) * (W // p), C * p * p)


conv = torch.nn.Conv2d(3, 64, kernel_size=p, stride=p)
W_patch = conv.weight.detach().reshape(64, -1).T  # (3*p*p, dim), stored (in, out)
ours = patchify(pixels, p) @ W_patch + conv.bias.detach()
with torch.no_grad():
    theirs = conv(pixels).flatten(2).transpose(1, 2)  # (B, dim, 4, 4) -> (B, 16, dim)
print(f"{tuple(pixels.shape)} -> {tuple(patchify(pixels, p).shape)} -> {tuple(ours.shape)}")
assert torch.allclose(ours, theirs, atol=1e-5)

fig = plt.figure(figsize=(12, 3.2))
grid = fig.add_gridspec(2, 10)
ax = fig.add_subplot(grid[:, :2])
ax.imshow(shapes.example(0).image)
for k in range(1, 4):
    ax.axhline(k * p - 0.5, color="w", lw=1)
    ax.axvline(k * p - 0.5, color="w", lw=1)
ax.set_title("16 patches of 8×8")
ax.set_xticks([])
ax.set_yticks([])
tokens = patchify(pixels[:1], p)[0].reshape(16, 3, p, p).permute(0, 2, 3, 1).add(1).div(2)  # back to [0, 1] for display
for n in range(16):
    ax = fig.add_subplot(grid[n // 8, 2 + n % 8])
    ax.imshow(tokens[n].clamp(0, 1))
    ax.set_title(f"token {n}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
plt.show()

# %% [markdown]
# ## 3. The vision encoder layer
#
# SigLIP's encoder is the pre-LayerNorm block of lesson 1, with three differences: the attention is
# **bidirectional** (an image has no "future": every patch may look at every other), the layers have
# biases, and the MLP uses the tanh approximation of GELU. The library builds SigLIP from the same
# `PreNormBlock` as GPT, with `causal=False` (checked in section 4, on the library's `Siglip`).
#
# We build the patch embedding and one encoder layer by hand, copy the weights of a small random
# `SiglipVisionModel` from `transformers` into them, and compare the hidden states after the embedding and
# after the first layer. For attention itself we call torch's `scaled_dot_product_attention`, the fused form
# of the softmax attention written out in lesson 1, with no mask.

# %%
def layer_norm(x, weight, bias, eps=1e-6):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def encoder_layer(x, w, n_head):
    """Pre-LN, bidirectional attention, GELU-tanh MLP; w holds (in, out) matrices and biases."""
    B, N, D = x.shape
    h = layer_norm(x, w["ln1_w"], w["ln1_b"]) @ w["qkv_w"] + w["qkv_b"]  # (B, N, 3D): [q | k | v]
    q, k, v = h.view(B, N, 3, n_head, D // n_head).permute(2, 0, 3, 1, 4)  # each (B, heads, N, D/heads)
    attended = F.scaled_dot_product_attention(q, k, v)  # no mask: every patch sees every patch
    x = x + attended.transpose(1, 2).reshape(B, N, D) @ w["out_w"] + w["out_b"]
    mlp = F.gelu(layer_norm(x, w["ln2_w"], w["ln2_b"]) @ w["fc1_w"] + w["fc1_b"], approximate="tanh")
    return x + mlp @ w["fc2_w"] + w["fc2_b"]


hf = SiglipVisionModel(transformers.SiglipVisionConfig(
    hidden_size=48, intermediate_size=80, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4,
    initializer_range=0.2)).eval()
sd = {name: t.detach() for name, t in hf.state_dict().items()}
layer = "encoder.layers.0."
w = {"ln1_w": sd[layer + "layer_norm1.weight"], "ln1_b": sd[layer + "layer_norm1.bias"],
     "qkv_w": torch.cat([sd[layer + f"self_attn.{n}_proj.weight"].T for n in "qkv"], dim=1),
     "qkv_b": torch.cat([sd[layer + f"self_attn.{n}_proj.bias"] for n in "qkv"]),
     "out_w": sd[layer + "self_attn.out_proj.weight"].T, "out_b": sd[layer + "self_attn.out_proj.bias"],
     "ln2_w": sd[layer + "layer_norm2.weight"], "ln2_b": sd[layer + "layer_norm2.bias"],
     "fc1_w": sd[layer + "mlp.fc1.weight"].T, "fc1_b": sd[layer + "mlp.fc1.bias"],
     "fc2_w": sd[layer + "mlp.fc2.weight"].T, "fc2_b": sd[layer + "mlp.fc2.bias"]}

small_pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
embedded = (patchify(small_pixels, 4) @ sd["embeddings.patch_embedding.weight"].reshape(48, -1).T
            + sd["embeddings.patch_embedding.bias"] + sd["embeddings.position_embedding.weight"])
ours = encoder_layer(embedded, w, n_head=4)
with torch.no_grad():
    hidden = hf(pixel_values=small_pixels, output_hidden_states=True).hidden_states
print(f"after the embedding: max |ours - transformers| = {(embedded - hidden[0]).abs().max():.1e}")
print(f"after layer 0:       max |ours - transformers| = {(ours - hidden[1]).abs().max():.1e}")
assert (embedded - hidden[0]).abs().max() < 1e-5 and (ours - hidden[1]).abs().max() < 1e-5

# the library's block, with the same weights, is the same layer
block = PreNormBlock(48, 4, 80, activation="gelu_tanh", bias=True, causal=False, norm_eps=1e-6)
with torch.no_grad():
    for name, key in (("ln_1.weight", "ln1_w"), ("ln_1.bias", "ln1_b"), ("attn.qkv.weight", "qkv_w"), ("attn.qkv.bias", "qkv_b"),
                      ("attn.proj.weight", "out_w"), ("attn.proj.bias", "out_b"), ("ln_2.weight", "ln2_w"),
                      ("ln_2.bias", "ln2_b"), ("mlp.fc.weight", "fc1_w"), ("mlp.fc.bias", "fc1_b"),
                      ("mlp.proj.weight", "fc2_w"), ("mlp.proj.bias", "fc2_b")):
        block.get_parameter(name).copy_(w[key])
    assert (block(embedded) - hidden[1]).abs().max() < 1e-5

# %% [markdown]
# ## 4. SigLIP's sigmoid loss against CLIP's softmax
#
# SigLIP trains an image tower and a text tower so that an image and its caption get similar embeddings. Take
# a batch of `n` images and their `n` captions and compute every image-caption similarity, an `n × n` matrix of
# logits `t · cos(image_i, text_j) + b` (a learned temperature `t` and bias `b`). The diagonal holds the true
# pairs.
#
# - **CLIP** reads each row as a classification: "which of these `n` captions is mine?", a softmax over the row
#   and a cross-entropy on the diagonal (and the same over columns). Every term depends on the whole row.
# - **SigLIP** reads each *cell* as a yes/no question: "do this image and this caption match?", a sigmoid per
#   pair: `-log σ(logit)` for a true pair, `-log σ(-logit)` for a false one, summed over the row and averaged
#   over images.
#
# A small worked example: four images and their four captions, as 8-dimensional embeddings where each caption
# is a noisy copy of its image's.

# %%
torch.manual_seed(3)
image_emb = F.normalize(torch.randn(4, 8), dim=-1)
text_emb = F.normalize(image_emb + 0.6 * torch.randn(4, 8), dim=-1)
t, b = 10.0, -10.0  # SigLIP's initial temperature and bias


def clip_loss(logits):  # the true pairs on the diagonal
    target = torch.arange(len(logits))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def sigmoid_terms(logits, labels):  # one term per (image, caption) pair
    return -F.logsigmoid((2 * labels - 1) * logits)


cos = image_emb @ text_emb.T
labels = torch.eye(4)
print(f"CLIP loss {clip_loss(t * cos):.4f}, SigLIP loss {sigmoid_terms(t * cos + b, labels).sum(1).mean():.4f}")
assert torch.allclose(sigmoid_loss(t * cos + b, labels), sigmoid_terms(t * cos + b, labels).sum(1).mean())

fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
for ax, m, title in ((axes[0], t * cos + b, "logits t·cos + b"), (axes[1], sigmoid_terms(t * cos + b, labels), "sigmoid loss per pair")):
    im = ax.imshow(m, cmap="viridis")
    ax.set_xlabel("caption")
    ax.set_ylabel("image")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
plt.show()

# %% [markdown]
# **Why the two numbers are so far apart.** They do not measure the same thing. CLIP's loss for an image is one
# cross-entropy over the `n` captions of its row: `log n` (1.386 for `n = 4`) when the model cannot tell the
# captions apart, 0 when it is sure of the right one. SigLIP's loss for an image is a *sum* of `n` binary
# cross-entropies, one per caption, and at the start (`t = 10, b = -10`) it is set by the true pairs: a pair's
# logit `10·cos - 10` is at most 0, so a true pair costs at least `log 2` (`-log σ(0)`), and about `10·(1 - cos)`
# when its cosine is well below 1; a false pair, with a cosine near 0, has a logit near -10 and costs about
# `e^-10`. Here the true pairs make nearly all of the 4.20, the most from the pairs with the lowest cosines.
# For a model whose embeddings know nothing (every cosine 0) CLIP's loss is
# `log n`, which grows with the batch, and SigLIP's is `-log σ(-10) + n·log(1 + e^-10)`, about 10 whatever
# the batch. With `b = 0` instead it would be `n·log 2`, nearly all of it from the `n - 1` false pairs.

# %%
terms = sigmoid_terms(t * cos + b, labels)  # (4, 4): one binary cross-entropy per (image, caption) pair
true_part, false_part = (terms * labels).sum() / 4, (terms * (1 - labels)).sum() / 4  # per image, as the loss averages
print(f"cosines of the true pairs {cos.diagonal().numpy().round(2)}, their terms {terms.diagonal().numpy().round(2)}")
print(f"SigLIP loss per image: true pairs {true_part:.4f} + false pairs {false_part:.4f}")
assert (terms.diagonal() >= math.log(2)).all()  # t·cos + b <= 0: no true pair is above even odds at the start
assert torch.allclose(terms.diagonal(), F.softplus(t * (1 - cos.diagonal())))  # -log σ(x) = softplus(-x)
assert false_part < 0.01 * true_part

print(f"{'batch n':>8} {'CLIP = log n':>13} {'SigLIP, b=-10':>14} {'SigLIP, b=0':>12}")
for n in (4, 64, 1024):
    blank = torch.zeros(n, n)  # embeddings that know nothing: every image-caption cosine is 0
    clip_n = clip_loss(t * blank)
    siglip_n, siglip_b0 = sigmoid_loss(t * blank + b, torch.eye(n)), sigmoid_loss(t * blank, torch.eye(n))
    print(f"{n:>8} {clip_n:>13.3f} {siglip_n:>14.3f} {siglip_b0:>12.1f}")
    assert torch.isclose(clip_n, torch.tensor(math.log(n)))
    assert torch.isclose(siglip_n, torch.tensor(-F.logsigmoid(torch.tensor(-10.0)).item() + n * math.log1p(math.exp(-10))))
    assert torch.isclose(siglip_b0, torch.tensor(n * math.log(2)))  # n - 1 of its n terms are false pairs

# %% [markdown]
# **Each pair on its own.** Add a fifth caption to the batch. CLIP's loss for the first four images changes,
# because the new caption joins every row's softmax. SigLIP's terms for the sixteen existing pairs do not
# change at all; the new column only adds its own terms. The SigLIP paper builds on that independence: the
# loss can be computed in blocks, device by device, without first gathering every embedding of the batch to
# normalise each row.

# %%
extra = F.normalize(torch.randn(1, 8), dim=-1)
cos5 = image_emb @ torch.cat([text_emb, extra]).T  # 4 images x 5 captions
labels5 = torch.cat([labels, torch.zeros(4, 1)], dim=1)
clip_rows4 = F.cross_entropy(t * cos, torch.arange(4), reduction="none")
clip_rows5 = F.cross_entropy(t * cos5, torch.arange(4), reduction="none")
sig4, sig5 = sigmoid_terms(t * cos + b, labels), sigmoid_terms(t * cos5 + b, labels5)
print("CLIP, each image's loss:   ", clip_rows4.numpy().round(4), "->", clip_rows5.numpy().round(4))
assert not torch.allclose(clip_rows4, clip_rows5)
assert torch.equal(sig5[:, :4], sig4)

# %% [markdown]
# **Repeated captions.** In the shapes world two different images can have the same caption ("a red circle").
# CLIP's softmax has one right answer per row, so when captions `0` and `1` are identical, image `0` must
# share its probability between them: its loss can never go below `log 2`, however well trained, and it is
# pushed away from a caption that is just as true. SigLIP simply labels both pairs as positives.

# %%
twin = text_emb.clone()
twin[1] = twin[0]  # captions 0 and 1 are the same text
cos_twin = image_emb @ twin.T
for scale in (10.0, 100.0, 1000.0):
    assert F.cross_entropy(scale * cos_twin[:1], torch.tensor([0])) >= torch.log(torch.tensor(2.0)) - 1e-6
labels_twin = labels.clone()
labels_twin[0, 1] = labels_twin[1, 0] = 1.0  # both images match both captions
print(labels_twin)
assert torch.allclose(sigmoid_loss(t * cos_twin + b, labels_twin), sigmoid_terms(t * cos_twin + b, labels_twin).sum(1).mean())

# %% [markdown]
# **Why the bias starts at -10.** In a batch of `n` there are `n` true pairs and `n² - n` false ones. With `b = 0`
# at the start, every pair would begin at probability about one half, and the first steps would be spent
# pushing down the overwhelming majority of negatives. Starting at `t = 10, b = -10` puts every logit in
# `[-20, 0]`: each pair starts at probability at most one half and most near zero, which is already right for
# almost all pairs. The library's `Siglip` starts there.

# %%
siglip = Siglip(SiglipConfig(SiglipVisionConfig(n_embd=32, n_layer=1, n_head=2, intermediate_size=64),
                             SiglipTextConfig(vocab_size=50, n_embd=32, n_layer=1, n_head=2, intermediate_size=64)))
t0, b0 = siglip.logit_scale.exp().item(), siglip.logit_bias.item()
print(f"initial temperature {t0:.1f}, bias {b0:.1f}")
assert abs(t0 - 10.0) < 1e-5 and b0 == -10.0
assert torch.sigmoid(t0 * cos + b0).max() <= 0.5
first = siglip.vision.blocks[0]  # the towers are GPT's block, without the causal mask
assert isinstance(first, PreNormBlock) and not first.attn.causal

# %% [markdown]
# ## 5. PaliGemma's prefix-LM mask
#
# PaliGemma puts the image's 16 patch embeddings (projected to the language model's width) in front of the
# text and runs a Gemma decoder over the whole sequence:
#
# `<image> × 16, <bos>, question, "\n" | answer, <eos>, <pad> ...`
#
# The part before the bar is the **prefix**, the answer the **suffix**. The mask (`padded_causal_mask` with a
# `prefix`) lets every prefix token see every other prefix token, both ways: the question can look at the image
# and the image patches can already take the question into account. The suffix is causal, as in any language
# model, because the answer is generated one token at a time; it sees the whole prefix. Padding is seen by no
# one. The loss is on the suffix only. Below, a short version: 4 image tokens, `<bos>`, a 3-token question,
# a 2-token answer with `<eos>`, and 2 pads.

# %%
names = ["img"] * 4 + ["<bos>", "what", "color", "?\\n", "red", "circle", "<eos>", "<pad>", "<pad>"]
T = len(names)
valid = torch.tensor([[n != "<pad>" for n in names]])
prefix = torch.tensor([[i < 8 for i in range(T)]])
mask = padded_causal_mask(valid, T, prefix)[0, 0]  # (T, T), True = may attend

plt.figure(figsize=(5.5, 5))
plt.imshow(mask, cmap="Greys")
plt.xticks(range(T), names, rotation=90)
plt.yticks(range(T), names)
plt.xlabel("key")
plt.ylabel("query")
plt.title("prefix-LM mask (black: may attend)")
plt.show()

assert mask[:8, :8].all()  # the prefix block is full: bidirectional
assert torch.equal(mask[8:11, 8:11], torch.ones(3, 3, dtype=torch.bool).tril())  # the answer is causal
assert mask[8:11, :8].all() and not mask[:8, 8:].any()  # the answer sees the prefix, never the reverse
assert not mask[:11, 11:].any()  # padding is invisible to real tokens

# %% [markdown]
# ## 6. Training PaliGemma on the shapes world
#
# Real PaliGemma does not start from a random image encoder. Its vision tower is SigLIP So400m, pretrained with
# the sigmoid loss of section 4 on image-caption pairs; then the whole model (tower, projector and Gemma
# decoder) is trained on a broad mixture of multimodal tasks. In that stage the paper warms the image encoder's
# learning rate up slowly, so that the first gradients from a decoder that knows nothing yet do not spoil what
# the tower learned.
#
# We do the same at toy scale. First `siglip-shapes`: SigLIP's two towers and sigmoid loss on this world's
# images and their captions, with the image tower shaped like `paligemma-shapes`' (8×8 patches, 3 layers, 128
# wide) so that its weights fit. Captions such as "a red circle and a blue square" can only be told apart by an
# image tower that sees which colour goes with which shape. The trainer reports retrieval on the held-out
# scenes: for how many images the nearest of all their distinct captions is their own.

# %%
runs = Path(tempfile.mkdtemp(prefix="scratchllm-lesson5-"))
PALIGEMMA_TOWER = ["vision.patch_size=8", "vision.n_embd=128", "vision.n_layer=3", "vision.intermediate_size=256",
                   "text.projection_size=128"]  # the text tower stays 64 wide; its last projection meets the image's 128
# a short run: 300 steps of 32 pairs (the preset: 1500 of 64), with a shorter warm-up and a higher peak
siglip_run = train("siglip-shapes", out=runs / "siglip", max_steps=300, progress=False,
                   overrides=[*PALIGEMMA_TOWER, "batch_size=32", "warmup_steps=50", "lr=2e-3", "eval_interval=100000",
                              "device=cpu"])
captions = {shapes.caption(e.scene) for e in shapes.held_out(256, "caption")}
print(f"after {siglip_run['step']} steps, the nearest of {len(captions)} captions is the right one for "
      f"{siglip_run['metrics']['r@1']:.0%} of the held-out images (chance: {1 / len(captions):.1%})")
assert siglip_run["metrics"]["r@1"] > 10 / len(captions)
siglip = scratchllm.load_pretrained(runs / "siglip" / "best").model
# PaliGemma reads the patch features; the pooling head that made SigLIP's one vector per image stays behind
tower = {name: w for name, w in siglip.vision.state_dict().items() if not name.startswith("head.")}

# %% [markdown]
# Then `paligemma-shapes`, a 0.9M-parameter PaliGemma: the 3-layer SigLIP encoder over 16 patches, a linear
# projector, and a 3-layer Gemma decoder (multi-query attention, GeGLU, RMSNorm with `1 + w`). We train it
# twice with the library's `Trainer`, for the same number of steps, from the same seed (so the same initial
# projector and decoder, and the same batches): once from scratch, once with the SigLIP tower copied in. Our
# trainer has one learning rate for the whole model, so we take the paper's slow warm-up to its limit and keep
# the copied tower frozen for this short run. The preset trains for thousands of steps; we run 300.
# Training never sees the held-out scenes' questions (checked by content); we keep 1,024 of them for the
# comparison.

# %%
preset, spec = get_preset("paligemma-shapes"), get_spec("paligemma")
STEPS, BATCH = 300, 32  # the preset: 6000 steps of 64
tokenizer = shapes_tokenizer(preset.tokenizer)  # the same small BPE as SigLIP's: trained on the world's phrases
config = spec.finish_config(preset.model, tokenizer)
held_out = shapes.held_out(1024)


def train_paligemma(name: str, tower: dict[str, torch.Tensor] | None = None) -> tuple[torch.nn.Module, float]:
    """paligemma-shapes for STEPS steps; with `tower`, the vision tower starts from it and stays frozen.
    Returns the model and its validation loss (on the answers to the first 256 held-out questions)."""
    cfg = dataclasses.replace(preset.train, max_steps=STEPS, batch_size=BATCH, eval_batches=256 // BATCH,
                              eval_interval=STEPS, max_time=None, device="cpu")
    n = config.vision.num_patches  # each row: n image slots, then the question and answer (16 tokens are plenty)
    batches = ShapesBatches(tokenizer, config.vision.image_size, n, n + 16, cfg.seed, n_held_out=len(held_out))
    torch.manual_seed(cfg.seed)  # the same initial weights in both runs
    model = spec.build(config)
    if tower is not None:
        model.vision.load_state_dict(tower)
        model.vision.requires_grad_(False)
    summary = Trainer(model, cfg, tokenizer, batches, runs / name.replace(" ", "-"), progress=False,
                      meta={"model_type": "paligemma", "model": to_dict(config)}).fit()
    return model.eval(), summary["val_loss"]


models, val_loss = {}, {}
for name, start in (("from scratch", None), ("SigLIP tower", tower)):
    models[name], val_loss[name] = train_paligemma(name, start)
n_params = sum(w.numel() for w in models["from scratch"].parameters())
print(f"{n_params:,} parameters")
assert 0.85e6 < n_params < 0.95e6
vision, text = config.vision, config.text
assert (vision.n_layer, vision.patch_size, vision.num_patches, text.n_layer, text.n_kv_head) == (3, 8, 16, 3, 1)
assert (text.mlp_activation, text.norm_offset) == ("gelu_tanh", 1.0)
assert all(torch.equal(w, models["SigLIP tower"].vision.state_dict()[key]) for key, w in tower.items())  # frozen

# %% [markdown]
# A model that never looks at the image can still learn the answer most often given to each question
# (`"how many shapes?"` → the commonest count). We compute that blind baseline from 10,000 training examples.
# Then we ask both models every held-out question (`PaliGemma.answer`: the image and question are encoded
# once, and the answer is decoded greedily over a KV cache) and break the accuracy down by kind of question.

# %%
def ask(model) -> list[str]:
    answers = []
    for i in range(0, len(held_out), 128):
        chunk = held_out[i:i + 128]
        pixels = torch.stack([processor(e.image) for e in chunk])  # (128, 3, 32, 32)
        answers += [a.strip() for a in model.answer(tokenizer, pixels, [e.prompt for e in chunk])]
    return answers


seen = defaultdict(Counter)  # question -> how often each answer was the right one
for seed in range(10_000):
    e = shapes.example(seed)
    seen[e.prompt][e.answer] += 1
most_common_overall = Counter(a for c in seen.values() for a in c.elements()).most_common(1)[0][0]
predictions = {name: ask(model) for name, model in models.items()}
predictions["blind majority"] = [seen[e.prompt].most_common(1)[0][0] if e.prompt in seen else most_common_overall
                                 for e in held_out]


def kind(prompt: str) -> str:
    return next(k for k in ("how many", "what color", "what shape", "where", "left of", "above") if k in prompt)


kinds = sorted({kind(e.prompt) for e in held_out})
n_kind = {k: sum(kind(e.prompt) == k for e in held_out) for k in kinds}
accuracy = {name: {k: sum(a == e.answer for a, e in zip(answers, held_out) if kind(e.prompt) == k) / n_kind[k]
                   for k in kinds} | {"all": sum(a == e.answer for a, e in zip(answers, held_out)) / len(held_out)}
            for name, answers in predictions.items()}
print(f"{'':12}" + "".join(f"{name:>16}" for name in accuracy) + "   questions")
for k in [*kinds, "all"]:
    print(f"{k:12}" + "".join(f"{acc[k]:>16.1%}" for acc in accuracy.values()) + f"{n_kind.get(k, len(held_out)):>12}")

fig, ax = plt.subplots(figsize=(10, 3.5))
for j, (name, acc) in enumerate(accuracy.items()):
    ax.bar([i + 0.27 * j for i in range(len(kinds))], [acc[k] for k in kinds], width=0.27, label=name)
ax.set_xticks([i + 0.27 for i in range(len(kinds))], [f"{k}\n({n_kind[k]} questions)" for k in kinds])
ax.set_ylabel("exact match")
ax.set_ylim(0, 1)
ax.set_title(f"held-out questions after {STEPS} steps, by kind")
ax.legend(loc="upper right")
plt.show()

# %% [markdown]
# What the pretrained tower changes, after the same 300 steps from the same start (the table and bars above):
#
# - **Overall, it is the difference between learning and guessing.** From scratch, the model scores about what
#   the blind majority does; with the SigLIP tower it is well above both, and its validation loss is lower.
# - **Counting is solved with the tower, not without it.** SigLIP had to tell "a red circle" from "a red circle
#   and a blue square", so its features already say how many shapes there are; the decoder only has to read
#   that off. The tower trained from scratch has not learned it in 300 steps.
# - **"Where is the ... shape?" is not settled in 300 steps.** The decoder must find the patch that the
#   question's colour names; after 300 steps that row moves by ten points or more from one start (seed) or one
#   CPU's kernels to another, in either direction, with or without the tower, so we read nothing into it. (An
#   earlier version of this lesson said it improves with the tower: true on this seed here, but an Intel Xeon's
#   kernels, and one seed in seven here, had it the other way round.)
# - **"What color is the ...?" stays at the blind level with either start.** The answer needs the decoder to
#   find the patch of the named shape and read its colour there, a binding of the question's words to one
#   patch that 300 steps do not teach. (The full preset trains 6,000 steps; the README's measured run answers all 256 of its
#   held-out questions right.)
#
# The numbers move by a few points with the CPU's kernels; the checks below hold with a wide margin on each
# path we tried (fp32, bf16, AVX2-only kernels, one thread and two).

# %%
scratch, pretrained, blind = (accuracy[name] for name in ("from scratch", "SigLIP tower", "blind majority"))
print(f"validation loss: from scratch {val_loss['from scratch']:.3f}, SigLIP tower {val_loss['SigLIP tower']:.3f}")
assert val_loss["SigLIP tower"] < val_loss["from scratch"]
assert abs(scratch["all"] - blind["all"]) < 0.08  # from scratch: about the blind majority
assert pretrained["all"] > max(scratch["all"], blind["all"]) + 0.08  # with the tower: well above both
assert pretrained["how many"] > 0.9 and scratch["how many"] < 0.75  # counting: solved with the tower only
assert max(scratch["what color"], pretrained["what color"]) < blind["what color"] + 0.1  # colour: still blind

# %% [markdown]
# Finally, both models' answers beside the images, for the first twelve held-out questions (✓ right, ✗ wrong):

# %%
fig, axes = plt.subplots(3, 4, figsize=(12, 12))
for i, (ax, e) in enumerate(zip(axes.flat, held_out)):
    ax.imshow(e.image)
    lines = [textwrap.fill(e.prompt, 32), f"truth: {e.answer}"]
    lines += [f"{name}: {predictions[name][i]} {'✓' if predictions[name][i] == e.answer else '✗'}" for name in models]
    ax.set_title("\n".join(lines), fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# That completes the course: characters and bytes to tokens, tokens to a GPT and a Llama, images to tokens
# and answers, each part built by hand once and then used from the library.

# %%
print(f"This lesson ran in {time.perf_counter() - LESSON_START:.1f} s")
