# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 2: byte-level BPE from scratch
#
# Lesson 1 fed the model one character at a time. Real models read **tokens**: pieces of text learned from a
# corpus, so that frequent words take one id and rare ones a few. This lesson builds the tokenizer of GPT-2,
# GPT-4 and Llama 3, byte-level byte-pair encoding (BPE), and checks it at every step:
#
# 1. text as UTF-8 bytes (why bytes, not characters or words);
# 2. counting adjacent pairs and merging the most frequent one;
# 3. a complete trainer in a dozen lines, trained for a few hundred merges on Shakespeare, and shown to
#    learn exactly the merges of the library's fast trainer (`scratchllm.tokenizers.bpe_train.train_bpe`);
# 4. the regular expression that cuts text into chunks first (GPT-2's, GPT-4's, Llama 3's, GPT-4o's), checked
#    against tiktoken's own, and what goes wrong without it;
# 5. special tokens, and why text must not be allowed to spell them;
# 6. OpenAI's GPT-2 files and Meta's Llama 3 `tokenizer.model`, loaded by the library, giving tiktoken's
#    ids on a paragraph with emoji, Chinese and Japanese, and digits; and the byte-to-character map that
#    makes GPT-2's files spell `" the"` as `"Ġthe"`.
#
# Data: TinyShakespeare and the two tokenizers' files, all in the repository's `tests/data/`.

# %%
import json
import random
import time
import unicodedata
from collections import Counter
from pathlib import Path
from unittest import mock

import matplotlib.pyplot as plt
import regex
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
from tiktoken_ext import openai_public
from tokenizers.pre_tokenizers import ByteLevel
from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers import BPETokenizer, CharTokenizer, formats, patterns
from scratchllm.tokenizers.bpe_train import train_bpe

LESSON_START = time.perf_counter()

DATA = Path("../tests/data")  # lessons run from lessons/
text = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")
print(f"{len(text):,} characters")

# %% [markdown]
# ## 1. Why bytes
#
# A character vocabulary is small but makes sequences long (the model must spend its context, and its
# compute, on one letter at a time), and a character it never saw in training has no id at all. A word
# vocabulary makes sequences short but is huge, and still meets unknown words.
#
# Bytes solve the "unknown" problem for good: every string, in any script, is a sequence of UTF-8 bytes,
# values 0 to 255. Start from those 256 ids and nothing can ever be out of vocabulary. ASCII characters take
# one byte; accented letters two; Chinese and Japanese characters three; most emoji four.

# %%
sample = "Hi, café! 東京 🙂"
for ch in sample:
    print(f"{ch!r:6} -> {list(ch.encode('utf-8'))}")
raw = sample.encode("utf-8")
print(f"{len(sample)} characters, {len(raw)} bytes")
try:  # a character vocabulary has no id for a character it never saw
    CharTokenizer.train(text).encode(sample)
    raise AssertionError("should have been refused")
except ScratchLLMError as e:
    print("characters:", e)
assert len(raw) == len(sample) + 1 + 2 * 2 + 3  # é: 2 bytes, each CJK character 3, the emoji 4
assert all(0 <= b < 256 for b in raw) and raw.decode("utf-8") == sample

# %% [markdown]
# Bytes alone make sequences even longer than characters. BPE shortens them by learning new tokens: find the
# pair of adjacent tokens that occurs most often, give it a new id, replace every occurrence, repeat.
# Each merge shortens the text by the number of occurrences it replaces.
#
# ## 2. Counting pairs, merging one

# %%
def pair_stats(ids) -> Counter:
    """How often each adjacent pair occurs in a sequence of ids."""
    return Counter(zip(ids, ids[1:]))


