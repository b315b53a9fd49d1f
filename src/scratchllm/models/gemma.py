"""Gemma (Gemma Team 2024): the Llama diagram with four changes, all of them configuration.

    tokens ──> embed x sqrt(d) ──> [ x + attn(rmsnorm(x), rope) ; x + geglu(rmsnorm(x)) ] x n_layer ──> rmsnorm ──> embed^T

  - RMSNorm scales by (1 + w) (the weights are stored as offsets from one);
  - the gated MLP uses tanh-GELU (GeGLU) instead of SiLU (SwiGLU);
  - token embeddings are multiplied by sqrt(d) on the way in;
  - the output head is the embedding table (tied), and attention is multi-query in the 2B model.
PaliGemma's language model is this decoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from scratchllm.errors import ScratchLLMError
from scratchllm.models.llama import LLAMA_WEIGHTS, Llama, LlamaConfig, lora_targets
from scratchllm.models.spec import HFFormat, ModelSpec, register
from scratchllm.models.tasks import LANGUAGE


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


# -- spec: Gemma trains and generates as Llama does, and reads GemmaForCausalLM's folders

def config_from_hf(hf: dict) -> GemmaConfig:
    if hf.get("hidden_activation", hf.get("hidden_act")) not in ("gelu_pytorch_tanh", "gelu_tanh", None):
        raise ScratchLLMError(f"Gemma activation {hf.get('hidden_activation')!r} is not supported")
    rope = dict(hf.get("rope_parameters") or {})
    return GemmaConfig(
        vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 8192),
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], n_embd=hf["hidden_size"],
        head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


SPEC = register(ModelSpec(
    "gemma", Gemma, GemmaConfig, task=LANGUAGE,
    finish_config=lambda config, tokenizer: dataclasses.replace(config, vocab_size=tokenizer.vocab_size),
    generation="cached", commands=frozenset({"train", "sample", "eval", "chat", "serve", "finetune"}),
    hf=HFFormat(("gemma",), config_from_hf, LLAMA_WEIGHTS),
    shard_units=lambda model: model.blocks, lora_targets=lora_targets, quantizable=True,
))
