"""Position-wise feed-forward network: expand, non-linearity, project back."""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.errors import ScratchLLMError

ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),  # exact (erf) GELU, as nanoGPT
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new", Gemma, SigLIP
    "relu": lambda: nn.ReLU(),
}


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str = "gelu", bias: bool = False, dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ScratchLLMError(f"unknown activation '{activation}'; choose one of {', '.join(ACTIVATIONS)}")
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))  # (B, T, dim) -> (B, T, hidden) -> (B, T, dim)