def merge(ids, pair, new_id) -> list[int]:
    """Replace every occurrence of `pair` in `ids` (left to right, not overlapping) by `new_id`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


line = list("First Citizen: we are accounted poor citizens".encode("utf-8"))
top = pair_stats(line).most_common(3)
print([(bytes(p).decode(), n) for p, n in top])
best = top[0][0]
merged = merge(line, best, 256)
print(f"merging {bytes(best).decode()!r} into 256: {len(line)} -> {len(merged)} tokens")
assert merge([1, 2, 3, 1, 2, 2], (1, 2), 256) == [256, 3, 256, 2]
assert merge([1, 1, 1], (1, 1), 256) == [256, 1]  # left to right, no overlap
assert len(merged) == len(line) - top[0][1]

# %% [markdown]
# ## 3. A trainer
#
# Three details make this a real trainer rather than a toy, and each one matters for matching the library
# merge for merge.
#
# - **Chunks.** Before counting, the text is cut into chunks by a regular expression (section 4 says why),
#   and pairs are never counted across a chunk boundary. The same chunk (`" the"`, `"\n"`) occurs thousands
#   of times, so we count each *distinct* chunk once and weight its pairs by how often it occurs. That is
#   the same count as walking the whole text, at a fraction of the work.
# - **Ties.** When two pairs have the same count, the smallest `(left id, right id)` wins: any rule would do,
#   but it must be fixed for results to be reproducible.
# - **Spelling twice.** Two different merge paths can spell the same bytes (`"a" + "bc"` and `"ab" + "c"`).
#   The second time, we reuse the existing id rather than creating a duplicate token.
#
# Everything else is the loop from section 2. `ranks` maps each token's bytes to its id; a lower id was
# learned earlier, and when encoding, earlier merges are applied first.

# %%
corpus = text[:300_000]
chunks = regex.findall(patterns.GPT2, corpus)
chunk_counts = Counter(chunks)
print(f"{len(chunks):,} chunks, {len(chunk_counts):,} distinct; ' the' occurs {chunk_counts[' the']:,} times")
assert len(chunk_counts) < len(chunks) / 5 and chunk_counts[" the"] > 1000

# %%
def train_tiny(text: str, n_merges: int, pattern: str) -> dict[bytes, int]:
    """Byte-level BPE: 256 byte tokens plus up to `n_merges` learned ones. Returns bytes -> id."""
    chunk_counts = Counter(regex.findall(pattern, text))
    words = {tuple(chunk.encode("utf-8")): n for chunk, n in chunk_counts.items()}
    vocab = [bytes([b]) for b in range(256)]  # id -> bytes
    ranks = {token: i for i, token in enumerate(vocab)}  # bytes -> id
    while len(vocab) < 256 + n_merges:
        stats = Counter()
        for word, n in words.items():
            for pair, k in pair_stats(word).items():
                stats[pair] += k * n
        if not stats:
            break  # every chunk is a single token already
        best = min(stats, key=lambda pair: (-stats[pair], pair))  # most frequent; ties: smallest pair
        spelled = vocab[best[0]] + vocab[best[1]]
        if spelled not in ranks:
            ranks[spelled] = len(vocab)
            vocab.append(spelled)
        words = {tuple(merge(word, best, ranks[spelled])): n for word, n in words.items()}
    return ranks


ranks = train_tiny(corpus, 400, patterns.GPT2)
learned = [token for token, i in sorted(ranks.items(), key=lambda kv: kv[1]) if i >= 256]
print("first merges:", [token.decode() for token in learned[:20]])
print("last merges: ", [token.decode() for token in learned[-12:]])

# %% [markdown]
# The first merges are the commonest pieces of English: the start of a word with its space (`" t"`, `" a"`),
# frequent letter pairs (`"he"`, `"ou"`, `"in"`), and by the eleventh merge the word `" the"`. The last ones
# are mostly whole words (`" mother"`, `" death"`, `" speak"`) and pieces of words. A space only ever stands at
# the *start* of a token that holds letters, never inside or at the end: section 4 explains why.

# %%
assert b" the" in learned[:11] and {b" mother", b" death", b" speak"} <= set(learned[-12:])
with_letters = [t for t in learned if regex.search(rb"[A-Za-z]", t)]
assert all(regex.fullmatch(rb" ?[A-Za-z]+|'[a-z]+", t) for t in with_letters)  # letters, after at most one space

# %% [markdown]
# **Encoding** new text with learned ranks repeats the merges in the order they were learned: in each chunk,
# find the adjacent pair whose merged bytes have the lowest rank, merge it, and stop when no adjacent pair is
# a token. Decoding just concatenates the tokens' bytes.

# %%
def encode_tiny(text: str, ranks: dict[bytes, int], pattern: str) -> list[int]:
    ids = []
    for chunk in regex.findall(pattern, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        while len(parts) > 1:
            candidates = [(ranks.get(a + b), i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if a + b in ranks]
            if not candidates:
                break
            _, i = min(candidates)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids.extend(ranks[p] for p in parts)
    return ids


vocab = {i: token for token, i in ranks.items()}
held_out = text[500_000:600_000]  # text the trainer never saw
ids = encode_tiny(held_out, ranks, patterns.GPT2)
assert b"".join(vocab[i] for i in ids).decode("utf-8") == held_out  # lossless
print(f"{len(held_out.encode()):,} bytes -> {len(ids):,} tokens: {len(held_out.encode()) / len(ids):.2f} bytes per token")

# %% [markdown]
# ### Why the order matters
#
# The ranks are not just a vocabulary; they are a recipe. A token learned late is built from tokens learned
# before it, and at training time those pieces were already there when it was counted. Apply the same 400
# merges with the priorities reversed (the last learned is tried first) and a late merge can grab a letter that
# an earlier one needed: the token that should have formed never can.

# %%
n_tokens = len(vocab)  # 256 bytes + 400 learned
reversed_ranks = {token: i if i < 256 else 256 + n_tokens - 1 - i for token, i in ranks.items()}  # same tokens
reversed_vocab = {i: token for token, i in reversed_ranks.items()}

word = " citizens"
in_order = [vocab[i] for i in encode_tiny(word, ranks, patterns.GPT2)]
out_of_order = [reversed_vocab[i] for i in encode_tiny(word, reversed_ranks, patterns.GPT2)]
print(f"{word!r} in learned order: {in_order}")
print(f"{word!r} in reverse order: {out_of_order}")
assert in_order == [b" c", b"itizen", b"s"]
assert out_of_order == [b" ", b"ci", b"t", b"i", b"zen", b"s"]
assert ranks[b"ci"] > ranks[b" c"]  # "ci", learned late, went first and took the c that " c" needed

ids_out_of_order = encode_tiny(held_out, reversed_ranks, patterns.GPT2)
assert b"".join(reversed_vocab[i] for i in ids_out_of_order).decode("utf-8") == held_out  # still lossless...
print(f"held-out text: {len(ids):,} tokens in learned order, {len(ids_out_of_order):,} in reverse order")
assert len(ids_out_of_order) > 1.04 * len(ids)  # ...but longer: the vocabulary is the same, the recipe is not

# %% [markdown]
# ### The library's trainer gives the same merges
#
# `train_bpe` does the same job without recounting everything after each merge: it keeps the pair counts,
# and after a merge updates only the chunks that contained the pair (a heap finds the next best pair). Same
# rules, so it must produce the same vocabulary, token for token and id for id. And the library's encoder
# (`BPETokenizer`) reading our ranks must encode exactly as our `encode_tiny` does.

# %%
library = train_bpe(corpus, vocab_size=256 + 400, pattern="gpt2", progress=False)
assert library.ranks == ranks
assert BPETokenizer(ranks, "gpt2").encode(held_out) == ids
print(f"same {len(ranks)} tokens, same ids; same encoding of {len(ids):,} tokens")

# %% [markdown]
# ## 4. Pre-splitting with a regular expression
#
# GPT-2 does not run BPE over raw text. A regular expression first cuts the text into chunks: a word with
# its leading space, a run of digits, a run of punctuation, whitespace; merges then happen only inside
# chunks. The library keeps the patterns in `scratchllm.tokenizers.patterns`: `GPT2`, `CL100K` (GPT-4, also
# named `GPT4`), `O200K` (GPT-4o) and `LLAMA3`. This section checks them against the originals.
#
# OpenAI's originals ship with tiktoken: each of its encodings is made by a function in
# `tiktoken_ext.openai_public` that returns the pattern together with the ranks, which it downloads. We only
# want the pattern, so we call that function with the download replaced by a stub that returns no ranks:
# nothing is fetched.
#
# tiktoken does not show how it cut a text, but we can make it: give it a vocabulary that holds every
# substring of the text, and BPE merges each chunk into a single token, so its tokens *are* its chunks. That
# checks that the `regex` module, which this lesson uses, reads each pattern as tiktoken's own engine does.

# %%
def tiktoken_pattern(encoding: str) -> str:
    """The split pattern of one of tiktoken's encodings, read without downloading its ranks."""
    def no_ranks(*args, **kwargs) -> dict:
        return {}  # stands in for the download

    with mock.patch.object(openai_public, "load_tiktoken_bpe", no_ranks), \
            mock.patch.object(openai_public, "data_gym_to_mergeable_bpe_ranks", no_ranks):  # GPT-2's loader
        return openai_public.ENCODING_CONSTRUCTORS[encoding]()["pat_str"]


