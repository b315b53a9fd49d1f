"""Greedy generation speed of a small Llama: our KV cache, our no-cache path, and HF `generate`.

    python benchmarks/generate.py [--new-tokens 512] [--size baby|wide] [--rounds 7]

Sizes: `baby` is llama-bpe-baby's architecture (4 layers, 128 wide, GQA 4/2, vocab 2048), `wide` the
same at 256 wide with 8/4 heads. The same random weights in all three (ours exported to a Hugging Face folder and loaded with
`from_pretrained`); prompt of 16 tokens, batch 1, fp32. Prints tokens/s and the ratios, and checks
that all three produce the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from scratchllm.generate import generate
from scratchllm.interop.hf import save_hf
from scratchllm.models import Llama, LlamaConfig


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--size", choices=["baby", "wide"], default="baby")
    ap.add_argument("--rounds", type=int, default=7, help="paired rounds of ours and HF generate")
    args = ap.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    width, heads, kv_heads = (128, 4, 2) if args.size == "baby" else (256, 8, 4)
    cfg = LlamaConfig(vocab_size=2048, block_size=1024, n_layer=4, n_head=heads, n_kv_head=kv_heads, n_embd=width,
                      rope_theta=10000.0)
    ours = Llama(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(ours, tmp)
        hf = transformers.LlamaForCausalLM.from_pretrained(tmp).eval()
    prompt = torch.randint(cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    n = args.new_tokens
    print(f"Llama {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters, prompt 16, {n} new tokens, greedy, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads")

    generate_fn = {
        "scratchllm, KV cache": lambda: list(generate(ours, prompt[0].tolist(), n, temperature=0)),
        "scratchllm, no cache": lambda: list(generate(ours, prompt[0].tolist(), n, temperature=0, use_cache=False)),
        "HF generate": lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                           min_new_tokens=n, do_sample=False, pad_token_id=0)[0, 16:].tolist(),
    }
    # Our cached run and HF's alternate, round after round (after one warm-up each): a slow spell of
    # this shared machine then hits both, and each round gives one paired ratio. We print the median
    # of those ratios with their range, and each path's best round. No cache is slow: one round.
    best = {name: float("inf") for name in generate_fn}
    tokens, ratios = {}, []
    with torch.no_grad():
        for name in ("scratchllm, KV cache", "HF generate"):
            generate_fn[name]()
        took, tokens["scratchllm, no cache"] = timed(generate_fn["scratchllm, no cache"])
        best["scratchllm, no cache"] = took
        for _ in range(args.rounds):
            took_ours, tokens["scratchllm, KV cache"] = timed(generate_fn["scratchllm, KV cache"])
            took_hf, tokens["HF generate"] = timed(generate_fn["HF generate"])
            ratios.append(took_hf / took_ours)
            best["scratchllm, KV cache"] = min(best["scratchllm, KV cache"], took_ours)
            best["HF generate"] = min(best["HF generate"], took_hf)
    speeds = {name: n / seconds for name, seconds in best.items()}
    for name, speed in speeds.items():
        print(f"  {name:<24}{speed:>10.1f} tokens/s (best round)")
    same = len({tuple(t) for t in tokens.values()}) == 1
    print(f"identical tokens: {same}")
    print(f"KV cache / HF generate: {statistics.median(ratios):.2f}x median of {len(ratios)} paired rounds "
          f"(range {min(ratios):.2f}x-{max(ratios):.2f}x); best rounds {speeds['scratchllm, KV cache'] / speeds['HF generate']:.2f}x")
    print(f"KV cache / no cache:    {speeds['scratchllm, KV cache'] / speeds['scratchllm, no cache']:.2f}x")

if __name__ == "__main__":
    main()
