"""What tokenizer a preset trains: characters, or a byte-level BPE of a given size and split pattern."""

from __future__ import annotations

from dataclasses import dataclass

from scratchllm.errors import ScratchLLMError


@dataclass
class TokenizerConfig:
    kind: str = "char"  # char | bpe
    vocab_size: int = 2048  # bpe only: ids in all, special tokens included
    pattern: str = "llama3"  # bpe only: gpt2 | gpt4 | llama3 | a regex
    special_tokens: tuple[str, ...] = ("<|endoftext|>",)  # bpe only

    def __post_init__(self):
        if self.kind not in ("char", "bpe"):
            raise ScratchLLMError(f"tokenizer kind '{self.kind}' is not char or bpe")
        if self.kind == "bpe" and not 256 + len(self.special_tokens) <= self.vocab_size <= 1 << 20:
            raise ScratchLLMError(f"tokenizer vocab_size {self.vocab_size} must be between 256 + the special tokens and 1048576")

    @property
    def learned(self) -> bool:
        """Whether the run learns this tokenizer's vocabulary (a BPE of vocab_size with its pattern and
        special tokens), rather than taking the corpus's characters (those settings then mean nothing)."""
        return self.kind == "bpe"

    def new(self, text: str, train_text: str, progress: bool = True):
        """A tokenizer of this config for a corpus: the characters of all of `text` (nanoGPT's way: every
        character of the validation split has an id), or a BPE learned from `train_text` only."""
        if not self.learned:
            from scratchllm.tokenizers.char import CharTokenizer

            return CharTokenizer.train(text)
        from scratchllm.tokenizers.bpe_train import train_bpe

        return train_bpe(train_text, self.vocab_size, self.pattern, self.special_tokens, progress=progress)
