"""Llama (Touvron et al. 2023; Llama 3, Grattafiori et al. 2024): pre-RMSNorm blocks, RoPE, GQA, SwiGLU.

    tokens ──> embed ──> [ x + attn(rmsnorm(x), rope) ; x + swiglu(rmsnorm(x)) ] x n_layer ──> rmsnorm ──> lm_head ──> logits

Optional QK-norm (per-head RMSNorm on q and k before RoPE) is a Qwen3 / Llama 4 feature, not Llama 3's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.layers import (Attention, GatedMLP, KVCache, Linear, RMSNorm, RopeScaling, inverse_frequencies,
                               llama_hidden_dim, rope_cos_sin)


@dataclass
class LlamaConfig:
    vocab_size: int = 0  # set from the tokenizer
    block_size: int = 256  # the longest context trained or generated
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 2  # grouped-query attention: each kv head serves n_head / n_kv_head query heads
    n_embd: int = 128
    head_dim: Optional[int] = None  # default n_embd / n_head
    intermediate_size: Optional[int] = None  # default from multiple_of / ffn_dim_multiplier (Meta's rule)
    multiple_of: int = 32
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_factor: Optional[float] = None  # Llama 3.1 scaling, on when set (8.0 for Llama 3.1 / 32.0 for 3.2)
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    qk_norm: bool = False
    tie_embeddings: bool = False
    dropout: float = 0.0
    # What Gemma changes (see models/gemma.py); Llama's values here
    norm_offset: float = 0.0  # RMSNorm scales by (offset + w)
    mlp_activation: str = "silu"  # the gate's non-linearity: SwiGLU (silu) or GeGLU (gelu_tanh)
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(n_embd)

    def __post_init__(self):
        for name in ("block_size", "n_layer", "n_head", "n_kv_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ScratchLLMError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ScratchLLMError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; pick n_embd a multiple of n_head or set head_dim")
        if self.n_head % self.n_kv_head:
            raise ScratchLLMError(f"n_kv_head={self.n_kv_head} does not divide n_head={self.n_head}; use a divisor of n_head")
        if self.head_size % 2:
            raise ScratchLLMError("RoPE needs an even head_dim")

    @property
    def hidden_dim(self) -> int:
        return self.intermediate_size or llama_hidden_dim(self.n_embd, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def rope_scaling(self) -> Optional[RopeScaling]:
        if self.rope_factor is None:
            return None
        return RopeScaling(self.rope_factor, self.rope_low_freq_factor, self.rope_high_freq_factor,
                           self.rope_original_max_position)


class LlamaBlock(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(c.n_embd, c.norm_eps, c.norm_offset)
        self.attn = Attention(c.n_embd, c.n_head, c.n_kv_head, head_dim=c.head_dim, dropout=c.dropout,
                              qk_norm=c.qk_norm, norm_eps=c.norm_eps)
        self.mlp_norm = RMSNorm(c.n_embd, c.norm_eps, c.norm_offset)
        self.mlp = GatedMLP(c.n_embd, c.hidden_dim, activation=c.mlp_activation)

    def forward(self, x, rope, cache=None, layer=0, mask=None):
        x = x + self.attn(self.attn_norm(x), rope, cache, layer, mask)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.n_embd)
        self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.n_embd, c.norm_eps, c.norm_offset)
        # tied: the output head is the embedding table itself (logits = x @ embed^T), no weights of its own
        self.lm_head = None if c.tie_embeddings else Linear(c.n_embd, c.vocab_size, bias=False)
        self.register_buffer("inv_freq", inverse_frequencies(c.head_size, c.rope_theta, c.rope_scaling), persistent=False)
        self._rope: torch.Tensor | None = None
        for name, p in self.named_parameters():
            if p.dim() >= 2:  # small normal init, residual outputs scaled down by depth (as GPT-2); norms keep theirs
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith(("attn.proj.weight", "mlp.down.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def _rope_tables(self, n: int) -> torch.Tensor:
        """cos and signed sin for positions 0..n-1 (at least), computed once and grown on demand:
        (N, 2, head_dim), so that one lookup fetches both."""
        if self._rope is None or self._rope.size(0) < n or self._rope.device != self.inv_freq.device:
            size = max(n, min(self.config.block_size, 4096))
            cos, sin = rope_cos_sin(torch.arange(size, device=self.inv_freq.device)[None], self.inv_freq)
            self._rope = torch.stack([cos[0, 0], sin[0, 0]], dim=1)
        return self._rope

    def embed_tokens(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, C); Gemma scales them by sqrt(d) here, so that other inputs placed
        among them (PaliGemma's image features) enter unscaled."""
        x = self.embed(idx)
        return x * math.sqrt(self.config.n_embd) if self.config.scale_embeddings else x

    def new_cache(self, batch: int, max_len: int, dtype=torch.float32) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, batch, c.n_kv_head, max_len, c.head_size, dtype, self.embed.weight.device)

    def forward(self, idx: torch.Tensor | None, targets: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None, embeds: torch.Tensor | None = None):
        """idx (B, T) -> logits (B, T, vocab); with targets, (logits, loss). `positions` (B, T) default to
        the next T positions after the cache; `mask` (B, 1, T, S) replaces the causal mask (padding,
        prefix-LM); `embeds` (B, T, C), as `embed_tokens` makes them, replaces idx (PaliGemma)."""
        B, T = idx.shape if embeds is None else embeds.shape[:2]
        device = idx.device if embeds is None else embeds.device
        start = cache.length if cache is not None else 0
        if positions is None:
            if start + T > self.config.block_size and cache is None:
                raise ScratchLLMError(f"sequence of {T} tokens is longer than the context of {self.config.block_size}")
            positions = torch.arange(start, start + T, device=device).expand(B, T)
        rope = self._rope_tables(int(positions.max()) + 1)[positions][:, None].unbind(3)  # cos, sin (B, 1, T, head_dim)
        x = self.embed_tokens(idx) if embeds is None else embeds  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i, mask)
        if cache is not None:
            cache.advance(T)
        x = self.norm(x)
        logits = F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)  # (B, T, vocab)
        if targets is None:
            return logits
        # ignore_index -100: positions without a target (PaliGemma's image and prefix) add no loss
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
