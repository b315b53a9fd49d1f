"""The linear layer, y = x W + b, with W stored (in_features, out_features): the layout of the math.

torch's `nn.Linear` stores W transposed, (out, in), and Hugging Face's Llama and SigLIP weights
come that way; GPT-2's Conv1D stores (in, out), as we do. Why not keep nn.Linear's layout: when
a model decodes one token at a time, every matrix product is a single row times W, and on the
CPU we measured (`python benchmarks/linear_layout.py`), that product is 1.4-2x faster with W
stored (in, out) when the output is wider than the input (the MLP's up projection, the vocabulary
head), about the same or 0.9x when it is narrower (the down projection), while training's large
products take the same time either way. `interop/hf.py` transposes nn.Linear weights in and out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))  # (in, out)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """nn.Linear's default, uniform in +-1/sqrt(in) for weight and bias; or, with `std`, a
        normal(0, std) weight and a zero bias (the GPT-2 initialisation)."""
        with torch.no_grad():
            if std is None:
                bound = 1.0 / math.sqrt(self.in_features)
                self.weight.uniform_(-bound, bound)
                if self.bias is not None:
                    self.bias.uniform_(-bound, bound)
            else:
                self.weight.normal_(0.0, std)
                if self.bias is not None:
                    self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.bias is None:
            return x @ self.weight
        return F.linear(x, self.weight.t(), self.bias)  # the bias added inside the product (addmm), no extra op

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
