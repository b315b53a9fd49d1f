"""scratchllm: language models from scratch, trained, sampled and checked against the references."""

from __future__ import annotations

from pathlib import Path

from scratchllm.errors import ScratchLLMError

__version__ = "0.1.0"


def load_pretrained(path: str | Path, device: str = "cpu"):
    """A model in eval mode from a scratchllm checkpoint (or run) folder or a Hugging Face folder
    (GPT2LMHeadModel, LlamaForCausalLM, Qwen3, Gemma, SigLIP, PaliGemma: config.json + safetensors).

    `model(idx)` with idx of shape (batch, time) returns logits of shape (batch, time, vocab).
    The tokenizer, when the folder has one, is `model.tokenizer`. To train, see `scratchllm.train.run.train`.
    """
    from scratchllm.interop.hf import is_hf_folder, load_hf_folder
    from scratchllm.train.checkpoint import load_checkpoint

    if is_hf_folder(Path(path)):
        model, tokenizer = load_hf_folder(path, device=device)
    else:
        model, tokenizer, _ = load_checkpoint(path, device=device)
    model.tokenizer = tokenizer
    return model


__all__ = ["ScratchLLMError", "load_pretrained", "__version__"]
