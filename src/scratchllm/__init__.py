"""scratchllm: language models from scratch, trained, sampled and checked against the references."""

from __future__ import annotations

from pathlib import Path

from scratchllm.errors import ScratchLLMError

__version__ = "0.1.0"


def load_pretrained(path: str | Path, device: str = "cpu"):
    """A trained model in eval mode from a checkpoint folder (or a run folder's latest/).

    `model(idx)` with idx of shape (batch, time) returns logits of shape (batch, time, vocab).
    The tokenizer is `model.tokenizer`. To train, see `scratchllm.train.run.train`.
    """
    from scratchllm.train.checkpoint import load_checkpoint

    model, tokenizer, _ = load_checkpoint(path, device=device)
    model.tokenizer = tokenizer
    return model


__all__ = ["ScratchLLMError", "load_pretrained", "__version__"]
