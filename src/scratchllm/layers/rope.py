"""Rotary position embeddings (Su et al. 2021), in the split-halves layout Hugging Face weights use.

Each pair of channels of q and k is rotated by an angle proportional to the position:
    (x1, x2) -> (x1 cos(p w) - x2 sin(p w), x2 cos(p w) + x1 sin(p w)),  w_i = theta^(-2i/d)
so q.k depends only on the relative position. Layouts differ in which channels pair up:
  - Meta's reference code pairs neighbours (0,1), (2,3), ... ("interleaved", complex numbers);
  - Hugging Face pairs channel i with i + d/2 ("split halves", `rotate_half`).
The two are the same rotation after permuting the rows of wq and wk; `interleaved_to_halves`
converts Meta checkpoints (HF's conversion script does the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class RopeScaling:
    """Llama 3.1 / 3.2 frequency scaling: long wavelengths are slowed by `factor`, short ones kept,
    and the band between low_freq_factor and high_freq_factor is interpolated smoothly."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


def inverse_frequencies(head_dim: int, theta: float, scaling: Optional[RopeScaling] = None) -> torch.Tensor:
    """w_i = theta^(-2i/d) for i < d/2, with Llama 3.1 scaling applied when given. Shape (d/2,)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / scaling.factor, inv)  # long waves: slowed down
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin for position ids (B, T): each (B, 1, T, head_dim), the same for every head.

    The d/2 angles are repeated for both halves; the sin of the first half is negated, so that
    `apply_rope` can replace rotate_half (split, negate, concatenate) with a single roll."""
    angles = positions.float()[..., None] * inv_freq.to(positions.device)  # (B, T, d/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1)[:, None], torch.cat([-sin, sin], dim=-1)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, T, d); cos, signed_sin: (B, 1, T, d) from `rope_cos_sin`. Returns x's dtype.

    x * cos + rotate_half(x) * sin, computed as x * cos + roll(x, d/2) * [-sin, sin]: the same
    numbers (a sign moves from one factor to the other), one op instead of three."""
    y = x * cos + torch.roll(x, x.size(-1) // 2, dims=-1) * signed_sin
    return y if y.dtype == x.dtype else y.to(x.dtype)  # bf16 x and fp32 tables under autocast


def interleaved_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Permute the rows of an interleaved-layout wq or wk (n_heads * d, dim: Meta's checkpoints,
    llama.cpp's GGUF files) to the split-halves layout: within each head, rows
    (0, 1, 2, 3, ...) -> (0, 2, 4, ..., 1, 3, 5, ...)."""
    d = w.size(0) // n_heads
    return w.reshape(n_heads, d // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def halves_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_halves` (what llama.cpp's converter does to HF's wq and wk)."""
    d = w.size(0) // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
