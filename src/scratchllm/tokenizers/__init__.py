"""Tokenizers: text <-> integer ids. Each is saved beside the model in a checkpoint."""

from scratchllm.tokenizers.bpe import BPETokenizer
from scratchllm.tokenizers.char import CharTokenizer
from scratchllm.tokenizers.io import load_tokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "load_tokenizer"]
