"""Log-likelihoods of continuations: how a language model is scored on multiple-choice benchmarks.

A model answers a multiple-choice question by which choice it finds likeliest after the question:

    log p(choice | context) = sum over the choice's tokens t of log p(token_t | context, tokens before t)

read off the logits of one forward pass over context + choice (the logits at position i predict token
i + 1). This is lm-eval's `loglikelihood`, and `loglikelihoods` below gives its numbers.

The choices of a question share its context, so each row of a batch holds the context once and every
choice after it, each choice seeing the context and its own tokens only:

    tokens     c0 c1 c2 c3 | a0 a1 | b0 b1 b2          (a choice's last token is predicted, never fed)
    positions   0  1  2  3 |  4  5 |  4  5  6          (each choice starts where the context ends)
    b1 sees     c0 c1 c2 c3          b0                (the mask: causal, and no other choice's tokens)

Every token is at the position it has in its own context + choice and attends to what it would attend
to there, so the log-probabilities are those of running each context + choice alone (to float
rounding), while the context, usually the longer part, is computed once instead of once per choice.
Tokens fed, SmolLM2's tokenizer, first 300 items: HellaSwag 2.1x fewer, ARC 2.8-3.0x, PIQA 1.2x, MMLU's
one-token letters 4x (lm-eval too computes those once a question). The other way to share a context,
prefilling it into a KV cache and scoring the choices from copies of it, was slower in a prototype of
both (SmolLM2-135M, 12 HellaSwag items, one thread, CPU time: 3.5 items/s this way, 2.0 that way, 1.5
one pass per choice): there the choices' rows all pad to the longest choice of the batch.
`benchmarks/eval.py` measures this way against lm-eval's one pass per choice.

Sequences longer than the model's context lose tokens from the left, as lm-eval's do: the context
keeps its last `block_size + 1 - len(choice)` tokens.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.layers import packed_for_inference
from scratchllm.layers.loss import IGNORE
from scratchllm.models.spec import spec_of

# Most logits one forward pass may hold (batch x tokens x vocabulary, fp32): SmolLM2's 49,152-token
# vocabulary allows ~2,700 tokens a pass.
MAX_LOGITS_BYTES = 512 * 2**20


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval tokenizes a request: spaces at the end of the context
    move to the continuation, the whole text is encoded once, and the continuation is what follows
    the context's own token count (a merge across the boundary stays in the continuation)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, allowed_special="all")
    context_ids = tokenizer.encode(context, allowed_special="all")
    return context_ids, whole[len(context_ids):]


def check_scores_text(model: nn.Module, source: str = "this model") -> None:
    """A one-line error for a model that gives no next-token probabilities of text (SigLIP, PaliGemma),
    asked of its spec: the models that generate text are the ones that can be scored."""
    spec = spec_of(model)
    if spec.generation is None:
        raise ScratchLLMError(f"{source} holds a {spec.model_type} model, which gives no probabilities of text to score "
                              "benchmarks with; evaluate a language model (a run, a Hugging Face folder, a GGUF file)")


class _Row:
    """One context and the choices packed after it: tokens, positions, which choice each token is in."""

    def __init__(self, context: Sequence[int]):
        self.context_len = len(context)
        self.tokens = list(context)
        self.positions = list(range(len(context)))
        self.segments = [-1] * len(context)  # -1: the context; i: the i-th choice of the row
        self.requests: list[tuple[int, int, list[int]]] = []  # (request index, where its tokens start, its ids)

    def add(self, index: int, continuation: list[int]) -> None:
        fed = continuation[:-1]  # its last token is only predicted
        self.requests.append((index, len(self.tokens), continuation))
        self.tokens += fed
        self.positions += range(self.context_len, self.context_len + len(fed))
        self.segments += [len(self.requests) - 1] * len(fed)


def _rows(requests: list[tuple[list[int], list[int]]], block_size: int) -> list[_Row]:
    """Requests grouped by context, each group's choices packed into rows of at most `block_size` tokens."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(requests):
        by_context.setdefault(tuple(ctx), []).append(i)
    rows = []
    for ctx, indices in by_context.items():
        row = _Row(ctx)
        for i in indices:
            cont = requests[i][1]
            if row.requests and len(row.tokens) + len(cont) - 1 > block_size:
                rows.append(row)
                row = _Row(ctx)
            row.add(i, cont)
        rows.append(row)
    return rows


def _truncated(context: Sequence[int], continuation: Sequence[int], block_size: int) -> tuple[list[int], list[int]]:
    """lm-eval's left truncation: context + continuation minus its last token fits `block_size`."""
    if not continuation:
        raise ScratchLLMError("a request has an empty continuation; every choice needs at least one token")
    if not context:
        raise ScratchLLMError("a request has an empty context; the first token of a text has nothing to be predicted from")
    if len(continuation) > block_size:
        raise ScratchLLMError(f"a choice of {len(continuation)} tokens is longer than the model's context of {block_size}")
    overflow = len(context) + len(continuation) - 1 - block_size
    return list(context[max(overflow, 0):]), list(continuation)


