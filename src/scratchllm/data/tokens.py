"""From a corpus to token ids, and prepared token files (nanoGPT's `train.bin` / `val.bin`).

A prepared folder holds `train.bin` and `val.bin` (raw uint16 ids, or uint32 for vocabularies of
65,536 tokens or more), the tokenizer, and `tokens.json` describing them. Training memory-maps
the two files; batches read only the windows they sample.

Presets prepare automatically: the tokenizer is made from the corpus (a BPE trained on the training
split only, so the validation text stays unseen; a character vocabulary from all of it), and both the
tokenizer and the token files are cached under $SCRATCHLLM_CACHE, keyed by the corpus and the
tokenizer settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scratchllm.data.batches import split_train_val
from scratchllm.data.corpora import CORPUS_NAMES, cache_dir, load_text
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import JSON_ERRORS, write_folder_atomically
from scratchllm.tokenizers import TokenizerConfig, load_tokenizer

TOKENS_META = "tokens.json"


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def is_prepared(source: str | Path) -> bool:
    return (Path(source) / TOKENS_META).is_file()


def _source_identity(source: str) -> dict:
    if source in CORPUS_NAMES:
        return {"name": source}
    path = Path(source).resolve()
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    return {"path": str(path), "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]}


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_text(tokenizer, text: str, progress: bool = True, piece_chars: int = 1 << 20) -> list[int]:
    r"""Encode with a progress bar, in pieces of about a megabyte.

    Pieces end just after a lone newline between a non-space and a letter ("word\nWord"): the gpt2,
    gpt4 and llama3 split patterns cut there whether or not text follows, so the ids equal those of
    one big encode (tested). Not after a run of whitespace: gpt2's `\s+(?!\S)` groups a trailing
    run differently at the end of a piece than before a letter."""
    if len(text) <= piece_chars:
        return tokenizer.encode(text, disallowed_special=())
    ids: list[int] = []
    with tqdm(total=len(text), unit="char", unit_scale=True, desc="encode", disable=not progress, mininterval=0.5) as bar:
        start = 0
        while start < len(text):
            end = min(len(text), start + piece_chars)
            while end < len(text) and not _safe_cut(text, end):
                end += 1
            ids.extend(tokenizer.encode(text[start:end], disallowed_special=()))
            bar.update(end - start)
            start = end
    return ids


def _safe_cut(text: str, i: int) -> bool:
    return text[i - 1] == "\n" and text[i].isalpha() and not text[i - 2].isspace()


def prepare(source: str, tokenizer, out: str | Path, progress: bool = True, write_folder=write_folder_atomically) -> Path:
    """Encode a corpus into `out/{train,val}.bin` with `tokenizer`, written as a whole folder by
    `write_folder` (the cache swaps folders; `scratchllm prepare` writes only its own files)."""
    text = load_text(source)
    train_text, val_text = split_train_val(text)

    def write(folder: Path) -> None:
        counts = {}
        for split, part in (("train", train_text), ("val", val_text)):
            ids = np.asarray(encode_text(tokenizer, part, progress), dtype=dtype_for(tokenizer.vocab_size))
            ids.tofile(folder / f"{split}.bin")
            counts[split] = {"tokens": int(len(ids)), "bytes": len(part.encode("utf-8")), "chars": len(part)}
        tokenizer.save(folder)
        meta = {"format": "scratchllm-tokens", "source": source, "dtype": dtype_for(tokenizer.vocab_size).name,
                "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.kind, "splits": counts}
        (folder / TOKENS_META).write_text(json.dumps(meta, indent=2) + "\n")

    write_folder(Path(out), write)
    return Path(out)


def load_prepared(folder: str | Path):
    """(tokenizer, train ids, val ids, meta) with the ids memory-mapped, not read; every field of
    tokens.json checked, and every id checked against the tokenizer's vocabulary."""
    folder = Path(folder)
    bad = ScratchLLMError(f"{folder / TOKENS_META} is corrupt; prepare the data again")
    try:
        meta = json.loads((folder / TOKENS_META).read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        splits = {s: meta["splits"][s]["tokens"] for s in ("train", "val")}
    except (*JSON_ERRORS, KeyError, TypeError):
        raise bad from None
    if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32)) or \
            any(type(n) is not int or n < 0 for n in splits.values()):
        raise bad
    tokenizer = load_tokenizer(folder)
    arrays = []
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        expected = splits[split] * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise ScratchLLMError(f"{path} is missing or truncated ({expected} bytes expected); prepare the data again")
        ids = np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
        if len(ids) and int(ids.max()) >= tokenizer.vocab_size:
            raise ScratchLLMError(f"{path} holds id {int(ids.max())}, beyond the tokenizer's {tokenizer.vocab_size}; prepare the data again")
        arrays.append(ids)
    return tokenizer, arrays[0], arrays[1], meta


def corpus_tokens(source: str, tokenizer=None, tokenizer_config: TokenizerConfig | None = None, progress: bool = True):
    """(tokenizer, train ids, val ids) for a corpus name, a path, or a prepared folder.

    With no tokenizer given, one is made from `tokenizer_config` (`TokenizerConfig.new`: characters of
    all the text, as nanoGPT does, or a BPE trained on the training split), and cached."""
    if is_prepared(source):
        prepared_tok, train, val, _ = load_prepared(source)
        if tokenizer is not None and tokenizer.fingerprint() != prepared_tok.fingerprint():
            raise ScratchLLMError(f"{source} was prepared with another tokenizer than this model's; prepare it again with this one")
        return prepared_tok, train, val
    if tokenizer is None:
        tokenizer = _cached_tokenizer(source, tokenizer_config or TokenizerConfig(), progress)
    folder = cache_dir() / "tokens" / f"{Path(str(source)).name}-{_key(_source_identity(source), tokenizer.fingerprint())}"
    if not is_prepared(folder):
        prepare(source, tokenizer, folder, progress)
    _, train, val, _ = load_prepared(folder)
    return tokenizer, train, val


def _cached_tokenizer(source: str, cfg: TokenizerConfig, progress: bool):
    folder = cache_dir() / "tokenizers" / f"{Path(str(source)).name}-{_key(_source_identity(source), asdict(cfg))}"
    if folder.is_dir():
        return load_tokenizer(folder)
    text = load_text(source)
    tokenizer = cfg.new(text, split_train_val(text)[0], progress)
    write_folder_atomically(folder, tokenizer.save)
    return tokenizer


def encode_corpus(source: str, tokenizer=None):
    """(tokenizer, all ids of a corpus as one array): the char pipeline's whole-corpus view."""
    tokenizer, train, val = corpus_tokens(source, tokenizer)
    return tokenizer, np.concatenate([np.asarray(train), np.asarray(val)])
