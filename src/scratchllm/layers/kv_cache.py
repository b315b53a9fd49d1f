"""A pre-allocated key/value cache: decoding appends one position per step instead of recomputing all."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, (n_layers, B, n_kv_heads, max_len, head_dim), filled left to right.

    All rows share one write position; rows of different prompt lengths are left-padded and the
    padding is masked out (see `padded_causal_mask` in attention.py).

    The engine (generate.Engine) keeps one request per row instead, each at its own length:
    `rows(i, j, length)` is a view of some rows that shares this cache's memory (a request is prefilled
    into its row through it, after what the row holds already), and `write_rows_at(positions, span)` makes the next forward pass write
    each row's one new position where that row has got to."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self._set_memory(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    def _set_memory(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v
        self._layers = [(self.k[i], self.v[i]) for i in range(k.size(0))]  # per-layer views, made once
        self.length = 0  # positions written so far
        self.max_len = k.size(3)
        self.row_positions: torch.Tensor | None = None  # (B,): where each row writes, for one forward pass

    def rows(self, start: int, stop: int, length: int = 0) -> KVCache:
        """A cache over rows start .. stop - 1 that writes into this one's memory (no copy), holding
        `length` positions already (a prompt prefilled after the prefix its row kept from before)."""
        view = KVCache.__new__(KVCache)
        view._set_memory(self.k[:, start:stop], self.v[:, start:stop])
        view.length = length
        return view

    def write_rows_at(self, positions: torch.Tensor, span: int) -> None:
        """For the next forward pass only, of one token per row: row i writes its keys and values at
        positions[i] (rows have their own lengths) and attention gets the first `span` positions of
        every row (span > max(positions)). Keys a row has not written (or an earlier request left
        there) are the caller's to mask: (B, 1, 1, span), key s visible to row i when s <= positions[i]."""
        self.row_positions = positions
        self._row_index = torch.arange(positions.size(0), device=positions.device)
        self.length = span - 1  # what the model reads as "positions so far": the longest row's

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, KV, T, D) at the current position; return all keys and values so far (B, KV, S, D), in
        k's dtype (a cache may be narrower than the activations: a quantized model's is bf16, models/decode.py)."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache of {self.max_len} positions is full")
        keys, values = self._layers[layer]
        if self.row_positions is not None:  # one new position per row, each at its own place
            keys[self._row_index, :, self.row_positions] = k[:, :, 0].to(keys.dtype)  # (B, KV, D) at (row, position)
            values[self._row_index, :, self.row_positions] = v[:, :, 0].to(values.dtype)
        else:
            keys[:, :, self.length:end] = k
            values[:, :, self.length:end] = v
        return keys[:, :, :end].to(k.dtype), values[:, :, :end].to(v.dtype)

    def advance(self, n: int) -> None:
        """Called once per forward pass, after every layer has written its n new positions."""
        self.length += n
        self.row_positions = None
