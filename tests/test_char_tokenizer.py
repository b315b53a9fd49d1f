import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers import CharTokenizer, load_tokenizer


def test_vocab_is_sorted_distinct_chars():
    tok = CharTokenizer.train("hello world")
    assert tok.chars == sorted(set("hello world"))
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [tok.chars.index(c) for c in "hello"]


@given(st.text(min_size=1))
def test_roundtrip(text):
    tok = CharTokenizer.train(text)
    assert tok.decode(tok.encode(text)) == text


def test_unknown_characters_are_named():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ScratchLLMError, match=r"2 character\(s\) outside.*'x', 'é'"):
        tok.encode("abxé")


def test_save_and_load(tmp_path):
    tok = CharTokenizer.train("ünïcödé and ascii\n")
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.chars == tok.chars


def test_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ScratchLLMError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path)