def tiktoken_chunks(pattern: str, text: str) -> list[str]:
    """How tiktoken's own engine cuts `text` with `pattern`.

    Every substring of the text is a token, so BPE merges each chunk into one token."""
    data = text.encode("utf-8")
    substrings = {data[i:j] for i in range(len(data)) for j in range(i + 2, len(data) + 1)}
    every_substring = {bytes([b]): b for b in range(256)} | {piece: 256 + k for k, piece in enumerate(substrings)}
    probe = tiktoken.Encoding("probe", pat_str=pattern, mergeable_ranks=every_substring, special_tokens={})
    return [probe.decode_single_token_bytes(i).decode("utf-8") for i in probe.encode(text)]


CL100K, O200K = tiktoken_pattern("cl100k_base"), tiktoken_pattern("o200k_base")
print("cl100k (GPT-4):", CL100K)

# %% [markdown]
# GPT-4's pattern, `cl100k`, has eight alternatives. At each position the first one that matches wins, and
# what it matches is the next chunk:
#
# 1. `'(?i:[sdmt]|ll|ve|re)`: a contraction, in any case: `I'LL` gives `I`, `'LL` (GPT-2's list is lower case
#    only, so it gives `I`, `'`, `LL`).
# 2. `[^\r\n\p{L}\p{N}]?+\p{L}++`: a run of letters with at most one leading character that is not a letter,
#    digit or newline: ` pay`, `(sir`.
# 3. `\p{N}{1,3}+`: one to three digits, counted from the left: `1234567` gives `123`, `456`, `7`. A number
#    never takes the space before it.
# 4. ` ?[^\s\p{L}\p{N}]++[\r\n]*+`: a run of punctuation, with an optional space before and all the newlines
#    after: `)!\n\n`.
# 5. `\s++$`: whitespace that runs to the end of the text, whole.
# 6. `\s*[\r\n]`: whitespace up to and including its last newline: `"  \n\n"` in `"a  \n\n  b"`.
# 7. `\s+(?!\S)`: a run of spaces less its last one, which the next word takes: `"a   b"` gives `a`, `"  "`,
#    `" b"`.
# 8. `\s`: one whitespace character nothing else took, such as the space before a number.
#
# `?+`, `++`, `*+` and `{1,3}+` are *possessive* quantifiers: like `?`, `+`, `*`, `{1,3}` they take as much as
# they can, but they never give any back when what follows fails. `\p{L}+s` matches `cats` (the letters give
# back the `s`); `\p{L}++s` does not. In cl100k nothing after them ever needs a character back, so they change
# no split: they only spare the engine from trying. The cell checks each example above, and that the pattern
# with ordinary quantifiers cuts all of TinyShakespeare, and a mixed test string, exactly as cl100k does.

