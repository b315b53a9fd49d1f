"""Pre-tokenization: the regex that cuts text into chunks before BPE; merges never cross a chunk boundary."""

from __future__ import annotations

import regex

from scratchllm.errors import ScratchLLMError

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# cl100k (GPT-4): case-insensitive contractions, letters with one leading non-letter, digits in
# groups of at most three, newlines kept apart. Llama 3 uses the same pattern.
GPT4 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3 = GPT4

PATTERNS = {"gpt2": GPT2, "gpt4": GPT4, "cl100k": GPT4, "llama3": LLAMA3}


def resolve_pattern(name_or_regex: str) -> str:
    """A named pattern (gpt2, gpt4, llama3) or a custom regex, checked to compile."""
    pattern = PATTERNS.get(name_or_regex, name_or_regex)
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ScratchLLMError(f"pattern {name_or_regex!r} is neither a known name ({', '.join(PATTERNS)}) nor a valid regex: {e}") from None
    return pattern
