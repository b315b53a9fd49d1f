"""Byte-level BPE (Sennrich et al. 2016; GPT-2's byte-level variant), with tiktoken's semantics.

A tokenizer is three things: `ranks` (token bytes -> id; lower ids merge first), a regex that cuts
text into chunks, and special tokens (strings that map to one id each and are never merged into).

    text --regex--> chunks --UTF-8--> bytes --merge the lowest-ranked adjacent pair, repeat--> ids
"""

from __future__ import annotations

import hashlib
import heapq
import json
from pathlib import Path

import regex

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import JSON_ERRORS, atomic_write
from scratchllm.tokenizers.patterns import resolve_pattern
from scratchllm.tokenizers.ranks import read_ranks, write_ranks

RANKS_FILE = "tokenizer.model"  # tiktoken format: one "base64(token bytes) rank" line per token
META_FILE = "tokenizer_meta.json"  # {"type": "bpe", "pattern": ..., "special_tokens": {...}}
MAX_ID = 1 << 22  # ids beyond 4M are refused: a vocabulary that size is a corrupt or hostile file


def bpe_merge(piece: bytes, ranks: dict[bytes, int], below: int | None = None) -> list[bytes]:
    """Split `piece` into tokens: start from single bytes and keep merging the adjacent pair whose
    concatenation has the lowest rank (the leftmost on a tie, as tiktoken), until no adjacent pair
    is a token. With `below`, only tokens ranked lower than it may form (how a merge list is
    recovered from ranks, in formats.py).

    Rescanning every pair after each merge would be quadratic in the piece's length (a 64K-letter
    "word" would take minutes), so the pairs wait in a heap ordered by (rank, position) and the parts
    form a linked list: O(n log n). It is also faster than rescanning for pieces of 8 bytes and up
    (measured on GPT-2's ranks)."""
    limit = below if below is not None else float("inf")
    n = len(piece)
    parts: list[bytes | None] = [piece[i:i + 1] for i in range(n)]  # parts[i]: the token starting at byte i
    nxt, prev = list(range(1, n + 1)), list(range(-1, n - 1))  # nxt[i] == n: no right neighbour
    heap = []
    for i in range(n - 1):
        rank = ranks.get(parts[i] + parts[i + 1])
        if rank is not None and rank < limit:
            heap.append((rank, i))
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = nxt[i] if parts[i] is not None else n
        if j >= n or ranks.get(parts[i] + parts[j]) != rank:
            continue  # stale: one side was merged away since this pair was pushed
        parts[i], parts[j] = parts[i] + parts[j], None
        nxt[i] = nxt[j]
        if nxt[i] < n:
            prev[nxt[i]] = i
        for a in (prev[i], i):  # the two pairs the merge created
            if a >= 0 and nxt[a] < n:
                r = ranks.get(parts[a] + parts[nxt[a]])
                if r is not None and r < limit:
                    heapq.heappush(heap, (r, a))
    return [p for p in parts if p is not None]


