"""Range checks every model config runs on itself, so a hostile config.json fails in one line
before anything is allocated."""

from __future__ import annotations

from scratchllm.errors import ScratchLLMError

MAX_SIZE = 1 << 24  # no width, depth, context or vocabulary here is 16M or more; a value that big is a typo or an attack


def check_sizes(config, *names: str, allow_zero: tuple[str, ...] = ("vocab_size",)) -> None:
    """Each named integer field at least 1 (0 allowed for those set later, like vocab_size) and below MAX_SIZE."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        low = 0 if name in allow_zero else 1
        if not low <= value < MAX_SIZE:
            raise ScratchLLMError(f"{name} must be from {low} to {MAX_SIZE - 1}, got {value}")
