"""Shared building blocks. Every model in scratchllm is a composition of these; none is copied."""

from scratchllm.layers.attention import Attention, attend
from scratchllm.layers.mlp import MLP

__all__ = ["Attention", "attend", "MLP"]
