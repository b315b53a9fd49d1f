"""Range checks every model config runs on itself, so a hostile config.json fails in one line
before anything is allocated."""

from __future__ import annotations

from scratchllm.errors import ScratchLLMError

MAX_SIZE = 1 << 24  # no width, depth, context or vocabulary here is 16M or more; a value that big is a typo or an attack
# Layers are modules, built one by one even on the meta device (about 1.5 ms each): 16M of them would
# take hours before the memory check could refuse them. The deepest real models have ~130 layers.
MAX_LAYERS = 1 << 10


def check_sizes(config, *names: str, allow_zero: tuple[str, ...] = ("vocab_size",)) -> None:
    """Each named integer field at least 1 (0 allowed for those set later, like vocab_size) and below
    MAX_SIZE (n_layer: below MAX_LAYERS)."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        low, high = (0 if name in allow_zero else 1), (MAX_LAYERS if name == "n_layer" else MAX_SIZE)
        if not low <= value < high:
            raise ScratchLLMError(f"{name} must be from {low} to {high - 1}, got {value}")


def check_context(block_size: int) -> None:
    """A model that attends over a window needs room for a token and the one after it: with a context of 1
    it could read a prompt but never extend it (a hostile GGUF or config.json says context_length 1)."""
    if block_size < 2:
        raise ScratchLLMError(f"the context (block_size / max_position_embeddings / context_length) must be at least 2 tokens, got {block_size}; the file is damaged or the setting a typo")