def _batches(rows: list[_Row], batch_size: int, max_tokens: int) -> list[list[_Row]]:
    """Rows longest first (lm-eval's order: the largest batch comes first, padding stays small), as many
    a batch as hold `batch_size` requests and `max_tokens` padded tokens."""
    rows = sorted(rows, key=lambda r: -len(r.tokens))
    batches: list[list[_Row]] = []
    requests = 0
    for row in rows:
        width = len(batches[-1][0].tokens) if batches else 0  # the batch's first row is its longest
        if not batches or requests + len(row.requests) > batch_size or (len(batches[-1]) + 1) * width > max_tokens:
            batches.append([])
            requests = 0
        batches[-1].append(row)
        requests += len(row.requests)
    return batches


@torch.inference_mode()
def _score_batch(model: nn.Module, batch: list[_Row], device: torch.device, out: list[float]) -> None:
    B, T = len(batch), len(batch[0].tokens)
    ids = torch.zeros(B, T, dtype=torch.long)
    positions = torch.zeros(B, T, dtype=torch.long)
    segments = torch.full((B, T), -2, dtype=torch.long)  # -2: padding after the row
    rows, cols, targets, owner = [], [], [], []
    for b, row in enumerate(batch):
        n = len(row.tokens)
        ids[b, :n] = torch.tensor(row.tokens)
        positions[b, :n] = torch.tensor(row.positions)
        segments[b, :n] = torch.tensor(row.segments)
        for index, start, cont in row.requests:
            # its first token is predicted at the context's last position, the others at its own tokens
            where = [row.context_len - 1] + list(range(start, start + len(cont) - 1))
            rows += [b] * len(cont)
            cols += where
            targets += cont
            owner += [index] * len(cont)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    same = (segments[:, None, :] == -1) | (segments[:, None, :] == segments[:, :, None])  # (B, T query, T key)
    mask = (causal[None] & same)[:, None]  # (B, 1, T, T): key visible to query
    # Only the positions that predict a choice's token need logits: the model's training path computes
    # the output head (SmolLM2's 576 x 49,152, a fifth of its products) only where a target counts (on
    # the CPU; layers/loss.py), so mark those positions with a target. The context's last position
    # predicts every choice's first token; it holds one of them: only its logits are used, not its loss.
    rows_t, cols_t, targets_t = torch.tensor(rows), torch.tensor(cols), torch.tensor(targets)  # (N,) each
    needed = torch.full((B, T), IGNORE, dtype=torch.long)
    needed[rows_t, cols_t] = targets_t
    logits, _ = model(ids.to(device), needed.to(device), positions=positions.to(device), mask=mask.to(device))
    if logits.dim() == 3:  # (B, T, vocab): every position (a GPU, or torch.compile)
        picked = logits[rows_t.to(device), cols_t.to(device)]  # (N, vocab)
        logp = picked.float().log_softmax(-1).gather(-1, targets_t.to(device)[:, None])[:, 0]
    else:  # (K, vocab): the needed positions in row-major order; K <= N, the shared last context position once
        at = (needed != IGNORE).flatten().cumsum(0) - 1  # (B * T,): a needed position's row in `logits`
        logp = logits.float().log_softmax(-1)[at[rows_t * T + cols_t].to(device), targets_t.to(device)]
    for index, value in zip(owner, logp.double().tolist()):
        out[index] += value


def loglikelihoods(model: nn.Module, requests: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 32,
                   on_batch: Callable[[list[int]], None] | None = None) -> list[float]:
    """log p(continuation | context), summed over the continuation's tokens, for each (context ids,
    continuation ids) request: lm-eval's `loglikelihood` (see the module's docstring for how requests
    that share a context share its computation). `batch_size` counts the requests of a forward pass;
    `on_batch(indices)` is called after each pass with the requests it finished."""
    check_scores_text(model)
    if batch_size < 1:
        raise ScratchLLMError(f"batch_size must be at least 1, got {batch_size}")
    block_size = model.config.block_size
    requests = [_truncated(ctx, cont, block_size) for ctx, cont in requests]
    weights = next(model.parameters())
    max_tokens = MAX_LOGITS_BYTES // (4 * model.config.vocab_size)  # a longer row still gets a pass of its own
    out = [0.0] * len(requests)
    model.eval()
    with packed_for_inference(model):
        for batch in _batches(_rows(requests, block_size), batch_size, max_tokens):
            _score_batch(model, batch, weights.device, out)
            if on_batch is not None:
                on_batch([i for row in batch for i, _, _ in row.requests])
    return out


def score_texts(model: nn.Module, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 32) -> list[float]:
    """`loglikelihoods` of (context, continuation) texts, tokenized as lm-eval does (`encode_pair`)."""
    return loglikelihoods(model, [encode_pair(tokenizer, c, x) for c, x in requests], batch_size)
