"""Training a byte-level BPE: learn which adjacent pairs of tokens to merge, most frequent first.

The naive loop (minbpe) recounts every pair of the whole corpus after each merge. This one does
what the Rust trainers do:
  1. pre-tokenize once and count the distinct chunks (a corpus of 1M characters has ~15k);
  2. count pairs once, weighted by chunk frequency, remembering which chunks hold each pair;
  3. take the most frequent pair from a heap; rewrite only the chunks that hold it, and move only
     their pair counts.
A merge only removes adjacencies or creates ones that include the new token, so every count
already in the heap can only have gone down: a popped entry whose count is stale is pushed back
with its true count (lazy deletion), and the new token's pairs are pushed once after each merge.

Tie-break, documented so results are reproducible: among pairs with the same count, the smallest
(left id, right id) wins.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from typing import Iterable

import regex
from tqdm import tqdm

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers.bpe import BPETokenizer
from scratchllm.tokenizers.patterns import resolve_pattern


def count_chunks(texts: Iterable[str], pattern: str) -> Counter:
    compiled = regex.compile(pattern)
    counts: Counter = Counter()
    for text in texts:
        counts.update(compiled.findall(text))
    return counts


def train_bpe(texts: str | Iterable[str], vocab_size: int, pattern: str = "gpt2",
              special_tokens: Iterable[str] = (), progress: bool = True) -> BPETokenizer:
    """A tokenizer of `vocab_size` ids in all: 256 bytes, the learned merges, then the special tokens."""
    pattern = resolve_pattern(pattern)
    specials = list(dict.fromkeys(special_tokens))
    if any(not isinstance(s, str) or not s for s in specials):  # checked before the training, not after it
        raise ScratchLLMError("special tokens must be non-empty strings")
    n_merges = vocab_size - 256 - len(specials)
    if n_merges < 0:
        raise ScratchLLMError(f"vocab_size {vocab_size} is too small: it needs 256 byte tokens + {len(specials)} special tokens")
    if vocab_size > 1 << 20:  # as TokenizerConfig: a bigger one is a typo (or would take days)
        raise ScratchLLMError(f"vocab_size {vocab_size} is too large; the most is 1048576")
    if isinstance(texts, str):
        texts = [texts]

    chunk_counts = count_chunks(texts, pattern)
    words: list[list[int]] = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs: list[int] = list(chunk_counts.values())
    token_bytes: list[bytes] = [bytes([b]) for b in range(256)]
    ranks: dict[bytes, int] = {t: i for i, t in enumerate(token_bytes)}

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> chunks that hold (or held) it
    for wi, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += f
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    bar = tqdm(total=n_merges, desc="bpe merges", unit="merge", disable=not progress, mininterval=0.5)
    while len(ranks) < 256 + n_merges and heap:
        neg, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg:  # stale: its count fell since it was pushed
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        a, b = pair
        merged = token_bytes[a] + token_bytes[b]
        # Two merge paths can spell the same bytes ("a"+"bc", "ab"+"c"); then the token exists already.
        new = ranks.get(merged)
        if new is None:
            new = len(token_bytes)
            token_bytes.append(merged)
            ranks[merged] = new
            bar.update(1)
        created: set[tuple[int, int]] = set()
        for wi in where.pop(pair):
            w = words[wi]
            if len(w) < 2:
                continue
            out, i, n = [], 0, len(w)
            while i < n:
                if i < n - 1 and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            if len(out) == n:
                continue  # this chunk lost the pair to an earlier merge
            f = freqs[wi]
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
            for p in zip(out, out[1:]):
                pair_counts[p] += f
                if new in p:
                    where[p].add(wi)
                    created.add(p)
            words[wi] = out
        pair_counts.pop(pair, None)
        for p in created:
            heapq.heappush(heap, (-pair_counts[p], p))
    bar.close()
    special_ids = {s: len(ranks) + i for i, s in enumerate(specials)}
    return BPETokenizer(ranks, pattern, special_ids)

