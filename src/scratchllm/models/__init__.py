"""Models, each with its spec (models/spec.py): what it is built from and what it can do."""

from __future__ import annotations

from typing import Any

from torch import nn

from scratchllm.config import from_dict
from scratchllm.models import bigram, gemma, gpt, llama, paligemma, siglip  # noqa: F401  (each registers its spec)
from scratchllm.models.bigram import Bigram, BigramConfig
from scratchllm.models.gemma import Gemma, GemmaConfig
from scratchllm.models.gpt import GPT, GPTConfig
from scratchllm.models.llama import Llama, LlamaConfig
from scratchllm.models.paligemma import PaliGemma, PaliGemmaConfig
from scratchllm.models.siglip import Siglip, SiglipConfig, SiglipVision, SiglipVisionConfig
from scratchllm.models.spec import ModelSpec, get_spec, spec_for_hf, spec_of


def build_model(model_type: str, config: Any) -> nn.Module:
    """A model from its type name and config (a config object, or its JSON dict, type-checked)."""
    spec = get_spec(model_type)
    if isinstance(config, dict):
        config = from_dict(spec.config_class, config, where="model")
    return spec.build(config)


__all__ = ["Bigram", "BigramConfig", "GPT", "GPTConfig", "Llama", "LlamaConfig", "Gemma", "GemmaConfig", "PaliGemma",
           "PaliGemmaConfig", "Siglip", "SiglipConfig", "SiglipVision", "SiglipVisionConfig", "ModelSpec", "build_model",
           "get_spec", "spec_for_hf", "spec_of"]
