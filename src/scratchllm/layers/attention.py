"""Multi-head attention, one module for every model.

Heads and kv-heads give MHA (n_kv_heads == n_heads), GQA (a divisor) or MQA (1); the mask is
causal, none (bidirectional), or given (prefix-LM, padding); positions come from learned
embeddings outside (GPT) or RoPE inside (Llama, Gemma); QK-norm (a per-head RMSNorm on q and k
before RoPE, as in Qwen3, not Llama 3; Llama 4's is weightless and after RoPE) is optional; a KV
cache makes decoding incremental. q, k and v come from one fused projection: at the small widths we train on a CPU,
one matrix product beats three.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.layers import causal_attention
from scratchllm.layers.dropout import Dropout, dropout
from scratchllm.layers.kv_cache import KVCache
from scratchllm.layers.linear import Linear
from scratchllm.layers.norms import RMSNorm
from scratchllm.layers.rope import apply_rope


# Above this many attention scores (batch x heads x T x S) the plain path's (T, S) matrices stop
# fitting in cache and torch's fused kernel wins again, even in bf16.
PLAIN_PATH_MAX_SCORES = 8 * 2**20
# Decoding one bf16 query over at most this many cached keys runs in fp32 (see attend).
DECODE_IN_FP32_MAX_KEYS = 384


def use_fused_kernel(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Pick torch's fused `scaled_dot_product_attention` or the plain matmul-softmax path.

    Measured, not guessed (benchmarks/attention.py, forward + backward, 2 CPU cores):
    - CUDA: the fused (flash / memory-efficient) kernels win and never build the (T, S) matrix.
    - CPU, fp32: fused is as fast or faster at every shape we tried (0.4x-0.95x the plain time).
    - CPU, bf16: the fused kernel's backward is slow; the plain path is 2-3x faster at the baby
      GPT's shapes (B 12, H 4, T 64, D 32) and still 1.2x at T 256-512, until the score matrices
      get large (gpt-char: B 64, H 6, T 256 is 25M scores, where fused is 1.6x faster).
    """
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return True
    B, H, T, _ = q.shape
    return B * H * T * k.size(-2) > PLAIN_PATH_MAX_SCORES


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, dropout_p: float = 0.0,
           mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v over heads; scale defaults to 1/sqrt(d).

    q: (B, H, T, D); k, v: (B, H_kv, S, D) with H a multiple of H_kv and S >= T.
    With `causal`, query t (the last T of S positions) sees keys 0 .. S - T + t. An explicit boolean
    `mask` (broadcastable to (B, H, T, S), True = may attend) replaces the causal rule.
    Returns (B, H, T, D).
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(q.size(-1))
    n_rep = q.size(1) // k.size(1)
    B, H, T, D = q.shape
    S = k.size(-2)
    if causal and T == 1 and mask is None:
        causal = False  # one query at the last position sees every key
    # With dropout on the CPU, torch's fused call runs its plain math path anyway and draws the mask
    # with bernoulli_; the plain path here is the same products with our cheaper mask (layers/dropout.py).
    fused = use_fused_kernel(q, k) and (dropout_p == 0.0 or q.device.type != "cpu")
    causal_rule = mask is None and causal  # no caller's mask: the causal rule alone
    if causal_rule and fused and T != S:
        mask = causal_mask(T, S, q.device)  # the fused kernel's is_causal covers only T == S
    if fused:
        gqa = {"enable_gqa": True} if n_rep > 1 else {}  # kv heads are shared, never copied
        if mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, **gqa)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p, scale=scale, **gqa)
    if n_rep > 1:
        # grouped-query attention without copying k and v: the n_rep query heads of a group become
        # n_rep * T rows against their shared kv head. (B, H, T, D) -> (B, KV, n_rep * T, D)
        q = q.reshape(B, H // n_rep, n_rep * T, D)
        if mask is not None:  # a caller's (..., T, S) mask, the same for each of the n_rep stacked heads
            mask = torch.cat([mask] * n_rep, dim=-2)
    upcast = T == 1 and S <= DECODE_IN_FP32_MAX_KEYS and q.dtype != torch.float32 and not torch.is_grad_enabled()
    if upcast:
        # decoding, one query: torch's bf16 products this small are slow on our CPU (a whole call 38-43 us
        # up to 256 keys, 21-35 us in fp32 with the casts; `benchmarks/attention.py --decode`); past
        # ~500 keys the casts cost more. fp32 is also the more exact: the softmax is fp32 anyway
        dtype = q.dtype
        q, k, v = q.float(), k.float(), v.float()
    rows = q.size(-2)  # T, or n_rep * T
    if causal_rule:
        # the causal rule as a -inf bias added inside the product: one call (baddbmm) where product,
        # scale and masked_fill are three passes over the (T, S) scores, forward and backward. Profiled
        # on a gpt-char training step (batch 16, dropout 0.2, AMD EPYC AVX2, 2 threads): the score
        # passes' time (products, scaling, masked_fill and its copies) fell by about 110 of 2,200 ms.
        bias = causal_bias(T, S, n_rep, q.dtype, q.device)  # (rows, S)
        scores = torch.baddbmm(bias, q.reshape(-1, rows, D), k.reshape(-1, S, D).transpose(1, 2), alpha=scale)
        scores = scores.view(B, -1, rows, S)  # (B, H, T, S), or (B, KV, n_rep * T, S)
    else:
        scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S), or (B, KV, n_rep * T, S)
        if mask is not None:  # a caller's mask (the causal rule is the bias above)
            scores = scores.masked_fill(~mask, float("-inf"))
    # In the scores' dtype: torch's CPU softmax computes in fp32 inside and rounds once, so bf16 probs are an
    # fp32 softmax cast back, up to that one rounding (equal but for 14 of 1M elements at 335 keys, none up to
    # 256), and the backward reads bf16 probs where it read fp32: q's and k's gradients 8.4e-3 from fp64
    # against 8.0e-3 (B 12, H 4, T 64, D 32). The fp32 round trip cost four passes over the (T, S) scores a
    # layer: 0.89 against 1.06 ms forward + backward at the baby GPT's shapes, 41 against 64 ms at gpt-char's
    # (16, 6, 256, 64) (AMD EPYC, 2 threads, 2026-12-04).
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = dropout(probs, dropout_p)
    y = (probs @ v).view(B, H, T, D)
    return y.to(dtype) if upcast else y