# %%
examples = {  # text -> cl100k's chunks
    "I'LL pay": ["I", "'LL", " pay"],
    "(sir)!\n\nNo": ["(sir", ")!\n\n", "No"],
    "1234567": ["123", "456", "7"],
    "a  \n\n  b": ["a", "  \n\n", " ", " b"],
    "a   b": ["a", "  ", " b"],
    "pay 12": ["pay", " ", "12"],
    "end  ": ["end", "  "],
}
for example, expected in examples.items():
    chunks = regex.findall(CL100K, example)
    print(f"{example!r:16} cl100k {chunks!s:32} GPT-2 {regex.findall(patterns.GPT2, example)}")
    assert chunks == expected == tiktoken_chunks(CL100K, example)

assert regex.fullmatch(r"\p{L}+s", "cats") and not regex.fullmatch(r"\p{L}++s", "cats")
ordinary = regex.sub(r"([?*+}])\+", r"\1", CL100K)  # x?+ -> x?, x++ -> x+, x*+ -> x*, {1,3}+ -> {1,3}
print("with ordinary quantifiers:", ordinary)
mixed = "I'LL pay 1234567 ducats, (sir)!\n\n  Isn't it?  HelloWorld naïve 東京 🙂\tx=1;\n// done\n"
assert regex.findall(CL100K, mixed) == regex.findall(ordinary, mixed) == tiktoken_chunks(CL100K, mixed)
cl100k_chunks = regex.findall(CL100K, text)
assert regex.findall(ordinary, text) == cl100k_chunks

# %% [markdown]
# Next to GPT-2's pattern, the changes show on one line: contractions in any case, digits in groups of at most
# three, newlines kept with the punctuation before them, and a word that takes one leading non-letter, so
# `"(hello"` stays together.
#
# The library's `patterns.CL100K` and `patterns.O200K` are tiktoken's strings, character for character.
# `patterns.LLAMA3` is not cl100k's string but another spelling of it: ordinary quantifiers, the
# contractions written out, `\s*[\r\n]+` and `\s+` for `\s*[\r\n]` and `\s`, and no `\s++$`. It is the
# spelling Llama 3 uses: transformers reads tiktoken-format files such as Llama 3's `tokenizer.model` with
# exactly this pattern. It cuts all of TinyShakespeare and the mixed string as cl100k does, and 2,000 random
# strings show the one place where the two can differ, the very end of a text: whitespace that ends it,
# newlines and then spaces, is one chunk for cl100k (`\s++$` comes first) and two for Llama 3's
# (`\s*[\r\n]+` stops at the last newline).

# %%
demo = "I'LL pay 1234567 ducats, (sir)!\n\n  Isn't it?"
for name, pattern in (("GPT-2", patterns.GPT2), ("cl100k", CL100K), ("Llama 3", patterns.LLAMA3)):
    print(f"{name:8} {regex.findall(pattern, demo)}")