def _replace_surrogates(text: str) -> str:
    """Text read with errors="surrogateescape" (invalid UTF-8 on stdin) holds lone surrogates, which
    UTF-8 cannot encode: they become U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class BPETokenizer:
    kind = "bpe"
    byte_level = True  # ids stand for byte strings: GGUF and Hugging Face's tokenizer.json hold it

    def __init__(self, ranks: dict[bytes, int], pattern: str = "gpt2", special_tokens: dict[str, int] | None = None,
                 backend: str = "python"):
        self.ranks = dict(ranks)
        self.pattern = resolve_pattern(pattern)
        self.special_tokens = dict(special_tokens or {})
        for what, table in (("token", self.ranks), ("special token", self.special_tokens)):
            for key, i in table.items():
                if type(i) is not int or not 0 <= i < MAX_ID:
                    raise ScratchLLMError(f"{what} {key!r} has id {i!r}; ids must be integers from 0 to {MAX_ID - 1}")
        if any(not isinstance(s, str) or not s for s in self.special_tokens):
            raise ScratchLLMError("special tokens must be non-empty strings")
        self._regex = regex.compile(self.pattern)
        # A byte-level BPE normally holds all 256 single bytes. Some vocabularies leave out bytes that
        # never occur in UTF-8 text (SmolLM2's lacks 21); a missing byte in the text is dropped, as
        # llama.cpp and Hugging Face's tokenizers drop it.
        self.missing_bytes = [b for b in range(256) if bytes([b]) not in self.ranks]
        self._decoder: dict[int, bytes] = {i: b for b, i in self.ranks.items()}
        if len(self._decoder) != len(self.ranks):
            raise ScratchLLMError("two tokens share one id in the vocabulary")
        for s, i in self.special_tokens.items():
            if i in self._decoder:
                raise ScratchLLMError(f"special token {s!r} has id {i}, which an ordinary token already uses")
            self._decoder[i] = s.encode("utf-8")
        self._special_regex = (regex.compile("|".join(regex.escape(s) for s in sorted(self.special_tokens, key=len, reverse=True)))
                               if self.special_tokens else None)
        self._cache: dict[str, tuple[int, ...]] = {}
        self.backend = "python"
        self._tiktoken = None
        if backend != "python":
            self.set_backend(backend)

    # -- vocabulary -----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (ids need not be contiguous in loaded files)."""
        return max(self._decoder) + 1

    def token_bytes(self, i: int) -> bytes:
        return self._decoder[i]

    # -- encoding -------------------------------------------------------------------------------

    def set_backend(self, backend: str) -> "BPETokenizer":
        """'python' (ours) or 'tiktoken' (the same ranks and pattern, encoded by tiktoken's Rust core)."""
        if backend == "tiktoken":
            if self.missing_bytes:
                raise ScratchLLMError(f"backend 'tiktoken' needs all 256 single bytes; this vocabulary lacks "
                                      f"{len(self.missing_bytes)}: use the python backend")
            try:
                import tiktoken
            except ImportError:
                raise ScratchLLMError("backend 'tiktoken' needs the tiktoken package: pip install tiktoken") from None
            self._tiktoken = tiktoken.Encoding(name="scratchllm", pat_str=self.pattern, mergeable_ranks=self.ranks,
                                               special_tokens=self.special_tokens)
        elif backend != "python":
            raise ScratchLLMError(f"unknown backend '{backend}'; use python or tiktoken")
        self.backend = backend
        return self

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        ids = self._cache.get(chunk)
        if ids is None:
            data = chunk.encode("utf-8")
            direct = self.ranks.get(data)  # most chunks of ordinary text are whole tokens already
            if direct is not None:
                ids = (direct,)
            else:
                parts = bpe_merge(data, self.ranks)
                ids = tuple(self.ranks[p] for p in parts if not self.missing_bytes or p in self.ranks)
            if len(self._cache) < 500_000:
                self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text` with special-token strings treated as ordinary text."""
        text = _replace_surrogates(text)
        if self._tiktoken is not None:
            return self._tiktoken.encode_ordinary(text)
        out: list[int] = []
        encode_chunk = self._encode_chunk
        for chunk in self._regex.findall(text):
            out.extend(encode_chunk(chunk))
        return out

    def encode(self, text: str, allowed_special: str | set[str] = frozenset(),
               disallowed_special: str | set[str] = "all") -> list[int]:
        """tiktoken's semantics: special tokens in `allowed_special` ("all" or a set) become their ids;
        text spelling a disallowed special token is an error (default: all of them are disallowed)."""
        text = _replace_surrogates(text)
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        disallowed = set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        if disallowed and self._special_regex is not None:
            found = [m.group() for m in self._special_regex.finditer(text) if m.group() in disallowed]
            if found:
                raise ScratchLLMError(f"text contains the special token {found[0]!r}; pass allowed_special to encode it "
                                      "as a special token, or disallowed_special=() to encode it as ordinary text")
        if not allowed:
            return self.encode_ordinary(text)
        if self._tiktoken is not None:
            return self._tiktoken.encode(text, allowed_special=allowed, disallowed_special=())
        allowed_regex = regex.compile("|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)))
        out: list[int] = []
        start = 0
        for m in allowed_regex.finditer(text):
            out.extend(self.encode_ordinary(text[start:m.start()]))
            out.append(self.special_tokens[m.group()])
            start = m.end()
        out.extend(self.encode_ordinary(text[start:]))
        return out

    def encode_batch(self, texts: list[str], **kwargs) -> list[list[int]]:
        return [self.encode(t, **kwargs) for t in texts]

    # -- decoding -------------------------------------------------------------------------------

    def decode_bytes(self, ids: list[int]) -> bytes:
        try:
            return b"".join(self._decoder[i] for i in ids)
        except KeyError as e:
            raise ScratchLLMError(f"token id {e.args[0]} is not in the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- files ----------------------------------------------------------------------------------

    def bytes_per_token(self) -> list[int]:
        """UTF-8 bytes each id stands for (0 for special tokens and unused ids): for bits per byte."""
        out = [0] * self.vocab_size
        for token, i in self.ranks.items():
            out[i] = len(token)
        return out

    def fingerprint(self) -> str:
        """A short hash of the pattern, the special tokens and every token's bytes and id."""
        h = hashlib.sha256()
        h.update(json.dumps([self.pattern, self.special_tokens], sort_keys=True).encode())
        for token, rank in sorted(self.ranks.items(), key=lambda kv: kv[1]):
            h.update(token + rank.to_bytes(4, "little"))
        return h.hexdigest()[:16]

    # -- files ----------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Our own format: the ranks as a tiktoken file, and the pattern and special tokens as JSON."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_ranks(self.ranks, folder / RANKS_FILE)
        meta = {"type": "bpe", "pattern": self.pattern, "special_tokens": self.special_tokens}
        atomic_write(folder / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "BPETokenizer":
        folder = Path(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            pattern, specials = meta["pattern"], meta["special_tokens"]
        except (*JSON_ERRORS, KeyError, TypeError):
            raise ScratchLLMError(f"{folder / META_FILE} is missing or corrupt; it should hold the pattern and special tokens") from None
        if not isinstance(pattern, str) or not isinstance(specials, dict):
            raise ScratchLLMError(f"{folder / META_FILE} is corrupt: pattern must be a string and special_tokens an object")
        return cls(read_ranks(folder / RANKS_FILE), pattern, specials)
