"""Position-wise feed-forward networks: the GPT MLP and the gated (SwiGLU / GeGLU) MLP of Llama and Gemma."""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.layers.dropout import Dropout
from scratchllm.layers.linear import Linear

ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),  # exact (erf) GELU, as nanoGPT
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new", Gemma, SigLIP
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),  # Llama's SwiGLU gate
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ScratchLLMError(f"unknown activation '{name}'; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """proj(act(fc(x))): expand to `hidden`, non-linearity, project back."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.fc = Linear(dim, hidden, bias=bias)
        self.act = _activation(activation)
        self.proj = Linear(hidden, dim, bias=bias)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))  # (B, T, dim) -> (B, T, hidden) -> (B, T, dim)


def llama_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's rule: 2/3 of 4 * dim (so SwiGLU's three matrices cost what a 4x MLP's two do),
    times an optional multiplier, rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) (Shazeer 2020): SwiGLU with silu (Llama), GeGLU with gelu_tanh (Gemma)."""

    def __init__(self, dim: int, hidden: int, activation: str = "silu", bias: bool = False):
        super().__init__()
        # gate and up as one (dim, 2 * hidden) matrix: one matmul instead of two (columns [:hidden] gate)
        self.gate_up = Linear(dim, 2 * hidden, bias=bias)
        self.down = Linear(hidden, dim, bias=bias)
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.down(self.act(gate) * up)
