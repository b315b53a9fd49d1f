"""Models and the registry that builds one from its type name and config."""

from __future__ import annotations

from typing import Any

from torch import nn

from scratchllm.config import from_dict
from scratchllm.errors import ScratchLLMError
from scratchllm.models.bigram import Bigram, BigramConfig
from scratchllm.models.gpt import GPT, GPTConfig
from scratchllm.models.gemma import Gemma, GemmaConfig
from scratchllm.models.llama import Llama, LlamaConfig
from scratchllm.models.paligemma import PaliGemma, PaliGemmaConfig
from scratchllm.models.siglip import Siglip, SiglipConfig

# model_type -> (model class, config class). A checkpoint's config.json names its model_type.
MODEL_TYPES: dict[str, tuple[type[nn.Module], type]] = {
    "bigram": (Bigram, BigramConfig),
    "gpt": (GPT, GPTConfig),
    "llama": (Llama, LlamaConfig),
    "gemma": (Gemma, GemmaConfig),
    "siglip": (Siglip, SiglipConfig),
    "paligemma": (PaliGemma, PaliGemmaConfig),
}
VISION_LANGUAGE = ("siglip", "paligemma")  # trained on the shapes world, with dict batches


def config_class(model_type: str) -> type:
    if model_type not in MODEL_TYPES:
        raise ScratchLLMError(f"unknown model type '{model_type}'; known: {', '.join(MODEL_TYPES)}")
    return MODEL_TYPES[model_type][1]


def build_model(model_type: str, config: Any) -> nn.Module:
    if isinstance(config, dict):
        config = from_dict(config_class(model_type), config)
    return MODEL_TYPES[model_type][0](config)


__all__ = ["Bigram", "BigramConfig", "GPT", "GPTConfig", "Llama", "LlamaConfig", "Gemma", "GemmaConfig", "MODEL_TYPES", "build_model", "config_class"]
