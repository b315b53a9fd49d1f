"""Shared building blocks. Every model in scratchllm is a composition of these; none is copied."""

from scratchllm.layers.attention import Attention, attend, padded_causal_mask
from scratchllm.layers.blocks import PreNormBlock
from scratchllm.layers.kv_cache import KVCache
from scratchllm.layers.linear import Linear, TiedHead, pack_for_inference, packed_for_inference, unpack
from scratchllm.layers.mlp import MLP, GatedMLP, llama_hidden_dim
from scratchllm.layers.norms import RMSNorm
from scratchllm.layers.rope import (RopeScaling, apply_rope, halves_to_interleaved, interleaved_to_halves,
                                   inverse_frequencies, rope_cos_sin)

__all__ = ["Attention", "attend", "PreNormBlock", "KVCache", "padded_causal_mask", "Linear", "TiedHead", "pack_for_inference", "packed_for_inference", "unpack", "MLP", "GatedMLP", "llama_hidden_dim", "RMSNorm",
           "RopeScaling", "apply_rope", "halves_to_interleaved", "interleaved_to_halves", "inverse_frequencies", "rope_cos_sin"]
