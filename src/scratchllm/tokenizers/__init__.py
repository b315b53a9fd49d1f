"""Tokenizers: text <-> integer ids. Each is saved beside the model in a checkpoint."""

from scratchllm.tokenizers.bpe import BPETokenizer
from scratchllm.tokenizers.char import CharTokenizer
from scratchllm.tokenizers.config import TokenizerConfig
from scratchllm.tokenizers.io import load_tokenizer, load_tokenizer_path
from scratchllm.tokenizers.protocol import Tokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "Tokenizer", "TokenizerConfig", "load_tokenizer", "load_tokenizer_path"]
