"""Training speed on one NVIDIA GPU: scratchllm's GPT against nanoGPT's model, in the same process.

    python benchmarks/gpu.py --nanogpt PATH/TO/nanoGPT/model.py [--what char,124m] [--steps 300]
    python benchmarks/gpu.py --nanogpt PATH --what speedrun --model ours|nanogpt --preset P [--set K=V ...] --out DIR

nanoGPT is not a dependency: point --nanogpt at its model.py (github.com/karpathy/nanoGPT), which
this script imports from that path to measure it beside ours.

  char   nanoGPT's shakespeare_char shape (gpt-char: 6 layers, 6 heads, 384 wide, context 256, batch
         64, dropout 0.2) on TinyShakespeare's characters, both models driven by scratchllm's trainer
         (the same loop, data, AdamW, bf16 autocast): ms per step in eager mode, compiled, and compiled
         with CUDA graphs (mode reduce-overhead), and CUDA kernels launched per training step.
  124m   GPT-2 small's shape (12 layers, 12 heads, 768 wide, context 1024, batch 12, vocabulary 50304,
         no dropout, no biases) on a fixed random batch, as nanoGPT's bench.py: a plain loop of
         forward, backward and a fused AdamW step in bf16, both models compiled; tokens/s and MFU
         = (6N + 12 L H Q T) FLOPs per token (N without position embeddings, as nanoGPT counts it)
         against the GPU's dense bf16 peak (989 TFLOP/s on an H100 SXM).
  speedrun  one training run on TinyShakespeare's characters with a preset's settings (--preset, --set
         as `scratchllm train` takes them), scratchllm's GPT or nanoGPT's model (--model) in the same
         trainer: its steps, seconds, and the best checkpoint's loss on the whole validation split
         (consecutive windows, fp32), as `scratchllm eval` measures ours. With --preset gpt-char this is
         nanoGPT's own shakespeare_char recipe (5000 steps, dropout 0.2, lr 1e-3); several such
         processes may share one GPU, each printing one JSON line.
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

ROOT = Path(__file__).resolve().parents[1]
PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def fail(message: str) -> None:
    """Bad input: one line and exit code 2, as the CLI does."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_nanogpt(path: str):
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["nanogpt_model"] = module
    spec.loader.exec_module(module)
    return module


def kernels_per_step(trainer) -> int:
    """CUDA kernels launched by one training step (after warm-up), counted with the profiler."""
    from torch.profiler import ProfilerActivity, profile

    trainer.train_step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        trainer.train_step()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def build(kind: str, mcfg, nanogpt, seed: int = 1337):
    """scratchllm's GPT ("scratchllm" or "ours") or nanoGPT's model of the same shape (no biases, as
    nanoGPT's shakespeare_char), from the same seed."""
    from scratchllm.models import build_model

    torch.manual_seed(seed)
    if kind in ("scratchllm", "ours"):
        return build_model("gpt", mcfg)
    return nanogpt.GPT(nanogpt.GPTConfig(block_size=mcfg.block_size, vocab_size=mcfg.vocab_size, n_layer=mcfg.n_layer,
                                         n_head=mcfg.n_head, n_embd=mcfg.n_embd, dropout=mcfg.dropout, bias=False))


def char(args, nanogpt) -> None:
    from scratchllm.data.batches import TokenBatches
    from scratchllm.data.tokens import corpus_tokens
    from scratchllm.train.presets import get_preset
    from scratchllm.train.trainer import Trainer

    preset = get_preset("gpt-char")
    tokenizer, train, val = corpus_tokens(str(ROOT / "tests" / "data" / "tinyshakespeare.txt"), progress=False)
    mcfg = dataclasses.replace(preset.model, vocab_size=tokenizer.vocab_size)
    print(f"\ngpt-char ({mcfg.n_layer} layers, {mcfg.n_embd} wide, context {mcfg.block_size}, batch "
          f"{preset.train.batch_size}, dropout {mcfg.dropout}), bf16 autocast, {args.steps} steps after warm-up")

    results = {}
    for name, kind, compile_mode in (("scratchllm eager", "scratchllm", None), ("nanoGPT eager", "nanogpt", None),
                                     ("scratchllm compiled", "scratchllm", "default"),
                                     ("nanoGPT compiled", "nanogpt", "default"),
                                     ("scratchllm compiled + CUDA graphs", "scratchllm", "reduce-overhead"),
                                     ("nanoGPT compiled + CUDA graphs", "nanogpt", "reduce-overhead")):
        cfg = dataclasses.replace(preset.train, max_steps=args.steps + 50, eval_interval=10**6, log_interval=10,
                                  precision="bf16", compile=compile_mode is not None, compile_mode=compile_mode or "default",
                                  device="cuda")
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(build(kind, mcfg, nanogpt), cfg, tokenizer, TokenBatches(train, val, mcfg.block_size, seed=cfg.seed),
                              Path(out), meta={"model_type": name}, progress=False)
            kernels = kernels_per_step(trainer) if compile_mode is None else None
            trainer.fit()
            rates = [r["tokens_per_s"] for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())
                     if r["kind"] == "train" and r["step"] > 50]  # windows after compilation and warm-up
        tokens_per_step = cfg.batch_size * mcfg.block_size
        ms = 1000 * tokens_per_step / statistics.median(rates)
        results[name] = ms
        print(f"  {name:<36} {ms:7.2f} ms/step" + (f"   {kernels} CUDA kernels per step" if kernels else ""), flush=True)
    best = min(v for k, v in results.items() if k.startswith("scratchllm"))
    print(f"  scratchllm's best against nanoGPT compiled: {results['nanoGPT compiled'] / best:.2f}x; "
          f"against nanoGPT's best: {min(v for k, v in results.items() if k.startswith('nanoGPT')) / best:.2f}x")


