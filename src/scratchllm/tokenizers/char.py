"""Character-level tokenizer: one id per distinct character of the training text."""

from __future__ import annotations

import json
from pathlib import Path

from scratchllm.errors import ScratchLLMError

FILENAME = "tokenizer.json"


class CharTokenizer:
    """Ids are the sorted distinct characters of the corpus, as in nanoGPT's shakespeare_char."""

    kind = "char"

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars):
            raise ValueError("duplicate characters in the vocabulary")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
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
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def token_bytes(self, i: int) -> bytes:
        return self.chars[i].encode("utf-8")

    def save(self, folder: str | Path) -> None:
        path = Path(folder) / FILENAME
        path.write_text(json.dumps({"type": self.kind, "chars": self.chars}, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, data: dict) -> "CharTokenizer":
        return cls(data["chars"])
