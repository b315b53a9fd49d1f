"""Character-level tokenizer: one id per distinct character of the training text."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_write

FILENAME = "tokenizer.json"


class CharTokenizer:
    """Ids are the sorted distinct characters of the corpus, as in nanoGPT's shakespeare_char."""

    kind = "char"
    byte_level = False  # ids are characters, not byte strings: GGUF and tokenizer.json cannot hold it
    special_tokens: dict[str, int] = {}  # none: every id is a character

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars):
            raise ScratchLLMError("duplicate characters in the vocabulary")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        """Ids of the text's characters (the special-token options of the protocol mean nothing here: there are none)."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise ScratchLLMError(
                f"text has {len(unknown)} character(s) outside the tokenizer's vocabulary: {shown}; "
                "remove them or train on a corpus that contains them"
            ) from None

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= i < len(self.chars)]  # a negative id must not wrap around
        if bad:
            raise ScratchLLMError(f"token id {bad[0]} is not in the vocabulary (ids 0 to {len(self.chars) - 1})")
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def token_bytes(self, i: int) -> bytes:
        return self.decode([i]).encode("utf-8")

    def bytes_per_token(self) -> list[int]:
        """UTF-8 bytes each id stands for: for bits per byte."""
        return [len(c.encode("utf-8")) for c in self.chars]

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.chars).encode()).hexdigest()[:16]

    def save(self, folder: str | Path) -> None:
        atomic_write(Path(folder) / FILENAME, json.dumps({"type": self.kind, "chars": self.chars}, ensure_ascii=False) + "\n")

    @classmethod
    def from_json(cls, data: dict, where: str = "tokenizer.json") -> "CharTokenizer":
        chars = data.get("chars")
        if (not isinstance(chars, list) or not chars or len(chars) > 1 << 20
                or any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars)):
            raise ScratchLLMError(f"{where} is corrupt: 'chars' must be a list of distinct single characters")
        return cls(chars)
