"""A pre-allocated key/value cache: decoding appends one position per step instead of recomputing all."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, (n_layers, B, n_kv_heads, max_len, head_dim), filled left to right.

    All rows share one write position; rows of different prompt lengths are left-padded and the
    padding is masked out (see `padded_causal_mask` in attention.py)."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._layers = [(self.k[i], self.v[i]) for i in range(n_layers)]  # per-layer views, made once
        self.length = 0  # positions written so far
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, KV, T, D) at the current position; return all keys and values so far (B, KV, S, D)."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache of {self.max_len} positions is full")
        keys, values = self._layers[layer]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        """Called once per forward pass, after every layer has written its n new positions."""
        self.length += n

