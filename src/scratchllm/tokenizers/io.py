"""Loading whichever tokenizer a folder holds: ours (char or BPE), or a Hugging Face tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers.char import FILENAME, CharTokenizer


def load_tokenizer(folder: str | Path):
    from scratchllm.tokenizers import formats

    folder = Path(folder)
    if (folder / formats.META_FILE).is_file():
        return formats.load_bpe(folder)
    path = folder / FILENAME
    if not path.is_file():
        raise ScratchLLMError(f"no tokenizer in {folder} (expected {FILENAME} or {formats.META_FILE}); is this a checkpoint?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchLLMError(f"{path} is not a valid tokenizer file ({e.__class__.__name__}); re-save the checkpoint") from None
    if isinstance(data, dict) and data.get("type") == "char" and isinstance(data.get("chars"), list):
        return CharTokenizer.from_json(data)
    if isinstance(data, dict) and "model" in data:
        return formats.load_hf(path)
    raise ScratchLLMError(f"{path} is not a valid tokenizer file (neither scratchllm's nor Hugging Face's)")


def load_tokenizer_path(path: str | Path):
    """Any tokenizer a user may point at: a folder of ours, a Hugging Face `tokenizer.json`, OpenAI's
    GPT-2 folder (`encoder.json` + `vocab.bpe`), or Meta's Llama 3 `tokenizer.model`."""
    from scratchllm.tokenizers import formats

    path = Path(path)
    if not path.exists():
        raise ScratchLLMError(f"tokenizer {path} does not exist; pass a tokenizer folder or file")
    if path.is_dir():
        if (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
            return formats.load_gpt2(path / "encoder.json", path / "vocab.bpe")
        if (path / formats.RANKS_FILE).is_file() and not (path / formats.META_FILE).is_file():
            return formats.load_llama3(path / formats.RANKS_FILE)
        return load_tokenizer(path)
    if path.suffix == ".json":
        return formats.load_hf(path)
    if path.name == formats.RANKS_FILE or path.suffix == ".model":
        if (path.parent / formats.META_FILE).is_file():
            return formats.load_bpe(path.parent)
        return formats.load_llama3(path)
    raise ScratchLLMError(f"{path} is not a tokenizer this tool reads (a folder, tokenizer.json, or tokenizer.model)")