_MASKS: dict[tuple[int, int, str], torch.Tensor] = {}
_BIASES: dict[tuple[int, int, int, torch.dtype, str], torch.Tensor] = {}


def causal_bias(T: int, S: int, n_rep: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_rep * T, S): 0 where the causal mask lets query t see key s, -inf elsewhere; the (T, S) block
    repeated for n_rep query heads stacked on one kv head (grouped-query attention). Cached per shape."""
    def make() -> torch.Tensor:
        allowed = causal_mask(T, S, device).repeat(n_rep, 1)
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))

    return _cached(_BIASES, (T, S, n_rep, dtype, str(device)), make)


def causal_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    """(T, S) boolean, True where query t may attend key s: s <= t + (S - T). Cached per shape."""
    return _cached(_MASKS, (T, S, str(device)), lambda: torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T))


def _cached(store: dict, key: tuple, make) -> torch.Tensor:
    """store[key], made on first use. Inside a compiled graph it is made there instead (folded to a constant):
    a lookup in the module's dict is guarded, and the first call's miss made the second call compile the
    whole model again (twice the compile time)."""
    if torch.compiler.is_compiling():
        return make()
    if key not in store:
        with torch.inference_mode(False):  # one made while generating must serve training too
            store[key] = make()
    return store[key]


def padded_causal_mask(valid: torch.Tensor, T: int, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, T, S) boolean mask for the last T queries over S keys, where `valid` (B, S) marks real
    (not padding) positions. Key s is visible to query t when it is real and either comes no later
    (causal) or, with `prefix` (B, S), both are prefix tokens (the bidirectional image + prompt block
    of PaliGemma's prefix-LM). A padding query with no key to see attends to itself, to stay finite."""
    S = valid.size(1)
    mask = causal_mask(T, S, valid.device)[None]  # (1, T, S)
    if prefix is not None:
        mask = mask | (prefix[:, S - T:, None] & prefix[:, None, :])  # (B, T, S)
    mask = mask & valid[:, None, :]
    diagonal = torch.arange(S, device=valid.device)[None, :] == torch.arange(S - T, S, device=valid.device)[:, None]
    mask = mask | (diagonal[None] & ~mask.any(-1, keepdim=True))
    return mask[:, None]


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        dropout: float = 0.0,
        causal: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if head_dim is None:
            if dim % n_heads:
                raise ScratchLLMError(f"width {dim} is not divisible by {n_heads} heads; choose a width that is a multiple of the head count")
            head_dim = dim // n_heads
        if n_heads % n_kv_heads:
            raise ScratchLLMError(f"{n_kv_heads} kv heads do not divide {n_heads} query heads; use a divisor of n_heads")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.causal, self.dropout = causal, dropout
        self.qkv = Linear(dim, (n_heads + 2 * n_kv_heads) * head_dim, bias=bias)
        self.proj = Linear(n_heads * head_dim, dim, bias=bias)
        self.resid_dropout = Dropout(dropout) if dropout > 0 else None
        self.q_norm = RMSNorm(head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, norm_eps) if qk_norm else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim). rope: (cos, sin) of the T positions, (B, 1, T, D) each, from
        `rope_cos_sin`; cache: earlier keys/values; context (B, S, dim): attend to it instead of to x
        (cross-attention, as SigLIP's pooling head)."""
        B, T, _ = x.shape
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        if context is None:
            qkv = self.qkv(x)  # (B, T, (H + 2 KV) * D)
            if (self.causal and cache is None and mask is None and rope is None and self.q_norm is None and KV == H
                    and not (self.training and self.dropout > 0) and causal_attention.usable(qkv, H)):
                # training a small GPT on a CPU with bf16: our kernel, straight from qkv (layers/causal_attention.py)
                y = self.proj(causal_attention.causal_attention(qkv, H))
                return y if self.resid_dropout is None else self.resid_dropout(y)
            # (B, T, heads * D) -> (B, heads, T, D): H query heads, then KV key and KV value heads
            qkv = qkv.view(B, T, H + 2 * KV, D).transpose(1, 2)
            if rope is None and self.q_norm is None:  # one split: its backward is one cat kernel, not two
                q, k, v = qkv.split_with_sizes([H, KV, KV], dim=1)  # (Tensor.split is a Python wrapper: slower per call)
            else:
                qk, v = qkv.split_with_sizes([H + KV, KV], dim=1)
                if self.q_norm is not None:
                    qk = torch.cat([self.q_norm(qk[:, :H]), self.k_norm(qk[:, H:])], dim=1)
                if rope is not None:
                    qk = apply_rope(qk, *rope)  # query and key heads rotated together: the same positions
                q, k = qk.split_with_sizes([H, KV], dim=1)
        else:  # cross-attention (SigLIP's pooling head): queries from x, keys and values from the context,
            # the same weights split by output columns; no positions, no QK-norm
            w_q, w_kv = self.qkv.weight.split([H * D, 2 * KV * D], dim=1)
            b_q, b_kv = self.qkv.bias.split([H * D, 2 * KV * D]) if self.qkv.bias is not None else (0.0, 0.0)
            q = (x @ w_q + b_q).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            k, v = (context @ w_kv + b_kv).view(B, context.size(1), 2 * KV, D).transpose(1, 2).split([KV, KV], dim=1)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, KV, S, D): every position so far
        y = attend(q, k, v, causal=self.causal, dropout_p=self.dropout if self.training else 0.0, mask=mask)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D): heads side by side again
        y = self.proj(y)
        return y if self.resid_dropout is None else self.resid_dropout(y)
