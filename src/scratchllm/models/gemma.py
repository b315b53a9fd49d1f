"""Gemma (Gemma Team 2024): the Llama diagram with four changes, all of them configuration.

    tokens ──> embed x sqrt(d) ──> [ x + attn(rmsnorm(x), rope) ; x + geglu(rmsnorm(x)) ] x n_layer ──> rmsnorm ──> embed^T

  - RMSNorm scales by (1 + w) (the weights are stored as offsets from one);
  - the gated MLP uses tanh-GELU (GeGLU) instead of SiLU (SwiGLU);
  - token embeddings are multiplied by sqrt(d) on the way in;
  - the output head is the embedding table (tied), and attention is multi-query in the 2B model.
PaliGemma's language model is this decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchllm.models.llama import Llama, LlamaConfig


@dataclass
class GemmaConfig(LlamaConfig):
    n_kv_head: int = 1  # multi-query attention, as Gemma 2B
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    norm_offset: float = 1.0
    mlp_activation: str = "gelu_tanh"
    scale_embeddings: bool = True


class Gemma(Llama):
    """Built by Llama's code from a GemmaConfig: the differences are data, not code."""

    def __init__(self, config: GemmaConfig):
        super().__init__(config)
