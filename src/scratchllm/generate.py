"""Generating token ids in Python: `generate` and `generate_batch`, thin wrappers over the one decoding
loop (`Engine`, models/decode.py) and its sampling contract (`Sampling`), both re-exported here.

    generate(model, ids, 50, temperature=0.8, top_p=0.95, seed=1)   ──> new ids, one at a time
    generate_batch(model, [ids, ids2], 50, temperature=0)            ──> each step's new id of every row

Rows decode in one `Engine` and each generates what it would alone; past the model's context a row
slides (on_full="slide": its last half is prefilled again) or stops (on_full="stop").
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.layers import packed_for_inference
from scratchllm.models.decode import (GREEDY, MAX_LOGPROBS, ON_FULL, Engine, Request, Sampling, SamplingError, Token,
                                      decoding_bf16_layout, next_token_probs, sample_next)

__all__ = ["GREEDY", "MAX_LOGPROBS", "ON_FULL", "Engine", "Request", "Sampling", "SamplingError", "Token", "generate",
           "generate_batch", "next_token_probs", "sample_next", "sampling_from"]


# -- generate: the engine, for token ids in Python ---------------------------------------------------

def sampling_from(sampling: Sampling | None = None, max_new_tokens: int | None = None, **options) -> Sampling:
    """A Sampling from one given whole or from its fields as keyword arguments (`stop_tokens` is `stop`'s
    older name), with `max_new_tokens` as its max_tokens when given."""
    if "stop_tokens" in options:
        options["stop"] = tuple(options.pop("stop_tokens"))
    if sampling is not None:
        if options:
            raise TypeError(f"give sampling= or its options ({', '.join(options)}), not both")
        return sampling if max_new_tokens is None else sampling.replace(max_tokens=max_new_tokens)
    if max_new_tokens is not None:
        options["max_tokens"] = max_new_tokens
    return Sampling(**options)


@torch.inference_mode()
def generate_batch(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int | None = None, *,
                   sampling: Sampling | None = None, use_cache: bool = True, on_full: str = "slide",
                   fused: bool = True, **options) -> Iterator[list[int | None]]:
    """Yield, at each step, the new token of every prompt's row (None for a row that has stopped).

    The options are `Sampling`'s fields (temperature=, top_k=, top_p=, min_p=, seed=, stop= token ids;
    or a whole `sampling=`); `max_new_tokens` is its max_tokens. A row stops after max_new_tokens or at a
    stop token (not yielded). Each row decodes what it would alone, in one `Engine`. On the CPU the
    model's weights are packed for the call (layers/linear.py), unless they already are; the rows step
    together in one call into C where the model type has such a step (`fused=False`: the forward pass instead)."""
    s = sampling_from(sampling, max_new_tokens, **options)
    if s.stop_strings:
        raise SamplingError("stop", f"strings need a tokenizer ({s.stop_strings[0]!r}): use Pretrained.stream, or "
                                    "give token ids")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ScratchLLMError("every prompt needs at least one token")
    # the cache holds what this call can reach: a short reply from a long-context model (SmolLM2: 8192)
    # need not allocate, and zero, the whole context
    reach = max(len(p) for p in prompts) + s.max_tokens
    with packed_for_inference(model, decoding_bf16_layout(model, fused and use_cache)):
        engine = Engine(model, len(prompts), min(model.config.block_size, reach), on_full=on_full, use_cache=use_cache,
                        fused=fused)
        requests = [Request(p, s) for p in prompts]
        row_of = {id(r): i for i, r in enumerate(requests)}
        tokens = engine.add_all(requests)
        while tokens:
            step: list[int | None] = [None] * len(requests)
            for t in tokens:
                step[row_of[id(t.request)]] = t.token
            yield step
            tokens = engine.step()


def generate(model: nn.Module, prompt_ids: Sequence[int], max_new_tokens: int | None = None, *,
             sampling: Sampling | None = None, use_cache: bool = True, on_full: str = "slide", fused: bool = True,
             **options) -> Iterator[int]:
    """One prompt: yield new token ids one at a time (a streaming iterator); see `generate_batch`.

        generate(model, ids, 50, temperature=0.8, top_p=0.95, seed=1)"""
    for step in generate_batch(model, [prompt_ids], max_new_tokens, sampling=sampling, use_cache=use_cache,
                               on_full=on_full, fused=fused, **options):
        if step[0] is None:
            return
        yield step[0]
