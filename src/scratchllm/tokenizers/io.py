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
