"""Named configurations: a model type, its config, the trainer's config and the tokenizer kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scratchllm.data.tokens import TokenizerConfig
from scratchllm.errors import ScratchLLMError
from scratchllm.models.bigram import BigramConfig
from scratchllm.models.gpt import GPTConfig
from scratchllm.train.config import TrainConfig


@dataclass
class Preset:
    name: str
    model_type: str
    model: Any
    train: TrainConfig
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    description: str = ""


PRESETS: dict[str, Preset] = {}


def _register(p: Preset) -> None:
    PRESETS[p.name] = p


_register(Preset(
    "bigram-char", "bigram",
    # A table has nothing to overfit and nothing to regularise: big batches (4096 tokens) and a high
    # learning rate that decays far, so it settles at the count-based optimum (2.48 on TinyShakespeare).
    BigramConfig(block_size=32),
    TrainConfig(batch_size=128, max_steps=2000, lr=1e-1, min_lr=1e-3, warmup_steps=0, weight_decay=0.0,
                betas=(0.9, 0.99), grad_clip=0.0, eval_interval=500, eval_batches=50),
    description="the baseline: a next-character table",
))
_register(Preset(
    "gpt-char-baby", "gpt",
    GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    TrainConfig(batch_size=12, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1,
                betas=(0.9, 0.99), grad_clip=1.0, eval_interval=250, eval_batches=20),
    description="nanoGPT's CPU 'baby GPT' (0.8M parameters, a few minutes on a laptop)",
))
_register(Preset(
    "gpt-char", "gpt",
    GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    TrainConfig(batch_size=64, max_steps=5000, lr=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1,
                betas=(0.9, 0.99), grad_clip=1.0, eval_interval=250, eval_batches=200),
    description="nanoGPT's shakespeare_char (10.7M parameters; meant for a GPU)",
))

_register(Preset(
    "gpt-bpe-baby", "gpt",
    # the baby GPT on BPE tokens: a context of 128 tokens is about 500 characters of Shakespeare
    GPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    TrainConfig(batch_size=16, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1,
                betas=(0.9, 0.99), grad_clip=1.0, eval_interval=250, eval_batches=20),
    TokenizerConfig(kind="bpe", vocab_size=2048, pattern="llama3", special_tokens=("<|endoftext|>",)),
    description="the baby GPT on a 2048-token byte-level BPE trained on the corpus",
))

DEFAULT_PRESET = "gpt-char-baby"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ScratchLLMError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
