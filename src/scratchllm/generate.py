"""Autoregressive generation over a KV cache: prefill the prompts once, then decode a token a step.

    prompts ──left-pad──> prefill (all prompt tokens, one pass, fills the cache)
            ──> loop: sample (temperature, top-k, top-p, min-p) ──> feed 1 token per row ──> ...

Rows of different lengths are left-padded: padding is masked out of attention and positions count
real tokens only, so each row generates exactly what it would alone. When a row reaches the
model's context, every row is cropped to the last half-context and prefilled again (a sliding
window at the cost of one prefill per half-context of tokens).
"""

from __future__ import annotations

import codecs
from typing import Iterator, Sequence

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.layers import padded_causal_mask
from scratchllm.models import spec_of


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None,
                min_p: float | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
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
        sorted_probs = sorted_probs.masked_fill(before >= top_p * total, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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

    A row stops after max_new_tokens or at one of `stop_tokens` (which is not yielded)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ScratchLLMError("every prompt needs at least one token")
    spec = spec_of(model)
    if spec.generation is None:
        raise ScratchLLMError(f"a {spec.model_type} model does not generate text from a prompt")
    weights = next(model.parameters())
    device, dtype = weights.device, weights.dtype  # the cache holds keys and values in the compute dtype
    context = model.config.block_size
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
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
