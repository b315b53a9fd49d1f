"""The pre-LayerNorm transformer block shared by GPT (causal) and SigLIP's two towers (bidirectional).

    x ──> x + attn(ln_1(x)) ──> x + mlp(ln_2(x))
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.layers.attention import Attention
from scratchllm.layers.kv_cache import KVCache
from scratchllm.layers.mlp import MLP


class PreNormBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, hidden: int, activation: str = "gelu", bias: bool = False,
                 dropout: float = 0.0, causal: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=norm_eps, bias=bias)
        self.attn = Attention(dim, n_head, bias=bias, dropout=dropout, causal=causal)
        self.ln_2 = nn.LayerNorm(dim, eps=norm_eps, bias=bias)
        self.mlp = MLP(dim, hidden, activation=activation, bias=bias, dropout=dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, mask=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache=cache, layer=layer, mask=mask)
        return x + self.mlp(self.ln_2(x))