gpt2_chunks, gpt4_chunks = regex.findall(patterns.GPT2, demo), regex.findall(CL100K, demo)
assert " 1234567" in gpt2_chunks  # GPT-2: one run of digits, however long
assert ["123", "456", "7"] == [c for c in gpt4_chunks if c.strip().isdigit()]  # GPT-4: groups of three
assert "'LL" in gpt4_chunks and "'LL" not in gpt2_chunks  # contractions in any case
assert ")!\n\n" in gpt4_chunks and regex.findall(CL100K, "(hello") == ["(hello"]

assert patterns.CL100K == patterns.GPT4 == CL100K and patterns.O200K == O200K  # the library's are tiktoken's
assert patterns.LLAMA3 == TikTokenConverter().pattern  # transformers' pattern for tiktoken files such as Llama 3's
assert regex.findall(patterns.LLAMA3, demo) == gpt4_chunks
assert regex.findall(patterns.LLAMA3, mixed) == regex.findall(CL100K, mixed)
assert regex.findall(patterns.LLAMA3, text) == cl100k_chunks  # all 1.1 million characters of TinyShakespeare
ending = "the end\n  "
print(f"{ending!r}: cl100k {regex.findall(CL100K, ending)}, Llama 3 {regex.findall(patterns.LLAMA3, ending)}")
assert regex.findall(CL100K, ending) == tiktoken_chunks(CL100K, ending) == ["the", " end", "\n  "]
assert regex.findall(patterns.LLAMA3, ending) == ["the", " end", "\n", "  "]

rng = random.Random(0)  # random strings made of the pieces the patterns care about
alphabet = ["a", "B", "'s", "'LL", "7", " ", "\t", "\n", "\r", ".", "(", "é", "東", "🙂"]
differ = 0
for _ in range(2000):
    string = "".join(rng.choices(alphabet, k=rng.randint(1, 20)))
    llama3_split, cl100k_split = regex.findall(patterns.LLAMA3, string), regex.findall(CL100K, string)
    if llama3_split != cl100k_split:  # then only the last chunk differs, cut in two
        differ += 1
        assert llama3_split[:-2] == cl100k_split[:-1] and cl100k_split[-1].isspace()
        assert llama3_split[-2] + llama3_split[-1] == cl100k_split[-1]
print(f"{differ} of 2000 random strings split differently, each only in its final whitespace")
assert differ > 0

# %% [markdown]
# ### GPT-4o's pattern (`o200k`)
#
# GPT-4o's `o200k_base` changes the words. A word is a run of capitals followed by a run of lower-case letters
# (or capitals alone), so CamelCase splits at each capital while an acronym stays with the word after it
# (`XMLHttp`, `Request`); a contraction stays with its word (`Isn't`, ` I'LL`); and combining accents (`\p{M}`)
# count as letters, so a `naïve` written with a separate accent code point (Unicode's NFD form) stays one
# chunk. Punctuation still takes the newlines after it, and now the slashes after those too (`;\n//` of code).
# On TinyShakespeare o200k makes fewer chunks than cl100k, and every chunk it has that cl100k lacks holds an
# apostrophe: `I'll`, `father's`.

# %%
o200k_examples = {  # text -> (cl100k's chunks, o200k's chunks)
    "HelloWorld XMLHttpRequest": (["HelloWorld", " XMLHttpRequest"], ["Hello", "World", " XMLHttp", "Request"]),
    "Isn't it, I'LL": (["Isn", "'t", " it", ",", " I", "'LL"], ["Isn't", " it", ",", " I'LL"]),
    unicodedata.normalize("NFD", "naïve"): (["nai", "\u0308ve"], ["nai\u0308ve"]),
    "x=1;\n// done": (["x", "=", "1", ";\n", "//", " done"], ["x", "=", "1", ";\n//", " done"]),
}
for example, (cl100k, o200k) in o200k_examples.items():
    print(f"{ascii(example):28} cl100k {regex.findall(CL100K, example)}")
    print(f"{'':28} o200k  {regex.findall(O200K, example)}")
    assert regex.findall(CL100K, example) == cl100k
    assert regex.findall(O200K, example) == o200k == tiktoken_chunks(O200K, example)

o200k_chunks = regex.findall(O200K, text)
only_o200k = set(o200k_chunks) - set(cl100k_chunks)
commonest_only_o200k = [c for c, _ in Counter(c for c in o200k_chunks if c in only_o200k).most_common(5)]
print(f"TinyShakespeare: cl100k {len(cl100k_chunks):,} chunks, o200k {len(o200k_chunks):,}; "
      f"the commonest that only o200k makes: {commonest_only_o200k}")
