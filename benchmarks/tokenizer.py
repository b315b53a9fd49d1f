"""BPE training time and encoding speed: scratchllm against HF `tokenizers` and `tiktoken`, one run.

    python benchmarks/tokenizer.py [--data PATH]

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
    ap.add_argument("--gpt2", default=str(ROOT.parent / "shared" / "data" / "gpt2"))
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