def gpt2_124m(args, nanogpt) -> None:
    from scratchllm.models import GPTConfig

    B, T, V = 12, 1024, 50304
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK.items() if k in name), PEAK["H100"])
    print(f"\nGPT-2 124M shape, batch {B} x {T}, vocabulary {V}, bf16, compiled, fixed random batch "
          f"({name}; peak {peak / 1e12:.0f} TFLOP/s)")
    x = torch.randint(V, (B, T), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    y = torch.randint(V, (B, T), device="cuda", generator=torch.Generator("cuda").manual_seed(1))

    mcfg = GPTConfig(vocab_size=V, block_size=T, n_layer=12, n_head=12, n_embd=768)  # no dropout, no biases
    for label, kind, mode in (("scratchllm", "scratchllm", None), ("nanoGPT", "nanogpt", None),
                              ("scratchllm + CUDA graphs", "scratchllm", "reduce-overhead")):
        model = build(kind, mcfg, nanogpt).cuda()
        n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel() if kind == "scratchllm" \
            else model.get_num_params()
        flops_per_token = 6 * n + 12 * 12 * 12 * 64 * T
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-2, fused=True)
        step_model = torch.compile(model, mode=mode)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = step_model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(10):  # compile and warm up
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(20):
                step()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) / 20)
        dt = statistics.median(times)
        tps = B * T / dt
        print(f"  {label:<26} {dt * 1000:7.2f} ms/iter  {tps:>9,.0f} tokens/s  MFU {flops_per_token * tps / peak:6.1%}", flush=True)
        del model, opt, step_model
        torch.cuda.empty_cache()


def speedrun(args, nanogpt) -> None:
    from safetensors.torch import load_file

    from scratchllm.config import apply_overrides
    from scratchllm.data.batches import TokenBatches
    from scratchllm.data.tokens import corpus_tokens
    from scratchllm.errors import ScratchLLMError
    from scratchllm.fileio import check_output
    from scratchllm.models.tasks import LANGUAGE
    from scratchllm.train.presets import get_preset
    from scratchllm.train.trainer import Trainer

    try:  # a new or empty folder, as `scratchllm train` asks: nothing of the user's is overwritten
        if args.out is None:
            raise ScratchLLMError("--what speedrun needs --out DIR, a new or empty folder for the run")
        out = check_output(args.out, force_flag=False)
        preset = get_preset(args.preset)
        configs = apply_overrides({"model": preset.model, "train": preset.train, "tokenizer": preset.tokenizer}, args.set)
    except ScratchLLMError as e:
        fail(str(e))
    data = str(ROOT / "tests" / "data" / "tinyshakespeare.txt")
    tokenizer, train, val = corpus_tokens(data, progress=False)
    mcfg = dataclasses.replace(configs["model"], vocab_size=tokenizer.vocab_size)
    cfg = dataclasses.replace(configs["train"], device=args.device)
    model = build(args.model, mcfg, nanogpt, cfg.seed)
    trainer = Trainer(model, cfg, tokenizer, TokenBatches(train, val, mcfg.block_size, seed=cfg.seed), out,
                      meta={"model_type": args.model}, progress=False)
    summary = trainer.fit()
    model.load_state_dict(load_file(out / "best" / "model.safetensors"))  # the best evaluation's weights
    whole = LANGUAGE.evaluate(model.float().eval(), tokenizer, data)
    result = {"model": args.model, "preset": args.preset, "set": args.set, "steps": summary["step"],
              "seconds": round(summary["seconds"], 1), "tokens_per_s": round(summary["tokens_per_s"] or 0),
              "best_val_batches": round(summary["best_val"], 4), "whole_val_loss_of_best": round(whole["loss"], 4),
              "n_params": sum(p.numel() for p in model.parameters())}
    print(json.dumps(result), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", required=True, help="path to nanoGPT's model.py")
    ap.add_argument("--what", default="char,124m")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", choices=["ours", "nanogpt"], default="ours", help="speedrun: which model trains")
    ap.add_argument("--preset", default="gpt-char", help="speedrun: the preset whose settings it trains with")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="speedrun: a preset override")
    ap.add_argument("--out", default=None, help="speedrun: the run folder")
    ap.add_argument("--device", default="cuda", help="speedrun: cpu for a dry run of this script where there is no GPU")
    args = ap.parse_args()
    parts = {"char": char, "124m": gpt2_124m, "speedrun": speedrun}
    unknown = [p for p in args.what.split(",") if p not in parts]
    if unknown:
        fail(f"--what {','.join(unknown)}: not one of {', '.join(parts)}")
    if args.device != "cuda" and args.what != "speedrun":
        fail(f"--device {args.device} is for a dry run of --what speedrun only; char and 124m time a CUDA GPU")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("this benchmark needs a CUDA GPU (for a dry run of --what speedrun: --device cpu)")
    nanogpt = load_nanogpt(args.nanogpt)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}")
    for part in args.what.split(","):
        parts[part](args, nanogpt)


if __name__ == "__main__":
    main()
