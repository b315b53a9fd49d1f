"""Byte-level BPE, checked against tiktoken, HF tokenizers, and a trainer simple enough to trust."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import data_file
from scratchllm.tokenizers.ranks import read_ranks
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers import BPETokenizer, load_tokenizer
from scratchllm.tokenizers import formats
from scratchllm.tokenizers.bpe_train import count_chunks, train_bpe
from scratchllm.tokenizers.patterns import GPT2, resolve_pattern


# -- the reference files, against tiktoken ----------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2():
    return formats.load_gpt2(data_file("gpt2", "encoder.json"), data_file("gpt2", "vocab.bpe"))


@pytest.fixture(scope="module")
def llama3():
    return formats.load_llama3(data_file("llama3", "tokenizer.model"))


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(str(data_file("gpt2", "vocab.bpe")), str(data_file("gpt2", "encoder.json")))
    return tiktoken.Encoding("gpt2", pat_str=GPT2, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def tiktoken_llama3(llama3):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    return tiktoken.Encoding("llama3", pat_str=llama3.pattern,
                             mergeable_ranks=load_tiktoken_bpe(str(data_file("llama3", "tokenizer.model"))),
                             special_tokens=llama3.special_tokens)


def test_llama3_golden_ids(llama3):
    ids = [llama3.special_tokens["<|begin_of_text|>"]] + llama3.encode("This is a test sentence.") + [llama3.special_tokens["<|end_of_text|>"]]
    assert ids == [128000, 2028, 374, 264, 1296, 11914, 13, 128001]
    assert llama3.special_tokens["<|eot_id|>"] == 128009 and llama3.special_tokens["<|start_header_id|>"] == 128006
    assert llama3.vocab_size == 128256


def test_whole_tinyshakespeare_equals_tiktoken(gpt2, llama3, tiktoken_gpt2, tiktoken_llama3, tiny_shakespeare):
    text = tiny_shakespeare.read_text()
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text)
    assert llama3.encode(text) == tiktoken_llama3.encode(text)
    assert gpt2.decode(ids) == text


# Code points Unicode had not assigned by Python's tables (14.0) are left out: `regex` (2026.11) and tiktoken's
# Rust regex ship different, newer Unicode versions, so they disagree on whether e.g. U+323B0 (CJK Extension J,
# Unicode 17) is a letter. Measured over every code point in "A{c}/A1{c} {c}'s": 17,480 disagree, all of them
# unassigned (category Cn) in Python's tables; none that is assigned there.
UNICODE = st.text(st.characters(codec="utf-8", exclude_categories=["Cn"]), max_size=60) | st.lists(st.sampled_from(
    ["hello", " world", "🙂", "👩‍👩‍👧", "中文字符", "e\u0301", "1234567", "   ", "\r\n", "\n\n", "\t", "'s", "'LL",
     "<|endoftext|>", "<|begin_of_text|>", "ÿ", "\x00", "Ω≈ç√", " 9 99 999 9999"]), max_size=12).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=UNICODE)
def test_hypothesis_unicode_equals_tiktoken(gpt2, llama3, tiktoken_gpt2, tiktoken_llama3, text):
    assert gpt2.encode(text, disallowed_special=()) == tiktoken_gpt2.encode(text, disallowed_special=())
    assert llama3.encode(text, disallowed_special=()) == tiktoken_llama3.encode(text, disallowed_special=())
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")
    assert llama3.encode(text, allowed_special="all") == tiktoken_llama3.encode(text, allowed_special="all")
    assert gpt2.decode(gpt2.encode_ordinary(text)) == text
    assert llama3.decode(llama3.encode_ordinary(text)) == text


def test_special_token_semantics(gpt2):
    text = "hi<|endoftext|>there"
    with pytest.raises(ScratchLLMError, match="contains the special token '<|endoftext|>'"):
        gpt2.encode(text)
    assert 50256 in gpt2.encode(text, allowed_special={"<|endoftext|>"})
    assert 50256 not in gpt2.encode(text, disallowed_special=())
    assert gpt2.encode_ordinary(text) == gpt2.encode(text, disallowed_special=())
    assert gpt2.encode_batch(["a b", "c"]) == [gpt2.encode("a b"), gpt2.encode("c")]


def test_decode_replaces_invalid_utf8(gpt2):
    half = gpt2.encode("é")  # one token whose bytes are the two bytes of é
    assert gpt2.decode_bytes(half) == "é".encode()
    byte_c3 = gpt2.ranks[b"\xc3"]
    assert gpt2.decode([byte_c3]) == "\ufffd"
    with pytest.raises(ScratchLLMError, match="not in the vocabulary"):
        gpt2.decode([10**6])


def test_tiktoken_backend_agrees(gpt2, tiny_shakespeare):
    pytest.importorskip("tiktoken")
    text = tiny_shakespeare.read_text()[:200_000] + " <|endoftext|> 🙂"
    fast = BPETokenizer(gpt2.ranks, gpt2.pattern, gpt2.special_tokens, backend="tiktoken")
    assert fast.encode(text, allowed_special="all") == gpt2.encode(text, allowed_special="all")
    assert fast.encode_ordinary(text) == gpt2.encode_ordinary(text)


# -- training ----------------------------------------------------------------------------------------

def reference_train(text: str, vocab_size: int, pattern: str) -> dict[bytes, int]:
    """minbpe's loop, but over distinct chunks: recount every pair after every merge.
    Same rules as ours: the highest count wins, ties go to the smallest (left, right) id pair, and a
    merge that spells an existing token reuses it."""
    counts = count_chunks([text], pattern)
    words = {tuple(c.encode()): f for c, f in counts.items()}
    vocab = [bytes([b]) for b in range(256)]
    ranks = {t: i for i, t in enumerate(vocab)}
    while len(vocab) < vocab_size:
        stats: dict[tuple[int, int], int] = {}
        for w, f in words.items():
            for p in zip(w, w[1:]):
                stats[p] = stats.get(p, 0) + f
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        merged = vocab[pair[0]] + vocab[pair[1]]
        if merged not in ranks:
            ranks[merged] = len(vocab)
            vocab.append(merged)
        new = ranks[merged]
        rewritten = {}
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == pair:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            rewritten[tuple(out)] = rewritten.get(tuple(out), 0) + f
        words = rewritten
    return ranks


@pytest.mark.parametrize("pattern", ["gpt2", "llama3"])
def test_trainer_equals_the_reference(tiny_shakespeare, pattern):
    text = tiny_shakespeare.read_text()[:20_000] + " aaaa abab aaab 🙂🙂 ab abc bc"
    ours = train_bpe(text, 256 + 200, pattern, progress=False)
    assert ours.ranks == reference_train(text, 256 + 200, resolve_pattern(pattern))


@settings(max_examples=40, deadline=None)
@given(st.text(st.sampled_from("ab c\n🙂é"), max_size=80))
def test_trainer_equals_the_reference_on_small_random_corpora(text):
    assert train_bpe(text, 300, "gpt2", progress=False).ranks == reference_train(text, 300, GPT2)


def test_trained_tokenizer_roundtrips_and_places_specials(tiny_shakespeare):
    text = tiny_shakespeare.read_text()[:100_000]
    tok = train_bpe(text, 1000, "llama3", special_tokens=["<|bos|>", "<|eos|>"], progress=False)
    assert tok.vocab_size == 1000 and tok.special_tokens == {"<|bos|>": 998, "<|eos|>": 999}
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|bos|>hi", allowed_special="all")[0] == 998
    with pytest.raises(ScratchLLMError, match="too small"):
        train_bpe("abc", 257, special_tokens=["<|a|>", "<|b|>"], progress=False)


# -- files ---------------------------------------------------------------------------------------------

def test_save_load_roundtrip(tmp_path, tiny_shakespeare):
    text = tiny_shakespeare.read_text()[:50_000]
    tok = train_bpe(text, 600, "gpt4", special_tokens=["<|endoftext|>"], progress=False)
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.ranks == tok.ranks and again.pattern == tok.pattern and again.special_tokens == tok.special_tokens
    assert again.encode(text) == tok.encode(text)


def test_hf_tokenizer_json_roundtrip(tmp_path, tiny_shakespeare, gpt2):
    tokenizers = pytest.importorskip("tokenizers")
    text = tiny_shakespeare.read_text()[:300_000] + " 🙂 中文 \r\n  e\u0301 <|endoftext|>"
    tok = train_bpe(text[:100_000], 2000, "llama3", special_tokens=["<|endoftext|>"], progress=False)
    for ours in (tok, gpt2):
        path = tmp_path / "tokenizer.json"
        formats.save_hf(ours, path)
        hf = tokenizers.Tokenizer.from_file(str(path))
        assert hf.encode(text, add_special_tokens=False).ids == ours.encode(text, allowed_special="all")
        again = formats.load_hf(path)
        assert again.ranks == ours.ranks and again.special_tokens == ours.special_tokens
        assert again.encode(text, allowed_special="all") == ours.encode(text, allowed_special="all")
        assert hf.decode(ours.encode_ordinary(text[:5000])) == text[:5000]


def test_bad_files_are_one_line_errors(tmp_path, gpt2):
    bad = tmp_path / "bad.model"
    bad.write_text("not base64!! 3\n")
    with pytest.raises(ScratchLLMError, match="line 1 is not 'base64-token rank'"):
        read_ranks(bad)
    full = data_file("llama3", "tokenizer.model").read_bytes()
    (tmp_path / "half.model").write_bytes(full[: len(full) // 2])
    with pytest.raises(ScratchLLMError):  # cut mid-line or short of 128000 tokens
        formats.load_llama3(tmp_path / "half.model")
    enc = data_file("gpt2", "encoder.json").read_bytes()
    (tmp_path / "encoder.json").write_bytes(enc[: len(enc) // 2])
    with pytest.raises(ScratchLLMError, match="not valid JSON"):
        formats.load_gpt2(tmp_path / "encoder.json", data_file("gpt2", "vocab.bpe"))
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "Unigram"}}')
    with pytest.raises(ScratchLLMError, match="only byte-level BPE"):
        formats.load_hf(tmp_path / "tokenizer.json")
    with pytest.raises(ScratchLLMError, match="neither a known name"):
        resolve_pattern("(unclosed")
    with pytest.raises(ScratchLLMError, match="neither a known name"):  # found by tests/test_fuzz.py
        resolve_pattern("a{" + "9" * 5001 + "}")  # regex raises ValueError (int() of too many digits)


def test_named_patterns_are_tiktokens_own():
    """cl100k (GPT-4) and o200k (GPT-4o) are tiktoken's pattern strings, read from tiktoken's own encoding
    constructors with their rank downloads stubbed out (nothing is fetched); Llama 3's spelling is the one
    transformers uses for tiktoken-format files."""
    from unittest import mock

    pytest.importorskip("tiktoken")
    from tiktoken_ext import openai_public

    from scratchllm.tokenizers import patterns

    def no_ranks(*args, **kwargs):
        return {}

    with mock.patch.object(openai_public, "load_tiktoken_bpe", no_ranks), \
            mock.patch.object(openai_public, "data_gym_to_mergeable_bpe_ranks", no_ranks):
        assert patterns.CL100K == patterns.GPT4 == openai_public.ENCODING_CONSTRUCTORS["cl100k_base"]()["pat_str"]
        assert patterns.O200K == openai_public.ENCODING_CONSTRUCTORS["o200k_base"]()["pat_str"]
    from transformers.convert_slow_tokenizer import TikTokenConverter
    assert patterns.LLAMA3 == TikTokenConverter().pattern
