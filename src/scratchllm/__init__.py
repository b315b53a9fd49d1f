"""scratchllm: language models from scratch, trained, sampled and checked against the references."""

from __future__ import annotations

from scratchllm.errors import ScratchLLMError

__version__ = "0.1.0"


def load_pretrained(source, device: str = "cpu", precision: str = "fp32"):
    """A model ready for inference with its tokenizer, spec and text front (`pretrained.Pretrained`:
    encode, encode_chat, stream, complete), from a scratchllm checkpoint or run folder, a Hugging Face
    folder, a GGUF file or a pretrained model's name. See `pretrained.load_pretrained`.
    To train, see `scratchllm.train.run.train`."""
    from scratchllm.pretrained import load_pretrained as load

    return load(source, device=device, precision=precision)


__all__ = ["ScratchLLMError", "load_pretrained", "__version__"]
