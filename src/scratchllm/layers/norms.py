"""RMSNorm (Zhang & Sennrich 2019): scale by the root mean square, no mean subtraction, no bias.

LayerNorm is torch's own `nn.LayerNorm` (with `bias=False` where a model has none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 whatever the input dtype (bf16 squares lose too much).

    `offset=1.0` gives Gemma's variant, which stores weight - 1 (so zeros mean identity)."""

    def __init__(self, dim: int, eps: float = 1e-6, offset: float = 0.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.ones(dim) if offset == 0.0 else torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset == 0.0 and x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)  # one call into torch, the same numbers
        if self.offset == 0.0:
            # as Llama: normalise in fp32, cast back, then scale. torch's rms_norm computes in fp32 for
            # a bf16 input and rounds once: bit-equal to x.float() -> rms_norm -> .to(bf16), two ops fewer
            return self.weight * F.rms_norm(x, (x.size(-1),), eps=self.eps)
        dtype = x.dtype
        x = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps)  # x * rsqrt(mean(x^2) + eps)
        return (x * (self.offset + self.weight.float())).to(dtype)  # as Gemma: scale in fp32, then cast
