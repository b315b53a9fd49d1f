"""GPT (Radford et al. 2019), as in nanoGPT: learned positions, pre-LayerNorm blocks, tied embeddings.

    tokens ──> wte + wpe ──> dropout ──> [ x + attn(ln_1(x)) ; x + mlp(ln_2(x)) ] x n_layer ──> ln_f ──> wte^T ──> logits
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.layers import KVCache, Linear
from scratchllm.layers.blocks import PreNormBlock


@dataclass
class GPTConfig:
    vocab_size: int = 0  # set from the tokenizer
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm (GPT-2 has them; nanoGPT's char runs do not)
    activation: str = "gelu"  # GPT-2's own weights use gelu_tanh
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ScratchLLMError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ScratchLLMError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; pick n_embd a multiple of n_head")
        if not 0.0 <= self.dropout < 1.0:
            raise ScratchLLMError(f"dropout must be in [0, 1), got {self.dropout}")


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            PreNormBlock(c.n_embd, c.n_head, 4 * c.n_embd, c.activation, c.bias, c.dropout, causal=True, norm_eps=c.norm_eps)
            for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, eps=c.norm_eps, bias=c.bias)
        self.apply(self._init_weights)
        # GPT-2: residual projections start smaller, so the sum over 2 * n_layer branches keeps unit scale.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, Linear):
            module.reset_parameters(std=0.02)  # and a zero bias
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_cache(self, batch: int, max_len: int, dtype=torch.float32) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, batch, c.n_head, max_len, c.n_embd // c.n_head, dtype, self.wte.weight.device)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None):
        """idx (B, T) -> logits (B, T, vocab); with targets, (logits, loss). `positions` (B, T) default to
        the next T positions after the cache; `mask` (B, 1, T, S) replaces the causal mask (padding)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ScratchLLMError(f"sequence of {start + T} tokens is longer than the context of {self.config.block_size}")
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, mask)
        if cache is not None:
            cache.advance(T)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # (B, T, vocab): the tied head, x @ wte^T
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss
