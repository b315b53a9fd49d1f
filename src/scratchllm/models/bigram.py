"""The bigram baseline: the next token depends only on the current one, through a (V, V) table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.config import DERIVED
from scratchllm.models.limits import check_sizes
from scratchllm.models.spec import ModelSpec, register
from scratchllm.models.tasks import LANGUAGE


@dataclass
class BigramConfig:
    vocab_size: int = field(default=0, metadata=DERIVED)  # set from the tokenizer
    block_size: int = 8  # length of the training sequences; the model itself looks back one token

    def __post_init__(self):
        check_sizes(self, "vocab_size", "block_size")


class Bigram(nn.Module):
    def __init__(self, config: BigramConfig):
        super().__init__()
        self.config = config
        # Row i holds the logits of the token after token i. Zeros start at the uniform distribution.
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.zeros_(self.table.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, positions=None, cache=None, mask=None):
        """Positions, cache and mask mean nothing to a bigram; they are accepted so one sampler serves all."""
        logits = self.table(idx)  # (B, T) -> (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss


# -- spec: the bigram generates by looking at the last token only, so there is nothing to cache
SPEC = register(ModelSpec(
    "bigram", Bigram, BigramConfig, task=LANGUAGE,
    finish_config=lambda config, tokenizer: dataclasses.replace(config, vocab_size=tokenizer.vocab_size),
    generation="recompute", commands=frozenset({"train", "sample", "eval", "chat", "serve"}), linear_weights=False,
))
