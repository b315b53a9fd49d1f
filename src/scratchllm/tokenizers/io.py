"""Loading whichever tokenizer a folder or file holds: ours (char or BPE), a Hugging Face
`tokenizer.json`, OpenAI's GPT-2 files, or Meta's Llama 3 `tokenizer.model`."""

from __future__ import annotations

import json
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import JSON_ERRORS
from scratchllm.tokenizers import formats
from scratchllm.tokenizers.bpe import META_FILE, RANKS_FILE, BPETokenizer
from scratchllm.tokenizers.char import FILENAME, CharTokenizer


def load_tokenizer(folder: str | Path):
    """The tokenizer saved in a checkpoint or prepared-data folder (char or BPE, or a tokenizer.json)."""
    folder = Path(folder)
    if (folder / META_FILE).is_file():
        return BPETokenizer.load(folder)
    path = folder / FILENAME
    if not path.is_file():
        raise ScratchLLMError(f"no tokenizer in {folder} (expected {FILENAME} or {META_FILE}); is this a checkpoint?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except JSON_ERRORS as e:
        raise ScratchLLMError(f"{path} is not a valid tokenizer file ({e.__class__.__name__}); re-save the checkpoint") from None
    if isinstance(data, dict) and data.get("type") == "char":
        return CharTokenizer.from_json(data, where=str(path))
    if isinstance(data, dict) and "model" in data:
        return formats.load_hf(path)
    raise ScratchLLMError(f"{path} is not a valid tokenizer file (neither scratchllm's nor Hugging Face's)")


def load_tokenizer_path(path: str | Path):
    """Any tokenizer a user may point at: a folder of ours, a Hugging Face `tokenizer.json`, OpenAI's
    GPT-2 folder (`encoder.json` + `vocab.bpe`), or Meta's Llama 3 `tokenizer.model`."""
    path = Path(path)
    if not path.exists():
        raise ScratchLLMError(f"tokenizer {path} does not exist; pass a tokenizer folder or file")
    if path.is_dir():
        if (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
            return formats.load_gpt2(path / "encoder.json", path / "vocab.bpe")
        if (path / RANKS_FILE).is_file() and not (path / META_FILE).is_file():
            return formats.load_llama3(path / RANKS_FILE)
        return load_tokenizer(path)
    if path.suffix == ".json":
        return formats.load_hf(path)
    if path.name == RANKS_FILE or path.suffix == ".model":
        if (path.parent / META_FILE).is_file():
            return BPETokenizer.load(path.parent)
        return formats.load_llama3(path)
    raise ScratchLLMError(f"{path} is not a tokenizer this tool reads (a folder, tokenizer.json, or tokenizer.model)")
