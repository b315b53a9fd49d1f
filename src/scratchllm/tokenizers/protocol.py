"""What every tokenizer does: the one interface code outside tokenizers/ uses (never a class or a kind).

    encode(text, allowed_special=..., disallowed_special=...) -> ids     tiktoken's semantics for special tokens
    decode(ids) -> str, decode_bytes(ids) -> bytes, token_bytes(id) -> bytes
    vocab_size, special_tokens {text: id}, bytes_per_token() (UTF-8 bytes per id: bits per byte)
    byte_level       its ids stand for byte strings of a byte-level BPE, as GGUF and Hugging Face's
                     tokenizer.json hold them (False: a character vocabulary, which neither can)
    fingerprint()    a short hash of everything that decides its ids (caches of encoded text are keyed by it)
    save(folder)     beside the model in a checkpoint
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    special_tokens: dict[str, int]
    byte_level: bool

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, allowed_special=frozenset(), disallowed_special="all") -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def decode_bytes(self, ids: list[int]) -> bytes: ...

    def token_bytes(self, i: int) -> bytes: ...

    def bytes_per_token(self) -> list[int]: ...

    def fingerprint(self) -> str: ...

    def save(self, folder: str | Path) -> None: ...