assert len(o200k_chunks) < len(cl100k_chunks) and all("'" in c for c in only_o200k)

# %% [markdown]
# Why split at all? Without chunks, BPE merges whatever is frequent, and in English what is frequent includes
# *word endings followed by a space* and *a word followed by punctuation*. The vocabulary fills with fragments
# that straddle words, and the same word gets different tokens depending on what follows it: the model then
# has to learn separately that `"the "`, `" the"` and `"the,"` mean the same thing.
#
# To see it, we train the same number of merges twice on 100,000 characters: once with GPT-2's pattern, once
# with a pattern that cuts only at line ends (`[^\n]*\n|[^\n]+`), so merges may cross words within a line.

# %%
small = text[:100_000]
LINES = r"[^\n]*\n|[^\n]+"
with_split = train_bpe(small, 256 + 300, "gpt2", progress=False)
without = train_bpe(small, 256 + 300, LINES, progress=False)


def straddling(tok: BPETokenizer) -> list[bytes]:
    """Learned tokens in which a letter touches a space or punctuation other than as one leading space."""
    learned = [t for t, i in tok.ranks.items() if i >= 256]
    return [t for t in learned if regex.search(rb"[A-Za-z][\s,.;:!?]|[\s,.;:!?][A-Za-z]", t.removeprefix(b" "))]


for name, tok in (("GPT-2 pattern", with_split), ("lines only", without)):
    cross = straddling(tok)
    the = sorted(t.decode() for t in tok.ranks if b"the" in t)
    print(f"{name}: {len(cross)} tokens straddle words, e.g. {[t.decode() for t in cross[:8]]}")
    print(f"    tokens containing 'the': {the}")
assert straddling(with_split) == [] and len(straddling(without)) > 50


def pieces(tok: BPETokenizer, ids: list[int]) -> str:
    """The tokens of `ids` as their bytes decode, separated by |."""
    return "|".join(tok.token_bytes(i).decode("utf-8", errors="replace") for i in ids)


for name, tok in (("GPT-2 pattern", with_split), ("lines only", without)):
    print(f"{name:14}", "   ".join(repr(pieces(tok, tok.encode(s))) for s in ("O the king", "O the, king", "O the\nking")))
the = with_split.encode(" the")
assert all(with_split.encode(s)[1:2] == the for s in ("O the king", "O the, king", "O the\nking"))  # always " the"
assert len({tuple(without.encode(s)[1:3]) for s in ("O the king", "O the, king", "O the\nking")}) == 3  # three spellings

# %% [markdown]
# The token lengths tell the same story: without the split, many learned tokens end in a space or carry
# punctuation (`"e "`, `"US:\n"` from speakers' names), and the longest are phrases. Compression alone does not
# decide it: on held-out text the unsplit tokenizer packs a little *more* text per token, because it is
# allowed to memorise common phrases.
# But a vocabulary slot spent on `"to the "` is not spent on a word, and every word's identity now depends on
# its neighbours. GPT-2, GPT-4 and Llama 3 all pre-split (section 6 matches GPT-2's and Llama 3's ids with
# these patterns).

# %%
fig, ax = plt.subplots(figsize=(6, 3))
lengths = {name: [len(t) for t, i in tok.ranks.items() if i >= 256]
           for name, tok in (("GPT-2 pattern", with_split), ("lines only", without))}
ax.hist(list(lengths.values()), bins=range(1, 12), label=list(lengths), align="left")
ax.set_xlabel("learned token length (bytes)")
ax.set_ylabel("tokens")
ax.legend()
plt.show()
per_token = {name: len(held_out.encode()) / len(tok.encode(held_out)) for name, tok in (("GPT-2 pattern", with_split), ("lines only", without))}
print({k: round(v, 3) for k, v in per_token.items()}, "bytes per token on held-out text")
assert per_token["lines only"] > per_token["GPT-2 pattern"]

# %% [markdown]
# ## 5. Special tokens
#
# Models need a few ids that no text produces: `<|endoftext|>` between documents, `<|begin_of_text|>`,
# chat markers. They are added after the learned tokens and matched as whole strings before BPE runs.
#
# Who may produce them matters. If a user's text could contain `"<|endoftext|>"` and have it encoded as the
# real special token, a user could end the document or fake a chat turn. So, as tiktoken does, the library
# refuses text that spells a special token unless the caller says what to do: `allowed_special` lists the
# special tokens to honour (for text the program itself wrote), and `disallowed_special=()` encodes the
# string as ordinary characters.

# %%
tok = train_bpe(corpus, 256 + 400 + 1, "gpt4", special_tokens=["<|endoftext|>"], progress=False)
eot = tok.special_tokens["<|endoftext|>"]
doc = "The end.<|endoftext|>Act I"
try:
    tok.encode(doc)
    raise AssertionError("should have been refused")
