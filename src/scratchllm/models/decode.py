"""The one decoding loop, at the models' level (a model's own answers and task metrics decode with it
too: PaliGemma's `answer`, its held-out exact match): one contract for how a token is chosen
(`Sampling`) and one loop that decodes (`Engine`). `generate` (generate.py), chat, the server and
PaliGemma are thin users of it.

    Sampling          frozen, keyword-only, checked once: max tokens, temperature, top-k, min-p, top-p, seed,
                      stop ids / strings, logprobs
    Engine.add(r)     r's prompt prefilled into a free row of one KV cache: only the part the row does not
                      hold already (a prompt that extends the row's last request, as a chat's next turn
                      does, skips the shared prefix) ──> its first token
    Engine.step()     one forward pass of (rows, 1) ──> the next token of every running request

Each row of the cache holds one request at its own length: positions count that request's tokens and a
key mask lets each row see its own keys only, so a request generates what it would alone. A row is full
when its prompt and reply fill `max_len` positions (at most the model's context); `on_full` says what
then happens: "slide" crops it to its last half and prefills that again (text goes on past the context,
one prefill per half-context of tokens), "stop" ends the request with finish "length".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.layers import pack_for_inference, padded_causal_mask
from scratchllm.layers.quantized import quantized_form
from scratchllm.models.spec import spec_of

ON_FULL = ("slide", "stop")
MAX_LOGPROBS = 20  # OpenAI's limit on the alternatives returned per token


# -- the sampling contract --------------------------------------------------------------------------

class SamplingError(ScratchLLMError, ValueError):
    """A sampling option out of its range: `field` names it, `rule` says what it must be ("field rule")."""

    def __init__(self, field_name: str, rule: str):
        super().__init__(f"{field_name} {rule}")
        self.field, self.rule = field_name, rule


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How a continuation is sampled: the one set of options of Python, the CLI, chat and the server.

      max_tokens   the most new tokens (>= 1)
      temperature  0: greedy, the likeliest token; otherwise logits / temperature (>= 0)
      top_k        keep the k likeliest tokens (>= 0; 0: off)
      top_p        keep the fewest likeliest tokens whose probability reaches top_p (0 < top_p <= 1; 1: off)
      min_p        drop tokens less likely than min_p times the likeliest (0 <= min_p < 1; 0: off)
      seed         seeds the request's own random generator (0 to 2**64 - 1; None: from the OS)
      stop         token ids and strings that end the reply, which never holds them (a string needs a
                   tokenizer: `Pretrained.stream`; the model's own end-of-turn tokens are added there)
      logprobs     None, or k from 0 to 20: each token's log-probability and the k likeliest alternatives

    The filters apply in that order: temperature, top-k, min-p, top-p (`next_token_probs`). A value out
    of range raises `SamplingError`, a ValueError whose one-line message names the field and its range.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[int | str, ...] = ()
    logprobs: int | None = None

    def __post_init__(self):
        def check(name: str, ok: bool, rule: str, value: Any = None) -> None:
            if not ok:
                raise SamplingError(name, f"{rule}, got {value if value is not None else getattr(self, name)!r}")

        check("max_tokens", _integer(self.max_tokens) and self.max_tokens >= 1, "must be an integer of at least 1")
        check("temperature", _number(self.temperature) and self.temperature >= 0, "must be a number >= 0 (0: greedy)")
        check("top_k", _integer(self.top_k) and self.top_k >= 0, "must be an integer >= 0 (0: off)")
        check("top_p", _number(self.top_p) and 0 < self.top_p <= 1, "must be a number in (0, 1] (1: off)")
        check("min_p", _number(self.min_p) and 0 <= self.min_p < 1, "must be a number in [0, 1) (0: off)")
        check("seed", self.seed is None or (_integer(self.seed) and 0 <= self.seed < 2**64),
              "must be an integer from 0 to 2**64 - 1, or none")
        check("logprobs", self.logprobs is None or (_integer(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
              f"must be an integer from 0 to {MAX_LOGPROBS}, or none")
        stop = (self.stop,) if isinstance(self.stop, (str, int)) else self.stop
        try:
            stop = tuple(stop)
        except TypeError:
            stop = None
        check("stop", stop is not None and all((_integer(s) and s >= 0) or (isinstance(s, str) and s) for s in stop),
              "must hold token ids (integers >= 0) and non-empty strings", list(stop or [self.stop]))
        object.__setattr__(self, "stop", tuple(dict.fromkeys(stop)))  # in order, each once

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def stop_ids(self) -> frozenset[int]:
        return frozenset(s for s in self.stop if not isinstance(s, str))

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return tuple(s for s in self.stop if isinstance(s, str))

    def replace(self, **changes) -> Sampling:
        """A copy with some options changed (checked again)."""
        return dataclasses.replace(self, **changes)


GREEDY = Sampling(temperature=0.0)


def _filtered(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Unnormalised probabilities (B, V) in fp32 after temperature, top-k, min-p and top-p (not greedy)."""
    logits = logits.float()
    if s.temperature < 0.01:  # logits / 1e-30 would be +-inf, and softmax NaN: shift the largest to 0 first
        logits = logits - logits.max(dim=-1, keepdim=True).values
    # At least 1e-30: CUDA divides by a scalar as a product with its reciprocal, which for a temperature under
    # 2.9e-39 (1e-45 say) is inf, and the best token's 0 x inf is NaN; the CPU divides. Past 1e-30 nothing changes
    # (exp(-gap / 1e-30) is already 0 for any gap between two fp32 logits of a real model).
    logits = logits / max(s.temperature, 1e-30)
    if 0 < s.top_k < logits.size(-1):
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if s.min_p > 0.0:
        # min-p (Nguyen et al. 2024): drop tokens less likely than min_p times the most likely one
        probs = probs.masked_fill(probs < s.min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    if s.top_p < 1.0:
        # Keep the smallest set of tokens whose probability reaches top_p (always at least the best one).
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        total = sorted_probs.sum(dim=-1, keepdim=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above each one
        # (before > 0: the best token stays even when top_p * total underflows to 0, as top_p=1e-320 does)
        sorted_probs = sorted_probs.masked_fill((before >= s.top_p * total) & (before > 0), 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return probs


def next_token_probs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution (B, V), fp32, summing to 1, that `sample_next` draws the next token from, given
    last-position logits (B, V): greedy puts all of it on the likeliest token."""
    if sampling.greedy:
        return torch.zeros_like(logits, dtype=torch.float32).scatter(-1, logits.float().argmax(-1, keepdim=True), 1.0)
    probs = _filtered(logits, sampling)
    return probs / probs.sum(dim=-1, keepdim=True)


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V), drawn with `generator`."""
    if sampling.greedy:  # in fp32: torch's bf16 argmax over 49k logits takes 150 us here, fp32's 26 (the same index)
        if logits.device.type == "cpu":  # numpy's: 5 us where torch's took 45 in the decoding loop (the same first
            return torch.from_numpy(logits.detach().float().numpy().argmax(-1))  # maximum, a NaN's index first)
        return logits.float().argmax(dim=-1)
    return torch.multinomial(_filtered(logits, sampling), 1, generator=generator).squeeze(-1)


def _seeded_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A random generator on `device`, seeded with `seed`, or from the OS when it is None."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    return generator


# -- the engine -------------------------------------------------------------------------------------

@dataclass(eq=False)
class Request:
    """One prompt for the `Engine` and how to sample its continuation.

    `embeds` (P, C), optional, replaces the prompt's token embeddings at prefill (PaliGemma puts image
    features in its <image> slots); `prefix_lm` lets the whole prompt attend to itself both ways."""

    prompt: Sequence[int]
    sampling: Sampling = GREEDY
    embeds: torch.Tensor | None = None
    prefix_lm: bool = False
    cancelled: bool = False  # set from any thread; the engine drops the request at its next call
    cached_tokens: int = 0  # set by the engine when it admits the request: prompt tokens its row already held


@dataclass
class Token:
    """What a step gave one request: its new token (None for a stop token, which ends the reply and
    is not part of it), why the request finished (None while it goes on) and, when asked for, the
    log-probability of the token and of the likeliest ones, [(id, logprob), ...]."""

    request: Request
    token: int | None
    finish: str | None = None  # "stop" (a stop token) or "length" (max_tokens, or a full row with on_full="stop")
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass(eq=False)
class _Row:
    request: Request
    index: int  # the row of the cache it holds
    generator: torch.Generator
    stop_ids: frozenset[int]
    last: int = 0  # the token sampled last: the next step feeds it
    generated: int = 0


def decoding_bf16_layout(model: nn.Module, fused: bool = True) -> str:
    """The layout `pack_for_inference` copies a bf16 model's projections into for an engine: where it decodes with
    the model type's fused step (`fused`), that type's choice (a Llama's step reads (out, in) rows), else oneDNN's
    (the forward pass's products of several rows)."""
    choose = spec_of(model).decoding_bf16_layout
    return choose(model) if fused and choose is not None else "onednn"


def kv_cache_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of an engine's KV cache: the model's, but bf16 for a quantized model on the CPU (its other tensors
    stay fp32). Decoding reads the whole cache at every token: over a long prompt SmolLM2's fp32 keys and values
    (~21 MB a token at 463 positions) cost a quantized step as much as a fifth of its weights. The one-call step
    alone, alternated (AMD EPYC, 2 threads), at keys 401-440 against 1-40: int8 9.00 ms with an fp32 cache, 8.24
    with bf16 (7.39 / 7.19 at 1-40); int4 8.62 / 7.60 (7.02 / 6.99). llama.cpp's cache is f16."""
    weights = next(model.parameters())
    if weights.device.type == "cpu" and quantized_form(model) is not None:
        return torch.bfloat16
    return weights.dtype


class Engine:
    """The one decoding loop: requests join the running batch between steps and leave when done.

    One KV cache of (max_batch, max_len) is allocated once, in the model's dtype on its device. A
    request takes a free row: the one whose cached tokens share the longest prefix with its prompt
    (only the rest is prefilled), else an empty or the least recently used one. Greedy, a request gets
    the tokens it gets alone; sampled, the same tokens for the same seed (each request draws from its
    own seeded generator). A step covers the span of busy rows, so a lone request runs at batch 1.

    The running requests step together in one call into C where the model type has such a step for these
    weights (`ModelSpec.fused_step`: a Llama block, models/llama_step.py), the same logits to fp32 rounding
    without the forward pass's ~60 operator calls a layer, each row's the bits it gets alone; `fused=False`
    takes the forward pass (prefills always do).

    Not thread-safe: one thread owns it (serve/worker.py); only `Request.cancelled` may be set from
    elsewhere. A model whose spec generates by "recompute" (the bigram), or `use_cache=False`, runs the
    whole window of each row at every step instead of a cache.
    """

    def __init__(self, model: nn.Module, max_batch: int = 8, max_len: int | None = None, *, on_full: str = "slide",
                 use_cache: bool = True, first_position: int = 0, fused: bool = True):
        spec = spec_of(model)
        if spec.generation is None:
            raise ScratchLLMError(f"a {spec.model_type} model does not generate text from a prompt")
        if max_batch < 1:
            raise ScratchLLMError(f"max_batch must be at least 1, got {max_batch}")
        if on_full not in ON_FULL:
            raise ScratchLLMError(f"on_full must be one of {', '.join(ON_FULL)}, got {on_full!r}")
        self.model, self.device = model, next(model.parameters()).device
        # CPU: a copy of the weights in the layout decoding reads fastest, for the engine's life (layers/linear.py)
        pack_for_inference(model, decoding_bf16_layout(model, fused and use_cache))
        context = model.config.block_size
        self.max_len = min(max_len or context, context)  # positions of a row: prompt and reply
        self.vocab_size = spec.vocab_size(model.config)
        self.on_full, self.first_position = on_full, first_position  # PaliGemma counts positions from 1
        self.cached = use_cache and spec.generation == "cached"  # a bigram has nothing to cache
        self.cache = model.new_cache(max_batch, self.max_len, kv_cache_dtype(model), self.device) if self.cached else None
        # the running requests' step in one call where the model type has one for these weights (a Llama block)
        self.fused = spec.fused_step(model, self.cache) if fused and self.cached and spec.fused_step else None
        self.rows: list[_Row | None] = [None] * max_batch
        self.kept: list[list[int]] = [[] for _ in range(max_batch)]  # tokens each row holds, fed in order
        self.reusable = [False] * max_batch  # a row's kept tokens stand for its cache (not after image embeds)
        self._used = [0] * max_batch  # when each row was last taken, to evict the least recently used
        self._clock = 0

    @property
    def free_rows(self) -> int:
        return self.rows.count(None)

    @property
    def running(self) -> list[Request]:
        return [r.request for r in self.rows if r is not None]

    # -- admission ------------------------------------------------------------------------------

    @torch.inference_mode()
    def add(self, request: Request) -> list[Token]:
        """Prefill the request's prompt into a free row and sample its first token."""
        return self.add_all([request])

    @torch.inference_mode()
    def add_all(self, requests: Sequence[Request]) -> list[Token]:
        """`add` for several requests; cold ones that land in adjacent rows are prefilled in one pass."""
        self._drop_cancelled()
        prompts = [self._checked_prompt(r) for r in requests]
        if len(requests) > self.free_rows:
            raise ScratchLLMError("every row of the engine is busy; wait for a request to finish")
        plans = []  # (row index, prompt, tokens its cache already holds)
        for r, prompt in zip(requests, prompts):
            index, shared = self._choose_row(prompt, reuse=r.embeds is None, taken={p[0] for p in plans})
            plans.append((index, prompt, shared))
        indices = sorted(p[0] for p in plans)
        together = (len(plans) > 1 and self.cached and all(p[2] == 0 for p in plans)
                    and indices == list(range(indices[0], indices[0] + len(plans)))
                    and len({r.prefix_lm for r in requests}) == 1 and len({r.embeds is None for r in requests}) == 1)
        rows = []
        for r, (index, prompt, shared) in zip(requests, plans):
            r.cached_tokens = shared
            self._clock += 1
            self._used[index] = self._clock
            self.kept[index], self.reusable[index] = prompt[:shared], False  # until the prefill has written the rest
            rows.append(_Row(r, index, _seeded_generator(r.sampling.seed, self.device), r.sampling.stop_ids))
        if together:
            logits = self._prefill_together(requests, plans)
        else:
            logits = torch.cat([self._prefill(index, prompt, shared, r) for r, (index, prompt, shared) in zip(requests, plans)])
        for r, row, (index, prompt, _) in zip(requests, rows, plans):
            self.kept[index], self.reusable[index] = list(prompt), r.embeds is None
            self.rows[index] = row
        return self._sample(rows, logits)

    def _checked_prompt(self, request: Request) -> list[int]:
        prompt = list(request.prompt)
        if not prompt:
            raise ScratchLLMError("every prompt needs at least one token")
        bad = next((t for t in prompt if not (_integer(t) and 0 <= t < self.vocab_size)), None)
        if bad is not None:
            raise ScratchLLMError(f"token id {bad!r} is outside the model's vocabulary (ids 0 to {self.vocab_size - 1})")
        if len(prompt) >= self.max_len and (self.on_full == "stop" or request.embeds is not None):
            raise ScratchLLMError(f"the prompt is {len(prompt)} tokens and the context {self.max_len}, which leaves no "
                                  "room for a reply; send a shorter prompt")
        return prompt[-self.max_len:]  # sliding: the prompt's last window

    def _choose_row(self, prompt: list[int], reuse: bool, taken: set[int]) -> tuple[int, int]:
        """(a free row, how many of the prompt's first tokens its cache holds already)."""
        free = [i for i, row in enumerate(self.rows) if row is None and i not in taken]
        best, best_shared = None, 0
        if reuse and self.cached:
            for i in free:
                if self.reusable[i]:
                    shared = _common_prefix(self.kept[i], prompt, len(prompt) - 1)  # prefill at least one token
                    if shared > best_shared:
                        best, best_shared = i, shared
        if best is None:  # an empty row, or the one used longest ago
            best = min(free, key=lambda i: (bool(self.kept[i]), self._used[i], i))
        return best, best_shared

    def _prefill(self, index: int, prompt: list[int], shared: int, request: Request | None = None) -> torch.Tensor:
        """Logits (1, V) after prompt[shared:] is written into row `index`, whose cache holds prompt[:shared]."""
        if not self.cached:
            return _forward_full(self.model, _Batch([prompt], self.device))
        view = self.cache.rows(index, index + 1, length=shared)
        new = len(prompt) - shared
        positions = torch.arange(shared, len(prompt), device=self.device)[None] + self.first_position
        mask = None
        if request is not None and request.prefix_lm:  # every prompt token sees every other
            mask = torch.ones(1, 1, new, len(prompt), dtype=torch.bool, device=self.device)
        embeds = request.embeds[None, shared:] if request is not None and request.embeds is not None else None
        ids = None if embeds is not None else torch.tensor([prompt[shared:]], device=self.device)
        return self._forward(ids, positions, view, mask, embeds, logits_at=torch.full((1,), new - 1, device=self.device))

    def _prefill_together(self, requests: Sequence[Request], plans) -> torch.Tensor:
        """One pass over adjacent cold rows, prompts right-padded: each row's keys land at positions 0..P-1
        as alone, and what padding writes past them is hidden by the step's mask until overwritten."""
        order = sorted(range(len(plans)), key=lambda k: plans[k][0])
        lo, width = plans[order[0]][0], max(len(p[1]) for p in plans)
        ids = torch.zeros(len(plans), width, dtype=torch.long)
        valid = torch.zeros(len(plans), width, dtype=torch.bool)
        embeds = None
        if requests[0].embeds is not None:
            embeds = torch.zeros(len(plans), width, requests[0].embeds.size(-1), dtype=requests[0].embeds.dtype,
                                 device=self.device)
        for row, k in enumerate(order):
            prompt = plans[k][1]
            ids[row, :len(prompt)] = torch.tensor(prompt)
            valid[row, :len(prompt)] = True
            if embeds is not None:
                embeds[row, :len(prompt)] = requests[k].embeds
        ids, valid = ids.to(self.device), valid.to(self.device)
        positions = torch.arange(width, device=self.device)[None].expand(len(plans), width) + self.first_position
        mask = padded_causal_mask(valid, width, prefix=valid if requests[0].prefix_lm else None)
        last = valid.sum(-1) - 1  # each row's last prompt position
        logits = self._forward(None if embeds is not None else ids, positions, self.cache.rows(lo, lo + len(plans)), mask,
                               embeds, logits_at=last)  # (rows in cache order, V)
        back = [0] * len(plans)
        for row, k in enumerate(order):
            back[k] = row
        return logits[back]

    def _forward(self, ids, positions, cache, mask, embeds, logits_at: torch.Tensor) -> torch.Tensor:
        """A prefill's pass: the logits (B, V) at `logits_at` (B,), each row's last prompt position only."""
        extra = {"embeds": embeds} if embeds is not None else {}
        return self.model(ids, positions=positions, cache=cache, mask=mask, logits_at=logits_at, **extra)

    # -- decoding -------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Token]:
        """One token for every running request (cancelled ones are dropped first)."""
        self._drop_cancelled()
        busy = [row for row in self.rows if row is not None]
        if not busy:
            return []
        if not self.cached:
            for r in busy:
                self.kept[r.index] = self._window(self.kept[r.index] + [r.last])
            return self._sample(busy, _forward_full(self.model, _Batch([self.kept[r.index] for r in busy], self.device)))
        logits: dict[int, torch.Tensor] = {}
        stepping = []
        for r in busy:
            if len(self.kept[r.index]) >= self.max_len:  # full ("slide"): its last half-window, prefilled again
                self.kept[r.index] = self._window(self.kept[r.index] + [r.last])
                logits[r.index] = self._prefill(r.index, self.kept[r.index], 0)
            else:
                stepping.append(r)
        together = None  # every busy row's logits from one call, in busy's order
        if self.fused is not None and stepping:  # every row in one call into C, each at its own position
            out = self.fused.step_rows([r.last for r in stepping],
                                       [len(self.kept[r.index]) + self.first_position for r in stepping],
                                       [r.index for r in stepping])
            if len(stepping) == len(busy):  # the common case: out is already every row's, in busy's order
                together = out
            else:
                logits.update({r.index: out[i:i + 1] for i, r in enumerate(stepping)})
        elif len(stepping) == 1:  # alone: its own row of the cache, no mask
            r = stepping[0]
            length = len(self.kept[r.index])
            view = self.cache.rows(r.index, r.index + 1, length=length)
            token = torch.tensor([[r.last]], device=self.device)
            positions = torch.tensor([[length + self.first_position]], device=self.device)
            logits[r.index] = self.model(token, positions=positions, cache=view)[:, -1]
        elif stepping:
            logits.update(self._step_together(stepping))
        for r in stepping:
            self.kept[r.index].append(r.last)
        return self._sample(busy, together if together is not None else torch.cat([logits[r.index] for r in busy]))

    def _step_together(self, stepping: list[_Row]) -> dict[int, torch.Tensor]:
        """One pass over the span of rows lo..hi, each writing its new key where it has got to; a row in
        the span that is not stepping writes a throwaway key just past what it holds."""
        lo, hi = stepping[0].index, stepping[-1].index
        by_index = {r.index: r for r in stepping}
        lengths, tokens = [], []
        for i in range(lo, hi + 1):
            length = len(self.kept[i])
            if i not in by_index and length >= self.max_len:  # no room past it: its last token's key goes
                self.kept[i].pop()
                length -= 1
            lengths.append(length)
            tokens.append(by_index[i].last if i in by_index else 0)
        lengths_t = torch.tensor(lengths, device=self.device)
        span = max(lengths) + 1
        cache = self.cache.rows(lo, hi + 1)
        cache.write_rows_at(lengths_t, span)
        mask = (torch.arange(span, device=self.device)[None, :] <= lengths_t[:, None])[:, None, None, :]  # its own keys
        out = self.model(torch.tensor(tokens, device=self.device)[:, None], positions=lengths_t[:, None] + self.first_position,
                         cache=cache, mask=mask)[:, -1]
        return {i: out[i - lo:i - lo + 1] for i in by_index}

    def _window(self, tokens: list[int]) -> list[int]:
        """A row's tokens once it passes max_len: its last half (on_full="slide"; "stop" never gets here)."""
        return tokens if len(tokens) <= self.max_len else tokens[-max(1, self.max_len // 2):]

    def _drop_cancelled(self) -> None:
        for i, row in enumerate(self.rows):
            if row is not None and row.request.cancelled:
                self.rows[i] = None  # what its cache holds stays reusable

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[Token]:
        """The next token of each row from its logits (rows, V), with its request's own options and generator."""
        if all(r.request.sampling.greedy for r in rows):
            picked = sample_next(logits, GREEDY)  # every row in one call
        else:
            picked = torch.cat([sample_next(logits[i:i + 1], r.request.sampling, r.generator) for i, r in enumerate(rows)])
        out = []
        for i, (r, token) in enumerate(zip(rows, picked.tolist())):
            s = r.request.sampling
            r.generated += 1
            r.last = token
            stop = token in r.stop_ids
            full = self.on_full == "stop" and len(self.kept[r.index]) + 1 >= self.max_len
            step = Token(r.request, None if stop else token,
                         "stop" if stop else "length" if r.generated >= s.max_tokens or full else None)
            if s.logprobs is not None:
                step.logprob, step.top_logprobs = _logprobs(logits[i], s.temperature, token, s.logprobs)
            if step.finish is not None:
                self.rows[r.index] = None
            out.append(step)
        return out


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b[:limit]):
        if x != y:
            break
        n += 1
    return n


def _logprobs(logits: torch.Tensor, temperature: float, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) under the distribution it was sampled from (logits / temperature; greedy: the logits),
    and the k likeliest tokens with theirs."""
    logp = torch.log_softmax(logits.float() / (temperature if temperature > 0 else 1.0), dim=-1)
    top = torch.topk(logp, min(k, logp.size(-1))) if k > 0 else None
    return float(logp[token]), list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []


class _Batch:
    """Left-padded token rows with their padding mask (a model without a cache runs them whole)."""

    def __init__(self, rows: list[list[int]], device):
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            valid[i, width - len(r):] = True
        self.ids, self.valid = ids.to(device), valid.to(device)  # built on the CPU, copied once
        self.padded = bool((~valid).any())


def _forward_full(model: nn.Module, batch: _Batch) -> torch.Tensor:
    """Logits (B, V) at the last position of every row, over the whole batch (positions count real tokens)."""
    mask = padded_causal_mask(batch.valid, batch.ids.size(1)) if batch.padded else None
    positions = (batch.valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
    return model(batch.ids, positions=positions, mask=mask)[:, -1, :]
