"""Train gpt-char-baby with scratchllm and with transformers' GPT2LMHeadModel, same loop, same data.

    python benchmarks/train_char.py [--data PATH] [--steps 2000]

Prints tokens/s of each run (training steps only; evaluation excluded), the ratios against the fp32
GPT2LMHeadModel run, and val loss at steps 500/1000/1500/2000. All runs are in this one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.data.batches import TokenBatches
from scratchllm.data.tokens import corpus_tokens
from scratchllm.models import build_model
from scratchllm.presets import get_preset
from scratchllm.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


class HFCausalLM(nn.Module):
    """transformers' GPT2LMHeadModel behind scratchllm's `model(x, y) -> (logits, loss)` interface."""

    def __init__(self, cfg):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                            n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout,
                            embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, bos_token_id=0, eos_token_id=0)
        self.hf = GPT2LMHeadModel(hf_cfg)
        self.config = cfg

    def forward(self, idx, targets=None):
        logits = self.hf(input_ids=idx).logits
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def run(name, model, train_cfg, tokenizer, batches):
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, train_cfg, tokenizer, batches, Path(out), meta={"model_type": name}, progress=False)
        summary = trainer.fit()
        evals = {r["step"]: r["val_loss"] for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())
                 if r["kind"] == "eval"}
    print(f"  {name:<28} {summary['tokens_per_s']:>10,.0f} tok/s   final val {summary['val_loss']:.4f}", flush=True)
    return summary, evals


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--runs", default="scratchllm,hf-fp32,hf-bf16")
    args = ap.parse_args()

    preset = get_preset("gpt-char-baby")
    tokenizer, train, val = corpus_tokens(args.data)
    model_cfg = dataclasses.replace(preset.model, vocab_size=tokenizer.vocab_size)
    print(f"gpt-char-baby on {args.data}: {args.steps} steps, batch {preset.train.batch_size} x block "
          f"{model_cfg.block_size}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    for name in args.runs.split(","):
        precision = {"scratchllm": "auto", "scratchllm-fp32": "fp32", "hf-fp32": "fp32", "hf-bf16": "bf16"}[name]
        cfg = dataclasses.replace(preset.train, max_steps=args.steps, precision=precision)
        torch.manual_seed(cfg.seed)
        model = build_model("gpt", model_cfg) if name.startswith("scratchllm") else HFCausalLM(model_cfg)
        batches = TokenBatches(train, val, model_cfg.block_size, seed=cfg.seed)
        results[name] = run(f"{name} ({precision})", model, cfg, tokenizer, batches)

    print("\nval loss at step:        " + "".join(f"{s:>9}" for s in (500, 1000, 1500, 2000)))
    for name, (_, evals) in results.items():
        print(f"  {name:<22}" + "".join(f"{evals[s]:>9.4f}" if s in evals else f"{'-':>9}" for s in (500, 1000, 1500, 2000)))
    if "hf-fp32" in results:
        ref = results["hf-fp32"][0]["tokens_per_s"]
        print("\nthroughput ratio against GPT2LMHeadModel fp32:")
        for name, (summary, _) in results.items():
            print(f"  {name:<22} {summary['tokens_per_s'] / ref:6.2f}x")
    if "hf-bf16" in results and "scratchllm" in results:
        print(f"scratchllm against GPT2LMHeadModel bf16: "
              f"{results['scratchllm'][0]['tokens_per_s'] / results['hf-bf16'][0]['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