except ScratchLLMError as e:
    print("refused:", e)
as_special = tok.encode(doc, allowed_special={"<|endoftext|>"})
as_text = tok.encode(doc, disallowed_special=())
print("allowed:", as_special)
print("as text:", as_text)
assert eot == 656 and as_special.count(eot) == 1 and eot not in as_text
assert tok.decode(as_special) == tok.decode(as_text) == doc

# %% [markdown]
# ## 6. The library's trainer at scale, and real tokenizers
#
# The heap-based trainer makes a 2048-token vocabulary over the training 90% of TinyShakespeare quickly.
# More merges, more text per token.

# %%
n_train = int(0.9 * len(text))
big = train_bpe(text[:n_train], 2048, "llama3", progress=False)
val = text[n_train:]
val_ids = big.encode(val)
assert big.decode(val_ids) == val
print(f"vocabulary 2048: {len(val.encode()) / len(val_ids):.2f} bytes per token on the validation text "
      f"(vocabulary 656: {len(val.encode()) / len(tok.encode(val)):.2f})")
assert len(val_ids) < len(tok.encode(val))
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist([len(big.token_bytes(i)) for i in val_ids], bins=range(1, 14), align="left")
ax.set_xlabel("token length (bytes), validation text")
ax.set_ylabel("tokens")
plt.show()

# %% [markdown]
# ### GPT-2 and Llama 3, against tiktoken
#
# OpenAI shipped GPT-2's tokenizer as `encoder.json` (token → id) and `vocab.bpe` (the merges in order),
# with bytes spelled as printable characters. Meta ships Llama 3's as `tokenizer.model`: one line per token,
# its bytes in base64 and its rank, 128,000 of them; 256 special tokens follow from id 128000. The
# library reads both (`formats.load_gpt2`, `formats.load_llama3`), and the next cell checks those counts.
#
# tiktoken, OpenAI's fast tokenizer, builds its own encodings from the same local files. On a paragraph
# with digits, accents, emoji (one of them several code points joined) and Chinese and Japanese, both must
# give the same ids.

# %%
gpt2 = formats.load_gpt2(DATA / "gpt2" / "encoder.json", DATA / "gpt2" / "vocab.bpe")
llama3 = formats.load_llama3(DATA / "llama3" / "tokenizer.model")
tiktoken_gpt2 = tiktoken.Encoding(
    "gpt2", pat_str=tiktoken_pattern("gpt2"), special_tokens={"<|endoftext|>": 50256},
    mergeable_ranks=data_gym_to_mergeable_bpe_ranks(str(DATA / "gpt2" / "vocab.bpe"), str(DATA / "gpt2" / "encoder.json")))
tiktoken_llama3 = tiktoken.Encoding(
    "llama3", pat_str=patterns.LLAMA3, special_tokens=llama3.special_tokens,
    mergeable_ranks=load_tiktoken_bpe(str(DATA / "llama3" / "tokenizer.model")))

paragraph = ("In 2024 the café sold 1234567 croissants 🥐🥐 at €3.50 each. "
             "東京は日本の首都です。北京是中国的首都。 The family 👩‍👩‍👧 said: naïve façade, 42!")
ids_gpt2, ids_llama3 = gpt2.encode(paragraph), llama3.encode(paragraph)
assert ids_gpt2 == tiktoken_gpt2.encode(paragraph)
assert ids_llama3 == tiktoken_llama3.encode(paragraph)
assert gpt2.decode(ids_gpt2) == llama3.decode(ids_llama3) == paragraph
print(f"GPT-2: {len(ids_gpt2)} tokens, Llama 3: {len(ids_llama3)} tokens, both equal to tiktoken's")

encoder = json.loads((DATA / "gpt2" / "encoder.json").read_text(encoding="utf-8"))  # token string -> id
merges = (DATA / "gpt2" / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]  # after a version line
assert len(encoder) == 50_257
assert len([m for m in merges if m]) == 50_000
assert len((DATA / "llama3" / "tokenizer.model").read_text().splitlines()) == 128_000
assert len(llama3.special_tokens) == 256 and min(llama3.special_tokens.values()) == 128_000

# Meta's published example, with the begin and end of text tokens
golden = llama3.encode("<|begin_of_text|>This is a test sentence.<|end_of_text|>", allowed_special="all")
assert golden == [128000, 2028, 374, 264, 1296, 11914, 13, 128001]

