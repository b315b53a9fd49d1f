"""Train a char GPT preset with scratchllm, transformers' GPT2LMHeadModel and nanoGPT's model: one loop, one data.

    python benchmarks/train_char.py [--preset gpt-char-baby|gpt-char|gpt-char-speedrun|...] [--data PATH] [--steps 2000]
                                    [--runs scratchllm,scratchllm-compiled,hf-fp32,hf-bf16,nanogpt,nanogpt-compiled]
                                    [--nanogpt PATH/TO/nanoGPT/model.py] [--rounds 1] [--chunks 0 --chunk-steps 25]

All runs are in this one process, driven by scratchllm's trainer (same AdamW, schedule, batches). Prints
the matmul peak of the precision "auto" trains in here (bf16 where the CPU multiplies it natively, else
fp32) measured first (at the largest of the model's matmul shapes and at 4096^3;
this machine's peak moves from day to day, so only same-run ratios mean anything), then for each run
tokens/s (training steps only: evaluation and, for the compiled run, the steps before step 50 that hold
the compilation are left out; "whole run" counts them), MFU = tokens/s x (6N + 12 L H Q T) FLOPs per
token (N without position embeddings, as nanoGPT counts) over that peak, the ratios against
GPT2LMHeadModel fp32 / bf16 and nanoGPT's model (imported from --nanogpt, not a dependency), eager
and compiled, and val loss at steps 500..2000. With --rounds R the runs go R times in turn (A B C,
A B C, ...) and each keeps its best round: this machine's speed drifts over minutes, and a run
measured only once, early or late, takes the drift for a difference. The ratios of each round's runs
against the same round's reference are printed too, with their median. With --chunks K the runs'
training steps are also timed in K chunks of --chunk-steps steps taken in turn (A B C, A B C, ...; no
evaluation; a compiled run compiles in the 30 warm-up steps before): this CPU alternates between two
speeds for tens of seconds at a time (the baby's step 19 or 26 ms), which whole runs taken in turn can
straddle, while chunks of a second or so see the same speed, so the median of the chunks' ratios is the
steadiest figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.data.batches import TokenBatches
from scratchllm.data.tokens import corpus_tokens
from scratchllm.device import DTYPES, resolve_precision
from scratchllm.models import build_model
from scratchllm.train.presets import PRESETS, get_preset
from scratchllm.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from matmul import gflops  # noqa: E402  (the peak, measured the way benchmarks/matmul.py measures it)


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


def run(name, model, train_cfg, tokenizer, batches, skip_steps: int = 0):
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, train_cfg, tokenizer, batches, Path(out), meta={"model_type": name}, progress=False)
        summary = trainer.fit()
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["val_loss"] for r in records if r["kind"] == "eval"}
    summary["run_tokens_per_s"] = summary["tokens_per_s"]  # every training step, a compilation's included
    compiling = ""
    if skip_steps:  # steady state: the median of the logged windows after the compilation
        summary["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in records
                                                    if r["kind"] == "train" and r["step"] > skip_steps)
        tokens = summary["step"] * train_cfg.batch_size * train_cfg.grad_accum * batches.block_size
        # the whole run's time less the steady rate's: from the on-disk cache this is within the machine's drift,
        # and may come out below zero, which is printed as 0
        compile_s = max(0.0, tokens / summary["run_tokens_per_s"] - tokens / summary["tokens_per_s"])
        compiling = f"   whole run {summary['run_tokens_per_s']:,.0f} tok/s (compiling took ~{compile_s:.0f} s)"
    print(f"  {name:<28} {summary['tokens_per_s']:>10,.0f} tok/s   final val {summary['val_loss']:.4f}{compiling}", flush=True)
    return summary, evals


def paired_chunks(trainers: dict, chunks: int, steps: int, reference: str | None) -> dict[str, list[float]]:
    """Time each trainer's steps in `chunks` chunks of `steps`, taken in turn after 30 warm-up steps each;
    returns each trainer's ms a step, chunk by chunk."""
    times = {name: [] for name in trainers}
    for trainer in trainers.values():
        trainer.model.train()
        for _ in range(30):
            trainer.train_step()
    for _ in range(chunks):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(steps):
                loss = trainer.train_step()
            float(loss)  # the chunk's last step done (a GPU's queue drained)
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    print(f"\n  {chunks} chunks of {steps} steps in turn, ms a step:")
    for name, ms in times.items():
        print(f"  {name:<22} best {min(ms):7.2f}   median {statistics.median(ms):7.2f}")
    if reference in times:
        print_chunk_ratios(times, reference)
    return times


