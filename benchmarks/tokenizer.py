"""BPE training time and encoding speed: scratchllm against HF `tokenizers` and `tiktoken`, one run.

    python benchmarks/tokenizer.py [--data PATH]
    python benchmarks/tokenizer.py --long      # only: pathologically long pre-split chunks

--long times one long "word" (a single chunk for the split pattern, which BPE merges as a whole:
quadratic before the heap-based merge) through `scratchllm tokenizer encode` with GPT-2's files, at
8K and 64K letters and 1 MB, against tiktoken on the same ranks, and checks the ids are equal.

Training: ByteLevel BPE on TinyShakespeare with the GPT-2 split pattern at 512, 4096 and 8192 ids
(best of 3 each). Encoding: MB/s on the whole corpus with GPT-2's 50,257-token vocabulary, for our
pure-Python encoder (a fresh tokenizer, so its chunk cache starts empty), our tiktoken backend,
raw tiktoken on the same ranks, and HF `tokenizers` loading our exported tokenizer.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best_of(fn, n=3):
    best, result = float("inf"), None
    for _ in range(n):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--gpt2", default=str(ROOT / "tests" / "data" / "gpt2"))
    ap.add_argument("--long", action="store_true", help="only time pathologically long chunks (8K, 64K letters, 1 MB)")
    args = ap.parse_args()
    if args.long:
        return long_chunks(Path(args.gpt2))

    import tiktoken
    import tokenizers
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tokenizers import Regex, models, pre_tokenizers, trainers

    from scratchllm.tokenizers import BPETokenizer
    from scratchllm.tokenizers.bpe_train import train_bpe
    from scratchllm.tokenizers.formats import load_gpt2, save_hf
    from scratchllm.tokenizers.patterns import GPT2

    text = Path(args.data).read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    print(f"corpus {args.data}: {mb:.2f} MB; tokenizers {tokenizers.__version__}, tiktoken {tiktoken.__version__}")

    print(f"\ntraining (GPT-2 pattern), seconds, best of 3:\n{'vocab':>8}{'scratchllm':>12}{'HF':>10}{'ours/HF':>10}")
    for vocab in (512, 4096, 8192):
        ours, tok = best_of(lambda: train_bpe(text, vocab, "gpt2", progress=False))

        def hf_train():
            hf = tokenizers.Tokenizer(models.BPE())
            hf.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(GPT2), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            hf.train_from_iterator([text], trainers.BpeTrainer(
                vocab_size=vocab, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
            return hf

        hf_time, hf = best_of(hf_train)
        assert hf.get_vocab_size() == vocab and len(tok.ranks) == vocab
        print(f"{vocab:>8}{ours:>12.3f}{hf_time:>10.3f}{ours / hf_time:>9.2f}x")

    gpt2 = load_gpt2(Path(args.gpt2) / "encoder.json", Path(args.gpt2) / "vocab.bpe")
    ranks = data_gym_to_mergeable_bpe_ranks(str(Path(args.gpt2) / "vocab.bpe"), str(Path(args.gpt2) / "encoder.json"))
    raw = tiktoken.Encoding("gpt2", pat_str=GPT2, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(gpt2, Path(tmp) / "tokenizer.json")
        hf = tokenizers.Tokenizer.from_file(str(Path(tmp) / "tokenizer.json"))

    runs = {
        "scratchllm (pure Python)": lambda: BPETokenizer(gpt2.ranks, gpt2.pattern, gpt2.special_tokens).encode_ordinary(text),
        "scratchllm (tiktoken backend)": lambda: fast.encode_ordinary(text),
        "tiktoken": lambda: raw.encode_ordinary(text),
        "HF tokenizers": lambda: hf.encode(text, add_special_tokens=False).ids,
    }
    fast = BPETokenizer(gpt2.ranks, gpt2.pattern, gpt2.special_tokens, backend="tiktoken")
    print(f"\nencoding with GPT-2's vocabulary, MB/s, best of 3:")
    speeds, reference_ids = {}, None
    for name, fn in runs.items():
        seconds, ids = best_of(fn)
        reference_ids = reference_ids or ids
        assert ids == reference_ids, f"{name} gives different ids"
        speeds[name] = mb / seconds
        print(f"  {name:<32}{speeds[name]:>8.2f}")
    print("all four give identical ids")
    print(f"\npure Python / HF tokenizers:       {speeds['scratchllm (pure Python)'] / speeds['HF tokenizers']:.2f}x")
    print(f"tiktoken backend / raw tiktoken:   {speeds['scratchllm (tiktoken backend)'] / speeds['tiktoken']:.2f}x")


def long_chunks(gpt2_dir: Path) -> None:
    """Seconds to encode one long chunk: `scratchllm tokenizer encode` (the whole command, in this
    process: load GPT-2's files, encode, print), our encoder alone (a fresh tokenizer), and tiktoken."""
    import contextlib
    import io
    import random

    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from scratchllm.cli import main as cli
    from scratchllm.tokenizers import BPETokenizer
    from scratchllm.tokenizers.formats import load_gpt2
    from scratchllm.tokenizers.patterns import GPT2

    gpt2 = load_gpt2(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe")
    ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_dir / "vocab.bpe"), str(gpt2_dir / "encoder.json"))
    raw = tiktoken.Encoding("gpt2", pat_str=GPT2, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
    rng = random.Random(0)
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1 << 20))
    cases = {"8K-letter word": "a" * 8192, "8K random letters": letters[:8192], "64K-letter line": "a" * 65536,
             "64K random letters": letters[:65536], "1 MB line (one chunk)": letters}
    print(f"one chunk of N letters, seconds (the command includes loading GPT-2's files):\n"
          f"{'':<24}{'tokenizer encode':>18}{'encode only':>14}{'tiktoken':>12}{'ours/tiktoken':>15}")
    for name, line in cases.items():
        out = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out):
            assert cli(["tokenizer", "encode", "--tokenizer", str(gpt2_dir), line]) == 0
        command = time.perf_counter() - start
        fresh = BPETokenizer(gpt2.ranks, gpt2.pattern, gpt2.special_tokens)

        def encode_uncached():  # the chunk cache would make every run after the first free
            fresh._cache.clear()
            return fresh.encode_ordinary(line)

        ours, ids = best_of(encode_uncached, n=1 if len(line) > 1e5 else 3)
        theirs, ref = best_of(lambda: raw.encode_ordinary(line))
        assert ids == ref and [int(i) for i in out.getvalue().split()] == ref, f"{name}: ids differ from tiktoken's"
        print(f"{name:<24}{command:>18.3f}{ours:>14.3f}{theirs:>12.4f}{ours / theirs:>14.0f}x")
    print("ids equal tiktoken's in every case")


if __name__ == "__main__":
    main()
