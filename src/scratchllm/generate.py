"""Autoregressive generation over a KV cache: prefill the prompts once, then decode a token a step.

    prompts ──left-pad──> prefill (all prompt tokens, one pass, fills the cache)
            ──> loop: sample (temperature, top-k, top-p, min-p) ──> feed 1 token per row ──> ...

Rows of different lengths are left-padded: padding is masked out of attention and positions count
real tokens only, so each row generates exactly what it would alone. When a row reaches the
model's context, every row is cropped to the last half-context and prefilled again (a sliding
window at the cost of one prefill per half-context of tokens).

`Engine` is the same loop for a server (continuous batching): requests come and go between steps,
each in its own row of one KV cache, each row at its own length.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Collection, Iterator, Sequence

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.layers import pack_for_inference, packed_for_inference, padded_causal_mask
from scratchllm.models import spec_of


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None,
                min_p: float | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if temperature <= 0:  # in fp32: torch's bf16 argmax over 49k logits takes 150 us here, fp32's 26 (the same index)
        return logits.float().argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if min_p is not None and min_p > 0.0:
        # min-p (Nguyen et al. 2024): drop tokens less likely than min_p times the most likely one
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    if top_p is not None and top_p < 1.0:
        # Keep the smallest set of tokens whose probability reaches top_p (always at least the best one).
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        total = sorted_probs.sum(dim=-1, keepdim=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above each one
        # (before > 0: the best token stays even when top_p * total underflows to 0, as top_p=1e-320 does)
        sorted_probs = sorted_probs.masked_fill((before >= top_p * total) & (before > 0), 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _seeded_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A random generator on `device`, seeded with `seed`, or from the OS when it is None."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    return generator


class _Batch:
    """Left-padded token rows with their padding mask and positions."""

    def __init__(self, rows: list[list[int]], device):
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            valid[i, width - len(r):] = True
        self.ids, self.valid = ids.to(device), valid.to(device)  # built on the CPU, copied once
        self.padded = bool((~valid).any())

    def positions(self) -> torch.Tensor:
        positions = (self.valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, S): real tokens count from 0
        self.last_positions = positions[:, -1]
        return positions

    def append(self, tokens: torch.Tensor) -> None:
        self.last_positions = self.last_positions + 1
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.valid = torch.cat([self.valid, torch.ones_like(tokens[:, None], dtype=torch.bool)], dim=1)

    def crop(self, keep: int) -> None:
        self.ids, self.valid = self.ids[:, -keep:], self.valid[:, -keep:]
        self.padded = bool((~self.valid).any())


def _forward_full(model: nn.Module, batch: _Batch, cache=None) -> torch.Tensor:
    """Logits (B, V) at the last position of every row, over the whole (cropped) batch."""
    T = batch.ids.size(1)
    mask = padded_causal_mask(batch.valid, T) if batch.padded else None
    return model(batch.ids, positions=batch.positions(), cache=cache, mask=mask)[:, -1, :]


@torch.inference_mode()
def generate_batch(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   min_p: float | None = None, stop_tokens: Sequence[int] = (), seed: int | None = None,
                   use_cache: bool = True) -> Iterator[list[int | None]]:
    """Yield, at each step, the new token of every row (None for a row that has stopped).

    A row stops after max_new_tokens or at one of `stop_tokens` (which is not yielded). On the CPU the
    model's weights are packed for the call (layers/linear.py), unless they already are."""
    with packed_for_inference(model):
        yield from _generate_rows(model, prompts, max_new_tokens, temperature, top_k, top_p, min_p, stop_tokens,
                                  seed, use_cache)


