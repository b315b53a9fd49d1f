"""Shared building blocks. Every model in scratchllm is a composition of these; none is copied."""

from scratchllm.layers.attention import Attention, attend, padded_causal_mask
from scratchllm.layers.blocks import PreNormBlock
from scratchllm.layers.kv_cache import KVCache
from scratchllm.layers.linear import (Linear, LoRA, LowRank, TiedHead, add_lora, fold_lora, lora_layers, merge_lora,
                                     pack_for_inference, packed_for_inference, unmerge_lora, unpack)
from scratchllm.layers.mlp import MLP, GatedMLP, llama_hidden_dim
from scratchllm.layers.norms import RMSNorm
from scratchllm.layers.rope import (RopeScaling, apply_rope, halves_to_interleaved, interleaved_to_halves,
                                   inverse_frequencies, rope_cos_sin)

__all__ = ["Attention", "attend", "PreNormBlock", "KVCache", "padded_causal_mask", "Linear", "LoRA", "LowRank", "add_lora", "fold_lora", "lora_layers", "merge_lora", "unmerge_lora", "TiedHead", "pack_for_inference", "packed_for_inference", "unpack", "MLP", "GatedMLP", "llama_hidden_dim", "RMSNorm",
           "RopeScaling", "apply_rope", "halves_to_interleaved", "interleaved_to_halves", "inverse_frequencies", "rope_cos_sin"]
