"""What a model type trains on, how it is evaluated, and which task metrics it reports.

    LanguageModeling   a text corpus -> random windows to train on; the whole validation split to
                       evaluate (loss, bits per character and per byte)
    ShapesWorld        the generated shapes world (data/shapes.py) -> image batches; held-out scenes
                       to evaluate, with a task metric (SigLIP: retrieval R@1, PaliGemma: exact match)

A spec (models/spec.py) names its task; the trainer, `scratchllm eval` and `train/run.py` call the
task's `prepare`, `metrics` and `evaluate` without knowing which one it is.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable

import torch

from scratchllm.errors import ScratchLLMError


@torch.no_grad()
def mean_loss(model, batches, batch_iter: Iterable[dict], device: torch.device, bytes_per_token: torch.Tensor,
              autocast=contextlib.nullcontext) -> tuple[float, float | None]:
    """(mean loss, bits per byte or None) over the batches of `batch_iter`, each batch's mean loss
    weighted by what it is a mean over (`batches.count`). The model is left in eval mode."""
    model.eval()
    nats, count, nbytes = 0.0, 0, 0.0
    for batch in batch_iter:
        with autocast():
            _, loss = model(**{k: v.to(device, non_blocking=True) for k, v in batch.items()})
        n, b = batches.count(batch, bytes_per_token)
        nats += loss.item() * n
        count += n
        nbytes += b
    if count == 0:
        raise ScratchLLMError("nothing to evaluate: the evaluation set is empty")
    return nats / count, (nats / math.log(2) / nbytes if nbytes else None)


def bytes_per_token(tokenizer) -> torch.Tensor:
    """(vocab,) float64: UTF-8 bytes each id stands for; special tokens stand for none."""
    return torch.tensor(tokenizer.bytes_per_token(), dtype=torch.float64)


class LanguageModeling:
    """Next-token prediction on a text corpus (a name, a path, or a folder made by `scratchllm prepare`)."""

    name = "language"

    def prepare(self, spec, config, tokenizer, tokenizer_config, data: str | None, seed: int, progress: bool = True):
        """(finished config, tokenizer, batches, corpus name) for training."""
        from scratchllm.data.batches import TokenBatches
        from scratchllm.data.tokens import corpus_tokens

        data = data or "shakespeare"
        tokenizer, train, val = corpus_tokens(data, tokenizer, tokenizer_config, progress=progress)
        config = spec.finish_config(config, tokenizer)
        return config, tokenizer, TokenBatches(train, val, config.block_size, seed=seed), data

    def metrics(self, model, batches) -> dict[str, float]:
        return {}  # the losses say it all

    def evaluate(self, model, tokenizer, data: str, batch_size: int = 32, max_batches: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
        """Loss over the whole validation split in consecutive, non-overlapping windows."""
        from scratchllm.data.batches import TokenBatches
        from scratchllm.data.tokens import corpus_tokens

        _, _, val = corpus_tokens(data, tokenizer, progress=progress)
        T = model.config.block_size
        batches = TokenBatches(val, val, T, seed=0)
        windows = list(batches.sequential("val", batch_size))[:max_batches]
        nbytes = tokenizer.bytes_per_token()
        loss, _ = mean_loss(model, batches, windows, next(model.parameters()).device,
                            torch.tensor(nbytes, dtype=torch.float64))
        targets = [i for w in windows for i in w["targets"].flatten().tolist() if nbytes[i] > 0]
        text = tokenizer.decode_bytes(targets)  # what the targets spell, special tokens left out
        n_tokens = sum(w["targets"].numel() for w in windows)
        nats = loss * n_tokens
        return {"loss": loss, "bits_per_token": loss / math.log(2), "tokens": n_tokens, "data": data,
                "bits_per_char": nats / math.log(2) / len(text.decode("utf-8", errors="replace")),
                "bits_per_byte": nats / math.log(2) / len(text)}


class ShapesWorld:
    """Images of the generated shapes world with captions or questions; no corpus to choose."""

    name = "shapes"

    def __init__(self, make_batches: Callable[[Any, Any, int], Any], metric: str, score: Callable[[Any, Any], float]):
        self.make_batches = make_batches  # (finished config, tokenizer, seed) -> ShapesBatches
        self.metric, self.score = metric, score  # the task metric's name and (model, batches) -> value

    def prepare(self, spec, config, tokenizer, tokenizer_config, data: str | None, seed: int, progress: bool = True):
        from scratchllm.data.vision_language import shapes_tokenizer

        if data not in (None, "shapes"):
            raise ScratchLLMError(f"{spec.model_type} models train on the generated shapes world; --data {data} does not apply (leave it out)")
        tokenizer = tokenizer or shapes_tokenizer(tokenizer_config)  # a resumed run brings its own
        config = spec.finish_config(config, tokenizer)
        return config, tokenizer, self.make_batches(config, tokenizer, seed), "shapes"

    def metrics(self, model, batches) -> dict[str, float]:
        return {self.metric: self.score(model, batches)}

    def evaluate(self, model, tokenizer, data: str, batch_size: int = 32, max_batches: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
        """Loss over the held-out scenes and the task metric."""
        if data not in (None, "shapes"):
            raise ScratchLLMError(f"this model is evaluated on held-out shapes-world scenes; --data {data} does not apply")
        batches = self.make_batches(model.config, tokenizer, 0)
        n = math.ceil(len(batches.held_out) / batch_size)
        held_out = batches.eval_batches("val", batch_size, min(n, max_batches or n))
        loss, bpb = mean_loss(model, batches, held_out, next(model.parameters()).device, bytes_per_token(tokenizer))
        return {"loss": loss, "bits_per_byte": bpb, "examples": len(batches.held_out), "data": "shapes",
                **self.metrics(model, batches)}


LANGUAGE = LanguageModeling()