def print_chunk_ratios(times: dict[str, list[float]], reference: str) -> None:
    """Each other run's speed-up over `reference` (its ms a step over theirs), chunk by chunk: the median, the
    middle half, and best against best."""
    for name, ms in times.items():
        if name != reference:
            ratios = [theirs / ours for ours, theirs in zip(ms, times[reference])]
            low, _, high = statistics.quantiles(ratios, n=4)
            print(f"  {name} against {reference}: median of the chunks' ratios {statistics.median(ratios):.2f}x "
                  f"(middle half {low:.2f}-{high:.2f}x), best against best {min(times[reference]) / min(ms):.2f}x")


def char_gpt_presets() -> list[str]:
    """The presets these benchmarks can train: GPTs on characters (the corpus is read as characters)."""
    return [name for name, p in PRESETS.items() if p.model_type == "gpt" and p.tokenizer.kind == "char"]


def nanogpt_model(path: str, cfg):
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GPT(module.GPTConfig(block_size=cfg.block_size, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer,
                                       n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt-char-baby", choices=char_gpt_presets())
    ap.add_argument("--data", default=str(ROOT / "tests" / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--runs", default="scratchllm,scratchllm-compiled,hf-fp32,hf-bf16,nanogpt,nanogpt-compiled")
    ap.add_argument("--nanogpt", default=None, help="path to nanoGPT's model.py (the nanogpt run needs it)")
    ap.add_argument("--eval-batches", type=int, default=None, help="fewer evaluation batches than the preset's (timing only)")
    ap.add_argument("--rounds", type=int, default=1, help="run the list this many times in turn; each run keeps its best")
    ap.add_argument("--chunks", type=int, default=0,
                    help="then time the runs' steps in this many chunks taken in turn")
    ap.add_argument("--chunk-steps", type=int, default=25, help="training steps a chunk")
    args = ap.parse_args()
    if args.chunks == 1 or args.chunks < 0 or args.chunk_steps < 1:
        ap.error("--chunks takes 0 (none) or at least 2 (their ratios' median and middle half); --chunk-steps at least 1")

    preset = get_preset(args.preset)
    tokenizer, train, val = corpus_tokens(args.data)
    model_cfg = dataclasses.replace(preset.model, vocab_size=tokenizer.vocab_size)
    c = model_cfg
    B, T = preset.train.batch_size, c.block_size
    n_params = 12 * c.n_layer * c.n_embd ** 2 + c.vocab_size * c.n_embd  # blocks (no biases) + tied embedding
    flops_per_token = 6 * n_params + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * T
    shapes = [(B * T, c.n_embd, 4 * c.n_embd), (B * T, 4 * c.n_embd, c.n_embd), (4096, 1024, 1024)]
    # The peak of the dtype "auto" trains in here: bf16 where the CPU multiplies it natively, else fp32
    # (on an AVX2-only CPU, bf16 products are emulated at ~1-2 GFLOP/s: no peak to measure MFU against).
    auto = resolve_precision("auto", torch.device("cpu"))
    peaks = {s: gflops(*s, DTYPES[auto]) for s in shapes}
    peak = max(peaks.values())
    print(f"{args.preset} on {args.data}: {args.steps} steps, batch {B} x block {T}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, cpu {torch.backends.cpu.get_cpu_capability()}, auto = {auto}")
    print(f"{auto} matmul peak measured now: " + ", ".join(f"{m}x{k}x{n} {v:.0f}" for (m, k, n), v in peaks.items())
          + f" GFLOP/s; MFU below is against {peak:.0f}; {flops_per_token / 1e6:.2f} MFLOP per token (6N + 12LHQT)")
    names = [name for name in args.runs.split(",") if args.nanogpt or not name.startswith("nanogpt")]  # the runs made

    def setup(name: str):
        """The run's precision, trainer config, freshly seeded model and batches."""
        precision = {"scratchllm": "auto", "scratchllm-compiled": "auto", "scratchllm-fp32": "fp32", "hf-fp32": "fp32",
                     "hf-bf16": "bf16", "nanogpt": "auto", "nanogpt-compiled": "auto"}[name]
        cfg = dataclasses.replace(preset.train, max_steps=args.steps, precision=precision, compile=name.endswith("compiled"),
                                  eval_batches=args.eval_batches or preset.train.eval_batches,
                                  log_interval=min(preset.train.log_interval, max(1, args.steps // 20)))
        torch.manual_seed(cfg.seed)
        model = (nanogpt_model(args.nanogpt, model_cfg) if name.startswith("nanogpt") else
                 HFCausalLM(model_cfg) if name.startswith("hf") else build_model("gpt", model_cfg))
        return precision, cfg, model, TokenBatches(train, val, model_cfg.block_size, seed=cfg.seed)

    results, by_round = {}, {}  # by_round[name]: tokens/s of each round
    for round_ in range(args.rounds):
        if args.rounds > 1:
            print(f"round {round_ + 1} of {args.rounds}")
        for name in args.runs.split(","):
            if name not in names:
                print(f"  {name}: skipped (give --nanogpt PATH/TO/model.py)")
                continue
            precision, cfg, model, batches = setup(name)
            result = run(f"{name} ({precision})", model, cfg, tokenizer, batches,
                         skip_steps=min(50, args.steps // 2) if cfg.compile else 0)
            if name not in results or result[0]["tokens_per_s"] > results[name][0]["tokens_per_s"]:
                results[name] = result
            by_round.setdefault(name, []).append(result[0]["tokens_per_s"])

    # "whole run" counts every training step: for a compiled run, the compilation too (from inductor's
    # on-disk cache when an earlier process compiled the same graph on this machine: a few seconds, not ~35)
    print(f"\n  {'run':<22}{'tok/s':>10}{'MFU':>8}{'whole run':>11}"
          + "".join(f"{f'val@{s}':>11}" for s in (500, 1000, 1500, 2000)))
    for name, (summary, evals) in results.items():
        tps = summary["tokens_per_s"]
        print(f"  {name:<22}{tps:>10,.0f}{tps * flops_per_token / (peak * 1e9):>8.1%}{summary['run_tokens_per_s']:>11,.0f}"
              + "".join(f"{evals[s]:>11.4f}" if s in evals else f"{'-':>11}" for s in (500, 1000, 1500, 2000)))
    for ref in ("hf-fp32", "hf-bf16", "nanogpt", "nanogpt-compiled"):
        if ref in results:
            base = results[ref][0]["tokens_per_s"]
            print(f"against {ref}: " + ", ".join(
                f"{name} {summary['tokens_per_s'] / base:.2f}x"
                + (f" (whole run {summary['run_tokens_per_s'] / base:.2f}x)" if name.endswith("compiled") else "")
                for name, (summary, _) in results.items() if name.startswith("scratchllm")))
            if args.rounds > 1:  # each round's runs ran minutes apart at most: the ratios the machine's drift moves least
                print(f"  round by round against {ref}: " + "; ".join(
                    f"{name} " + " ".join(f"{ours / theirs:.2f}x" for ours, theirs in zip(by_round[name], by_round[ref]))
                    + f" (median {statistics.median(o / t for o, t in zip(by_round[name], by_round[ref])):.2f}x)"
                    for name in by_round if name.startswith("scratchllm")))

    if args.chunks and names:
        with tempfile.TemporaryDirectory() as out:
            trainers = {}
            for name in names:
                _, cfg, model, batches = setup(name)
                trainers[name] = Trainer(model, cfg, tokenizer, batches, Path(out) / name, meta={"model_type": name},
                                         progress=False)
            paired_chunks(trainers, args.chunks, args.chunk_steps, reference="nanogpt")


if __name__ == "__main__":
    main()
