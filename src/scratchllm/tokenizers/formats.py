"""Tokenizer files: our own (tiktoken ranks + a small JSON), OpenAI's GPT-2 files, Meta's Llama 3
`tokenizer.model`, and Hugging Face `tokenizer.json` (ByteLevel BPE), both ways.

Every reader checks what it reads and turns a bad or truncated file into a one-line error.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import JSON_ERRORS, atomic_write
from scratchllm.tokenizers.bpe import BPETokenizer, bpe_merge
from scratchllm.tokenizers.patterns import GPT2, LLAMA3
from scratchllm.tokenizers.ranks import read_ranks


# -- OpenAI GPT-2 and Meta Llama 3 -----------------------------------------------------------------

@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (how its files spell token bytes).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes take the characters from
    U+0100 on, in byte order, so no token string holds whitespace or control characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@lru_cache(maxsize=1)
def _byte_of() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _unicode_to_bytes(token: str, where: str) -> bytes:
    decoder = _byte_of()  # made once: building it per token made loading GPT-2's 50,257 tokens take seconds
    try:
        return bytes(decoder[c] for c in token)
    except KeyError:
        raise ScratchLLMError(f"{where}: token {token!r} is not in GPT-2's byte-level alphabet") from None


def load_gpt2(encoder_json: str | Path, vocab_bpe: str | Path) -> BPETokenizer:
    """OpenAI's `encoder.json` (token -> id) and `vocab.bpe` (the merges, checked against the ids)."""
    try:
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        merges = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
    except FileNotFoundError as e:
        raise ScratchLLMError(f"GPT-2 tokenizer file {e.filename} does not exist") from None
    except OSError as e:
        raise ScratchLLMError(f"GPT-2 tokenizer file {e.filename} cannot be read ({e.strerror})") from None
    except (ValueError, RecursionError):
        raise ScratchLLMError(f"{encoder_json} is not valid JSON; the GPT-2 encoder file is corrupt or truncated") from None
    if not isinstance(encoder, dict):
        raise ScratchLLMError(f"{encoder_json} is not a valid GPT-2 encoder (an object of token -> id)")
    specials = {t: i for t, i in encoder.items() if t.startswith("<|") and t.endswith("|>")}
    ranks = {_unicode_to_bytes(t, str(encoder_json)): i for t, i in encoder.items() if t not in specials}
    merge_lines = [m for m in merges[1:] if m]  # the first line is a version header
    if len(merge_lines) != len(ranks) - 256:
        raise ScratchLLMError(f"{vocab_bpe} has {len(merge_lines)} merges for {len(ranks)} tokens; the files do not match or one is truncated")
    for i, line in enumerate(merge_lines):
        parts = line.split(" ")
        if len(parts) != 2 or ranks.get(_unicode_to_bytes(parts[0] + parts[1], str(vocab_bpe))) != 256 + i:
            raise ScratchLLMError(f"{vocab_bpe} merge {i + 1} ({line!r}) does not match {encoder_json}")
    return BPETokenizer(ranks, GPT2, specials)


LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                   + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)])


def load_llama3(path: str | Path) -> BPETokenizer:
    """Meta's Llama 3 `tokenizer.model`: 128,000 ranks, then 256 special tokens from id 128000."""
    ranks = read_ranks(path)
    if len(ranks) != 128_000:
        raise ScratchLLMError(f"{path} has {len(ranks)} tokens, Llama 3's has 128000; is it truncated or another model's?")
    specials = {s: 128_000 + i for i, s in enumerate(LLAMA3_SPECIALS)}
    return BPETokenizer(ranks, LLAMA3, specials)


# -- Hugging Face tokenizer.json -------------------------------------------------------------------

def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list that rebuilds `ranks`: each token splits into the two parts that BPE over
    the lower-ranked tokens leaves. Ordered by rank, so merge order equals token rank."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = bpe_merge(token, ranks, below=rank)
        if len(parts) != 2:
            raise ScratchLLMError(f"token {token!r} (rank {rank}) cannot be built from lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def to_hf_json(tok: BPETokenizer) -> dict:
    b2u = bytes_to_unicode()
    spell = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            # like tiktoken: a chunk that is a whole token is that token, whatever the merges would do
            "ignore_merges": True,
            "vocab": {spell(b): i for b, i in sorted(tok.ranks.items(), key=lambda kv: kv[1])},
            "merges": [[spell(a), spell(b)] for a, b in recover_merges(tok.ranks)],
        },
    }


def save_hf(tok: BPETokenizer, path: str | Path) -> None:
    atomic_write(path, json.dumps(to_hf_json(tok), ensure_ascii=False))


def load_hf(path: str | Path) -> BPETokenizer:
    """A ByteLevel-BPE `tokenizer.json` (GPT-2, Llama 3, ours); ids are kept as the file gives them."""
    path = Path(path)
    bad = ScratchLLMError(f"{path} is not a valid tokenizer.json (corrupt or truncated?)")
    if path.exists() and not path.is_file():  # a folder, a FIFO (whose read would block for ever), a device
        raise ScratchLLMError(f"{path} is not a regular file; give a tokenizer.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScratchLLMError(f"{path} does not exist") from None
    except JSON_ERRORS:
        raise bad from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise bad
    if model.get("type") != "BPE":
        raise ScratchLLMError(f"{path} holds a {model.get('type')!r} model; only byte-level BPE is supported")
    vocab, added = model.get("vocab"), data.get("added_tokens") or []
    if not isinstance(vocab, dict) or not isinstance(added, list) or \
            any(not isinstance(t, dict) or not isinstance(t.get("content"), str) or "id" not in t for t in added):
        raise bad
    ranks = {_unicode_to_bytes(t, str(path)): i for t, i in vocab.items()}
    ids = {i for i in ranks.values() if type(i) is int}  # BPETokenizer refuses ids that are not integers
    specials = {t["content"]: t["id"] for t in added if not (type(t["id"]) is int and t["id"] in ids)}
    return BPETokenizer(ranks, _hf_pattern(data.get("pre_tokenizer"), path), specials)


def _hf_pattern(pre, path: Path) -> str:
    """The split regex of a Split pre-tokenizer, or GPT-2's for a ByteLevel one with use_regex."""
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, dict):
            continue
        pattern = step.get("pattern")
        if step.get("type") == "Split" and isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str):
            return pattern["Regex"]
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return GPT2
    raise ScratchLLMError(f"{path}: no split pattern found in its pre_tokenizer")
