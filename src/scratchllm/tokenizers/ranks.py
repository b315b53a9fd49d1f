"""tiktoken's ranks file: one `base64(token bytes) rank` line per token, lowest rank first.

It is the format of Meta's Llama 3 `tokenizer.model`, of tiktoken's own encodings, and the one
scratchllm saves its BPE vocabularies in.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_write


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """token bytes -> rank, checked line by line: a corrupt or foreign file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLLMError(f"tokenizer file {path} does not exist")
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                token, rank = base64.b64decode(token, validate=True), int(rank)
            except (ValueError, binascii.Error):
                raise ScratchLLMError(f"{path} line {n} is not 'base64-token rank'; the file is corrupt or not a tiktoken ranks file") from None
            if token in ranks:
                raise ScratchLLMError(f"{path} line {n} repeats the token {token!r}; the file is corrupt")
            ranks[token] = rank
    if not ranks:
        raise ScratchLLMError(f"{path} is empty; expected tiktoken ranks ('base64-token rank' lines)")
    return ranks


def write_ranks(ranks: dict[bytes, int], path: str | Path) -> None:
    lines = (f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    atomic_write(path, "".join(lines))
