"""Prepared token files, memory-mapped batches, and the BPE path through train / sample / eval."""

import json

import numpy as np
import pytest

from conftest import TINY, data_file
from scratchllm.cli import main
from scratchllm.data.tokens import corpus_tokens, encode_text, load_prepared, prepare
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers import formats
from scratchllm.tokenizers.bpe_train import train_bpe


def test_piecewise_encoding_equals_one_encode(tiny_shakespeare):
    text = tiny_shakespeare.read_text()
    for tok in (formats.load_llama3(data_file("llama3", "tokenizer.model")),
                formats.load_gpt2(data_file("gpt2", "encoder.json"), data_file("gpt2", "vocab.bpe"))):
        assert encode_text(tok, text, progress=False, piece_chars=50_000) == tok.encode_ordinary(text)


def test_prepare_writes_memmapped_uint16_and_uint32(tmp_path, small_corpus):
    small = train_bpe(small_corpus.read_text(), 500, "gpt2", progress=False)
    out = prepare(str(small_corpus), small, tmp_path / "p16", progress=False)
    tok, train, val, meta = load_prepared(out)
    assert isinstance(train, np.memmap) and train.dtype == np.uint16 and meta["dtype"] == "uint16"
    text = small_corpus.read_text()
    assert tok.decode(train.tolist()) + tok.decode(val.tolist()) == text
    assert len(train) == meta["splits"]["train"]["tokens"]

    llama = formats.load_llama3(data_file("llama3", "tokenizer.model"))  # 128,256 ids: needs uint32
    _, train32, _, meta32 = load_prepared(prepare(str(small_corpus), llama, tmp_path / "p32", progress=False))
    assert train32.dtype == np.uint32 and meta32["dtype"] == "uint32"
    assert train32.max() > 65535 or train32.tolist() == llama.encode_ordinary(text[: int(0.9 * len(text))])

    (out / "val.bin").write_bytes((out / "val.bin").read_bytes()[:10])
    with pytest.raises(ScratchLLMError, match="val.bin is missing or truncated"):
        load_prepared(out)


def test_bpe_preset_prepares_once_and_caches(small_corpus):
    from scratchllm.tokenizers import TokenizerConfig

    cfg = TokenizerConfig(kind="bpe", vocab_size=400, pattern="gpt2")
    tok, train, val = corpus_tokens(str(small_corpus), tokenizer_config=cfg, progress=False)
    assert isinstance(train, np.memmap) and tok.vocab_size == 400
    # the tokenizer never saw the validation text: it was trained on the first 90% only
    assert tok.ranks == train_bpe(small_corpus.read_text()[: int(0.9 * 60_000)], 400, "gpt2", ["<|endoftext|>"], progress=False).ranks
    tok2, train2, _ = corpus_tokens(str(small_corpus), tokenizer_config=cfg, progress=False)
    assert tok2.ranks == tok.ranks and train2.filename == train.filename  # the same cached files


def test_bpe_cli_end_to_end(tmp_path, small_corpus, capsys):
    tok_dir = tmp_path / "tok"
    assert main(["tokenizer", "train", "--data", str(small_corpus), "--vocab-size", "400", "--pattern", "gpt2",
                 "--special", "<|endoftext|>", "--out", str(tok_dir), "--hf"]) == 0
    assert (tok_dir / "tokenizer.model").is_file() and (tok_dir / "tokenizer.json").is_file()
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(tok_dir), "To be, or not"]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["tokenizer", "decode", "--tokenizer", str(tok_dir / "tokenizer.json"), " ".join(ids)]) == 0
    assert capsys.readouterr().out == "To be, or not\n"

    data = tmp_path / "prepared"
    assert main(["prepare", "--data", str(small_corpus), "--tokenizer", str(tok_dir), "--out", str(data)]) == 0
    out = tmp_path / "run"
    assert main(["train", "--preset", "gpt-bpe-baby", "--data", str(data), "--out", str(out), "--max-steps", "30",
                 "--no-progress", "--sample-tokens", "20", *sum((["--set", s] for s in TINY["gpt-char-baby"]), []),
                 "--set", "eval_interval=15"]) == 0
    printed = capsys.readouterr().out
    assert "bits/byte" in printed and "--- sample ---" in printed
    record = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["kind"] == "eval" and 0 < record["val_bpb"] < 8
    assert main(["sample", "--checkpoint", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "10", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert main(["eval", "--checkpoint", str(out), "--data", str(data)]) == 0
    assert "bits/byte" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out), "--data", str(small_corpus)]) == 0  # raw text: encoded on the fly
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "nope"), "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_special_tokens_count_no_bytes_in_bits_per_byte(small_corpus, tmp_path):
    """<|endoftext|> stands for no text: its spelling must not inflate the byte count (one rule, used by
    the trainer's evaluations and by `scratchllm eval`)."""
    import torch

    from scratchllm.models.tasks import bytes_per_token

    tok = train_bpe(small_corpus.read_text(), 300, "gpt2", ["<|endoftext|>"], progress=False)
    nbytes = bytes_per_token(tok)
    assert nbytes[tok.special_tokens["<|endoftext|>"]] == 0
    assert nbytes[tok.encode_ordinary(" the")[0]] == len(tok.token_bytes(tok.encode_ordinary(" the")[0]))
    assert torch.all(nbytes[:256] == 1)