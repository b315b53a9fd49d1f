"""Loading whichever tokenizer a checkpoint folder holds."""

from __future__ import annotations

import json
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers.char import FILENAME, CharTokenizer

_KINDS = {"char": CharTokenizer}


def load_tokenizer(folder: str | Path):
    path = Path(folder) / FILENAME
    if not path.is_file():
        raise ScratchLLMError(f"no tokenizer in {folder} (expected {FILENAME}); is this a scratchllm checkpoint?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return _KINDS[data["type"]].from_json(data)
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ScratchLLMError(f"{path} is not a valid tokenizer file ({e.__class__.__name__}); re-save the checkpoint") from None