# %% [markdown]
# ### How GPT-2's files spell bytes
#
# A token is bytes, but `vocab.bpe` is a text file (one merge a line, its two tokens separated by a space) and
# `encoder.json` a JSON object keyed by token strings. A space inside a token would break the line format,
# and half an emoji is not text at all. So GPT-2 spells every byte as one printable, non-space character: the
# 188 bytes that already are printable Latin-1 characters (`!` to `~`, `¡` to `¬`, `®` to `ÿ`) stand for
# themselves, and the other 68 (control characters, the space, DEL, and bytes 0x80 to 0xA0 and 0xAD) take the
# characters from U+0100 on, in byte order. The space is the 33rd of those, U+0120 `Ġ`: that is why the token
# `" the"` is spelled `"Ġthe"`, and a newline `"Ċ"`. The library's `formats.bytes_to_unicode`, transformers'
# `bytes_to_unicode` and the `ByteLevel` pre-tokenizer of Hugging Face `tokenizers` (what transformers'
# GPT-2 tokenizer runs) must all give the map built here by hand.

# %%
printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
others = [b for b in range(256) if b not in printable]
byte_to_char = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
assert len(printable) == 188 and others == [*range(0x00, 0x21), 0x7F, *range(0x80, 0xA1), 0xAD]  # 68 bytes
assert byte_to_char == formats.bytes_to_unicode() == bytes_to_unicode()  # the library's and transformers'
assert set(byte_to_char.values()) == set(ByteLevel.alphabet())  # tokenizers' 256 characters
assert all(c.isprintable() and not c.isspace() for c in byte_to_char.values())


def spell(token: bytes) -> str:
    """A token as GPT-2's files write it."""
    return "".join(byte_to_char[b] for b in token)


for token in (b" the", b"\n\n", "🙂".encode("utf-8")[:2]):
    print(f"{token!r:16} is spelled {spell(token)!r:8} id {encoder[spell(token)]:>6}")
assert spell(b" ") == "\u0120" == "Ġ" and spell(b" the") == "Ġthe" and spell(b"\n") == "Ċ"
assert gpt2.token_bytes(encoder["Ġthe"]) == b" the"

byte_level = ByteLevel(add_prefix_space=False)  # GPT-2's pattern, then every chunk spelled byte by byte
greeting = "Hello café,\n 🙂!"
spelled_chunks = [piece for piece, _ in byte_level.pre_tokenize_str(greeting)]
print(spelled_chunks)
assert spelled_chunks == [spell(chunk.encode("utf-8")) for chunk in regex.findall(patterns.GPT2, greeting)]

# %% [markdown]
# What the tokens look like, separated by `|` (`�` marks a token that is only part of a character: byte-level
# BPE happily splits a 3-byte Chinese character or a 4-byte emoji across tokens, and decoding the whole
# sequence puts the bytes back together). Digits show the two patterns: GPT-2 takes a run of digits whole
# and lets BPE cut it wherever its merges say; Llama 3 cuts every number into groups of three first.

# %%
print("GPT-2:  ", pieces(gpt2, ids_gpt2))
print("Llama 3:", pieces(llama3, ids_llama3))

digits_gpt2 = [gpt2.token_bytes(i) for i in gpt2.encode(" 1234567")]
digits_llama3 = [llama3.token_bytes(i) for i in llama3.encode(" 1234567")]
print("digits:", digits_gpt2, digits_llama3)
assert digits_llama3 == [b" ", b"123", b"456", b"7"]  # Llama 3: groups of three digits


# %% [markdown]
# Two more observations, checked below. Llama 3's vocabulary is two and a half times the size of GPT-2's and
# holds whole Chinese and Japanese words (`東京`, `日本`, `北京`), so those sentences cost it less than half the
# tokens. And some tokens of both are not valid UTF-8 on their own: pieces of multi-byte characters.

# %%
def is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


cjk = "東京は日本の首都です。北京是中国的首都。"
print(f"vocabularies: GPT-2 {gpt2.vocab_size:,}, Llama 3 {llama3.vocab_size:,}")
print(f"CJK sentences: GPT-2 {len(gpt2.encode(cjk))} tokens, Llama 3 {len(llama3.encode(cjk))} tokens")
assert llama3.vocab_size > 2.5 * gpt2.vocab_size
assert all(len(llama3.encode(word)) == 1 for word in ("東京", "日本", "北京"))
assert 2 * len(llama3.encode(cjk)) < len(gpt2.encode(cjk))
assert any(not is_utf8(gpt2.token_bytes(i)) for i in ids_gpt2)
assert any(not is_utf8(llama3.token_bytes(i)) for i in ids_llama3)

# %% [markdown]
# **Next:** lesson 3 turns to the attention of Llama: rotary position embeddings, their two memory layouts,
# grouped-query attention and the KV cache.

# %%
print(f"This lesson ran in {time.perf_counter() - LESSON_START:.1f} s")
