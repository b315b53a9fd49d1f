"""Pre-tokenization: the regex that cuts text into chunks before BPE; merges never cross a chunk boundary."""

from __future__ import annotations

import regex

from scratchllm.errors import ScratchLLMError

GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Llama 3 (Meta's tokenizer.py, and transformers' TikTokenConverter for tiktoken-format files): GPT-4's
# pattern as Llama 3 spells it: case-insensitive contractions, letters with one leading non-letter, digits in
# groups of at most three, newlines kept apart. It splits like cl100k except after a run of newlines and
# spaces at the very end of a text (lesson 02 shows where).
LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# cl100k (GPT-4), exactly as tiktoken's cl100k_base: possessive quantifiers (no backtracking), trailing
# whitespace at the end of a text as one chunk (\s++$), one newline per \s*[\r\n] chunk.
CL100K = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
GPT4 = CL100K
# o200k (GPT-4o), exactly as tiktoken's o200k_base: words split at case changes (CamelCase), contractions
# kept with their word, punctuation takes the newlines and slashes after it.
O200K = (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
         r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
         r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

PATTERNS = {"gpt2": GPT2, "gpt4": GPT4, "cl100k": CL100K, "o200k": O200K, "llama3": LLAMA3}


def resolve_pattern(name_or_regex: str) -> str:
    """A named pattern (gpt2, gpt4 = cl100k, o200k, llama3) or a custom regex, checked to compile."""
    pattern = PATTERNS.get(name_or_regex, name_or_regex)
    try:
        regex.compile(pattern)
    except (regex.error, ValueError, OverflowError, RecursionError) as e:  # a quantifier of 5,001 digits: ValueError
        raise ScratchLLMError(f"pattern {name_or_regex!r} is neither a known name ({', '.join(PATTERNS)}) nor a valid regex: {e}") from None
    return pattern
