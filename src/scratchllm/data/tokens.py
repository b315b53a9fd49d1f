"""Text to a flat tensor of token ids, in the smallest integer type that holds the vocabulary."""

from __future__ import annotations

import torch

from scratchllm.data.corpora import load_text
from scratchllm.tokenizers import CharTokenizer


def smallest_dtype(vocab_size: int) -> torch.dtype:
    if vocab_size <= 256:
        return torch.uint8
    if vocab_size <= 32768:
        return torch.int16
    return torch.int32


def encode_corpus(source: str, tokenizer=None):
    """(tokenizer, 1-D token tensor) for a corpus name or path; trains a char tokenizer if none is given."""
    text = load_text(source)
    tokenizer = tokenizer or CharTokenizer.train(text)
    ids = tokenizer.encode(text)
    return tokenizer, torch.tensor(ids, dtype=smallest_dtype(tokenizer.vocab_size))