def _generate_rows(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float,
                   top_k: int | None, top_p: float | None, min_p: float | None, stop_tokens: Sequence[int],
                   seed: int | None, use_cache: bool) -> Iterator[list[int | None]]:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ScratchLLMError("every prompt needs at least one token")
    spec = spec_of(model)
    if spec.generation is None:
        raise ScratchLLMError(f"a {spec.model_type} model does not generate text from a prompt")
    weights = next(model.parameters())
    device, dtype = weights.device, weights.dtype  # the cache holds keys and values in the compute dtype
    context = model.config.block_size
    generator = _seeded_generator(seed, device)
    batch = _Batch([list(p)[-context:] for p in prompts], device)
    stops = set(stop_tokens)
    done = [False] * len(prompts)  # kept in Python: a step's tokens come to the CPU anyway, to be yielded

    use_cache = use_cache and spec.generation == "cached"  # a bigram has nothing to cache
    # the cache holds what this call can reach: a short reply from a long-context model (SmolLM2: 8192)
    # need not allocate, and zero, the whole context
    cache_len = min(context, batch.ids.size(1) + max_new_tokens)
    cache = model.new_cache(len(prompts), cache_len, dtype, device) if use_cache else None
    logits = _forward_full(model, batch, cache)
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator, min_p)
        tokens = nxt.tolist()
        done = [d or t in stops for t, d in zip(tokens, done)]
        yield [None if d else t for t, d in zip(tokens, done)]
        if all(done):
            return
        batch.append(nxt)
        if batch.ids.size(1) > context:  # the context is full: slide to the last half and prefill again
            batch.crop(max(1, context // 2))
            cache = model.new_cache(len(prompts), cache_len, dtype, device) if use_cache else None
            logits = _forward_full(model, batch, cache)
        elif use_cache:
            pos = batch.last_positions[:, None]  # (B, 1)
            mask = batch.valid[:, None, None, :] if batch.padded else None  # (B, 1, 1, S): every real key
            logits = model(nxt[:, None], positions=pos, cache=cache, mask=mask)[:, -1, :]
        else:
            logits = _forward_full(model, batch)


def generate(model: nn.Module, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             min_p: float | None = None, stop_tokens: Sequence[int] = (), use_cache: bool = True) -> Iterator[int]:
    """One prompt: yield new token ids one at a time (a streaming iterator), on the model's device."""
    for step in generate_batch(model, [prompt_ids], max_new_tokens, temperature, top_k, top_p, min_p,
                               stop_tokens, seed, use_cache):
        if step[0] is None:
            return
        yield step[0]


class TextStream:
    """Turns token ids into text as they arrive, holding back bytes of a UTF-8 character still incomplete."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self.decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


# -- continuous batching: the server's engine -----------------------------------------------------

@dataclass(eq=False)
class Request:
    """One prompt for the `Engine` and how to sample its continuation (the options of `generate`)."""

    prompt: Sequence[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    stop_tokens: Collection[int] = ()
    logprobs: int | None = None  # None: none; k: the sampled token's log-probability and the k likeliest
    cancelled: bool = False  # set from any thread; the engine drops the request at its next step


@dataclass
class Token:
    """What a step gave one request: its new token (None for a stop token, which ends the reply and
    is not part of it), why the request finished (None while it goes on) and, when asked for, the
    log-probability of the token and of the likeliest ones, [(id, logprob), ...]."""

    request: Request
    token: int | None
    finish: str | None = None  # "stop" (a stop token) or "length" (max_new_tokens)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass(eq=False)
class _Row:
    request: Request
    index: int  # the row of the cache it holds
    generator: torch.Generator
    length: int  # positions of the cache it has written
    tokens: list[int] = field(default_factory=list)  # everything so far ("recompute" models only)
    last: int = 0  # the token sampled last: the next step feeds it
    generated: int = 0


class Engine:
    """Continuous batching: requests join the running batch between steps and leave when done.

        add(request)  ──> its prompt prefilled alone into a free row of the cache ──> its first token
        step()        ──> one forward pass of (rows, 1): the next token of every running request

    One KV cache of (max_batch, max_len) is allocated once, in the model's dtype on its device. Each
    row holds one request at its own length: positions count that request's tokens, each row writes
    its new keys where it has got to, and a (rows, 1, 1, S) key mask lets it see its own keys only
    (stale keys of an earlier request and keys past its length are hidden). So a request generates
    what it would alone: greedy, the same tokens; sampled, the same tokens for the same seed, since
    each request draws from its own seeded generator. A request takes the lowest free row and a
    step covers rows 0 .. the highest busy one, so a lone request runs at batch 1, as `generate`.

    Not thread-safe: one thread owns it (serve/worker.py); only `Request.cancelled` may be set from
    elsewhere. A model whose spec generates by "recompute" (the bigram) runs the whole of each row,
    cropped to its context, at every step, with no cache and no length limit (`max_len` is None).
    """

    def __init__(self, model: nn.Module, max_batch: int = 8, max_len: int | None = None):
        spec = spec_of(model)
        if spec.generation is None:
            raise ScratchLLMError(f"a {spec.model_type} model does not generate text from a prompt")
        if max_batch < 1:
            raise ScratchLLMError(f"max_batch must be at least 1, got {max_batch}")
        weights = next(model.parameters())
        self.model, self.device, self.dtype = model, weights.device, weights.dtype
        pack_for_inference(model)  # CPU: weights in oneDNN's layout, for the engine's life (layers/linear.py)
        self.context = model.config.block_size
        self.cached = spec.generation == "cached"
        self.max_len = min(max_len or self.context, self.context) if self.cached else None
        self.cache = model.new_cache(max_batch, self.max_len, self.dtype, self.device) if self.cached else None
        self.rows: list[_Row | None] = [None] * max_batch

    @property
    def free_rows(self) -> int:
        return self.rows.count(None)

    @property
    def running(self) -> list[Request]:
        return [r.request for r in self.rows if r is not None]

    @torch.inference_mode()
    def add(self, request: Request) -> list[Token]:
        """Prefill the request's prompt into a free row and sample its first token."""
        prompt = list(request.prompt)
        if not prompt:
            raise ScratchLLMError("every prompt needs at least one token")
        if request.max_new_tokens < 1:
            raise ScratchLLMError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
        if self.max_len is not None and len(prompt) + request.max_new_tokens > self.max_len:
            raise ScratchLLMError(f"{len(prompt)} prompt tokens and {request.max_new_tokens} new ones do not fit "
                                  f"the {self.max_len} positions of a row")
        if None not in self.rows:
            raise ScratchLLMError("every row of the engine is busy; wait for a request to finish")
        index = self.rows.index(None)
        row = _Row(request, index, _seeded_generator(request.seed, self.device), len(prompt), prompt if not self.cached else [])
        if self.cached:  # exactly generate()'s prefill of one prompt, into this row's part of the cache
            ids = torch.tensor([prompt], device=self.device)
            positions = torch.arange(len(prompt), device=self.device)[None]
            logits = self.model(ids, positions=positions, cache=self.cache.rows(index, index + 1))[:, -1, :]
        else:
            logits = _forward_full(self.model, _Batch([prompt[-self.context:]], self.device))
        self.rows[index] = row
        return self._sample([row], logits)

    @torch.inference_mode()
    def step(self) -> list[Token]:
        """One token for every running request (cancelled ones are dropped first)."""
        for i, row in enumerate(self.rows):
            if row is not None and row.request.cancelled:
                self.rows[i] = None
        busy = [row for row in self.rows if row is not None]
        if not busy:
            return []
        n = busy[-1].index + 1  # rows 0 .. n - 1; a free row among them computes a dummy token
        rows = self.rows[:n]
        if self.cached:
            lengths = torch.tensor([r.length if r else 0 for r in rows], device=self.device)  # where each writes
            span = max(r.length for r in busy) + 1
            cache = self.cache.rows(0, n)
            cache.write_rows_at(lengths, span)
            # row i sees keys 0 .. lengths[i]: its own; one row alone sees all it has, as generate() does
            mask = (torch.arange(span, device=self.device)[None, :] <= lengths[:, None])[:, None, None, :] if n > 1 else None
            tokens = torch.tensor([r.last if r else 0 for r in rows], device=self.device)[:, None]
            logits = self.model(tokens, positions=lengths[:, None], cache=cache, mask=mask)[:, -1, :]
        else:
            batch = _Batch([r.tokens[-self.context:] if r else [0] for r in rows], self.device)
            logits = _forward_full(self.model, batch)
        for r in busy:
            r.length += 1
        if len(busy) < n:
            logits = logits[[r.index for r in busy]]
        return self._sample(busy, logits)

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[Token]:
        """The next token of each row from its logits (rows, V), with its request's own options and generator."""
        if all(r.request.temperature <= 0 for r in rows):
            picked = sample_next(logits, temperature=0.0)  # greedy, every row in one call
        else:
            picked = torch.cat([sample_next(logits[i:i + 1], r.request.temperature, r.request.top_k, r.request.top_p,
                                            r.generator, r.request.min_p) for i, r in enumerate(rows)])
        out = []
        for i, (r, token) in enumerate(zip(rows, picked.tolist())):
            req = r.request
            r.generated += 1
            r.last = token
            if not self.cached:
                r.tokens.append(token)
            stop = token in req.stop_tokens
            step = Token(req, None if stop else token,
                         "stop" if stop else "length" if r.generated >= req.max_new_tokens else None)
            if req.logprobs is not None:
                step.logprob, step.top_logprobs = _logprobs(logits[i], req.temperature, token, req.logprobs)
            if step.finish is not None:
                self.rows[r.index] = None
            out.append(step)
        return out


def _logprobs(logits: torch.Tensor, temperature: float, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) under the distribution it was sampled from (logits / temperature; greedy: the logits),
    and the k likeliest tokens with theirs."""
    logp = torch.log_softmax(logits.float() / (temperature if temperature > 0 else 1.0), dim=-1)
    top = torch.topk(logp, min(k, logp.size(-1))) if k > 0 else None
    return float(logp[token]), list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
