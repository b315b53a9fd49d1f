"""Causal self-attention from the fused qkv projection in one bf16 kernel of our own (causal_attention.c),
forward and backward, for training small models on a CPU with AVX512-BF16.

    qkv (B, T, 3 * H * D) -> y (B, T, H * D)        the heads' outputs side by side, ready for the projection

It computes what `attend` does for a causal mask without dropout (tests/test_causal_attention.py checks both
against fp64), with the heads' products made in L1 cache, the masked half skipped, and no split, transpose or
join of the heads around them: 2-2.7x torch's faster path at our presets' shapes (MAX_CONTEXT). The two ops
are registered with torch (`torch.ops.scratchllm.*`), so that torch.compile keeps each whole in its graph.
"""

from __future__ import annotations

import ctypes
import math
from functools import lru_cache

import torch

from scratchllm.layers import native

# The longest context measured (`benchmarks/attention.py --kernel`, from qkv to the heads joined, forward +
# backward, 2 threads of an AMD EPYC with AVX512-BF16): 2.55x torch's faster path at the baby's shapes (12, 4, 64, 32),
# 2.66x at gpt-char's (64, 6, 256, 64), 1.87x at (4, 4, 512, 64). Past it the per-thread (T, T) scratch outgrows
# the cache, and nothing was measured.
MAX_CONTEXT = 512


@lru_cache(maxsize=None)
def _kernel() -> ctypes.CDLL | None:
    lib = native.load("causal_attention")
    if lib is None or not lib.causal_attention_available():
        return None  # no compiler, or a CPU without AVX512-BF16: torch's path serves
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.causal_attention_forward.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_float]
    lib.causal_attention_backward.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_float]
    return lib


@torch.compiler.assume_constant_result  # asked once, outside any graph torch.compile traces
def kernel_available() -> bool:
    return _kernel() is not None


def usable(qkv: torch.Tensor, n_heads: int) -> bool:
    """Whether the kernel can take this qkv (B, T, 3 * n_heads * D): bf16 on the CPU, T a multiple of 4 up to
    MAX_CONTEXT and D a multiple of 16 (its blocks), and a CPU with AVX512-BF16."""
    if qkv.device.type != "cpu" or qkv.dtype != torch.bfloat16 or qkv.dim() != 3:
        return False
    _, T, H, D = _sizes(qkv, n_heads)
    return T % 4 == 0 and T <= MAX_CONTEXT and D % 16 == 0 and qkv.size(-1) == 3 * H * D and kernel_available()


_LIB = torch.library.Library("scratchllm", "FRAGMENT")
_LIB.define("causal_attention(Tensor qkv, int n_heads) -> (Tensor, Tensor)")
_LIB.define("causal_attention_backward(Tensor qkv, Tensor probs, Tensor dy, int n_heads) -> Tensor")


def _sizes(qkv: torch.Tensor, n_heads: int) -> tuple[int, int, int, int]:
    B, T, width = qkv.shape
    return B, T, n_heads, width // (3 * n_heads)


@torch.library.impl(_LIB, "causal_attention", "CPU")
def _forward(qkv: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, D = _sizes(qkv, n_heads)
    qkv = qkv.contiguous()
    y = qkv.new_empty(B, T, H * D)
    probs = qkv.new_empty(B, H, T, T)  # bf16 P, kept for the backward (as torch's path keeps its softmax)
    if _kernel().causal_attention_forward(qkv.data_ptr(), y.data_ptr(), probs.data_ptr(), B, T, H, D, 1.0 / math.sqrt(D)):
        raise MemoryError("causal_attention: no memory for the kernel's scratch")
    return y, probs


@torch.library.impl(_LIB, "causal_attention_backward", "CPU")
def _backward(qkv: torch.Tensor, probs: torch.Tensor, dy: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, T, H, D = _sizes(qkv, n_heads)
    qkv, probs, dy = qkv.contiguous(), probs.contiguous(), dy.contiguous()
    dqkv = torch.empty_like(qkv)
    if _kernel().causal_attention_backward(qkv.data_ptr(), probs.data_ptr(), dy.data_ptr(), dqkv.data_ptr(),
                                           B, T, H, D, 1.0 / math.sqrt(D)):
        raise MemoryError("causal_attention: no memory for the kernel's scratch")
    return dqkv


@torch.library.register_fake("scratchllm::causal_attention")
def _forward_shapes(qkv: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, D = _sizes(qkv, n_heads)
    return qkv.new_empty(B, T, H * D), qkv.new_empty(B, H, T, T)


@torch.library.register_fake("scratchllm::causal_attention_backward")
def _backward_shapes(qkv: torch.Tensor, probs: torch.Tensor, dy: torch.Tensor, n_heads: int) -> torch.Tensor:
    return torch.empty_like(qkv)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
        y, probs = torch.ops.scratchllm.causal_attention(qkv, n_heads)
        ctx.save_for_backward(qkv, probs)
        ctx.n_heads = n_heads
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        qkv, probs = ctx.saved_tensors
        return torch.ops.scratchllm.causal_attention_backward(qkv, probs, dy, ctx.n_heads), None


def causal_attention(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """qkv (B, T, 3 * n_heads * D), queries then keys then values, heads side by side -> y (B, T, n_heads * D).
    Only where `usable(qkv, n_heads)`."""
    return _CausalAttention.apply(qkv, n_heads)
